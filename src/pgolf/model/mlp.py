"""Feed-forward blocks: relu^2 (baseline), LeakyReLU(slope)^2 (#1573, #1536), SiLU-gated (optional extra)."""

from __future__ import annotations

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

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.kind == "relu2":          # relu(u)^2
            h = torch.relu(h).square()
        elif self.kind == "leaky_relu2":  # leaky_relu(u, slope)^2
            h = F.leaky_relu(h, self.slope).square()
        else:                             # silu(gate x) * (up x)
            h = F.silu(self.gate(x)) * h
        return self.proj(h)
