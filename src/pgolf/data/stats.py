"""`pgolf data stats`: documents, tokens, targets and exact bytes of a shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .shards import document_starts, read_shard
from .tokenizer import byte_tables, load_tokenizer, stream_bytes


def shard_stats(shard: str | Path, tokenizer: str | Path, bos_id: int = 1, check_decode: bool = False) -> dict[str, Any]:
    """Byte count under the challenge's rule; with check_decode, also the UTF-8 length of the decoded text."""
    sp = load_tokenizer(tokenizer)
    tokens = np.asarray(read_shard(shard, int(sp.vocab_size()), mmap=False))
    n_bytes = int(stream_bytes(tokens, byte_tables(sp)).sum()) if tokens.size > 1 else 0
    stats: dict[str, Any] = {
        "shard": str(shard),
        "tokenizer": str(tokenizer),
        "documents": int(document_starts(tokens, bos_id).size),
        "tokens": int(tokens.size),
        "targets": max(int(tokens.size) - 1, 0),
        "bytes": n_bytes,
        "tokens_per_byte": (max(int(tokens.size) - 1, 0) / n_bytes) if n_bytes else None,
    }
    if check_decode:
        stats["decoded_utf8_bytes"] = decoded_bytes(tokens, sp, bos_id)
    return stats


def decoded_bytes(tokens: np.ndarray, sp, bos_id: int = 1) -> int:
    """Sum over documents of len(decode(document without BOS).encode('utf-8'))."""
    if tokens.size == 0 or int(tokens[0]) != bos_id:
        raise ValueError("decoded-byte check needs a stream that starts with BOS (a whole first document)")
    starts = list(document_starts(tokens, bos_id)) + [tokens.size]
    total = 0
    for a, b in zip(starts[:-1], starts[1:]):
        total += len(sp.decode(tokens[a + 1 : b].tolist()).encode("utf-8"))
    return total
