"""Deterministic streaming token loader for training (the challenge baseline's scheme).

Shards are read in sorted order and wrap around forever. Each call takes one contiguous chunk of
world * (local + 1) tokens from the shared stream; rank r keeps slice [r (local+1), (r+1)(local+1)) and builds
x = s[:-1], y = s[1:]. Every rank reads the same stream, so spans are disjoint and the global batch is the
same for any world size: 1 process with k-step accumulation sees exactly the tokens of k processes.
The loader only ever opens the training files it is given. With `bos_id` set (document-isolated attention),
`next_packed` also returns the batch's `cu_seqlens` (data/segments.py), built here on the host.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .segments import cu_seqlens, segment_capacity
from .shards import read_shard


class PackedBatch(NamedTuple):
    x: torch.Tensor                     # (rows, seq_len) int64 inputs
    y: torch.Tensor                     # (rows, seq_len) int64 targets
    cu_seqlens: torch.Tensor | None     # int32 document segments of x, fixed length; None without bos_id


def packed(x: torch.Tensor, y: torch.Tensor, bos_id: int | None) -> PackedBatch:
    """The batch with the inputs' cu_seqlens (None without bos_id), padded to a fixed capacity."""
    if bos_id is None:
        return PackedBatch(x, y, None)
    return PackedBatch(x, y, cu_seqlens(x, bos_id, segment_capacity(*x.shape)))


class TokenStream:
    def __init__(self, files: list[Path], vocab_size: int | None = None):
        if not files:
            raise ValueError("TokenStream needs at least one shard")
        self.files = list(files)
        self.vocab_size = vocab_size
        self.file_index = 0
        self.pos = 0
        self._tokens = read_shard(self.files[0], vocab_size)

    def _open(self, index: int) -> None:
        self.file_index = index
        self._tokens = read_shard(self.files[index], self.vocab_size)

    def take(self, n: int) -> np.ndarray:
        chunks = []
        remaining = n
        while remaining > 0:
            avail = self._tokens.size - self.pos
            if avail <= 0:
                self._open((self.file_index + 1) % len(self.files))
                self.pos = 0
                continue
            k = min(remaining, avail)
            chunks.append(np.asarray(self._tokens[self.pos : self.pos + k]))
            self.pos += k
            remaining -= k
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def state_dict(self) -> dict[str, int]:
        return {"file_index": self.file_index, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["file_index"] != self.file_index:
            self._open(state["file_index"])
        self.pos = state["pos"]


class DistributedTokenLoader:
    def __init__(self, files: list[Path], rank: int = 0, world_size: int = 1, vocab_size: int | None = None,
                 bos_id: int | None = None):
        self.rank, self.world_size = rank, world_size
        self.stream = TokenStream(files, vocab_size)
        self.bos_id = bos_id

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 of shape (local_tokens / seq_len, seq_len) for this rank's micro-step."""
        local = global_tokens // (self.world_size * grad_accum_steps)
        if local % seq_len:
            raise ValueError(f"per-rank micro-batch of {local} tokens is not a multiple of seq_len {seq_len}")
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))
        return mine[:-1].view(-1, seq_len), mine[1:].view(-1, seq_len)

    def next_packed(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> PackedBatch:
        """next_batch plus the inputs' cu_seqlens (when built with bos_id), padded to a fixed capacity."""
        return packed(*self.next_batch(global_tokens, seq_len, grad_accum_steps), self.bos_id)

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)


class PrefetchingLoader:
    """Produces the next batches on a background thread (pinned for a fast host-to-GPU copy) while the GPU
    works. Batches come out in exactly the order of the wrapped loader; `state_dict` is the position after
    the last batch handed out, so a checkpoint resumes with the same data whatever was prefetched."""

    def __init__(self, loader: DistributedTokenLoader, global_tokens: int, seq_len: int, grad_accum_steps: int,
                 pin_memory: bool = False, depth: int = 2):
        self.loader = loader
        self.args = (global_tokens, seq_len, grad_accum_steps)
        self.pin_memory = pin_memory
        self.depth = depth
        self._state = loader.state_dict()
        self._start()

    def _start(self) -> None:
        self._queue: "queue.Queue" = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.loader.next_packed(*self.args)
                if self.pin_memory:
                    batch = PackedBatch(*(t.pin_memory() if t is not None else None for t in batch))
                item = (batch, self.loader.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except Exception:  # queue.Full
                        continue
        except BaseException as exc:  # surface loader errors (e.g. a damaged shard) in the training thread
            self._queue.put(exc)

    def next_packed(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> PackedBatch:
        if (global_tokens, seq_len, grad_accum_steps) != self.args:
            raise ValueError("PrefetchingLoader was built for other batch arguments")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.next_packed(global_tokens, seq_len, grad_accum_steps)
        return batch.x, batch.y

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.loader.load_state_dict(state)
        self._state = self.loader.state_dict()
        self._start()
