"""Scale rules beyond a fixed percentile: clip search (GPTQ-lite), SDClip, and full GPTQ.

`quantize_rows` applies the rule quant.method (or quant.embed_method) names: percentile and rowmax (quantize.py),
or one of these. All return (int8 codes, fp16 per-row scales) with W_hat = q * s_r, q in [-clip_max, clip_max]:
- clip_search (GPTQ-lite, TECHNIQUES.md §9.5): for each candidate percentile p, c_r = quantile_p(|W_r|) and
  s_r = fp16(c_r / clip_max) (floored as the percentile rule is); keep the p with the lowest whole-tensor
  MSE mean((W - q s)^2) — one p per tensor — or, with quant.clip_search_scope = "row", the best p per row.
- sdclip (§9.6 step 3): s_r = fp16(k * std(W_r) / clip_max), std unbiased; no floor.
- gptq (§9.6): SDClip scales fixed first, then codes chosen column by column with OBS error feedback
  (see gptq.gptq_quantize). A tensor without a Hessian (lookup tables, LoRA factors) is quantized with
  H = I, for which GPTQ reduces exactly to SDClip round-to-nearest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import QuantConfig
from ..config.optional import require_module
from .quantize import (clip_max, dequantize, method_for, quantize_with_scales, row_clip, scale_floor_for,
                       scales_from_clip, sdclip_k_for)


def sdclip_scales(w: Tensor, bits: int, k: float) -> Tensor:
    """fp16 s_r = k * std(W_r) / clip_max (unbiased row std); a constant row gets the smallest fp16 scale."""
    std = torch.nan_to_num(w.float().std(dim=1), nan=0.0)
    return scales_from_clip(k * std, bits, floor=False)


def hessian_row_importance(w: Tensor, hessian: Tensor, damp: float) -> Tensor:
    """#1412's r_i (mean 1): d = max(diag(H) + damp * mean(diag H), 1e-8) with dead inputs (H_jj = 0) set to 1,
    c_j = d_j / mean(d), r_i = mean_j |W_ij| c_j, then r / mean(r)."""
    d = hessian.diagonal().double().clone()
    d[d == 0] = 1.0
    d = (d + damp * d.mean()).clamp_min(1e-8)
    r = (w.double().abs() * (d / d.mean())[None, :]).mean(dim=1)
    return (r / r.mean()).to(w.device)


def hessian_clip_scales(w: Tensor, bits: int, k: float, hessian: Tensor, lam: float, damp: float) -> Tensor:
    """Hessian-aware SDClip (#1412): s_i = fp16(k * std(W_i) * (1 + lam (r_i - 1)) / clip_max)."""
    std = torch.nan_to_num(w.float().std(dim=1), nan=0.0)
    factor = 1.0 + lam * (hessian_row_importance(w, hessian.to(w.device), damp) - 1.0)
    return scales_from_clip((k * std.double() * factor).float(), bits, floor=False)


def clip_search(w: Tensor, bits: int, percentiles: list[float], floor: bool,
                per_row: bool = False) -> tuple[Tensor, Tensor]:
    """GPTQ-lite: the candidate clip percentile with the lowest squared error (per tensor, or per row)."""
    w = w.float()
    levels = torch.tensor([p / 100.0 for p in percentiles], dtype=torch.float32, device=w.device)
    clips = torch.quantile(w.abs(), levels, dim=1)                                    # (P, rows); 1.0 = row max
    scales = torch.stack([scales_from_clip(c, bits, floor) for c in clips])           # (P, rows) fp16
    codes = torch.stack([quantize_with_scales(w, s, bits) for s in scales])           # (P, rows, cols) int8
    row_sq_err = torch.stack([(dequantize(q, s) - w).square().sum(dim=1) for q, s in zip(codes, scales)])  # (P, rows)
    rows = torch.arange(w.shape[0], device=w.device)
    if per_row:
        best = row_sq_err.argmin(dim=0)                                               # (rows,)
    else:  # whole-tensor MSE; the first candidate wins ties, as a sequential search keeps the first best
        best = row_sq_err.sum(dim=1).argmin().expand(w.shape[0])
    return codes[best, rows], scales[best, rows]


def round_to_nearest_sdclip(w: Tensor, bits: int, k: float) -> tuple[Tensor, Tensor]:
    scales = sdclip_scales(w, bits, k)
    return quantize_with_scales(w.float(), scales, bits), scales


def quantize_rows(w: Tensor, bits: int, cfg: QuantConfig, qclass: str = "attn",
                  hessian: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(int8 codes, fp16 scales) of a 2-D fp32 tensor under quant.method; `hessian` feeds GPTQ."""
    w = w.float()
    method = method_for(qclass, cfg)  # quant.method, quant.embed_method or 'rowmax' (gates)
    # each rule's branch names the config values that select it, first: a train_gpt.py folds the others away
    if method in ("percentile", "rowmax"):
        scales = scales_from_clip(row_clip(w, method, cfg.clip_percentile), bits, scale_floor_for(qclass, cfg))
        return quantize_with_scales(w, scales, bits), scales
    if "clip_search" in (cfg.method, cfg.embed_method) and method == "clip_search":
        return clip_search(w, bits, cfg.clip_search_percentiles, scale_floor_for(qclass, cfg),
                           per_row=cfg.clip_search_scope == "row")
    if "sdclip" in (cfg.method, cfg.embed_method) and method == "sdclip":
        return round_to_nearest_sdclip(w, bits, sdclip_k_for(qclass, cfg))
    if "gptq" in (cfg.method, cfg.embed_method) and method == "gptq":
        if hessian is None:  # GPTQ with H = I is round-to-nearest on the same grid
            return round_to_nearest_sdclip(w, bits, sdclip_k_for(qclass, cfg))
        if cfg.hessian_clip_lambda:
            scales = hessian_clip_scales(w, bits, sdclip_k_for(qclass, cfg), hessian, cfg.hessian_clip_lambda, cfg.gptq_damp)
        else:
            scales = sdclip_scales(w, bits, sdclip_k_for(qclass, cfg))
        device = hessian.device  # the sweep runs where the Hessian was collected (the GPU after GPU training)
        gptq = require_module("pgolf.quant.gptq", cfg)
        codes = gptq.gptq_quantize(w.to(device), hessian, scales.to(device), bits, cfg.gptq_damp, cfg.gptq_block)
        return codes.to(w.device), scales
    raise ValueError(f"quant method {method!r} for a tensor of class {qclass!r} is unknown "
                     f"(expected percentile, rowmax, clip_search, sdclip or gptq)")


def fake_quantize_grid(w: Tensor, bits: int, cfg: QuantConfig, qclass: str) -> Tensor:
    """W_hat on the export grid, for QAT: exactly the exported values for every method except gptq, where
    the SDClip grid GPTQ will use is applied by rounding to nearest (error feedback needs the Hessian)."""
    if method_for(qclass, cfg) == "gptq":
        codes, scales = round_to_nearest_sdclip(w, bits, sdclip_k_for(qclass, cfg))
    else:
        codes, scales = quantize_rows(w, bits, cfg, qclass)
    return dequantize(codes, scales)


def code_entropy_bits(codes: Tensor) -> float:
    """Empirical order-0 entropy of integer codes, bits per code: H = -sum p_i log2 p_i."""
    values = codes.reshape(-1).to(torch.int64)
    counts = torch.bincount(values - values.min()).double()
    p = counts[counts > 0] / values.numel()
    return float(-(p * p.log2()).sum())


def reconstruction_mse(w: Tensor, codes: Tensor, scales: Tensor) -> float:
    return float((dequantize(codes, scales) - w.float()).square().mean())


__all__ = ["clip_max", "clip_search", "code_entropy_bits", "fake_quantize_grid", "method_for", "quantize_rows",
           "reconstruction_mse", "round_to_nearest_sdclip", "sdclip_scales"]
