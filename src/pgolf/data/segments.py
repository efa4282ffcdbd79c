"""Document segments of a packed batch, as FlashAttention's varlen kernel wants them (`cu_seqlens`).

A (B, T) batch flattened to B*T positions splits into segments: one starts at every row start and at every BOS.
cu_seqlens = [0, s_1, ..., s_n, B*T] lists the segment starts and the end; segment i is [cu[i], cu[i+1]).
Built on the host (in the loader's thread, from the CPU tokens) and padded with B*T to a fixed `capacity`, so
the compiled training graph always sees one shape; padded entries are empty segments the kernel skips. No
segment is longer than T, so max_seqlen = T is known before the batch exists.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

BUCKET = 64  # capacities are multiples of this


def segment_capacity(rows: int, seq_len: int) -> int:
    """Fixed cu_seqlens length for (rows, seq_len) batches: room for every row start plus one BOS per 256 tokens
    (FineWeb averages one per ~700 sp8192 tokens; batches with more get a larger capacity, see cu_seqlens)."""
    return BUCKET * math.ceil((rows + math.ceil(rows * seq_len / 256) + 1) / BUCKET)


def cu_seqlens(ids: Tensor | np.ndarray, bos_id: int, capacity: int = 0) -> Tensor:
    """int32 cu_seqlens of a (B, T) CPU batch, padded with B*T to `capacity` (0: no padding).

    A batch with more segments than `capacity` gets the next multiple of `capacity` instead: correct, at the
    price of one more compiled shape.
    """
    ids = ids.numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"cu_seqlens expects a (rows, seq_len) batch, got shape {ids.shape}")
    rows, seq_len = ids.shape
    is_start = ids == bos_id
    is_start[:, 0] = True
    starts = np.flatnonzero(is_start)
    n = starts.size + 1
    size = n if capacity <= 0 else capacity * math.ceil(n / capacity)
    out = np.full(size, rows * seq_len, dtype=np.int32)
    out[: starts.size] = starts
    return torch.from_numpy(out)
