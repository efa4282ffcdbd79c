"""Learning-rate multiplier schedules: warm-up, then warmdown by steps, by fraction, or against the wall clock.

The multiplier scales every group's base_lr (Muon and Adam alike).
- steps:           m = (S - s) / W for the last W steps of S
- frac:            f = s / S;  m = 1 until f = 1 - F, then max((1 - f) / F, min)
- wallclock_steps: step_ms = t / s, the last W (estimated) steps before the cap: m = remaining / (W step_ms)
- wallclock_frac:  f = t / (T_max - reserve); as frac
"""

from __future__ import annotations

from ..config import TrainConfig


def lr_multiplier(step: int, elapsed_s: float, cfg: TrainConfig, reserve_s: float = 0.0) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    mode = cfg.warmdown
    cap = cfg.max_wallclock_s
    if mode in ("wallclock_steps", "wallclock_frac") and cap <= 0:
        mode = "steps" if mode == "wallclock_steps" else "frac"  # no cap: fall back to the step count
    floor = cfg.min_lr_frac
    if mode == "none":
        return 1.0
    if mode == "steps":
        if cfg.warmdown_steps <= 0 or step < cfg.steps - cfg.warmdown_steps:
            return 1.0
        return max((cfg.steps - step) / cfg.warmdown_steps, floor)
    if mode == "wallclock_steps":
        step_s = elapsed_s / max(step, 1)
        warmdown_s = cfg.warmdown_steps * step_s
        remaining = max(cap - reserve_s - elapsed_s, 0.0)
        return max(remaining / max(warmdown_s, 1e-9), floor) if remaining <= warmdown_s else 1.0
    frac = step / cfg.steps if mode == "frac" else elapsed_s / max(cap - reserve_s, 1e-9)
    if cfg.warmdown_frac <= 0 or frac < 1.0 - cfg.warmdown_frac:
        return 1.0
    return max((1.0 - frac) / cfg.warmdown_frac, floor)


def training_fraction(step: int, elapsed_s: float, cfg: TrainConfig, reserve_s: float = 0.0) -> float:
    """Progress in [0, 1]: by wall clock when capped, else by steps (drives delayed recurrence)."""
    by_steps = step / cfg.steps
    if cfg.max_wallclock_s > 0:
        return max(by_steps, elapsed_s / max(cfg.max_wallclock_s - reserve_s, 1e-9))
    return by_steps
