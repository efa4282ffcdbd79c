"""Greedy coordinate search, as the records tuned: one key at a time, keep a change only if `pgolf compare`
says it helps — the one-sided Welch test that the candidate's mean val_loss beats the incumbent's by at least
`margin` nats at p < `significance` (the challenge's 0.005 at 0.01 by default).

The plan is a pure function of the study's trials, replayed from the start every time a worker asks, so any
number of workers (and a resumed sweep) agree on it: the candidates of the current key can run side by side;
the key is decided once all of them have finished. Trials enqueue their params (label per parameter, only
those that differ from the base recipe), so a trial's params are its identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from .compare import ComparisonError, Run, compare_loaded
from .space import Param
from .spec import SweepSpec
from .study import MAX_RETRY, failure_kind


@dataclass
class Candidate:
    params: dict[str, Any]
    status: str                   # complete | pending | missing | failed
    trial: int | None = None
    mean_bpb: float | None = None
    diff_nats: float | None = None  # candidate - incumbent, val_loss
    p: float | None = None
    better: bool = False
    note: str = ""


@dataclass
class Step:
    param: str
    incumbent: dict[str, Any]
    candidates: list[Candidate]
    kept: Any = None


@dataclass
class Plan:
    action: str                   # run | wait | done
    params: dict[str, Any] | None = None
    incumbent: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "incumbent": self.incumbent, "note": self.note,
                "steps": [{"param": s.param, "incumbent": s.incumbent, "kept": s.kept,
                           "candidates": [vars(c) for c in s.candidates]} for s in self.steps]}


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params, also while it is only queued (enqueued values live in system_attrs)."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _config_value(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def normalize(space: list[Param], base: Config, params: dict[str, Any]) -> dict[str, Any]:
    """Drop params whose overrides equal the base recipe's values: they name the same configuration."""
    by_name = {p.name: p for p in space}
    return {name: label for name, label in params.items()
            if any(_config_value(base, k) != v for k, v in by_name[name].overrides(label).items())}


def runs_of(trial: FrozenTrial, seeds: list[int], sweep_dir: Path) -> list[Run]:
    """The trial's seed runs rebuilt from the records in its user_attrs (the folders may be on another host)."""
    runs = []
    for seed in seeds:
        rec = trial.user_attrs.get(f"seed_{seed}")
        if rec is not None:
            runs.append(Run(sweep_dir / rec["run_dir"], rec, {k: rec.get(k) for k in ("val_sha256", "tokenizer_sha256")},
                            None))
    return runs


def _status(trials: list[FrozenTrial]) -> tuple[str, FrozenTrial | None]:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        return "complete", min(done, key=lambda t: t.number)
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return "pending", None
    if any(t.state == TrialState.PRUNED or failure_kind(t) in ("diverged", "config") for t in trials):
        return "failed", None
    if sum(1 for t in trials if failure_kind(t) == "process") > MAX_RETRY:
        return "failed", None
    return "missing", None


def greedy_plan(study: optuna.Study, spec: SweepSpec, base: Config, sweep_dir: Path) -> Plan:
    """Replay the greedy search over the study's trials: what to run next, whether to wait, or done."""
    by_key: dict[str, list[FrozenTrial]] = {}
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and failure_kind(t) == "skipped":
            continue
        by_key.setdefault(params_key(trial_params(t)), []).append(t)
    incumbent: dict[str, Any] = {}
    status, inc_trial = _status(by_key.get(params_key({}), []))
    if status != "complete":
        return Plan("wait" if status in ("pending", "missing") else "done", incumbent=incumbent,
                    note="" if status != "failed" else "the base runs failed; greedy search cannot start")
    steps: list[Step] = []
    for _ in range(spec.passes):
        for param in spec.space:
            step = Step(param.name, dict(incumbent), [])
            for label in param.candidates():
                params = normalize(spec.space, base, {**incumbent, param.name: label})
                if params == incumbent:
                    continue
                status, trial = _status(by_key.get(params_key(params), []))
                step.candidates.append(Candidate(params, status, trial.number if trial else None))
            steps.append(step)
            missing = [c for c in step.candidates if c.status == "missing"]
            if missing:
                return Plan("run", missing[0].params, incumbent, steps)
            if any(c.status == "pending" for c in step.candidates):
                return Plan("wait", None, incumbent, steps)
            inc_runs = runs_of(inc_trial, spec.seeds, sweep_dir)
            winners = []
            for cand in step.candidates:
                if cand.status != "complete":
                    continue
                trial = by_number[cand.trial]
                _judge(cand, trial, inc_runs, spec, sweep_dir)
                if cand.better:
                    winners.append((cand.mean_bpb, cand.trial, cand, trial))
            if winners:
                _, _, best, best_trial = min(winners, key=lambda w: (w[0], w[1]))
                step.kept = best.params.get(param.name, "base")
                incumbent, inc_trial = dict(best.params), best_trial
    return Plan("done", None, incumbent, steps)


def _judge(cand: Candidate, trial: FrozenTrial, inc_runs: list[Run], spec: SweepSpec, sweep_dir: Path) -> None:
    """Is the candidate better than the incumbent by the margin at the significance level (and under the limit)?"""
    cand.mean_bpb = trial.value
    if not trial.user_attrs.get("under_limit", True):
        cand.note = "artifact over the limit"
        return
    try:
        comparison = compare_loaded(inc_runs, runs_of(trial, spec.seeds, sweep_dir), margin=spec.margin)
    except ComparisonError as exc:
        cand.note = str(exc)
        return
    cand.diff_nats = comparison.diff_loss
    cand.p = comparison.test.p if comparison.test else None
    cand.better = comparison.significant(spec.significance)
