"""The Optuna study behind a sweep: storage (an SQLite file in the sweep folder, or any RDB URL), sampler,
pruner, heartbeats, the base trial, and the trial budget shared by every worker.

A trial's `user_attrs` say what it is: role "base" (the base recipe + [fixed], no params), "greedy" (params
chosen by the greedy plan and enqueued) or "search" (drawn by the sampler); after each seed its run record; on
failure `failure_kind` ("process", "diverged", "config", "skipped") and `failure`. A worker that dies leaves
its trial RUNNING; once its heartbeat is older than `grace_s`, the next worker to start a trial marks it FAIL
and Optuna's RetryHeartbeatStaleTrialCallback queues it again, once.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .spec import SweepSpec

MAX_RETRY = 1
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class StudyMismatch(ValueError):
    """The storage holds a study of this name made from another spec."""


def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def make_storage(url: str, spec: SweepSpec) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}  # several workers on one file wait for its lock
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _retrying(lambda: RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_s,
                                            grace_period=spec.grace_s, heartbeat_stale_trial_callback=retry_callback()))


def _retrying(make, attempts: int = 6):
    """Workers that start together on an empty database race to create its tables (and the study): the losers
    get a duplicate-object error from the database, and find everything made when they try again."""
    for attempt in range(attempts):
        try:
            return make()
        except sqlalchemy.exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1) + random.random())


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.strategy == "grid":
        return optuna.samplers.GridSampler({p.name: p.candidates() for p in spec.space}, seed=spec.sampler_seed)
    if spec.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=spec.sampler_seed)
    # random; greedy enqueues every trial it wants, so its sampler never draws a value
    return optuna.samplers.RandomSampler(seed=spec.sampler_seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruning
    if p.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    if p.pruner == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials,
                                               n_warmup_steps=p.warmup_steps)
    if p.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, storage_url: str) -> optuna.Study:
    """Create or load the study; refuse one made from a different spec; queue the base trial once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, spec)
    study = _retrying(lambda: optuna.create_study(study_name=spec.name, storage=storage, direction="minimize",
                                                  sampler=make_sampler(spec), pruner=make_pruner(spec),
                                                  load_if_exists=True))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", spec.fingerprint())
        study.set_user_attr("spec", spec.to_dict())
    elif stored != spec.fingerprint():
        raise StudyMismatch(
            f"study '{spec.name}' in {storage_url} was made from another spec (fingerprint {stored}, this spec "
            f"{spec.fingerprint()}): only [sweep] trials/minutes may change between runs of one study; "
            f"give this spec another [sweep] name")
    if not any(role(t) == "base" for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial({}, user_attrs={"role": "base"})
    return study


def role(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("role", "search")


def failure_kind(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get("failure_kind") if trial.state == TrialState.FAIL else None


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Non-base trials that count toward the budget: finished, running or queued (failed ones do not)."""
    return [t for t in study.get_trials(deepcopy=False, states=COUNTED) if role(t) != "base"]


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if role(t) != "base")


def over_budget(study: optuna.Study, trial_number: int, budget: int | None) -> bool:
    """Does the trial `trial_number` fall past the budget? Trials earlier in number order claim it first, so two
    workers that ask at the same moment agree on which of them runs."""
    if budget is None:
        return False
    earlier = [t for t in counted_trials(study) if t.number < trial_number]
    return len(earlier) >= budget


def retry_of(trial: FrozenTrial) -> int | None:
    return trial.system_attrs.get("failed_trial")


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
