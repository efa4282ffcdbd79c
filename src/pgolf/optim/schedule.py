"""Learning-rate multiplier schedules (TECHNIQUES.md §7.7): warm-up, then warmdown by steps, by fraction, or
against the wall clock.

Pure functions of (step, elapsed training seconds, config): the trainer passes the measured clock, tests pass a
simulated one. The multiplier scales every group's base_lr (Muon and Adam alike). With S = train.steps,
W = warmdown_steps, F = warmdown_frac, T = max_wallclock_s - quant.gptq_reserve_s, t = elapsed, s = step:
- warm-up:          m = s / warmup_steps for s < warmup_steps (m = 0 at step 0; #103)
- steps:            m = (S - s) / W over the last W steps
- frac:             f = s / S;  m = 1 until f = 1 - F, then (1 - f) / F
- wallclock_steps:  step_s = t / s (measured mean); the last W estimated steps before T:
                    m = min(T - t, (S - s) step_s) / (W step_s)          (baseline, #206, #595, #1573)
- wallclock_frac:   f = max(t / T, s / S);  as frac                      (#103 with F = 0.25, #1536 with 0.667)
Every warmdown is floored at min_lr_frac and reaches that floor exactly at t = T (or at s = S when the step
limit comes first, which the records never hit); the trainer stops after the step that crosses T. Without a
cap (max_wallclock_s = 0) the wall-clock modes fall back to steps / frac.
Muon's weight decay has its own multiplier (`muon_wd_multiplier`, #1729's taper) over the same training fraction
f = training_fraction(...): with start s = optim.muon_wd_taper_start and final m = optim.muon_wd_taper_final,
    w = 1 for f <= s, else 1 + (m - 1) min((f - s) / (1 - s), 1)        (s = 1: off)
wallclock_steps trusts the mean step time so far: a first step that includes compilation (no
train.compile_priming_steps) inflates it and lowers the LR of the first steps, as in the reference; the recipes
using it prime the compile off the clock.
"""

from __future__ import annotations

import math

from ..config import OptimConfig, TrainConfig


def lr_multiplier(step: int, elapsed_s: float, cfg: TrainConfig, reserve_s: float = 0.0) -> float:
    """The LR multiplier for the step that starts after `step` completed steps and `elapsed_s` seconds."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    mode = cfg.warmdown
    cap = cfg.max_wallclock_s
    if mode in ("wallclock_steps", "wallclock_frac") and cap <= 0:
        mode = "steps" if mode == "wallclock_steps" else "frac"  # no cap: fall back to the step count
    if mode == "none":
        return 1.0
    if mode in ("steps", "wallclock_steps"):
        if cfg.warmdown_steps <= 0:
            return 1.0
        steps_left = float(cfg.steps - step)
        if mode == "wallclock_steps" and step > 0 and elapsed_s > 0:
            step_s = elapsed_s / step  # mean measured step time (includes any compile on the clock, as the records)
            steps_left = min(steps_left, max(cap - reserve_s - elapsed_s, 0.0) / step_s)
        return _decay(steps_left / cfg.warmdown_steps, cfg.min_lr_frac)
    if cfg.warmdown_frac <= 0:
        return 1.0
    frac = step / cfg.steps if mode == "frac" else training_fraction(step, elapsed_s, cfg, reserve_s)
    return _decay((1.0 - frac) / cfg.warmdown_frac, cfg.min_lr_frac)


def _decay(left: float, floor: float) -> float:
    """1 before the warmdown (left >= 1), then `left` (the share of the warmdown still ahead), floored."""
    if math.isnan(left) or left >= 1.0:
        return 1.0
    return max(left, floor, 0.0)


def training_fraction(step: int, elapsed_s: float, cfg: TrainConfig, reserve_s: float = 0.0) -> float:
    """Progress in [0, 1]: max(t / T, s / S) when capped, else s / S (drives wallclock_frac and delayed recurrence)."""
    by_steps = step / cfg.steps
    if cfg.max_wallclock_s > 0:
        return min(1.0, max(by_steps, elapsed_s / max(cfg.max_wallclock_s - reserve_s, 1e-9)))
    return by_steps


def muon_wd_multiplier(frac: float, cfg: OptimConfig) -> float:
    """#1729's tapered Muon WD: 1 until training fraction `frac` passes the taper start, then linear to the final
    multiplier at frac = 1."""
    start = cfg.muon_wd_taper_start
    if start >= 1.0 or frac <= start:
        return 1.0
    progress = min((frac - start) / (1.0 - start), 1.0)
    return 1.0 + (cfg.muon_wd_taper_final - 1.0) * progress


def warmdown_start_s(cfg: TrainConfig, step_s: float, reserve_s: float = 0.0) -> float:
    """Elapsed seconds at which a capped warmdown begins, for a constant step time (for logs and tests)."""
    budget = cfg.max_wallclock_s - reserve_s
    if cfg.warmdown == "wallclock_steps":
        return max(budget - cfg.warmdown_steps * step_s, 0.0)
    if cfg.warmdown == "wallclock_frac":
        return max(budget * (1.0 - cfg.warmdown_frac), 0.0)
    raise ValueError(f"warmdown_start_s is for the wall-clock modes, not {cfg.warmdown!r}")
