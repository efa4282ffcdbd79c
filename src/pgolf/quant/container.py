"""The artifact container: a JSON header plus packed arrays, with checksums; nothing executable inside.

Layout (all integers little-endian):
    [0, 8)        magic  b"PGOLF\\x00v1"
    [8, 12)       header length H (uint32)
    [12, 44)      sha256 of the header bytes
    [44, 44+H)    header: UTF-8 JSON (config, compressor, tensor table with per-part crc32, payload sha256)
    [.., ..+P)    payload: the compressed concatenation of every tensor's parts (codes, scales, values)
    [-40, -8)     sha256 of every byte before it
    [-8, end)     trailer b"PGOLFEND"
Every check names the region it found damaged: preamble, header, payload (and, when the payload still
decompresses, which tensor part), checksum or trailer. Loading only parses JSON and reads numpy buffers.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import atomic_write_bytes
from .compress import COMPRESSORS, CompressionError, byte_shuffle, byte_unshuffle, compress_best, decompress

MAGIC = b"PGOLF\x00v1"
TRAILER = b"PGOLFEND"
FORMAT_VERSION = 1
_PREAMBLE = len(MAGIC) + 4 + 32
_TAIL = 32 + len(TRAILER)


class ArtifactError(ValueError):
    """An artifact file is damaged or not an artifact; the message names the file and the region."""


@dataclass
class Part:
    """One named byte array of a tensor (e.g. 'codes', 'scales', 'values')."""
    tensor: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def write_container(path: str | Path, parts: list[Part], meta: dict[str, Any], compressor: str,
                    shuffle: bool = False) -> dict[str, Any]:
    """Write atomically (temporary file + rename). Returns {'model_bytes', 'compressor', 'raw_bytes'}."""
    raw = b"".join(p.data for p in parts)
    body = byte_shuffle(raw) if shuffle else raw
    payload, used = compress_best(body, compressor)
    table, offset = [], 0
    for p in parts:
        table.append({"tensor": p.tensor, "kind": p.kind, "dtype": p.dtype, "shape": list(p.shape),
                      "offset": offset, "nbytes": len(p.data), "crc32": zlib.crc32(p.data)})
        offset += len(p.data)
    header = {
        "format": FORMAT_VERSION, "compressor": used, "byte_shuffle": shuffle, "raw_bytes": len(raw),
        "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "parts": table, "meta": meta,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head = MAGIC + struct.pack("<I", len(header_bytes)) + hashlib.sha256(header_bytes).digest()
    blob = head + header_bytes + payload
    blob += hashlib.sha256(blob).digest() + TRAILER
    atomic_write_bytes(path, blob)  # a failed write (full disk, read-only folder) keeps the previous file
    return {"model_bytes": len(blob), "compressor": used, "raw_bytes": len(raw)}


def read_container(path: str | Path) -> tuple[dict[str, Any], dict[tuple[str, str], np.ndarray]]:
    """(header, {(tensor, kind): array}) after checking every region."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found")
    blob = path.read_bytes()

    def fail(region: str, what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {region}: {what}")

    if len(blob) < _PREAMBLE + _TAIL:
        raise fail("preamble", f"truncated: {len(blob)} bytes is shorter than an empty artifact")
    if blob[: len(MAGIC)] != MAGIC:
        raise fail("preamble", "bad magic; not a pgolf artifact")
    if blob[-len(TRAILER):] != TRAILER:
        raise fail("trailer", "missing end marker; the file is truncated or its end is damaged")
    (header_len,) = struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])
    if _PREAMBLE + header_len + _TAIL > len(blob):
        raise fail("preamble", f"header length field says {header_len} bytes, more than the file holds (truncated or damaged)")
    header_bytes = blob[_PREAMBLE : _PREAMBLE + header_len]
    if hashlib.sha256(header_bytes).digest() != blob[len(MAGIC) + 4 : _PREAMBLE]:
        raise fail("header", "checksum mismatch; the header (or its stored checksum) is damaged")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail("header", f"not valid JSON ({exc})") from exc
    problem = header_problem(header)
    if problem:
        raise fail("header", problem)
    payload_end = _PREAMBLE + header_len + header["payload_bytes"]
    if payload_end + _TAIL != len(blob):
        raise fail("payload", f"size mismatch: header promises {header['payload_bytes']} payload bytes, "
                              f"the file holds {len(blob) - _PREAMBLE - header_len - _TAIL} (truncated or padded)")
    payload = blob[_PREAMBLE + header_len : payload_end]
    payload_ok = hashlib.sha256(payload).hexdigest() == header["payload_sha256"]
    if payload_ok and hashlib.sha256(blob[:-_TAIL]).digest() != blob[-_TAIL : -len(TRAILER)]:
        raise fail("checksum", "the whole-file checksum does not match although header and payload do; the stored checksum is damaged")
    try:
        raw = decompress(payload, header["compressor"])
        if header.get("byte_shuffle"):
            raw = byte_unshuffle(raw)
    except CompressionError as exc:
        raise fail("payload", f"does not decompress ({exc})") from exc
    if len(raw) != header["raw_bytes"]:
        raise fail("payload", f"decompressed to {len(raw)} bytes, expected {header['raw_bytes']}")
    arrays = {}
    for entry in header["parts"]:
        data = raw[entry["offset"] : entry["offset"] + entry["nbytes"]]
        if zlib.crc32(data) != entry["crc32"]:
            raise fail(f"payload of tensor '{entry['tensor']}' ({entry['kind']})", "checksum mismatch; these bytes are damaged")
        arrays[(entry["tensor"], entry["kind"])] = np.frombuffer(data, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])
    if not payload_ok:
        raise fail("payload", "checksum mismatch; the compressed payload is damaged")
    return header, arrays


