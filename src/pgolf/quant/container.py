"""The artifact container: a compressed JSON header plus packed arrays, with checksums; nothing executable inside.

The header stores only what the config cannot tell: the config itself, the pgolf version, the payload's
compressor and checksums. Which tensors there are, their parts (codes, scales, values), dtypes, shapes and
offsets follow from the config (`pack.artifact_layout`, the config's model built on the meta device), so the
reader asks the caller for that layout instead of trusting a table in the file.

Layout (all integers little-endian):
    [0, 8)          magic  b"PGOLF\\x00v2"
    [8, 12)         header length H (uint32)
    [12, 12+H)      header:
                      [0]        payload compressor (0 none, 1 zlib, 2 lzma, 3 zstd, 4 brotli)
                      [1]        flags (bit 0: stride-2 byte shuffle)
                      [2, 6)     length of the header JSON (uint32)
                      [6, 10)    length J of the brotli-compressed header JSON (uint32)
                      [10, 42)   sha256 of the compressed payload
                      [42, 42+J) brotli(JSON {"pgolf_version", "config"})
                      [42+J, H)  part checks: the low 16 bits of each part's CRC-32, uint16, in layout order
    [12+H, 44+H)    sha256 of bytes [8, 12+H)
    [44+H, -40)     payload: the compressed concatenation of every tensor's parts, in layout order
    [-40, -8)       sha256 of every byte before it
    [-8, end)       trailer b"PGOLFEND"
Every check names the region it found damaged: preamble, header, payload (and, when the payload still
decompresses, which tensor part), checksum or trailer. Loading only parses JSON and reads numpy buffers, and
decompresses at most the bytes the layout asks for (`compress.decompress`). The part checks only locate
damage; the SHA-256 sums guarantee it is found.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.atomic import atomic_write_bytes
from .compress import COMPRESSORS, CompressionError, byte_shuffle, byte_unshuffle, compress, compress_best, decompress

MAGIC = b"PGOLF\x00v2"
TRAILER = b"PGOLFEND"
FORMAT_VERSION = 2
PERGROUP_COMPRESSORS = ("pergroup+lrzip", "pergroup+brotli")  # several streams; decoded by quant.pergroup
COMPRESSOR_IDS = {name: i for i, name in enumerate(("none", *COMPRESSORS, *PERGROUP_COMPRESSORS))}
HEADER_COMPRESSOR = "brotli"  # the smallest on ~3 KB of JSON (built-in text dictionary)
_FIXED = struct.Struct("<BBII32s")  # compressor, flags, JSON length, compressed JSON length, payload sha256
_PREAMBLE = len(MAGIC) + 4
_TAIL = 32 + len(TRAILER)
FRAMING_BYTES = _PREAMBLE + 32 + _TAIL  # magic, header length, header sha256, file sha256, trailer
CHECK_BYTES = 2  # per part
# What a header may ask for. An honest header is ~2 KB (~3 KB of JSON, depth 4).
MAX_HEADER_BYTES = 1 << 20
MAX_HEADER_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32


class ArtifactError(ValueError):
    """An artifact file is damaged or not an artifact; the message names the file and the region."""


class HeaderProblem(ValueError):
    """Raised by a layout callback: the (checksummed) header asks for something pgolf will not read."""


@dataclass(frozen=True)
class PartSpec:
    """One named array of a tensor (kind 'codes', 'packed_codes', 'scales' or 'values'), as the config implies."""
    tensor: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    group: str = ""          # quant.compressor = pergroup: the code group this part is compressed in
    row_order: bool = False  # pergroup: rows stored in L1 nearest-neighbour order (the order is stored too)

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:  # Python ints: no overflow, whatever the shape
            count *= dim
        return count * np.dtype(self.dtype).itemsize


def header_json_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")


def header_size(header: dict[str, Any], n_parts: int) -> int:
    """Exact header length H of a container with this JSON header and this many parts."""
    return _FIXED.size + len(compress(header_json_bytes(header), HEADER_COMPRESSOR)) + CHECK_BYTES * n_parts


def part_check(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFF


def encode_payload(parts: list[bytes], compressor: str, shuffle: bool) -> tuple[bytes, str]:
    """(compressed payload, compressor used) of the parts' concatenation; 'auto' keeps the smallest."""
    raw = b"".join(parts)
    return compress_best(byte_shuffle(raw) if shuffle else raw, compressor)


