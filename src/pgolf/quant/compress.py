"""General-purpose compressors of the packed weights, and the stride-2 byte shuffle.

zlib-9 (baseline), lzma preset 9 extreme, zstd-22, brotli-11; 'auto' tries all and keeps the smallest.
"""

from __future__ import annotations

import lzma
import zlib

import brotli
import numpy as np
import zstandard

COMPRESSORS = ("zlib", "lzma", "zstd", "brotli")


class CompressionError(ValueError):
    pass


def compress(data: bytes, method: str) -> bytes:
    if method == "none":
        return data
    if method == "zlib":
        return zlib.compress(data, 9)
    if method == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    if method == "zstd":
        return zstandard.ZstdCompressor(level=22).compress(data)
    if method == "brotli":
        return brotli.compress(data, quality=11)
    raise CompressionError(f"unknown compressor {method!r} (expected one of {', '.join(COMPRESSORS)}, none, auto)")


def decompress(data: bytes, method: str) -> bytes:
    try:
        if method == "none":
            return data
        if method == "zlib":
            return zlib.decompress(data)
        if method == "lzma":
            return lzma.decompress(data)
        if method == "zstd":
            return zstandard.ZstdDecompressor().decompress(data)
        if method == "brotli":
            return brotli.decompress(data)
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, brotli.error) as exc:
        raise CompressionError(f"{method} stream is corrupt: {exc}") from exc
    raise CompressionError(f"unknown compressor {method!r}")


def compress_best(data: bytes, method: str) -> tuple[bytes, str]:
    """(compressed bytes, method used); method 'auto' keeps the smallest of all compressors."""
    if method != "auto":
        return compress(data, method), method
    results = [(compress(data, m), m) for m in COMPRESSORS]
    return min(results, key=lambda r: len(r[0]))


def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """All bytes at offsets = 0 mod stride, then 1 mod stride, ... (groups low/high bytes of fp16 and int16)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return b"".join(arr[i::stride].tobytes() for i in range(stride))


def byte_unshuffle(data: bytes, stride: int = 2) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8)
    out = np.empty_like(arr)
    n = arr.size
    pos = 0
    for i in range(stride):
        count = len(range(i, n, stride))
        out[i::stride] = arr[pos : pos + count]
        pos += count
    return out.tobytes()
