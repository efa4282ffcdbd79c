"""Evaluation modes beyond plain windows: sliding windows, document-cut windows, test-time training, a time cap.

| eval.ttt | what scores the targets                                              | legal |
| none     | sliding windows (eval.sliding_stride > 0) or plain windows (0)       | yes   |
| chunk    | score-first chunked full-model SGD TTT over those windows (§10.3)    | yes   |
| lora     | score-first per-document LoRA TTT, context clipped to the document   | yes   |
| pre      | #595: AdamW epochs over the whole split, THEN sliding/plain scoring  | NO    |

Test-time training always runs on a deep copy of the model: the caller's model is never changed.
"""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from ..config import EvalConfig, check_eval_config
from ..config.optional import require_module
from .deadline import Deadline
from .result import EvalResult, summarize
from .sliding import sliding_nll


def mode_name(cfg: EvalConfig) -> str:
    """'plain', 'sliding', 'ttt_chunk', 'ttt_lora', 'ttt_pre+sliding' or 'ttt_pre+plain'."""
    windows = "sliding" if cfg.sliding_stride > 0 else "plain"
    if cfg.ttt == "none":
        return windows
    return f"ttt_pre+{windows}" if cfg.ttt == "pre" else f"ttt_{cfg.ttt}"


def evaluate_mode(model: nn.Module, tokens: np.ndarray, token_bytes: np.ndarray, cfg: EvalConfig) -> EvalResult:
    """Score every target of `tokens` once under the mode `cfg` asks for; raises past eval.max_seconds."""
    deadline = Deadline(cfg.max_seconds)
    check_eval_config(cfg, cfg.context_len, len(getattr(model, "blocks", [])) or None)
    bos_id = int(getattr(model, "bos_id", 1))
    tokens = np.asarray(tokens)
    notes: list[str] = []
    if cfg.ttt == "none":
        nll, notes = sliding_nll(model, tokens, cfg, deadline, bos_id)
    else:
        work = copy.deepcopy(model)  # TTT changes weights (or hooks modules): never the caller's model
        if cfg.ttt == "chunk":
            nll, notes = require_module("pgolf.eval.ttt_chunk", cfg).chunk_ttt_nll(work, tokens, cfg, deadline, bos_id)
        elif cfg.ttt == "lora":
            nll, notes = require_module("pgolf.eval.ttt_lora", cfg).lora_ttt_nll(work, tokens, cfg, deadline, bos_id)
        elif cfg.ttt == "pre":
            notes = require_module("pgolf.eval.ttt_pre", cfg).pre_ttt(work, tokens, cfg, deadline)
            nll, scoring = sliding_nll(work, tokens, cfg, deadline, bos_id)
            notes += scoring
        else:
            raise ValueError(f"eval.ttt must be one of none, chunk, lora, pre; got {cfg.ttt!r}")
        del work
    deadline.check("the end of evaluation")  # a score that took longer than the cap is not reported either
    if nll.size != token_bytes.size:
        raise AssertionError(f"{mode_name(cfg)} scored {nll.size} targets, the stream has {token_bytes.size}")
    loss, bpb = summarize(nll, token_bytes)
    seconds = deadline.elapsed
    notes.append(f"{seconds:.1f} s, {nll.size / max(seconds, 1e-9):,.0f} targets/s")
    return EvalResult(loss, bpb, nll, token_bytes, seconds, legal=cfg.ttt != "pre", mode=mode_name(cfg), notes=notes)
