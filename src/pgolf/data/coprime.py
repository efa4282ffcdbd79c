"""#1060's coprime-stride multi-shard loader (data.loader = "coprime"): every training row is a (T+1)-token block
of some shard, each block of a shard visited once per cycle in a stride-permuted order, many shards mixed per batch.

Per shard (n tokens, T = seq_len), a cycle draws phase ~ U[0, min(T-1, n-T-1)], bc = (n-1-phase) // T blocks,
start ~ U[0, bc) and a stride s ~ U[1, bc) redrawn until gcd(s, bc) = 1; the cycle's j-th block is
    blk_j = (start + j*s) mod bc,  tokens [phase + blk_j*T, phase + blk_j*T + T + 1)
(s coprime to bc makes j -> blk_j a permutation of 0..bc-1); after bc blocks the shard's cycle is redrawn.
Per call (one global micro-batch of G = world * rows windows), with progress p = min(calls / 1800, 1):
    weight_i = remaining_i ** (0.9 - 0.4 p)      (blocks left in shard i's cycle; a full count if never opened)
    mix = round(lo + p (hi - lo)),  lo = min(max(8, world), shards, G),  hi = min(max(32, 8 world), shards, G)
mix distinct shards are drawn with P ∝ weight, each gets one window plus a multinomial share of the other G - mix;
each takes that many consecutive cycle blocks, shuffled within the shard, and the shards are interleaved by
repeated random permutations of the non-empty ones. Rank r keeps windows r, r + world, ...
One PCG64 shared by all ranks, seeded by FNV-1a's prime over the bytes of the sorted file paths with offset basis
0 (as #1060; the run seed is not used), so every rank draws the same global batch and reads only its own rows:
rows are disjoint across ranks and the global batch does not depend on the world size. The whole state (RNG,
cursors, calls) is plain ints and goes into the checkpoint. Rows carry no cu_seqlens of their own: with
document attention the loader builds them from BOS like the stream loader.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .loader import PackedBatch, packed
from .shards import read_header, read_shard

FNV_PRIME = 1099511628211
RAMP_CALLS = 1800  # calls over which the mixing ramps from lo to hi shards


def path_seed(files: list[Path]) -> int:
    """seed = fold over the bytes b of each sorted path of ((seed ^ b) * FNV prime) mod 2^64, from 0."""
    seed = 0
    for path in sorted(str(f) for f in files):
        for b in path.encode("utf-8"):
            seed = ((seed ^ b) * FNV_PRIME) % 2**64
    return seed


def draw_cycle(rng: np.random.Generator, n: int, block: int) -> list[int]:
    """A new cycle [phase, bc, start, stride, taken] for a shard of n tokens and blocks of `block` (+1) tokens."""
    if n < block + 1:
        raise ValueError(f"a shard of {n} tokens holds no block of {block + 1} (seq_len {block} + 1)")
    phase = int(rng.integers(0, max(min(block - 1, n - block - 1), 0) + 1))
    bc = (n - 1 - phase) // block
    start = int(rng.integers(0, bc))
    stride = 1
    if bc > 1:
        stride = int(rng.integers(1, bc))
        while math.gcd(stride, bc) != 1:
            stride = int(rng.integers(1, bc))
    return [phase, bc, start, stride, 0]


def block_offset(cycle: list[int], j: int, block: int) -> int:
    """First token of the cycle's j-th block."""
    phase, bc, start, stride, _ = cycle
    return phase + ((start + j * stride) % bc) * block


