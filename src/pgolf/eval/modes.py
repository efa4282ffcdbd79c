"""Evaluation modes beyond plain windows: sliding windows, document-cut windows, test-time training, a time cap.

| eval.ttt | what scores the targets                                                      | legal | doc-indep. |
| none     | sliding windows (eval.sliding_stride > 0) or plain windows (0)               | yes   | no         |
| chunk    | score-first chunked full-model SGD TTT over those windows (§10.3)            | yes   | no         |
| lora     | score-first per-document LoRA TTT, context clipped to the document           | yes   | yes        |
|  + eval.ttt_lora_warm_start_a: each batch row keeps its A across documents (#1767)  | yes   | no         |
|  + eval.ttt_global_phase_docs: full-model SGD on the scored prefix (#1610, #1626)   | yes   | no         |
| pre      | #595: AdamW epochs over the whole split, THEN sliding/plain scoring          | NO    | no         |

Document-independent: every document's scores are a function of its own tokens alone (the document scored alone
scores the same). Windows reach across documents or sit where the document sits in the stream; chunk, pre,
warm-start and phased TTT carry what they learned from one document into the scoring of later ones.
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
    """'plain', 'sliding', 'ttt_chunk', 'ttt_lora' (+ '+warm_a', '+phased'), 'ttt_pre+sliding' or 'ttt_pre+plain'."""
    windows = "sliding" if cfg.sliding_stride > 0 else "plain"
    if cfg.ttt == "none":
        return windows
    if cfg.ttt == "lora":
        return "ttt_lora" + ("+warm_a" if cfg.ttt_lora_warm_start_a else "") + ("+phased" if cfg.ttt_global_phase_docs else "")
    return f"ttt_pre+{windows}" if cfg.ttt == "pre" else f"ttt_{cfg.ttt}"


def document_independent(cfg: EvalConfig) -> bool:
    """True only for per-document LoRA TTT with fresh adapters and no global phases (see the table above)."""
    return cfg.ttt == "lora" and not cfg.ttt_lora_warm_start_a and not cfg.ttt_global_phase_docs


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
        elif cfg.ttt == "lora" and cfg.ttt_global_phase_docs:
            nll, notes = require_module("pgolf.eval.ttt_phased", cfg).phased_ttt_nll(work, tokens, cfg, deadline, bos_id)
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
    return EvalResult(loss, bpb, nll, token_bytes, seconds, legal=cfg.ttt != "pre", mode=mode_name(cfg), notes=notes,
                      document_independent=document_independent(cfg))