def write_container(path: str | Path, header: dict[str, Any], parts: list[bytes], payload: bytes, compressor: str,
                    shuffle: bool) -> dict[str, Any]:
    """Write atomically (temporary file + rename) the parts, already compressed as `payload` by
    `encode_payload`. Returns {'model_bytes', 'header_bytes', 'compressor', 'raw_bytes'}."""
    text = header_json_bytes(header)
    packed = compress(text, HEADER_COMPRESSOR)
    checks = np.array([part_check(p) for p in parts], dtype="<u2").tobytes()
    fixed = _FIXED.pack(COMPRESSOR_IDS[compressor], int(shuffle), len(text), len(packed),
                        hashlib.sha256(payload).digest())
    head = fixed + packed + checks
    length = struct.pack("<I", len(head))
    blob = MAGIC + length + head + hashlib.sha256(length + head).digest() + payload
    blob += hashlib.sha256(blob).digest() + TRAILER
    atomic_write_bytes(path, blob)  # a failed write (full disk, read-only folder) keeps the previous file
    return {"model_bytes": len(blob), "header_bytes": len(head), "compressor": compressor,
            "raw_bytes": sum(len(p) for p in parts)}


LayoutFn = Callable[[dict[str, Any]], list[PartSpec]]
PergroupFn = Callable[[bytes, str, list[PartSpec], bool], bytes]  # (payload, compressor, parts, shuffle) -> raw