class CoprimeBlockLoader:
    """The DistributedTokenLoader interface (next_batch, next_packed, state_dict) over coprime-stride blocks."""

    def __init__(self, files: list[Path], rank: int = 0, world_size: int = 1, vocab_size: int | None = None,
                 bos_id: int | None = None):
        if not files:
            raise ValueError("CoprimeBlockLoader needs at least one shard")
        self.files = sorted(Path(f) for f in files)
        self.rank, self.world_size, self.vocab_size, self.bos_id = rank, world_size, vocab_size, bos_id
        self.sizes = [read_header(f) for f in self.files]
        self.rng = np.random.Generator(np.random.PCG64(path_seed(self.files)))
        self.block: int | None = None
        self.cycles: list[list[int] | None] = [None] * len(self.files)
        self.calls = 0
        self._shards: dict[int, np.ndarray] = {}

    def _remaining(self, i: int) -> int:
        cycle = self.cycles[i]
        if cycle is None:
            return max((self.sizes[i] - 1) // self.block, 1)
        return max(cycle[1] - cycle[4], 1)

    def _take(self, i: int, count: int) -> list[tuple[int, int]]:
        """`count` consecutive cycle blocks of shard i as (shard, offset), redrawing its cycle when it ends."""
        out = []
        for _ in range(count):
            cycle = self.cycles[i]
            if cycle is None or cycle[4] >= cycle[1]:
                cycle = self.cycles[i] = draw_cycle(self.rng, self.sizes[i], self.block)
            out.append((i, block_offset(cycle, cycle[4], self.block)))
            cycle[4] += 1
        return out

    def global_windows(self, windows: int) -> list[tuple[int, int]]:
        """The next global micro-batch as (shard index, first token) of each of its `windows` rows."""
        shards = len(self.files)
        progress = min(self.calls / RAMP_CALLS, 1.0)
        weights = np.array([self._remaining(i) for i in range(shards)], dtype=np.float64) ** (0.9 - 0.4 * progress)
        lo = min(max(8, self.world_size), shards, windows)
        hi = min(max(32, 8 * self.world_size), shards, windows)
        mix = int(round(lo + progress * (hi - lo)))
        chosen = self.rng.choice(shards, size=mix, replace=False, p=weights / weights.sum())
        p = weights[chosen] / weights[chosen].sum()
        counts = 1 + self.rng.multinomial(windows - mix, p)
        buckets = []
        for i, count in zip(chosen, counts):
            blocks = self._take(int(i), int(count))
            buckets.append([blocks[k] for k in self.rng.permutation(len(blocks))])
        out: list[tuple[int, int]] = []
        while any(buckets):
            live = [b for b in buckets if b]
            for k in self.rng.permutation(len(live)):
                out.append(live[k].pop())
        self.calls += 1
        return out

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._shards:
            self._shards[i] = read_shard(self.files[i], self.vocab_size)
        return self._shards[i]

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 of shape (local_tokens / seq_len, seq_len): this rank's rows of the global micro-batch."""
        local = global_tokens // (self.world_size * grad_accum_steps)
        if local % seq_len:
            raise ValueError(f"per-rank micro-batch of {local} tokens is not a multiple of seq_len {seq_len}")
        if self.block is None:
            self.block = seq_len
        elif seq_len != self.block:
            raise ValueError(f"the coprime loader cuts blocks of seq_len {self.block}; asked for {seq_len}")
        windows = self.global_windows(self.world_size * (local // seq_len))[self.rank :: self.world_size]
        rows = np.stack([np.asarray(self._shard(i)[o : o + seq_len + 1], dtype=np.int64) for i, o in windows])
        rows = torch.from_numpy(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def next_packed(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> PackedBatch:
        return packed(*self.next_batch(global_tokens, seq_len, grad_accum_steps), self.bos_id)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": "coprime", "block": self.block, "calls": self.calls,
                "cycles": [list(c) if c is not None else None for c in self.cycles],
                "rng": self.rng.bit_generator.state, "files": [f.name for f in self.files]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("loader") != "coprime":
            raise ValueError("the checkpoint's loader state is not the coprime loader's (data.loader changed?)")
        if state["files"] != [f.name for f in self.files]:
            raise ValueError(f"the checkpoint's coprime loader read shards {state['files'][:3]}..., this run has "
                             f"{[f.name for f in self.files][:3]}...")
        self.block, self.calls = state["block"], int(state["calls"])
        self.cycles = [list(c) if c is not None else None for c in state["cycles"]]
        self.rng.bit_generator.state = state["rng"]
