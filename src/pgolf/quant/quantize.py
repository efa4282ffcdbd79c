"""Per-row symmetric integer quantization and the per-class export policy.

For a 2-D weight W (rows = output features) and b bits, clip_max = 2^(b-1) - 1:
    s_r = fp16(c_r / clip_max)  (floored at 1/clip_max when quant.scale_floor, as the baseline does)
    q   = clamp(round(W_r / s_r), -clip_max, clip_max)        W_hat = q * s_r
The clip value c_r is chosen by quant.method: 'percentile' (the baseline's 99.99984th percentile of |W_r|) or
'rowmax' (max |W_r|), or by the rules of methods.py. Quantization uses the stored fp16 scale, so dequantization
reproduces it exactly. The per-class policy (bits, float passthrough, which scale rule) lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import QuantConfig


@dataclass(frozen=True)
class Plan:
    """How one tensor is stored: as floats ('float16'/'float32'/'raw' for non-floats) or as b-bit codes."""
    encoding: str
    bits: int = 0


def clip_max(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def bits_for_class(qclass: str, cfg: QuantConfig) -> int:
    """Bits of a tensor class; 0 means float16 passthrough."""
    if qclass == "attn":
        return cfg.attn_bits or cfg.matrix_bits
    if qclass == "mlp":
        return cfg.mlp_bits or cfg.matrix_bits
    if qclass == "embed":
        return cfg.embed_bits
    if qclass == "table":
        return cfg.table_bits
    if qclass in ("other", "lora"):
        return cfg.other_bits
    return 0


TABLE_CLASSES = ("embed", "table")


def method_for(qclass: str, cfg: QuantConfig) -> str:
    """quant.embed_method for embeddings and tables, 'rowmax' for gates (QuantGate), quant.method otherwise."""
    if qclass == "gate":
        return "rowmax"
    return cfg.embed_method if qclass in TABLE_CLASSES else cfg.method


def scale_floor_for(qclass: str, cfg: QuantConfig) -> bool:
    if qclass == "gate":  # QuantGate: s_h = fp16(max_j |W_hj| / clip_max), never floored
        return False
    return cfg.embed_scale_floor if qclass in TABLE_CLASSES else cfg.scale_floor


def sdclip_k_for(qclass: str, cfg: QuantConfig) -> float:
    """SDClip k of a class (#1586): embed/table, attn and mlp have their own k; 0 falls back to quant.sdclip_k."""
    if qclass in TABLE_CLASSES:
        return cfg.sdclip_k_embed
    if qclass == "attn" and cfg.sdclip_k_attn:
        return cfg.sdclip_k_attn
    if qclass == "mlp" and cfg.sdclip_k_mlp:
        return cfg.sdclip_k_mlp
    return cfg.sdclip_k


def plan_tensor(tensor: Tensor, qclass: str, cfg: QuantConfig, name: str = "") -> Plan:
    if not tensor.is_floating_point():
        return Plan("raw")
    if cfg.keep_float != [] and name in cfg.keep_float:  # the switch first: it folds
        return Plan("float16")
    if qclass == "gate":  # before the passthrough-size test: gates are small (QuantGate, #1736)
        return Plan("int", cfg.gate_bits) if cfg.gate_bits else Plan(cfg.control_dtype)
    if qclass == "control":
        return Plan(cfg.control_dtype)
    if tensor.numel() <= cfg.passthrough_max_numel:
        return Plan("float16")
    bits = bits_for_class(qclass, cfg)
    return Plan("int", bits) if bits else Plan("float16")


def as_rows(tensor: Tensor) -> Tensor:
    """2-D view: matrices as they are, anything else as one row."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.ndim >= 2 else tensor.reshape(1, -1)


TOPK_QUANTILE_MAX_K = 64  # beyond this many top values a full sort (torch.quantile) is as cheap


def row_quantile(a: Tensor, q: float) -> Tensor:
    """torch.quantile(a, q, dim=1) (linear interpolation), bit for bit, from each row's top k values when the
    quantile lies among them: with r = q (n - 1) in a's dtype (as torch.quantile computes it), the answer is
    lerp(sorted[floor r], sorted[ceil r], r - floor r), and those are the (n - floor r) largest values, so a
    top-k (k = 2 for the records' 99.99984th percentile) replaces sorting every row."""
    n = a.shape[1]
    rank = torch.tensor(q, dtype=a.dtype, device=a.device) * (n - 1)
    below, above = int(rank.long()), int(rank.ceil().long())
    k = n - below
    if n == 0 or k > TOPK_QUANTILE_MAX_K or not a.is_floating_point():
        return torch.quantile(a, q, dim=1)
    top = torch.topk(a, k, dim=1, largest=True, sorted=True).values   # top[:, j] = sorted[n - 1 - j]
    return torch.lerp(top[:, n - 1 - below], top[:, n - 1 - above], rank - rank.long())


def row_clip(w: Tensor, method: str, percentile: float) -> Tensor:
    """Per-row clip value c_r of |W_r|."""
    a = w.abs()
    if method == "rowmax":
        return a.amax(dim=1)
    if method == "percentile":
        return row_quantile(a, percentile / 100.0)
    raise ValueError(f"row_clip: method {method!r} is not a plain clip rule")


def scales_from_clip(clip: Tensor, bits: int, floor: bool) -> Tensor:
    """fp16 per-row scales s_r = c_r / clip_max (optionally floored at 1/clip_max); never zero."""
    qmax = clip_max(bits)
    scale = clip / qmax
    scale = scale.clamp_min(1.0 / qmax) if floor else scale.clamp_min(1e-8)
    scale16 = scale.to(torch.float16)
    return torch.where(scale16 == 0, torch.full_like(scale16, 2.0**-24), scale16)


def quantize_with_scales(w: Tensor, scales: Tensor, bits: int) -> Tensor:
    """int8 codes q = clamp(round(W / s), -clip_max, clip_max) with the stored (fp16) scales."""
    qmax = clip_max(bits)
    return torch.clamp(torch.round(w / scales.float()[:, None]), -qmax, qmax).to(torch.int8)


def dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """W_hat = q * s_r, fp32, for 2-D codes with one row per scale (checked first: 1-D codes of K with K
    scales would otherwise broadcast to K x K)."""
    if codes.ndim != 2 or scales.ndim != 1 or codes.shape[0] != scales.shape[0]:
        raise ValueError(f"dequantize: codes of shape {tuple(codes.shape)} need one row per scale, "
                         f"got scales of shape {tuple(scales.shape)}")
    return codes.float() * scales.float()[:, None]
