"""Fast path vs fallback: run the chosen kernels and their plain-PyTorch references on the same batch.

The fast paths (SDPA/flex/FlashAttention-3 attention, the fused soft-capped cross-entropy, torch.compile)
must compute the same function as the reference the CPU tests exercise. `check_fast_paths` measures the max
difference; the trainer runs it at start-up when `train.check_fast_paths` is on (debug mode) and stops if it
exceeds the tolerance of the compute dtype; benchmarks/gpu.py reports the same numbers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..model.precision import autocast_for

# bf16 carries 8 mantissa bits: outputs of a whole model agree to about 1e-2 relative, fp32 to 1e-4.
TOLERANCE = {"bfloat16": 5e-2, "float32": 2e-3}


class FastPathMismatch(RuntimeError):
    """A fast kernel disagrees with its reference beyond the tolerance of the compute dtype."""


@torch.no_grad()
def check_fast_paths(model: nn.Module, ids: torch.Tensor, dtype: str = "auto", compiled: nn.Module | None = None) -> dict[str, Any]:
    """Max |fast - reference| of logits (attention backend, compiled model) and of the loss (fused CE)."""
    device = ids.device
    reference = copy.deepcopy(model).eval()
    reference.attention_backend = "math"
    reference.fused_loss = False
    model_was_training = model.training
    model.eval()
    with autocast_for(device, dtype):
        ref_logits = reference(ids).float()
        fast_logits = model(ids).float()
        ref_loss = reference(ids[:, :-1], ids[:, 1:]).float()
        fused = copy.copy(model)
        fused.fused_loss = True
        fast_loss = fused(ids[:, :-1], ids[:, 1:]).float()
        compiled_logits = compiled(ids).float() if compiled is not None else None
    model.train(model_was_training)
    scale = ref_logits.abs().max().clamp_min(1.0)
    report = {
        "attention_backend": getattr(model, "attention_backend", "?"),
        "logits_max_abs_err": float((fast_logits - ref_logits).abs().max()),
        "logits_max_rel_err": float((fast_logits - ref_logits).abs().max() / scale),
        "loss_abs_err": float((fast_loss - ref_loss).abs()),
    }
    if compiled_logits is not None:
        report["compiled_max_rel_err"] = float((compiled_logits - ref_logits).abs().max() / scale)
    return report


def assert_fast_paths(report: dict[str, Any], dtype_name: str) -> None:
    tol = TOLERANCE[dtype_name]
    worst = max(v for k, v in report.items() if k.endswith("rel_err") or k == "loss_abs_err")
    if worst > tol:
        raise FastPathMismatch(f"fast path disagrees with the reference: {report} (tolerance {tol} for {dtype_name})")
