"""What an evaluation returns: per-target nats and bytes, and val_loss / val_bpb summed from them in fp64."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalResult:
    val_loss: float
    val_bpb: float
    token_nll: np.ndarray          # one value per scored target, in stream order (nats)
    token_bytes: np.ndarray        # bytes credited to each scored target (same length)
    seconds: float
    legal: bool = True             # False only for evaluations that train on validation tokens before scoring them
    mode: str = "plain"
    notes: list[str] = field(default_factory=list)
    tail: str = "score"            # eval.tail: "score" (every target) or "drop" (the challenge's target set)
    dropped: int = 0               # targets of the stream left unscored by tail = "drop"
    # True only where every document's scores depend on its own tokens alone (per-document LoRA TTT); False for
    # windows across documents and for every TTT that carries state between documents (warm-start A, phases)
    document_independent: bool = False

    @property
    def targets(self) -> int:
        return int(self.token_nll.size)

    @property
    def bytes(self) -> int:
        return int(self.token_bytes.sum())


def summarize(token_nll: np.ndarray, token_bytes: np.ndarray) -> tuple[float, float]:
    """(val_loss, val_bpb) from per-target nats and bytes, accumulated in fp64."""
    nats = float(np.sum(token_nll, dtype=np.float64))
    n_bytes = int(np.sum(token_bytes, dtype=np.int64))
    if token_nll.size == 0 or n_bytes == 0:
        raise ValueError("nothing to score: the validation stream has no targets with bytes")
    return nats / token_nll.size, nats / math.log(2.0) / n_bytes
