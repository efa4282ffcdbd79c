"""Run a sweep's trials: `jobs` threads, each starting one trial at a time on its own device slot (one GPU, or a
fixed number of CPU threads), every trial-seed an ordinary `pgolf train` run folder under the sweep folder.

Each thread loops: mark stale trials failed (they are retried once), stop when the budget is finished or the
wall time is up, else run one trial through Optuna (`study.optimize(n_trials=1)`, which keeps the trial's
heartbeat). Any number of processes on any number of machines can run this loop against one study.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import Config, ConfigError, load_recipe
from .greedy import greedy_plan, params_key, trial_params
from .runner import DEFAULT_TRAIN_COMMAND, RunFailed, RunRequest, RunStopped, run_training
from .space import overrides_of
from .spec import SweepSpec
from .study import (counted_trials, failure_kind, finished_count, open_study, over_budget, retry_callback, role,
                    worker_id)

Say = Callable[[str], None]


class SlotError(ValueError):
    """--jobs / --gpus-per-trial that the machine cannot give."""


class TrialFailed(RuntimeError):
    """A trial that ended without a value; its user_attrs say why (failure_kind, failure)."""


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(jobs: int, threads: int | None = None, gpus_per_trial: int = 1,
                 gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each of `jobs` trials side by side: its own GPU(s) when there are GPUs, and a fixed
    number of CPU threads (torch reads OMP_NUM_THREADS at start-up)."""
    if jobs < 1:
        raise SlotError(f"--jobs must be >= 1, got {jobs}")
    gpus = visible_gpus() if gpus is None else gpus
    per_job_threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    slots = []
    for i in range(jobs):
        env = {"OMP_NUM_THREADS": str(per_job_threads), "MKL_NUM_THREADS": str(per_job_threads)}
        if gpus:
            if jobs * gpus_per_trial > len(gpus):
                raise SlotError(f"--jobs {jobs} x {gpus_per_trial} GPU(s) per trial needs {jobs * gpus_per_trial} "
                                 f"GPUs; {len(gpus)} visible ({','.join(gpus)})")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * gpus_per_trial:(i + 1) * gpus_per_trial])
        slots.append(env)
    return slots


@dataclass
class SweepContext:
    spec: SweepSpec
    sweep_dir: Path
    study: optuna.Study
    base: Config
    train_command: tuple[str, ...]
    say: Say
    deadline: float | None
    poll_s: float = 2.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    claim_lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    stopped_because: str = ""

    @property
    def budget(self) -> int | None:
        return self.spec.trial_budget


def _fail(trial: optuna.Trial, kind: str, message: str) -> TrialFailed:
    trial.set_user_attr("failure_kind", kind)
    trial.set_user_attr("failure", message)
    return TrialFailed(f"{kind}: {message}")


def _duplicate(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any]) -> bool:
    """An enqueued trial whose params an earlier live trial already has (two workers planned it at once)."""
    key = params_key(params)
    return any(t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
               and role(t) == trial.user_attrs.get("role") and params_key(trial_params(t)) == key
               for t in study.get_trials(deepcopy=False))


def _reusable(trial: optuna.Trial, seed: int, sweep_dir: Path) -> dict[str, Any] | None:
    """A seed run an earlier attempt of this trial finished (a retry carries the attempt's records)."""
    rec = trial.user_attrs.get(f"seed_{seed}")
    if rec and rec.get("host") == os.uname().nodename and (sweep_dir / rec["run_dir"] / "result.json").is_file():
        return rec
    return None


