"""General-purpose compressors of the packed weights, bounded decompression, and the stride-2 byte shuffle.

zlib-9 (raw deflate), lzma preset 9 extreme (raw LZMA2, dictionary sized to the data), zstd-22, brotli-11;
'auto' tries all and keeps the smallest. The streams carry no container headers of their own: the artifact's
checksums cover them.

Decompression is told how many bytes to expect and never produces more: every decoder runs in streaming mode
with an output cap of size + 1 bytes (zlib/lzma `max_length`, brotli `output_buffer_limit`, a zstd stream
reader asked for size + 1 bytes, with the window limited to the size), so a stream that would expand past the
promised size is refused as soon as it does, whatever its compression ratio. A stream that ends early or has bytes after its end is refused
too.
"""

from __future__ import annotations

import lzma
import zlib

import brotli
import numpy as np
import zstandard

COMPRESSORS = ("zlib", "lzma", "zstd", "brotli")
_LZMA_MAX_DICT = 1 << 26  # preset 9's dictionary (64 MiB); smaller for smaller data


class CompressionError(ValueError):
    pass


def _lzma_filters(size: int) -> list[dict]:
    """Raw LZMA2 at preset 9e; the dictionary is the next power of two >= size (4 KiB to 64 MiB), so both
    sides derive it from the size alone and a decoder never reserves more than the data needs."""
    dict_size = min(max(1 << max(size - 1, 1).bit_length(), 1 << 12), _LZMA_MAX_DICT)
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def compress(data: bytes, method: str) -> bytes:
    if method == "none":
        return bytes(data)
    if method == "zlib":
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    if method == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data)))
    if method == "zstd":
        return zstandard.ZstdCompressor(level=22).compress(data)
    if method == "brotli":
        return brotli.compress(data, quality=11)
    raise CompressionError(f"unknown compressor {method!r} (expected one of {', '.join(COMPRESSORS)}, none, auto)")


def decompress(data: bytes, method: str, size: int) -> bytes:
    """Exactly `size` bytes decompressed from `data`, or CompressionError; never holds much more than `size`
    bytes of output (brotli: one output block, 32 KiB), however far the stream would expand."""
    if method == "none":
        if len(data) != size:
            raise CompressionError(f"stored (uncompressed) payload holds {len(data):,} bytes, expected {size:,}")
        return bytes(data)
    try:
        if method == "zlib":
            d = zlib.decompressobj(-15)
            out = d.decompress(data, size + 1)
            ended, trailing = d.eof, len(d.unused_data)
        elif method == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(size))
            out = d.decompress(data, max_length=size + 1)
            ended, trailing = d.eof, len(d.unused_data)
        elif method == "zstd":
            out, ended, trailing = _zstd_decompress(data, size)
        elif method == "brotli":
            out, ended, trailing = _brotli_decompress(data, size)
        else:
            raise CompressionError(f"unknown compressor {method!r}")
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, brotli.error) as exc:
        raise CompressionError(f"{method} stream is corrupt: {exc}") from exc
    if len(out) > size:
        raise CompressionError(f"{method} stream expands past the promised {size:,} bytes (stopped there)")
    if not ended or len(out) < size:
        raise CompressionError(f"{method} stream ends after {len(out):,} of the promised {size:,} bytes")
    if trailing:
        raise CompressionError(f"{method} stream is followed by {trailing:,} unexpected bytes")
    return out


def _zstd_decompress(data: bytes, size: int) -> tuple[bytes, bool, int]:
    window = max(1 << 20, 1 << max(size - 1, 1).bit_length())  # level 22 never uses a window wider than the data
    with zstandard.ZstdDecompressor(max_window_size=window).stream_reader(data, read_across_frames=False) as reader:
        chunks, total = [], 0
        while total <= size:  # read() fills at most the bytes asked for: the output never passes size + 1
            chunk = reader.read(size + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    out = b"".join(chunks)
    if len(out) != size:
        return out, True, 0
    rest = zstandard.ZstdDecompressor(max_window_size=window).decompressobj()
    rest.decompress(data)  # the frame is known to hold exactly `size` bytes; what follows it is unused_data
    return out, rest.eof, len(rest.unused_data)


def _brotli_decompress(data: bytes, size: int) -> tuple[bytes, bool, int]:
    d = brotli.Decompressor()
    chunks = [d.process(data, output_buffer_limit=size + 1)]
    total = len(chunks[0])
    while total <= size and not d.is_finished() and not d.can_accept_more_data():  # output still pending
        chunks.append(d.process(b"", output_buffer_limit=size + 1 - total))
        total += len(chunks[-1])
        if not chunks[-1]:
            break
    return b"".join(chunks), d.is_finished(), 0  # bytes after the end are a decoder error


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
