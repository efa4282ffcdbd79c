"""PR #595's "standard" TTT: AdamW epochs over the whole validation stream BEFORE scoring (TECHNIQUES.md §10.2).

NOT LEGAL under the challenge rules: every validation token is trained on before it is scored (violates C3).
It exists to reproduce #595; every result it produces says legal = false.

Procedure: all parameters (except the first `eval.ttt_freeze_blocks` blocks) train; the stream is cut into
non-overlapping `eval.context_len`-token sequences walked in order each epoch (no shuffling, no document
isolation), `eval.ttt_batch_seqs` sequences per step; AdamW(lr = ttt_lr, betas (ttt_momentum, 0.999), eps 1e-8,
wd 0), constant lr, global-norm clip `eval.ttt_grad_clip`, `eval.ttt_epochs` epochs. Scoring follows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import EvalConfig
from .ranks import model_device
from .deadline import Deadline
from .forward import use_compile
from .ttt_train import train_on_sequences, trainable_parameters
from .windows import sequences


def pre_ttt(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline) -> list[str]:
    """Train `model` (pass a copy) on the whole stream; returns notes. Scoring is the caller's."""
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    spans = sequences(0, tokens.size - 1, cfg.context_len)
    params = trainable_parameters(model, cfg.ttt_freeze_blocks)
    optimizer = torch.optim.AdamW(params, lr=cfg.ttt_lr, betas=(cfg.ttt_momentum, 0.999), eps=1e-8, weight_decay=0.0)
    model.eval()
    compiled = use_compile(cfg, model_device(model))
    losses = [train_on_sequences(model, stream, spans, cfg.ttt_batch_seqs, params, optimizer, cfg.ttt_grad_clip,
                                 deadline, f"pre-scoring TTT (epoch {epoch + 1}/{cfg.ttt_epochs})", compiled)
              for epoch in range(cfg.ttt_epochs)]
    for p in model.parameters():
        p.requires_grad_(False)
    first, last = (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("-", "-")
    return [f"pre-scoring TTT (NOT LEGAL: trains on validation tokens before scoring them): {cfg.ttt_epochs} epochs "
            f"x {len(spans):,} sequences of {min(cfg.context_len, tokens.size - 1)}, AdamW lr {cfg.ttt_lr:g}, "
            f"{cfg.ttt_batch_seqs} seqs/step, train loss {first} -> {last}"]
