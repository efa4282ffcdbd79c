"""LQER (#1797): a rank-r correction of the quantization error, stored as small integer factors.

For an int-encoded weight W with stored approximation W_hat = q * s and error E = W - W_hat:
    E ~ A B,  A = U[:, :r] diag(S[:r])  (rows x r),  B = Vh[:r, :]  (r x cols)      (truncated SVD of E)
and the loaded weight is W_hat + A_q B_q. Only the quant.lqer_top_k tensors with the largest ||E||_F get one.
Packing (quant.lqer_asym, when r * cols is a multiple of quant.lqer_group):
    A: int2, one fp16 scale  s_A = fp16(max|A| / 1.5),   q_A = clamp(round(A / s_A), -2, 1)
    B: int4 per group of lqer_group consecutive elements of B flattened row-major,
       s_g = fp16(max|B_g| / 7.5),  q_B = clamp(round(B_g / s_g), -8, 7)
otherwise symmetric: per-row scales max|row| / (2^(b-1) - 1), codes in +-(2^(b-1) - 1), b = quant.lqer_factor_bits.
Codes are one per byte (int8). Quantization uses the stored fp16 scales, so dequantization is exact.
A pick whose packed correction does not lower ||E||_F is dropped (pgolf's rule; #1797 keeps every pick).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import QuantConfig
from .container import PartSpec

KINDS = ("lqer_a_codes", "lqer_a_scales", "lqer_b_codes", "lqer_b_scales")
_A_MAX, _A_RANGE = 1.5, (-2, 1)   # int2, asymmetric clamp
_B_MAX, _B_RANGE = 7.5, (-8, 7)   # int4


def rank_for(rows: int, cols: int, cfg: QuantConfig) -> int:
    return min(cfg.lqer_rank, rows, cols)


def is_asym(rows: int, cols: int, cfg: QuantConfig) -> bool:
    return cfg.lqer_asym and (rank_for(rows, cols, cfg) * cols) % cfg.lqer_group == 0


def part_specs(name: str, rows: int, cols: int, cfg: QuantConfig) -> tuple[PartSpec, ...]:
    """The four parts of a tensor's correction, as the config implies them."""
    r = rank_for(rows, cols, cfg)
    asym = is_asym(rows, cols, cfg)
    return (PartSpec(name, "lqer_a_codes", "int8", (rows, r)),
            PartSpec(name, "lqer_a_scales", "float16", (1,) if asym else (rows,)),
            PartSpec(name, "lqer_b_codes", "int8", (r, cols)),
            PartSpec(name, "lqer_b_scales", "float16", (r * cols // cfg.lqer_group,) if asym else (r,)))


def factor(error: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(A, B) with A B the best rank-`rank` approximation of `error` (fp32): A = U S, B = Vh."""
    u, s, vh = torch.linalg.svd(error.float(), full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank, :]


def _fp16_scale(x: Tensor) -> Tensor:
    return x.clamp_min(1e-10).to(torch.float16)


def _codes(x: Tensor, scale: Tensor, low: int, high: int) -> Tensor:
    return torch.clamp(torch.round(x / scale.float()), low, high).to(torch.int8)


def pack(a: Tensor, b: Tensor, cfg: QuantConfig) -> dict[str, np.ndarray]:
    """{kind: array} of the packed factors (shapes as `part_specs`)."""
    rows, r = a.shape
    cols = b.shape[1]
    if is_asym(rows, cols, cfg):
        s_a = _fp16_scale(a.abs().max() / _A_MAX).reshape(1)
        q_a = _codes(a, s_a, *_A_RANGE)
        groups = b.reshape(-1, cfg.lqer_group)
        s_b = _fp16_scale(groups.abs().amax(dim=1) / _B_MAX)
        q_b = _codes(groups, s_b[:, None], *_B_RANGE).reshape(r, cols)
    else:
        qmax = 2 ** (cfg.lqer_factor_bits - 1) - 1
        s_a = _fp16_scale(a.abs().amax(dim=1) / qmax)
        q_a = _codes(a, s_a[:, None], -qmax, qmax)
        s_b = _fp16_scale(b.abs().amax(dim=1) / qmax)
        q_b = _codes(b, s_b[:, None], -qmax, qmax)
    return {"lqer_a_codes": q_a.numpy(), "lqer_a_scales": s_a.numpy(), "lqer_b_codes": q_b.numpy(),
            "lqer_b_scales": s_b.numpy()}


def correction(parts: dict[str, np.ndarray], cfg: QuantConfig) -> Tensor:
    """A_q B_q (rows x cols, fp32) from the stored parts."""
    q_a = torch.from_numpy(parts["lqer_a_codes"].astype(np.float32))
    q_b = torch.from_numpy(parts["lqer_b_codes"].astype(np.float32))
    s_a = torch.from_numpy(parts["lqer_a_scales"].astype(np.float32))
    s_b = torch.from_numpy(parts["lqer_b_scales"].astype(np.float32))
    rows, r = q_a.shape
    cols = q_b.shape[1]
    if is_asym(rows, cols, cfg):
        a = q_a * s_a
        b = (q_b.reshape(-1, cfg.lqer_group) * s_b[:, None]).reshape(r, cols)
    else:
        a = q_a * s_a[:, None]
        b = q_b * s_b[:, None]
    return a @ b


def top_k(error_norms: list[float], k: int) -> list[int]:
    """Indices of the k largest norms (ties: the earlier index first), in ascending index order."""
    order = sorted(range(len(error_norms)), key=lambda i: (-error_norms[i], i))
    return sorted(order[:k])


def corrections_for(errors: dict[int, Tensor], cfg: QuantConfig) -> dict[int, dict[str, np.ndarray]]:
    """{tensor index: packed factors} for the top-k errors by ||E||_F whose correction lowers that norm."""
    indices = list(errors)
    picks = top_k([float(errors[i].norm()) for i in indices], cfg.lqer_top_k)
    out = {}
    for pick in picks:
        i = indices[pick]
        error = errors[i].float()
        rows, cols = error.shape
        parts = pack(*factor(error, rank_for(rows, cols, cfg)), cfg)
        if float((error - correction(parts, cfg)).norm()) < float(error.norm()):
            out[i] = parts
    return out
