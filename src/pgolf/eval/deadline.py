"""The evaluation time budget (`eval.max_seconds`): past it, evaluation stops with an error, never a partial score."""

from __future__ import annotations

import time


class EvalTimeExceeded(RuntimeError):
    """Evaluation ran past `eval.max_seconds`; no score is returned because not every target was scored."""


class Deadline:
    """Wall clock since the evaluation started, checked between units of work (batches, chunks, steps)."""

    def __init__(self, max_seconds: float, start: float | None = None):
        self.max_seconds = float(max_seconds)
        self.start = time.perf_counter() if start is None else start

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self, where: str) -> None:
        """Raise EvalTimeExceeded if the budget is spent (no-op when eval.max_seconds is 0)."""
        if self.max_seconds > 0 and self.elapsed > self.max_seconds:
            raise EvalTimeExceeded(
                f"evaluation stopped after {self.elapsed:.1f} s during {where}: over eval.max_seconds = "
                f"{self.max_seconds:g}; no score is reported because not every target was scored "
                f"(raise eval.max_seconds, or set it to 0 for no cap)")
