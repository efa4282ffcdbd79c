"""The forward passes of evaluation and test-time training: compiled where it pays, bounded in memory.

With `eval.compile` on (auto: on CUDA) the model's hidden states come from one torch.compile'd call
(fullgraph, static shapes): callers pad every batch to a fixed (rows, width), so each evaluation compiles once
per shape instead of running the eager model. Eager (the CPU default) runs unpadded. The head and the
cross-entropy run over at most HEAD_ROWS positions at a time, so the (positions x vocab) logits are never held
in full. Padding follows the last real input of a row, so causality keeps it out of every real position: padded
or not, compiled or not, the scores are the same function (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import EvalConfig
from ..data.segments import cu_seqlens, segment_capacity
from . import audit
from .audit import target_nll

HEAD_ROWS = 8192  # positions per head + cross-entropy call: 8192 x vocab fp32 logits at most


def use_compile(cfg: EvalConfig, device: torch.device) -> bool:
    """eval.compile: on, off, or auto (on CUDA)."""
    return cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")


def _hidden(model: nn.Module, ids: Tensor, cu: Tensor | None) -> Tensor:
    return model.hidden(ids, cu)


def _loss(model: nn.Module, ids: Tensor, targets: Tensor, cu: Tensor | None) -> Tensor:
    return model(ids, targets, cu)


_COMPILED: dict[str, object] = {}


def _compile(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False)


def compiled(fn):
    """fn compiled once per process (fullgraph, static shapes); each model and shape is one cache entry.

    While eval.audit records, fn runs eagerly instead: recording reads each scored target's distribution back to
    the host, which no graph can hold (the compiled and the eager step are the same function, tested).
    """
    if audit.is_recording():
        return fn
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = _compile(fn)
    return _COMPILED[fn.__name__]


def has_hidden(model: nn.Module) -> bool:
    return hasattr(model, "hidden") and hasattr(model, "logits")


def batch_segments(model: nn.Module, ids: Tensor) -> Tensor | None:
    """Host-side cu_seqlens of a CPU batch for document-isolated attention (None otherwise)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not getattr(cfg, "doc_attention", False):
        return None
    return cu_seqlens(ids, int(getattr(model, "bos_id", 1)), segment_capacity(*ids.shape))


def pad_rows(x: Tensor, rows: int, width: int) -> Tensor:
    """x (n, t) with n <= rows, t <= width, padded with token 0 to (rows, width)."""
    if x.shape == (rows, width):
        return x
    out = x.new_zeros(rows, width)
    out[: x.size(0), : x.size(1)] = x
    return out


def hidden_states(model: nn.Module, ids: Tensor, device: torch.device, use_compiled: bool) -> Tensor:
    """model.hidden of a CPU batch on `device` (its segments built on the host), compiled or eager."""
    cu = batch_segments(model, ids)
    ids = ids.to(device, non_blocking=True)
    cu = cu.to(device, non_blocking=True) if cu is not None else None
    return (compiled(_hidden) if use_compiled else _hidden)(model, ids, cu)


def training_loss(model: nn.Module, ids: Tensor, targets: Tensor, device: torch.device, use_compiled: bool) -> Tensor:
    """The model's mean training loss on a CPU batch (TTT steps), compiled or eager."""
    cu = batch_segments(model, ids) if has_hidden(model) else None
    args = [t.to(device, non_blocking=True) if t is not None else None for t in (ids, targets, cu)]
    if not has_hidden(model):
        return model(*args[:2])
    return (compiled(_loss) if use_compiled else _loss)(model, *args)


def head_nll(model: nn.Module, h: Tensor, targets: Tensor, positions: Tensor) -> Tensor:
    """Per-position NLL (fp32) of hidden states h (N, d) against targets (N,), HEAD_ROWS positions at a time;
    `positions` are the targets' stream indices (eval.audit)."""
    parts = [target_nll(model.logits(h[i : i + HEAD_ROWS]), targets[i : i + HEAD_ROWS], positions[i : i + HEAD_ROWS])
             for i in range(0, h.size(0), HEAD_ROWS)]
    return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)


def scored_nll(model: nn.Module, inputs: Tensor, targets: Tensor, flat_index: Tensor, positions: Tensor, rows: int,
               width: int, device: torch.device, use_compiled: bool) -> Tensor:
    """NLL (fp32) at the flattened (row * width + col) positions of a CPU batch padded to (rows, width).

    `positions` are the stream indices of those targets (one per flat_index entry), for eval.audit: only the
    scored positions reach the head, so padding rows and columns are never scored nor recorded.
    """
    if positions.shape != flat_index.shape:
        raise ValueError(f"scored_nll: {positions.numel()} target positions for {flat_index.numel()} scored positions")
    x = pad_rows(inputs, rows, width)
    y = pad_rows(targets, rows, width).to(device).flatten()
    index = flat_index.to(device)
    if not has_hidden(model):  # any model that maps ids to logits (e.g. a reference implementation)
        logits = model(x.to(device)).flatten(0, 1)[index]
        return target_nll(logits, y[index], positions)
    h = hidden_states(model, x, device, use_compiled).flatten(0, 1)[index]
    return head_nll(model, h, y[index], positions)
