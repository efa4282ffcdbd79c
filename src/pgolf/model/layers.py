"""Small building blocks shared by the model: norms, linear layers, RoPE, and parameter roles.

Every parameter declares two things through `tag`:
- its optimizer role: "matrix" (Muon family), "embed", "head", "scalar", "proj" (small projections,
  Muon or the scalar Adam group by config), "lora" — so optimizers never need name patterns;
- its quantization class: "attn", "mlp", "embed", "table", "other", "lora", "control", "gate" (attention-gate
  weights: stored like control tensors unless a gate quantization targets them) — so export policy is per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROLES = ("matrix", "embed", "head", "scalar", "proj", "lora")
QUANT_CLASSES = ("attn", "mlp", "embed", "table", "other", "lora", "control", "gate")


def tag(param: nn.Parameter, role: str, qclass: str) -> nn.Parameter:
    """Attach the optimizer role and quantization class to a parameter."""
    assert role in ROLES and qclass in QUANT_CLASSES, (role, qclass)
    param.pgolf_role = role
    param.pgolf_qclass = qclass
    return param


def role_of(param: nn.Parameter) -> str:
    return getattr(param, "pgolf_role")


def qclass_of(param: nn.Parameter) -> str:
    return getattr(param, "pgolf_qclass")


def rms_norm(x: Tensor) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, no learned weight."""
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Module):
    """Bias-free linear layer y = x W^T whose fp32 weight is cast to the input dtype (bf16 under autocast)."""

    def __init__(self, in_features: int, out_features: int, role: str = "matrix", qclass: str = "other",
                 zero_init: bool = False):
        super().__init__()
        self.weight = tag(nn.Parameter(torch.empty(out_features, in_features)), role, qclass)
        self.zero_init = zero_init
        self.fake_quant: nn.Module | None = None  # QAT: set by quant.qat.attach_qat
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.zero_init:
            nn.init.zeros_(self.weight)
        else:  # nn.Linear's default
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def effective_weight(self) -> Tensor:
        """The weight the layer computes with: W, or its fake-quantized W_hat under QAT."""
        return self.weight if self.fake_quant is None else self.fake_quant(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight().to(x.dtype))


def scalar_param(value: Tensor, qclass: str = "control") -> nn.Parameter:
    """A small fp32 control parameter (gain, scale, mix, gate) trained by the scalar Adam group."""
    return tag(nn.Parameter(value.float()), "scalar", qclass)


class Rotary(nn.Module):
    """cos/sin tables of RoPE over the first `rotary_dims` dims of each head (the rest passes through).

    theta_j = pos * base^(-2j/r), j < r/2; x_rot = [x1 cos + x2 sin, -x1 sin + x2 cos].
    With `ntk_train_len` > 0 and a longer sequence T, base' = base * (T/ntk_train_len)^(r/(r-2)).
    The tables are computed inside the forward (T x r/2 values, negligible work) rather than cached: a cache
    written during a compiled call changes what the graph's guards see and forces a second compile.
    """

    def __init__(self, head_dim: int, rotary_dims: int, base: float, ntk_train_len: int = 0):
        super().__init__()
        self.rotary_dims = rotary_dims or head_dim
        self.base = base
        self.ntk_train_len = ntk_train_len

    def tables(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        r = self.rotary_dims
        base = self.base
        if self.ntk_train_len and seq_len > self.ntk_train_len:
            base = base * (seq_len / self.ntk_train_len) ** (r / (r - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float32, device=device) / r))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        return freqs.cos(), freqs.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, rotary_dims: int) -> Tensor:
    """Half-split RoPE on the first `rotary_dims` dims of x (B, T, H, hd): [x1 c + x2 s, -x1 s + x2 c]."""
    half = rotary_dims // 2
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rotary_dims], x[..., rotary_dims:]
    rotated = torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.size(-1) else rotated
