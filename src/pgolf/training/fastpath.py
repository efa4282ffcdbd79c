"""Fast path vs fallback: run the chosen kernels and their plain-PyTorch references on the same batch.

The fast paths (SDPA/flex/FlashAttention-3 attention, the fused soft-capped cross-entropy, torch.compile, the
training kernels of train.fused_mlp / train.fused_ce) must compute the same function as the reference the CPU
tests exercise. `check_fast_paths` and `check_training_kernels` measure the max difference; the trainer runs
them at start-up when `train.check_fast_paths` is on (debug mode) and stops if it exceeds the tolerance of the
compute dtype; benchmarks/gpu.py reports the same numbers.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from ..model.precision import autocast_for
from .kernels import attach_training_kernels

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


def check_training_kernels(model: nn.Module, ids: torch.Tensor, kernels: dict[str, Callable],
                           dtype: str = "auto") -> dict[str, Any]:
    """Training-mode loss and every gradient with `kernels` attached against the same model without them (whose
    loss is the chunked PyTorch soft-capped CE). Copies run, so the caller's model and gradients stay as they were.
    """
    results = []
    for attached in ({}, kernels):
        probe = copy.deepcopy(model).train()
        probe.fused_loss = True
        attach_training_kernels(probe, attached)
        with autocast_for(ids.device, dtype):
            loss = probe(ids[:, :-1], ids[:, 1:]).float()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.float() for n, p in probe.named_parameters() if p.grad is not None}))
    (ref_loss, ref_grads), (loss, grads) = results
    worst, worst_name = 0.0, ""
    for name, g_ref in ref_grads.items():
        err = float((grads[name] - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-12))
        if err > worst:
            worst, worst_name = err, name
    return {"kernels": sorted(kernels), "kernel_loss_rel_err": float((loss - ref_loss).abs() / ref_loss.abs()),
            "kernel_grad_max_rel_err": worst, "kernel_grad_worst_param": worst_name}


def assert_fast_paths(report: dict[str, Any], dtype_name: str) -> None:
    tol = TOLERANCE[dtype_name]
    errors = [v for k, v in report.items() if k.endswith("rel_err") or k == "loss_abs_err"]  # kernel_* too
    worst = max(errors)
    if not all(math.isfinite(v) for v in errors) or worst > tol:  # NaN compares False: it must fail, not pass
        raise FastPathMismatch(f"fast path disagrees with the reference: {report} (tolerance {tol} for {dtype_name})")
