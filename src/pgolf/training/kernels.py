"""The training kernels a run uses (train.fused_mlp, train.fused_ce): loaded on CUDA, attached to the model.

Each kernel computes the same function as the PyTorch path it replaces and runs only while the model is in
training mode: evaluation, GPTQ calibration and test-time training (which run in eval mode) keep the PyTorch
references. On a CPU the references run (the kernels need CUDA; tests run them under Triton's interpreter).
The kernel modules import triton / liger_kernel, so they are optional modules (pgolf.config.optional): loaded,
and shipped in a train_gpt.py, only when a setting asks for them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..config.optional import optional_module



def load_training_kernels(t: TrainConfig) -> dict[str, Callable]:
    """{'mlp': fused_mlp, 'loss': softcapped_cross_entropy} for the kernels `t` switches on (none by default)."""
    kernels: dict[str, Callable] = {}
    mlp = optional_module("pgolf.model.kernels.mlp_triton", t)  # train.fused_mlp = 'triton'
    if mlp is not None:
        kernels["mlp"] = mlp.fused_mlp
    loss = optional_module("pgolf.model.kernels.ce_liger", t)   # train.fused_ce = 'liger'
    if loss is not None:
        kernels["loss"] = loss.softcapped_cross_entropy
    return kernels


def attach_training_kernels(model: nn.Module, kernels: dict[str, Callable]) -> None:
    """Set (or, with {}, clear) the model's training-mode kernels."""
    for block in model.blocks:
        block.mlp.kernel = kernels.get("mlp")
    model.loss_kernel = kernels.get("loss")


def training_kernels_for(t: TrainConfig, device: torch.device) -> dict[str, Callable]:
    """The kernels a run on `device` uses: those `t` asks for on CUDA, none elsewhere."""
    return load_training_kernels(t) if device.type == "cuda" else {}


def describe(kernels: dict[str, Callable], t: TrainConfig) -> str:
    """'mlp triton, loss liger' / 'PyTorch' for the start-up line and result.json."""
    names = [f"mlp {t.fused_mlp}" if "mlp" in kernels else "", f"loss {t.fused_ce}" if "loss" in kernels else ""]
    return ", ".join(n for n in names if n) or "PyTorch"
