"""`pgolf sweep`: search configs x seeds with Optuna (grid, random, TPE, greedy), on one machine or many.

    spec = load_spec("sweeps/switches.toml")
    summary = run_sweep(spec, "sweeps/switches")        # trials, then sweep.md/.json/.png, best.toml, compare
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .outputs import write_outputs
from .runner import DEFAULT_TRAIN_COMMAND
from .spec import SpecError, SweepSpec, load_spec, parse_spec
from .study import StudyMismatch, default_storage_url, open_study
from .worker import Say, SlotError, device_slots, run_trials

__all__ = ["SlotError", "SpecError", "StudyMismatch", "SweepSpec", "default_sweep_dir", "device_slots", "load_spec",
           "parse_spec", "run_sweep", "write_report"]


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.name


def run_sweep(spec: SweepSpec, sweep_dir: str | Path | None = None, *, storage: str | None = None,
              worker: bool = False, jobs: int = 1, threads: int | None = None, gpus_per_trial: int = 1,
              train_command: tuple[str, ...] | list[str] = DEFAULT_TRAIN_COMMAND, say: Say = print,
              poll_s: float = 2.0, gpus: list[str] | None = None) -> dict[str, Any] | None:
    """Run trials until the study's budget is finished; then (unless `worker`) write the outputs."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage_url(sweep_dir)
    ctx = run_trials(spec, sweep_dir, url, jobs=jobs, threads=threads, gpus_per_trial=gpus_per_trial,
                     train_command=train_command, say=say, poll_s=poll_s, gpus=gpus)
    say(f"stopped: {ctx.stopped_because}" if ctx.stopped_because else "stopped")
    if worker:
        return None
    return write_outputs(ctx.study, spec, sweep_dir, url, ctx.stopped_because)


def write_report(spec: SweepSpec, sweep_dir: str | Path | None = None, *, storage: str | None = None) -> dict[str, Any]:
    """Only the outputs, from the study as it stands (trials still running elsewhere are shown as running)."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(spec)
    url = storage or default_storage_url(sweep_dir)
    if storage is None and not (sweep_dir / "study.db").is_file():
        raise FileNotFoundError(f"{sweep_dir / 'study.db'}: no study yet (run `pgolf sweep {spec.path}` first, or pass --storage)")
    return write_outputs(open_study(spec, url), spec, sweep_dir, url)