def read_container(path: str | Path, layout: LayoutFn,
                   pergroup: PergroupFn | None = None) -> tuple[dict[str, Any], dict[tuple[str, str], np.ndarray]]:
    """(header JSON, {(tensor, kind): array}) after checking every region. `layout(header)` returns the parts
    the header's config implies, or raises HeaderProblem; nothing is decompressed before it answers.
    `pergroup` decodes a multi-stream payload (quant.pergroup.decode, chosen by the caller from the config);
    it may raise HeaderProblem when the header's config does not ask for that compressor."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found")
    blob = path.read_bytes()

    def fail(region: str, what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {region}: {what}")

    if len(blob) < _PREAMBLE + _TAIL:
        raise fail("preamble", f"truncated: {len(blob)} bytes is shorter than an empty artifact")
    if blob[: len(MAGIC)] != MAGIC:
        if blob[: len(MAGIC) - 1] == MAGIC[:-1]:
            raise fail("preamble", f"container format {blob[len(MAGIC) - 1:len(MAGIC)]!r} is not the one this pgolf "
                                   f"reads ({MAGIC[-2:]!r}); re-pack the run with `pgolf pack`")
        raise fail("preamble", "bad magic; not a pgolf artifact")
    if blob[-len(TRAILER):] != TRAILER:
        raise fail("trailer", "missing end marker; the file is truncated or its end is damaged")
    (header_len,) = struct.unpack_from("<I", blob, len(MAGIC))
    header_end = _PREAMBLE + header_len
    if header_end + 32 + _TAIL > len(blob):
        raise fail("preamble", f"header length field says {header_len:,} bytes, more than the file holds (truncated or damaged)")
    if hashlib.sha256(blob[len(MAGIC) : header_end]).digest() != blob[header_end : header_end + 32]:
        raise fail("header", "checksum mismatch; the header (or its stored checksum) is damaged")
    if header_len > MAX_HEADER_BYTES:
        raise fail("header", f"{header_len:,} bytes is more than a header may hold ({MAX_HEADER_BYTES:,})")
    head = blob[_PREAMBLE:header_end]
    if header_len < _FIXED.size:
        raise fail("header", f"{header_len} bytes is shorter than its fixed fields ({_FIXED.size})")
    code, flags, json_len, packed_len, payload_sha = _FIXED.unpack_from(head)
    names = {i: name for name, i in COMPRESSOR_IDS.items()}
    if code not in names:
        raise fail("header", f"unknown payload compressor {code} (known: {', '.join(f'{i} {n}' for i, n in names.items())})")
    if flags > 1:
        raise fail("header", f"unknown flags {flags:#04x} (only bit 0, the byte shuffle, is defined)")
    if json_len > MAX_HEADER_JSON_BYTES or _FIXED.size + packed_len > header_len:
        raise fail("header", f"header JSON of {json_len:,} bytes ({packed_len:,} compressed) is larger than allowed "
                             f"({MAX_HEADER_JSON_BYTES:,}) or than the header")
    header = _parse_header_json(head[_FIXED.size : _FIXED.size + packed_len], json_len, fail)
    try:
        specs = layout(header)
    except HeaderProblem as exc:
        raise fail("header", str(exc)) from exc
    checks_len = header_len - _FIXED.size - packed_len
    if checks_len != CHECK_BYTES * len(specs):
        raise fail("header", f"holds {checks_len / CHECK_BYTES:g} part checks; the embedded config describes "
                             f"{len(specs)} parts")
    checks = np.frombuffer(head, dtype="<u2", offset=_FIXED.size + packed_len).tolist()
    payload = blob[header_end + 32 : -_TAIL]
    payload_ok = hashlib.sha256(payload).digest() == payload_sha
    if payload_ok and hashlib.sha256(blob[:-_TAIL]).digest() != blob[-_TAIL : -len(TRAILER)]:
        raise fail("checksum", "the whole-file checksum does not match although header and payload do; the stored checksum is damaged")
    raw_bytes = sum(spec.nbytes for spec in specs)
    try:
        if names[code] in PERGROUP_COMPRESSORS:
            if pergroup is None:
                raise HeaderProblem(f"payload compressor {names[code]} needs a per-group decoder")
            raw = pergroup(payload, names[code], specs, bool(flags & 1))  # the shuffle covers its remainder only
        else:
            raw = decompress(payload, names[code], raw_bytes)
            raw = byte_unshuffle(raw) if flags & 1 else raw
    except HeaderProblem as exc:
        raise fail("header", str(exc)) from exc
    except CompressionError as exc:
        if type(exc).__name__ == "LrzipMissing":  # not damage: a system tool is missing (quant.pergroup)
            raise fail("payload codec", str(exc)) from exc
        raise fail("payload", f"does not decompress to the {raw_bytes:,} bytes the config implies ({exc})") from exc
    arrays, offset = {}, 0
    for spec, check in zip(specs, checks):
        data = raw[offset : offset + spec.nbytes]
        if part_check(data) != check:
            raise fail(f"payload of tensor '{spec.tensor}' ({spec.kind})", "checksum mismatch; these bytes are damaged")
        dtype = np.dtype(spec.dtype)
        arrays[(spec.tensor, spec.kind)] = np.frombuffer(raw, dtype=dtype, count=spec.nbytes // dtype.itemsize,
                                                         offset=offset).reshape(spec.shape)
        offset += spec.nbytes
    if not payload_ok:
        raise fail("payload", "checksum mismatch; the compressed payload is damaged")
    header["compressor"], header["byte_shuffle"] = names[code], bool(flags & 1)
    header["header_bytes"], header["payload_bytes"], header["raw_bytes"] = header_len, len(payload), raw_bytes
    return header, arrays


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_depth(text: bytes) -> int:
    """Deepest nesting of objects and arrays in JSON text (strings skipped), without parsing it."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", text), dtype=np.uint8)
    if skeleton.size == 0:
        return 0
    step = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _parse_header_json(packed: bytes, json_len: int, fail: Callable[[str, str], ArtifactError]) -> dict[str, Any]:
    try:
        text = decompress(packed, HEADER_COMPRESSOR, json_len)
    except CompressionError as exc:
        raise fail("header", f"the header JSON does not decompress ({exc})") from exc
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise fail("header", f"JSON nested {depth} levels deep; a header has at most {MAX_JSON_DEPTH}")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise fail("header", f"not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise fail("header", f"expected a JSON object, got {type(header).__name__}")
    if not isinstance(header.get("config"), dict):
        raise fail("header", "the 'config' object is missing")
    return header
