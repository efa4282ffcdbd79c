"""Compute precision: bf16 autocast over fp32 master weights where the device and train.dtype ask for it."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast_for(device: torch.device, dtype: str = "auto"):
    """bf16 autocast for dtype 'bfloat16', or 'auto' on CUDA; otherwise a no-op context (fp32)."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's ops run in: autocast's where autocast is on for x's device, else x's own (the meta device,
    on which `pgolf plan` traces a model, has no autocast to ask)."""
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
