"""Weight averaging: EMA and SWA, and the explicit rule for which weights are exported.

EMA: shadow <- d * shadow + (1 - d) * theta after every optimizer step (fp32 shadow, starts at the init).
SWA: uniform fp32 mean of snapshots taken every N steps while the LR multiplier is below a threshold.
Rules (train.averaging): none = live weights; ema; swa (live if no snapshot); swa_else_ema = SWA when it holds
more than one snapshot, else EMA (#1573's precedence).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import TrainConfig


class WeightAverager:
    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.mode = cfg.averaging
        self.decay = cfg.ema_decay
        self.swa_every = cfg.swa_every
        self.swa_start_lr = cfg.swa_start_lr
        params = {n: p.detach() for n, p in model.named_parameters()}
        self.ema = ({n: p.float().clone() for n, p in params.items()}
                    if self.mode in ("ema", "swa_else_ema") else None)
        self.swa_sum: dict[str, Tensor] | None = None
        self.swa_count = 0

    @property
    def uses_swa(self) -> bool:
        return self.mode in ("swa", "swa_else_ema")

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, lr_multiplier: float) -> None:
        """Call after the optimizer step that completed `step` steps."""
        if self.ema is not None:
            for n, p in model.named_parameters():
                self.ema[n].lerp_(p.detach().float(), 1.0 - self.decay)
        if self.uses_swa and lr_multiplier < self.swa_start_lr and step % self.swa_every == 0:
            if self.swa_sum is None:
                self.swa_sum = {n: p.detach().float().clone() for n, p in model.named_parameters()}
            else:
                for n, p in model.named_parameters():
                    self.swa_sum[n].add_(p.detach().float())
            self.swa_count += 1

    def choice(self) -> str:
        """Which weights `export_state` returns: 'live', 'ema' or 'swa'."""
        if self.mode == "ema":
            return "ema"
        if self.mode == "swa":
            return "swa" if self.swa_count > 0 else "live"
        if self.mode == "swa_else_ema":
            return "swa" if self.swa_count > 1 else "ema"
        return "live"

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> str:
        """Load the exported weights into `model` (cast to each parameter's dtype); returns the choice."""
        choice = self.choice()
        if choice == "live":
            return choice
        for n, p in model.named_parameters():
            value = self.ema[n] if choice == "ema" else self.swa_sum[n] / self.swa_count
            p.copy_(value.to(p.dtype))
        return choice

    def state_tensors(self) -> dict[str, Tensor]:
        out = {}
        if self.ema is not None:
            out.update({f"ema.{n}": t for n, t in self.ema.items()})
        if self.swa_sum is not None:
            out.update({f"swa.{n}": t for n, t in self.swa_sum.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], swa_count: int) -> None:
        if self.ema is not None:
            self.ema = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
        swa = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("swa.")}
        self.swa_sum = swa or None
        self.swa_count = swa_count
