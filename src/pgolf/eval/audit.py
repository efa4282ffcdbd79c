"""The per-target NLL every scoring path uses, and an optional audit of the full predicted distributions.

Every way pgolf scores a target (plain and sliding windows, chunk TTT, LoRA TTT, and any later mode) turns logits
into per-target NLL through `target_nll`, naming the absolute index of each scored target (target i is token
i + 1 of the stream). Normally that is all it does. Inside `recording()` it also keeps the log-probability vector
of every scored target, by index: the honesty tests use it to check the score-first rule on whole distributions
(a target's prediction may depend only on the tokens before it, TECHNIQUES.md §10.1), not just on the loss of
the true token. Recording is off unless a caller asks, and then costs one `is None` check per batch. While it
records, compiled forwards run eagerly (eval.forward.compiled): a graph cannot read distributions to the host.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_recorded: dict[int, np.ndarray] | None = None  # target index -> log-probabilities, while recording()


def target_nll(logits: Tensor, targets: Tensor, positions: Tensor) -> Tensor:
    """-log softmax(logits)[target] in fp32 for (n, V) logits; `positions` = the n targets' stream indices.

    Positions < 0 mark padding rows (not scored, not recorded).
    """
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    if _recorded is not None:
        _record(logits, positions)
    return nll


def is_recording() -> bool:
    """Inside `recording()`."""
    return _recorded is not None


def _record(logits: Tensor, positions: Tensor) -> None:
    logp = torch.log_softmax(logits.detach().float(), dim=-1).cpu().numpy()
    for pos, row in zip(positions.tolist(), logp):
        if pos < 0:
            continue
        if pos in _recorded:  # type: ignore[operator]
            raise AssertionError(f"target {pos} was scored twice")
        _recorded[pos] = row  # type: ignore[index]


@contextmanager
def recording() -> Iterator[dict[int, np.ndarray]]:
    """Within the block, every scored target's log-probability vector lands in the yielded dict (index -> vector)."""
    global _recorded
    if _recorded is not None:
        raise RuntimeError("audit.recording() does not nest")
    _recorded = {}
    try:
        yield _recorded
    finally:
        _recorded = None
