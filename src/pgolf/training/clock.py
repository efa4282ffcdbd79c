"""The training clock, counted as the records count it.

Training seconds = wall time from t0 (set just before the first training step, after the compile-priming steps)
to the end, minus the spans spent in `paused()` (validation). Everything else counts: the step's queued GPU work
(forward, backward, clip, Newton-Schulz, all-reduces, Adam, EMA), the per-step host syncs, logging, progress,
checkpoints and callbacks. Reads that end a span (`stop`, `paused`) first drain the device, so no queued work is
left out; `read()` is the running figure between drains (the trainer reads it right after a step's one host sync,
so it lags the device by at most the work queued since).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from . import runtime


class TrainingClock:
    def __init__(self, device: torch.device, counted_s: float = 0.0):
        self.device = device
        self.counted_s = counted_s      # closed spans (a resumed run starts from its checkpoint's figure)
        self.paused_s = 0.0             # wall seconds spent in paused() spans
        self._t0: float | None = None

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self) -> None:
        runtime.synchronize(self.device)  # work queued before t0 (priming, set-up) is not training
        self._t0 = time.perf_counter()

    def read(self) -> float:
        """Counted seconds so far, without draining the device."""
        return self.counted_s + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def stop(self) -> float:
        """Drain the device, close the span, return the counted seconds."""
        if self._t0 is not None:
            runtime.synchronize(self.device)
            self.counted_s += time.perf_counter() - self._t0
            self._t0 = None
        return self.counted_s

    @contextmanager
    def paused(self) -> Iterator[None]:
        """A span that does not count (validation): the device is drained on both sides of it."""
        self.stop()
        start = time.perf_counter()
        try:
            yield
        finally:
            runtime.synchronize(self.device)
            self.paused_s += time.perf_counter() - start
            self.start()
