"""`quant.compressor = "pergroup"` (#1855): int8 codes grouped by role, rows reordered, lrzip per group.

Payload (all integers little-endian):
    u32 n_streams, n_streams x u64 stream lengths, then the streams:
    1. one stream per code group, in order of first appearance in the layout: the group's tensors (its "codes"
       parts; PartSpec.group names the group, e.g. blocks.*.mlp.fc.weight) in layout order, each with its rows
       in the stored order (PartSpec.row_order: the L1 nearest-neighbour order of `simsort_l1`, else as they
       are) and written transposed (column after column); compressed with `lrzip -z -L 9` (ZPAQ) or brotli-11;
    2. the remainder: every other part (scales, floats, LQER factors) concatenated in layout order (stride-2
       byte shuffled when quant.byte_shuffle), brotli-11 with a 16 MiB window;
    3. the row orders of the sorted tensors, in layout order, uint16 (uint32 past 65,536 rows), brotli-11.
Every stream's size follows from the layout, so each is decompressed to at most the bytes it must hold, and a
row order that is not a permutation is refused. lrzip is a system tool (Debian package `lrzip`), run as a
subprocess on stdin/stdout.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile

import brotli
import numpy as np

from .compress import CompressionError, byte_shuffle, byte_unshuffle, decompress
from .container import PartSpec

LRZIP_INSTALL = "install the lrzip system tool (Debian/Ubuntu: apt-get install lrzip)"
_LRZIP_MAGIC = b"LRZI"
_LRZIP_ENV = {**os.environ, "LRZIP": "NOCONFIG"}  # no user lrzip.conf: the same bytes on every machine


class LrzipMissing(CompressionError):
    """The lrzip binary is not on PATH."""


def lrzip_available() -> bool:
    return shutil.which("lrzip") is not None


def codec_for(requested: str) -> str:
    """The group codec quant.pergroup_codec asks for: 'lrzip' (an error without the tool), 'brotli', or 'auto'
    (lrzip when installed, else brotli)."""
    if requested == "auto":
        return "lrzip" if lrzip_available() else "brotli"
    if requested == "lrzip" and not lrzip_available():
        raise LrzipMissing(f"quant.compressor = 'pergroup' with quant.pergroup_codec = 'lrzip' needs the lrzip "
                           f"program, which is not on PATH: {LRZIP_INSTALL}, or set quant.pergroup_codec = 'auto' "
                           f"to fall back to brotli per group")
    return requested


def lrzip_compress(data: bytes) -> bytes:
    if not lrzip_available():
        raise LrzipMissing(f"lrzip is not on PATH: {LRZIP_INSTALL}")
    done = subprocess.run(["lrzip", "-Q", "-z", "-L", "9"], input=data, capture_output=True, env=_LRZIP_ENV)
    if done.returncode != 0:
        raise CompressionError(f"lrzip -z failed (exit {done.returncode}): {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout


def lrzip_decompress(data: bytes, size: int) -> bytes:
    """Exactly `size` bytes from an lrzip stream: its header must announce that size, and lrzip's output is
    read through a pipe up to size + 1 bytes, so a stream that expands further is stopped there."""
    if len(data) < 14 or data[:4] != _LRZIP_MAGIC:
        raise CompressionError("not an lrzip stream (bad magic)")
    (announced,) = struct.unpack_from("<Q", data, 6)
    if announced != size:
        raise CompressionError(f"lrzip stream announces {announced:,} bytes, expected {size:,}")
    if not lrzip_available():
        raise LrzipMissing(f"this artifact's code groups are lrzip streams and lrzip is not on PATH: {LRZIP_INSTALL}")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "group.lrz")
        with open(source, "wb") as f:
            f.write(data)
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = subprocess.Popen(["lrzip", "-Q", "-d", "-o", "-", source], stdout=subprocess.PIPE, stderr=err,
                                    stdin=subprocess.DEVNULL, env=_LRZIP_ENV)
            out = proc.stdout.read(size + 1)
            if len(out) > size:
                proc.kill()
            proc.stdout.close()
            code = proc.wait()
            err.seek(0)
            message = err.read().decode(errors="replace")[-300:]
    if len(out) > size:
        raise CompressionError(f"lrzip stream expands past the promised {size:,} bytes (stopped there)")
    if code != 0 or len(out) != size:
        raise CompressionError(f"lrzip -d gave {len(out):,} of {size:,} bytes (exit {code}): {message}")
    return out


def simsort_l1(m: np.ndarray) -> np.ndarray:
    """Row order: start at row 0, then repeatedly the unused row nearest (L1) to the last one taken, ties to
    the lowest index. O(rows^2 cols)."""
    rows = m.shape[0]
    if rows == 0:
        return np.zeros(0, dtype=np.int64)
    x = m.astype(np.int32)
    unused = np.ones(rows, dtype=bool)
    order = np.empty(rows, dtype=np.int64)
    order[0], unused[0] = 0, False
    for step in range(1, rows):
        left = np.flatnonzero(unused)
        dist = np.abs(x[left] - x[order[step - 1]]).sum(axis=1)   # sum_j |M[r, j] - M[cur, j]|
        pick = left[int(np.argmin(dist))]                           # argmin: the first (lowest index) of ties
        order[step], unused[pick] = pick, False
    return order


def order_dtype(rows: int) -> np.dtype:
    return np.dtype("<u2") if rows <= 1 << 16 else np.dtype("<u4")


def _group_codes(spec: PartSpec, codes: np.ndarray, order: np.ndarray | None) -> bytes:
    sorted_rows = codes if order is None else codes[order]
    return np.ascontiguousarray(sorted_rows.T).tobytes()


def _plan(specs: list[PartSpec]) -> tuple[list[str], dict[str, list[int]], list[int], list[int]]:
    """(group names in order, {group: spec indices}, remainder indices, row-ordered indices)."""
    groups: dict[str, list[int]] = {}
    remainder, ordered = [], []
    for i, spec in enumerate(specs):
        if spec.group:
            groups.setdefault(spec.group, []).append(i)
            if spec.row_order:
                ordered.append(i)
        else:
            remainder.append(i)
    return list(groups), groups, remainder, ordered


def split_streams(blob: bytes, count: int) -> list[bytes]:
    head = 4 + 8 * count
    if len(blob) < head or struct.unpack_from("<I", blob)[0] != count:
        raise CompressionError(f"pergroup payload does not start with the {count} stream lengths the layout implies")
    lengths = struct.unpack_from(f"<{count}Q", blob, 4)
    if head + sum(lengths) != len(blob):
        raise CompressionError(f"pergroup stream lengths add up to {head + sum(lengths):,} bytes, the payload holds "
                               f"{len(blob):,}")
    out, pos = [], head
    for n in lengths:
        out.append(blob[pos : pos + n])
        pos += n
    return out


def encode(parts: list[bytes], specs: list[PartSpec], codec: str, shuffle: bool) -> tuple[bytes, str]:
    """(payload, 'pergroup+lrzip' or 'pergroup+brotli') of the parts laid out as `specs`."""
    codec = codec_for(codec)
    names, groups, remainder, ordered = _plan(specs)
    orders = {}
    for i in ordered:
        orders[i] = simsort_l1(np.frombuffer(parts[i], dtype=np.int8).reshape(specs[i].shape))
    streams = []
    for name in names:
        raw = b"".join(_group_codes(specs[i], np.frombuffer(parts[i], dtype=np.int8).reshape(specs[i].shape),
                                    orders.get(i)) for i in groups[name])
        streams.append(lrzip_compress(raw) if codec == "lrzip" else brotli.compress(raw, quality=11, lgwin=24))
    rest = b"".join(parts[i] for i in remainder)
    streams.append(brotli.compress(byte_shuffle(rest) if shuffle else rest, quality=11, lgwin=24))
    perm = b"".join(orders[i].astype(order_dtype(specs[i].shape[0])).tobytes() for i in ordered)
    streams.append(brotli.compress(perm, quality=11))
    head = struct.pack(f"<I{len(streams)}Q", len(streams), *(len(s) for s in streams))
    return head + b"".join(streams), f"pergroup+{codec}"


def decode(payload: bytes, compressor: str, specs: list[PartSpec], shuffle: bool) -> bytes:
    """The raw concatenation of every part in layout order (what `encode` was given), exactly."""
    codec = compressor.removeprefix("pergroup+")
    names, groups, remainder, ordered = _plan(specs)
    streams = split_streams(payload, len(names) + 2)
    parts: list[bytes | None] = [None] * len(specs)
    perm_sizes = [specs[i].shape[0] * order_dtype(specs[i].shape[0]).itemsize for i in ordered]
    perm_raw = decompress(streams[-1], "brotli", sum(perm_sizes))
    orders, pos = {}, 0
    for i, nbytes in zip(ordered, perm_sizes):
        rows = specs[i].shape[0]
        order = np.frombuffer(perm_raw, dtype=order_dtype(rows), count=rows, offset=pos).astype(np.int64)
        pos += nbytes
        if order.size and (order.max() >= rows or np.bincount(order, minlength=rows).max() != 1):
            raise CompressionError(f"the row order of tensor '{specs[i].tensor}' is not a permutation of its {rows} rows")
        orders[i] = order
    for name, stream in zip(names, streams):
        size = sum(specs[i].nbytes for i in groups[name])
        raw = lrzip_decompress(stream, size) if codec == "lrzip" else decompress(stream, "brotli", size)
        pos = 0
        for i in groups[name]:
            rows, cols = specs[i].shape
            stored = np.frombuffer(raw, dtype=np.int8, count=rows * cols, offset=pos).reshape(cols, rows).T
            pos += rows * cols
            codes = stored
            if i in orders:
                codes = np.empty_like(stored)
                codes[orders[i]] = stored        # stored = codes[order]
            parts[i] = np.ascontiguousarray(codes).tobytes()
    rest_size = sum(specs[i].nbytes for i in remainder)
    rest = decompress(streams[-2], "brotli", rest_size)
    rest = byte_unshuffle(rest) if shuffle else rest
    pos = 0
    for i in remainder:
        parts[i] = rest[pos : pos + specs[i].nbytes]
        pos += specs[i].nbytes
    return b"".join(parts)