def objective(ctx: SweepContext, trial: optuna.Trial, slot: dict[str, str]) -> float:
    spec = ctx.spec
    kind = trial.user_attrs.get("role", "search")
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("failure_kind", None)
    trial.set_user_attr("failure", None)
    if kind != "base" and over_budget(ctx.study, trial.number, ctx.budget):
        raise _fail(trial, "skipped", "the trial budget was reached while it was being created")
    if kind == "base":
        params: dict[str, Any] = {}
    elif kind == "greedy":
        by_name = {p.name: p for p in spec.space}
        params = {name: by_name[name].suggest(trial, True) for name in trial.user_attrs["plan"]}
    else:
        params = {p.name: p.suggest(trial, spec.discrete) for p in spec.space}
    if kind != "search" and _duplicate(ctx.study, trial, params):
        raise _fail(trial, "skipped", "another worker queued the same trial first")
    changes = overrides_of(spec.space, params)
    overrides = {**spec.fixed, **changes}
    try:
        cfg = load_recipe(spec.recipe, spec.scale, dict(overrides))
    except ConfigError as exc:  # a combination of values that is impossible (each value alone was checked)
        raise _fail(trial, "config", str(exc)) from None
    trial.set_user_attr("changes", changes)
    prune = spec.pruning.enabled and kind == "search"
    if prune:
        overrides["train.val_every"] = spec.pruning.val_every
    started = time.time()
    records = []
    for index, seed in enumerate(spec.seeds):
        record = _reusable(trial, seed, ctx.sweep_dir)
        if record is None:
            name = f"t{trial.number:04d}-s{seed}"
            req = RunRequest(spec.recipe, spec.scale, seed, overrides, ctx.sweep_dir / "runs" / name,
                             ctx.sweep_dir / "logs" / f"{name}.log", slot)
            monitor = _pruning_monitor(trial, index * cfg.train.steps) if prune else None
            try:
                record = run_training(ctx.train_command, req, monitor, poll_s=min(ctx.poll_s, 0.5))
            except RunFailed as exc:
                raise _fail(trial, exc.kind, str(exc)) from None
            except RunStopped as exc:
                trial.set_user_attr("pruned", f"seed {seed}: {exc}")
                raise optuna.TrialPruned(str(exc)) from None
            record.update(run_dir=str(req.run_dir.relative_to(ctx.sweep_dir)), host=os.uname().nodename)
        records.append(record)
        trial.set_user_attr(f"seed_{seed}", record)
    over = max(r["artifact_bytes"] - (r.get("limit_bytes") or 16_000_000) for r in records)
    trial.set_user_attr("under_limit", all(r["under_limit"] for r in records))
    trial.set_user_attr("seconds", time.time() - started)
    trial.set_constraint("artifact_bytes_over_limit", float(over))  # <= 0: feasible (TPE prefers feasible trials)
    return statistics.fmean(r["val_bpb"] for r in records)


def _pruning_monitor(trial: optuna.Trial, step_offset: int):
    """Seed i's step s is reported at i * train.steps + s, so every trial's curve lines up with the others'."""
    def monitor(step: int, val_loss: float, val_bpb: float) -> bool:
        trial.report(val_bpb, step_offset + step)
        return trial.should_prune()
    return monitor


def describe_trial(t: FrozenTrial) -> str:
    changes = t.user_attrs.get("changes") or {}
    what = ", ".join(f"{k}={v}" for k, v in changes.items()) or "base"
    if t.state == TrialState.COMPLETE:
        seeds = [v["val_bpb"] for k, v in t.user_attrs.items() if k.startswith("seed_") and v]
        spread = f" ± {statistics.stdev(seeds):.4f}" if len(seeds) > 1 else ""
        limit = "" if t.user_attrs.get("under_limit", True) else " OVER THE LIMIT"
        return f"trial {t.number} ({role(t)}): val_bpb {t.value:.4f}{spread}{limit} [{what}]"
    if t.state == TrialState.PRUNED:
        return f"trial {t.number} ({role(t)}): pruned ({t.user_attrs.get('pruned', '')}) [{what}]"
    return f"trial {t.number} ({role(t)}): {t.state.name} {failure_kind(t) or ''}: {t.user_attrs.get('failure', '')} [{what}]"


def _after_trial(ctx: SweepContext):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        kind = failure_kind(trial)
        if kind == "skipped":
            return
        ctx.say(describe_trial(trial))
        if kind == "process":  # the training process died: queue the trial again, once (as stale trials are)
            retry_callback()(study, trial)
    return callback


def _too_many_failures(ctx: SweepContext) -> bool:
    failed = [t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if failure_kind(t) != "skipped"]
    return len(failed) >= max(10, 2 * (ctx.budget or 5))


def _base_settled(study: optuna.Study) -> bool:
    """The base runs (what the best is compared with) are finished, or have failed for good."""
    bases = [t for t in study.get_trials(deepcopy=False) if role(t) == "base"]
    return any(t.state == TrialState.COMPLETE for t in bases) or not any(
        t.state in (TrialState.RUNNING, TrialState.WAITING) for t in bases)


