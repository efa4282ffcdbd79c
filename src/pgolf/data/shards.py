"""The challenge's token shard format: 256 little-endian int32 header + uint16 tokens.

header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = number of tokens; file size must be
exactly 1024 + 2 * tokens. Every document is written as [BOS] + tokens(text), no EOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_write

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(ValueError):
    """A shard file (or folder of shards) is malformed; the message names the file."""


def read_header(path: str | Path) -> int:
    """Validate the header and size of a shard; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: truncated: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC}); not a token shard")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    num_tokens = int(header[2])
    if num_tokens < 0:
        raise ShardError(f"{path}: negative token count {num_tokens} in header")
    expected = HEADER_BYTES + 2 * num_tokens
    if size != expected:
        kind = "truncated" if size < expected else "size mismatch"
        raise ShardError(f"{path}: {kind}: header says {num_tokens} tokens ({expected} bytes) but the file has {size} bytes")
    return num_tokens


def read_shard(path: str | Path, vocab_size: int | None = None, mmap: bool = True) -> np.ndarray:
    """Tokens of a shard as uint16 (memory-mapped by default). With `vocab_size`, every id is checked."""
    num_tokens = read_header(path)
    if mmap and num_tokens:
        tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
    else:
        tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    if vocab_size is not None and num_tokens:
        check_token_ids(tokens, vocab_size, path)
    return tokens


def check_token_ids(tokens: np.ndarray, vocab_size: int, path: str | Path) -> None:
    biggest = int(tokens.max())
    if biggest >= vocab_size:
        where = int(np.argmax(np.asarray(tokens) >= vocab_size))
        raise ShardError(f"{path}: token id {biggest} at position {where} is >= vocab size {vocab_size}")


def write_shard(path: str | Path, tokens: np.ndarray | list[int]) -> None:
    """Write tokens in the challenge format, atomically (temporary file, then rename)."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 2**16):
        raise ShardError(f"{path}: token ids must be in [0, 65536) to fit uint16")
    if arr.size >= 2**31:
        raise ShardError(f"{path}: {arr.size} tokens do not fit the int32 header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, arr.size)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(arr.astype("<u2", copy=False).tobytes())

    atomic_write(path, write)


def find_shards(folder: str | Path, pattern: str, what: str) -> list[Path]:
    """Sorted shard files matching `pattern` in `folder`; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f"{folder}: data folder not found")
    files = sorted(folder.glob(pattern))
    if not files:
        present = sorted(p.name for p in folder.iterdir())[:8]
        raise ShardError(f"{folder}: no {what} shards matching '{pattern}' (folder holds: {present or 'nothing'})")
    return files


def load_tokens(files: list[Path], vocab_size: int | None = None, limit: int = 0) -> np.ndarray:
    """Concatenate shards into one in-memory uint16 array (validation is small enough for this)."""
    parts = []
    total = 0
    for f in files:
        toks = np.asarray(read_shard(f, vocab_size, mmap=False))
        parts.append(toks)
        total += toks.size
        if limit and total >= limit:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return tokens[:limit] if limit else tokens


def document_starts(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """Indices of the BOS tokens that begin each document."""
    return np.flatnonzero(np.asarray(tokens) == bos_id)
