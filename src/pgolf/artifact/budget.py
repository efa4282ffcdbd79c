"""Artifact size estimates from a config alone, before any training.

Each tensor is costed by its export plan: b-bit codes at about (b - 0.7) bits per value after compression with
row-max/percentile scales (measured: int8 7.3, int6 5.25, int5 4.2 bits; TECHNIQUES.md Appendix A), one bit
less with a clip search, and for k-sigma scales (SDClip, GPTQ) the entropy of a Gaussian quantized with step
k*sigma/clip_max: log2(clip_max / k) + 2.05 bits; plus fp16 row scales, passthrough floats at 2 or 4 bytes,
and the counted code. A guide for planning, not a measurement: the real size is measured on the bytes written.
"""

from __future__ import annotations

import math

import torch

from ..config import Config, ConfigError
from ..model.gpt import GPT
from ..model.layers import qclass_of
from ..quant.quantize import as_rows, clip_max, method_for, plan_tensor, sdclip_k_for
from .sizes import LIMIT_BYTES, runtime_code_bytes

FAR_OVER_FACTOR = 1.5  # configs estimated beyond 1.5x the limit are rejected unless quant.allow_over_budget


def bits_per_code(bits: int, qclass: str, cfg: Config) -> float:
    """Expected compressed bits of one b-bit code under the tensor's scale rule."""
    method = method_for(qclass, cfg.quant)
    if method in ("sdclip", "gptq"):
        k = sdclip_k_for(qclass, cfg.quant)
        return min(bits - 0.7, math.log2(clip_max(bits) / k) + 2.05)
    return bits - (1.0 if method == "clip_search" else 0.7)


def estimate_artifact_bytes(cfg: Config) -> int:
    """Estimated code + model bytes of `cfg`'s artifact (module docstring: how each tensor is costed)."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    total = 0.0
    for name, p in model.named_parameters():
        qclass = qclass_of(p)
        plan = plan_tensor(p, qclass, cfg.quant, name)
        if plan.encoding == "int":
            total += p.numel() * bits_per_code(plan.bits, qclass, cfg) / 8 + 2 * as_rows(p).shape[0]
        else:
            total += p.numel() * (4 if plan.encoding == "float32" else 2)
    return int(total) + runtime_code_bytes(cfg)


def check_budget(cfg: Config) -> None:
    """Refuse a config estimated far over the limit (unless quant.allow_over_budget): called by whoever finalizes
    a run — the trainer, the command line, the API's load_recipe / load_config, a generated train_gpt.py."""
    if cfg.quant.allow_over_budget:
        return
    estimate = estimate_artifact_bytes(cfg)
    if estimate > FAR_OVER_FACTOR * LIMIT_BYTES:
        raise ConfigError(
            f"estimated artifact of {estimate:,} bytes is far over the {LIMIT_BYTES:,}-byte limit: shrink "
            f"'model.num_layers' / 'model.model_dim' / 'model.mlp_mult' or lower 'quant.matrix_bits' "
            f"(or set quant.allow_over_budget=true to experiment anyway)")