def _work(ctx: SweepContext, slot: dict[str, str]) -> None:
    study, callback = ctx.study, _after_trial(ctx)
    while not ctx.stop.is_set():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if ctx.deadline is not None and time.time() >= ctx.deadline:
            ctx.stopped_because = ctx.stopped_because or f"the wall-time budget ({ctx.spec.minutes:g} min) is spent"
            return
        if ctx.budget is not None and finished_count(study) >= ctx.budget and _base_settled(study):
            ctx.stopped_because = ctx.stopped_because or f"the trial budget ({ctx.budget}) is finished"
            return
        if _too_many_failures(ctx):
            ctx.stopped_because = "too many failed trials (see the table's failure column)"
            return
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if ctx.spec.strategy == "greedy" and not waiting:
            with ctx.lock:  # the threads of one process plan one at a time
                plan = greedy_plan(study, ctx.spec, ctx.base, ctx.sweep_dir)
                if plan.action == "done":
                    ctx.stopped_because = ctx.stopped_because or ("greedy search finished" + (f": {plan.note}" if plan.note else ""))
                    return
                if plan.action == "run":
                    study.enqueue_trial(plan.params, user_attrs={"role": "greedy", "plan": sorted(plan.params)})
            if plan.action == "wait":
                time.sleep(ctx.poll_s)
                continue
        elif not waiting and ctx.budget is not None and len(counted_trials(study)) >= ctx.budget:
            time.sleep(ctx.poll_s)  # the rest of the budget is running elsewhere: wait for it to finish or go stale
            continue
        _optimize_one(ctx, slot, callback)


def _optimize_one(ctx: SweepContext, slot: dict[str, str], callback) -> None:
    """One trial. The threads of a process claim their trials one at a time: on SQLite two threads could both read
    the same WAITING trial before either marks it RUNNING, and then run it twice (Optuna's row lock is a no-op there)."""
    ctx.claim_lock.acquire()
    held = True

    def run(trial: optuna.Trial) -> float:
        nonlocal held
        if held:  # the trial is RUNNING in the storage now: the next thread may claim its own
            ctx.claim_lock.release()
            held = False
        return objective(ctx, trial, slot)

    try:
        ctx.study.optimize(run, n_trials=1, catch=(TrialFailed,), callbacks=[callback], gc_after_trial=False)
    finally:
        if held:
            ctx.claim_lock.release()


def run_trials(spec: SweepSpec, sweep_dir: Path, storage_url: str, *, jobs: int = 1, threads: int | None = None,
               gpus_per_trial: int = 1, train_command: tuple[str, ...] | list[str] = DEFAULT_TRAIN_COMMAND,
               say: Say = print, poll_s: float = 2.0, gpus: list[str] | None = None) -> SweepContext:
    """Run trials until the budget is finished (by this and every other worker of the study) or time is up."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    slots = device_slots(jobs, threads, gpus_per_trial, gpus)
    study = open_study(spec, storage_url)
    deadline = time.time() + spec.minutes * 60 if spec.minutes else None
    ctx = SweepContext(spec, sweep_dir, study, spec.base_config(), tuple(train_command), say, deadline, poll_s)
    say(f"sweep '{spec.name}': {spec.strategy} over {len(spec.space)} parameter(s), seeds {spec.seeds}, budget "
        f"{ctx.budget if ctx.budget is not None else 'none'} trial(s)"
        + (f" / {spec.minutes:g} min" if spec.minutes else "") + f", {jobs} job(s) "
        + " | ".join(",".join(f"{k}={v}" for k, v in s.items()) for s in slots) + f"; storage {storage_url}")
    threads_ = [threading.Thread(target=_work, args=(ctx, slot), name=f"sweep-job-{i}", daemon=True)
                for i, slot in enumerate(slots)]
    for t in threads_:
        t.start()
    try:
        while any(t.is_alive() for t in threads_):
            for t in threads_:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        ctx.stop.set()
        say("interrupted: stopping the running trials (they are queued again for the next `pgolf sweep`)")
        for t in threads_:
            t.join(timeout=60)
        raise
    return ctx

