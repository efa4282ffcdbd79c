"""Sliding-window evaluation (TECHNIQUES.md §4, the exactly-once tiling), optionally cut at document starts.

Every target is scored once, with the longest left context its window allows: the first W targets by the first
window, then S targets per window, each with at least W - S tokens of context (fewer only where
`eval.doc_boundaries` cuts the window at the start of the target's document).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import EvalConfig
from .deadline import Deadline
from .ranks import model_device
from .forward import use_compile
from .windows import eval_windows, score_distributed


def sliding_nll(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline,
                bos_id: int = 1) -> tuple[np.ndarray, list[str]]:
    """NLL of every target tokens[1:] under the windows `cfg` asks for (stride 0 = plain), and notes."""
    windows = eval_windows(tokens, cfg.context_len, cfg.sliding_stride, cfg.doc_boundaries, bos_id, cfg.plain_windows)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    nll = score_distributed(model, stream, windows, cfg.batch_seqs, deadline, "sliding-window scoring",
                            use_compile(cfg, model_device(model)))
    stride = cfg.sliding_stride or cfg.context_len
    if cfg.sliding_stride <= 0 and cfg.plain_windows == "doc_pieces":
        notes = [f"{len(windows):,} pieces of up to {cfg.context_len} tokens from each document's BOS (#1536's eval_val)"]
    else:
        notes = [f"windows {len(windows):,} of up to {cfg.context_len} tokens, stride {stride}"
                 + (", cut at document starts" if cfg.doc_boundaries else "")]
    return nll.double().numpy(), notes
