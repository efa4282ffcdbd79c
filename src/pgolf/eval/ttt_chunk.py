"""Legal score-first full-model TTT over chunks of the validation stream (TECHNIQUES.md §10.3, PR #461 -> #549).

Targets are cut into C chunks of `eval.ttt_chunk_tokens`; each evaluation window (sliding, or plain when the
stride is 0) belongs to the chunk of its first scored target. For chunk c: score all its windows with the
current weights (no grad), then, unless c is the last chunk, train on the chunk's tokens — which are all scored
by then — for `eval.ttt_epochs` epochs of non-overlapping `eval.context_len` sequences with SGD(momentum) at
lr_c = lr0 * (1 + cos(pi c / (C - 1))) / 2. Every target is scored before any update that has seen it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import EvalConfig
from .ranks import model_device
from .deadline import Deadline
from .forward import use_compile
from .ttt_train import cosine_lr, train_on_sequences, trainable_parameters
from .windows import eval_windows, n_chunks, score_distributed, sequences


def chunk_ttt_nll(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline,
                  bos_id: int = 1) -> tuple[np.ndarray, list[str]]:
    """Score-first chunked TTT on `model` (which it trains: pass a copy). Returns per-target NLL and notes."""
    if cfg.ttt_chunk_tokens <= 0:
        raise ValueError(f"eval.ttt_chunk_tokens must be positive, got {cfg.ttt_chunk_tokens}")
    n_targets = tokens.size - 1
    windows = eval_windows(tokens, cfg.context_len, cfg.sliding_stride, cfg.doc_boundaries, bos_id, cfg.plain_windows)
    chunk_of = windows.score // cfg.ttt_chunk_tokens
    total = n_chunks(n_targets, cfg.ttt_chunk_tokens)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    params = trainable_parameters(model, cfg.ttt_freeze_blocks)
    optimizer = torch.optim.SGD(params, lr=cfg.ttt_lr, momentum=cfg.ttt_momentum)
    compiled = use_compile(cfg, model_device(model))
    bounds = np.searchsorted(chunk_of, np.arange(total + 1))  # windows of chunk c: [bounds[c], bounds[c+1])
    scored, losses = [], []
    for c in range(total):
        scored.append(score_distributed(model, stream, windows[bounds[c] : bounds[c + 1]], cfg.batch_seqs,
                                        deadline, f"chunk TTT scoring (chunk {c + 1}/{total})", compiled))
        if c == total - 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.ttt_lr, c, total)
        first, last = c * cfg.ttt_chunk_tokens, min((c + 1) * cfg.ttt_chunk_tokens, n_targets)
        spans = sequences(first, last, cfg.context_len)
        model.eval()
        for _ in range(cfg.ttt_epochs):
            losses.append(train_on_sequences(model, stream, spans, cfg.ttt_batch_seqs, params, optimizer,
                                             cfg.ttt_grad_clip, deadline, f"chunk TTT training (chunk {c + 1}/{total})",
                                             compiled))
    for p in model.parameters():
        p.requires_grad_(False)
    nll = torch.cat(scored).double().numpy()
    notes = [f"chunk TTT: {total} chunks of {cfg.ttt_chunk_tokens} targets, {len(windows):,} windows, "
             f"SGD lr {cfg.ttt_lr:g} (cosine over chunks) momentum {cfg.ttt_momentum:g}, {cfg.ttt_epochs} epochs, "
             f"{cfg.ttt_batch_seqs} seqs/step, first {cfg.ttt_freeze_blocks} blocks frozen"
             + (f", mean train loss {np.mean(losses):.4f}" if losses else "")]
    return nll, notes
