"""Feed-forward blocks: relu^2 (baseline), LeakyReLU(slope)^2 (#1573, #1536), SiLU-gated (optional extra).

`kernel` (set by the trainer for train.fused_mlp, pgolf.training.kernels) is a fused implementation of the same
relu^2 / leaky_relu2 function, used in training mode only; this module's eager forward is its reference.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, mlp_hidden_dim
from .layers import Linear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hidden = cfg.model_dim, mlp_hidden_dim(cfg)
        self.kind = cfg.mlp
        self.slope = cfg.leaky_slope
        self.fc = Linear(d, hidden, "matrix", "mlp")
        self.gate = Linear(d, hidden, "matrix", "mlp") if cfg.mlp == "swiglu" else None
        self.proj = Linear(hidden, d, "matrix", "mlp", zero_init=True)
        self.kernel: Callable | None = None  # fused (x, W_fc, W_proj, slope) -> out, training mode only

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel is not None and self.training and self.kind in ("relu2", "leaky_relu2"):
            slope = self.slope if self.kind == "leaky_relu2" else 0.0  # relu^2 = leaky_relu(., 0)^2
            return self.kernel(x, self.fc.effective_weight(), self.proj.effective_weight(), slope)
        h = self.fc(x)
        if self.kind == "relu2":          # relu(u)^2
            h = torch.relu(h).square()
        elif self.kind == "leaky_relu2":  # leaky_relu(u, slope)^2
            h = F.leaky_relu(h, self.slope).square()
        else:                             # silu(gate x) * (up x)
            h = F.silu(self.gate(x)) * h
        return self.proj(h)
