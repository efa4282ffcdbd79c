"""Weight averaging (TECHNIQUES.md §8): EMA and SWA, and the explicit rule for which weights are exported.

EMA: fp32 shadow of every parameter (the models have no float buffers), starting at the initial weights,
     updated after every optimizer step: shadow <- d * shadow + (1 - d) * theta.
SWA: uniform mean of fp32 snapshots (sums kept in fp32: bf16 sums lose precision, §8), one after every
     `swa_every`-th step whose LR multiplier was below `swa_start_lr`; LR warm-up steps never count (#103's
     warm-up filled its SWA slots with near-initial weights — pgolf collects only in the warmdown).
Rule (train.averaging), returned by `choice()` and written to result.json / log.jsonl as `averaging`:
     none          -> live   (the weights at the end of training)
     ema           -> ema
     swa           -> swa, or live when no snapshot was taken
     swa_else_ema  -> swa when it holds more than one snapshot, else ema (#1573's precedence; its EMA is
                      tracked but thrown away once SWA has 2+ snapshots)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import TrainConfig


class WeightAverager:
    """Tracks the EMA shadow and/or SWA sums that `cfg.averaging` asks for; `apply_to` exports one of them."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.mode = cfg.averaging
        self.decay = cfg.ema_decay
        self.swa_every = max(1, cfg.swa_every)
        self.swa_start_lr = cfg.swa_start_lr
        self.warmup_steps = cfg.warmup_steps
        self.ema: dict[str, Tensor] | None = (
            {n: p.detach().float().clone() for n, p in model.named_parameters()}
            if self.mode in ("ema", "swa_else_ema") else None)
        self.swa_sum: dict[str, Tensor] | None = None
        self.swa_count = 0

    @property
    def uses_swa(self) -> bool:
        return self.mode in ("swa", "swa_else_ema")

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, lr_multiplier: float) -> None:
        """Call after the optimizer step that completed `step` steps, with the multiplier that step used."""
        # the mode, not the tensors, decides (the same thing): a train_gpt.py folds the branches of other modes
        if self.mode in ("ema", "swa_else_ema"):
            for n, p in model.named_parameters():
                self.ema[n].lerp_(p.detach().float(), 1.0 - self.decay)  # d * shadow + (1 - d) * theta
        in_warmup = step <= self.warmup_steps  # the step just taken had index step - 1 < warmup_steps
        if self.mode in ("swa", "swa_else_ema") and not in_warmup and lr_multiplier < self.swa_start_lr and step % self.swa_every == 0:
            if self.swa_sum is None:
                self.swa_sum = {n: p.detach().float().clone() for n, p in model.named_parameters()}
            else:
                for n, p in model.named_parameters():
                    self.swa_sum[n].add_(p.detach().float())
            self.swa_count += 1

    def choice(self) -> str:
        """Which weights `apply_to` exports: 'live', 'ema' or 'swa'."""
        if self.mode == "ema":
            return "ema"
        if self.mode == "swa":
            return "swa" if self.swa_count > 0 else "live"
        if self.mode == "swa_else_ema":
            return "swa" if self.swa_count > 1 else "ema"
        return "live"

    def describe(self) -> str:
        """One line for logs and the summary: what was exported and under which rule."""
        choice = self.choice()
        n = self.swa_count
        what = {"live": "live = the weights at the end of training",
                "ema": f"ema = EMA of the weights, decay {self.decay}",
                "swa": f"swa = uniform mean of {n} SWA snapshot{'s' if n != 1 else ''}"}[choice]
        taken = f"; {n} SWA snapshot{'s' if n != 1 else ''} taken" if self.mode == "swa_else_ema" and choice == "ema" else ""
        return f"{what} (train.averaging = {self.mode}{taken})"

    def averaged(self, choice: str | None = None) -> dict[str, Tensor] | None:
        """The fp32 averaged weights for `choice` (default: the rule's), or None for 'live'."""
        choice = choice or self.choice()
        if choice == "ema":
            if self.ema is None:
                raise ValueError(f"no EMA is tracked under train.averaging = {self.mode!r}")
            return self.ema
        if choice == "swa":
            if not self.swa_count:
                raise ValueError("no SWA snapshot was taken")
            return {n: t / self.swa_count for n, t in self.swa_sum.items()}
        return None

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> str:
        """Load the exported weights into `model` (cast to each parameter's dtype); returns the choice."""
        if self.mode == "none":
            return "live"
        choice = self.choice()
        weights = self.averaged(choice)
        if weights is not None:
            for n, p in model.named_parameters():
                p.copy_(weights[n].to(p.dtype))
        return choice

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything resume needs besides `swa_count` (kept in the checkpoint's state.json)."""
        out = {}
        if self.mode in ("ema", "swa_else_ema"):
            out.update({f"ema.{n}": t for n, t in self.ema.items()})
        if self.mode in ("swa", "swa_else_ema") and self.swa_sum is not None:
            out.update({f"swa.{n}": t for n, t in self.swa_sum.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], swa_count: int) -> None:
        if self.ema is not None:
            ema = {k[4:]: v.float().clone() for k, v in tensors.items() if k.startswith("ema.")}
            if ema.keys() != self.ema.keys():
                raise ValueError(f"the checkpoint holds no EMA for train.averaging = {self.mode!r} "
                                 f"(missing: {sorted(self.ema.keys() - ema.keys())[:3]}...)")
            self.ema = ema
        swa = {k[4:]: v.float().clone() for k, v in tensors.items() if k.startswith("swa.")}
        if bool(swa) != (swa_count > 0):
            raise ValueError(f"the checkpoint's SWA sums ({len(swa)} tensors) disagree with its count {swa_count}")
        self.swa_sum = swa or None
        self.swa_count = swa_count