def header_problem(header: Any) -> str | None:
    """What is wrong with a parsed header's structure (types, part table, dtypes), or None.

    The checksums prove the bytes are the ones written; this proves they describe arrays pgolf can read
    (numeric dtypes only, sizes that add up), so a crafted file is rejected as a header problem, not a crash.
    """
    if not isinstance(header, dict):
        return f"expected a JSON object, got {type(header).__name__}"
    if header.get("format") != FORMAT_VERSION:
        return f"unsupported format version {header.get('format')!r} (this pgolf reads {FORMAT_VERSION})"
    if header.get("compressor") not in (*COMPRESSORS, "none"):
        return f"unknown compressor {header.get('compressor')!r}"
    for key in ("raw_bytes", "payload_bytes"):
        if not _count(header.get(key)):
            return f"'{key}' must be a non-negative integer, got {header.get(key)!r}"
    if not isinstance(header.get("payload_sha256"), str) or not isinstance(header.get("meta"), dict):
        return "'payload_sha256' (a string) or 'meta' (an object) is missing"
    parts = header.get("parts")
    if not isinstance(parts, list):
        return "'parts' (the part table) is missing"
    for i, entry in enumerate(parts):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("tensor", "kind", "dtype")):
            return f"part table entry {i} lacks tensor/kind/dtype names"
        name = f"part table: tensor '{entry['tensor']}' ({entry['kind']})"
        try:
            dtype = np.dtype(entry["dtype"])
        except TypeError:
            return f"{name}: unknown dtype {entry['dtype']!r}"
        if dtype.kind not in "iuf":
            return f"{name}: dtype {entry['dtype']!r} is not a plain numeric type"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            return f"{name}: bad shape {shape!r}"
        if not all(_count(entry.get(k)) for k in ("offset", "nbytes", "crc32")):
            return f"{name}: offset, nbytes and crc32 must be non-negative integers"
        if entry["nbytes"] != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            return f"{name}: {entry['nbytes']} bytes do not hold shape {shape} of {dtype.name}"
        if entry["offset"] + entry["nbytes"] > header["raw_bytes"]:
            return f"{name}: ends past the {header['raw_bytes']} payload bytes"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
