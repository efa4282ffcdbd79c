"""A sweep spec (TOML) and its validation, before any trial starts.

    [sweep]    name, recipe, scale, seeds, strategy, trials, minutes, sampler_seed, margin, significance, ...
    [fixed]    config overrides every trial and the base share ("train.steps" = 300)
    [space]    "model.smear" = { choices = [...] } | "optim.matrix_lr" = { low, high, log, step, points }
               | mlp = { options = { relu2 = {}, swiglu = { "model.mlp" = "swiglu", ... } } }
    [pruning]  pruner, val_every, startup_trials, warmup_steps, percentile, min_resource, reduction_factor

Every value is checked with the config's own key and type checks, on exactly the `--set` text the trial's
`pgolf train` will receive, so an unknown key gets config's "did you mean" and a bad value its type message.
All problems are collected and reported together, one line each.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..config import Config, ConfigError, apply_overrides, load_recipe, recipe_path
from .space import Choice, Options, Param, Range, choice_label, grid_size

STRATEGIES = ("grid", "random", "tpe", "greedy")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
TABLES = ("sweep", "fixed", "space", "pruning")
SWEEP_KEYS = {
    "name": "the study's name (default: the spec file's name)",
    "recipe": "the base recipe: a shipped name or a .toml path (relative to the spec file)",
    "scale": "full | tiny",
    "seeds": "the seeds every trial trains (objective = mean val_bpb over them)",
    "strategy": "grid | random | tpe | greedy",
    "trials": "budget: trials that finish (the base runs are not counted)",
    "minutes": "budget: wall time of one `pgolf sweep` invocation; no new trial starts after it",
    "sampler_seed": "seed of the random / TPE / grid sampler",
    "margin": "greedy: nats a change must win by (the challenge's 0.005)",
    "significance": "greedy: one-sided Welch p-value a change must beat (0.01)",
    "heartbeat_s": "seconds between a running trial's heartbeats in the study",
    "grace_s": "a running trial without a heartbeat for this long is marked failed (and retried once)",
    "passes": "greedy: rounds over all keys (a later round revisits keys with the new incumbent)",
}
PRUNING_KEYS = ("pruner", "val_every", "startup_trials", "warmup_steps", "percentile", "min_resource",
                "reduction_factor")
NOT_SEARCHABLE = {"seed": "seeds are [sweep] seeds", "recipe": "the base is [sweep] recipe",
                  "scale": "the scale is [sweep] scale"}


class SpecError(ValueError):
    """A sweep spec that cannot run; `problems` holds one line per problem, each naming the key."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = str(path), problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


@dataclass
class Pruning:
    pruner: str = "none"
    val_every: int = 0
    startup_trials: int = 2
    warmup_steps: int = 0
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3

    @property
    def enabled(self) -> bool:
        return self.pruner != "none"


@dataclass
class SweepSpec:
    path: Path
    name: str
    recipe: str
    scale: str
    seeds: list[int]
    strategy: str
    space: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    trials: int | None = None
    minutes: float | None = None
    sampler_seed: int = 0
    margin: float = 0.005
    significance: float = 0.01
    heartbeat_s: int = 30
    grace_s: int = 120
    passes: int = 1
    pruning: Pruning = field(default_factory=Pruning)

    @property
    def discrete(self) -> bool:
        """Grid and greedy search draw from each parameter's finite candidate list."""
        return self.strategy in ("grid", "greedy")

    @property
    def trial_budget(self) -> int | None:
        if self.strategy == "grid":
            size = grid_size(self.space)
            return size if self.trials is None else min(self.trials, size)
        return self.trials

    def fingerprint(self) -> str:
        """What makes two specs the same study; the budget is left out, so a sweep can be extended."""
        same = {"recipe": self.recipe, "scale": self.scale, "seeds": self.seeds, "strategy": self.strategy,
                "fixed": self.fixed, "space": [p.describe() for p in self.space], "sampler_seed": self.sampler_seed,
                "margin": self.margin, "significance": self.significance, "passes": self.passes,
                "pruning": vars(self.pruning)}
        for p in self.space:
            if isinstance(p, Options):
                same.setdefault("options", {})[p.name] = [[n, list(map(list, items))] for n, items in p.options]
        return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def base_config(self) -> Config:
        return load_recipe(self.recipe, scale=self.scale, overrides=dict(self.fixed))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "recipe": self.recipe, "scale": self.scale,
                "seeds": self.seeds, "strategy": self.strategy, "trials": self.trials, "minutes": self.minutes,
                "fixed": self.fixed, "space": [p.describe() for p in self.space], "margin": self.margin,
                "significance": self.significance, "pruning": vars(self.pruning), "fingerprint": self.fingerprint()}


def set_literal(value: Any) -> str:
    """The `--set key=VALUE` text that config.parse_override_value reads back as exactly `value`."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def set_args(overrides: dict[str, Any]) -> list[str]:
    return [f"{key}={set_literal(value)}" for key, value in overrides.items()]


def _config_value(key: str, value: Any, where: str) -> Any:
    """Check one override with config's own checks (key, type, choices) and return the typed value."""
    cfg = Config()
    apply_overrides(cfg, {key: set_literal(value)}, where)
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'num_layers': 4}, 'train.steps': 9} -> {'model.num_layers': 4, 'train.steps': 9}."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_param(value):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _is_param(value: dict[str, Any]) -> bool:
    return bool({"choices", "low", "high", "options"} & set(value))


def _nearest(word: str, known: list[str] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"


class _Problems(list):
    def check(self, fn, *args) -> Any:
        """Run a config check; record its message instead of raising."""
        try:
            return fn(*args)
        except ConfigError as exc:
            self.append(str(exc))
            return None


def _param(name: str, table: Any, problems: _Problems) -> Param | None:
    where = f"[space] '{name}'"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table such as {{ choices = [...] }} or {{ low = 1, high = 4 }}, got {table!r}")
        return None
    kinds = [k for k in ("choices", "options") if k in table] + (["range"] if {"low", "high"} & set(table) else [])
    if len(kinds) != 1:
        problems.append(f"{where}: give exactly one of choices = [...], options = {{...}}, or low/high (got {sorted(table)})")
        return None
    allowed = {"choices": {"choices"}, "options": {"options"}, "range": {"low", "high", "log", "step", "points"}}[kinds[0]]
    for extra in sorted(set(table) - allowed):
        problems.append(f"{where}: unknown setting '{extra}'{_nearest(extra, sorted(allowed))}")
    if kinds[0] == "options":
        return _options(name, table["options"], where, problems)
    if name in NOT_SEARCHABLE:
        problems.append(f"{where}: cannot be searched ({NOT_SEARCHABLE[name]})")
        return None
    if kinds[0] == "choices":
        values = table["choices"]
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: choices must be a non-empty list, got {values!r}")
            return None
        checked = []
        for v in values:  # one line per parameter: the first bad value (an unknown key fails them all)
            typed = problems.check(_config_value, name, v, where)
            if typed is None:
                return None
            checked.append(typed)
        if len({json.dumps(choice_label(v)) for v in values}) != len(values):
            problems.append(f"{where}: choices repeat a value: {values!r}")
            return None
        return Choice(name, tuple(checked))
    return _range(name, table, where, problems)


def _range(name: str, table: dict[str, Any], where: str, problems: _Problems) -> Range | None:
    if "low" not in table or "high" not in table:
        problems.append(f"{where}: a range needs both low and high")
        return None
    low, high = table["low"], table["high"]
    for label, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            problems.append(f"{where}: {label} must be a number, got {bound!r}")
            return None
    typed_low = problems.check(_config_value, name, low, where)
    typed_high = problems.check(_config_value, name, high, where)
    if typed_low is None or typed_high is None:
        return None
    if isinstance(typed_low, bool) or not isinstance(typed_low, (int, float)):
        problems.append(f"{where}: a range needs a numeric config key; '{name}' is {type(typed_low).__name__}")
        return None
    integer = isinstance(typed_low, int)
    log, step, points = table.get("log", False), table.get("step"), table.get("points")
    ok = True
    if not isinstance(log, bool):
        problems.append(f"{where}: log must be true or false, got {log!r}")
        ok = False
    if low >= high:
        problems.append(f"{where}: empty range: low = {low!r} is not below high = {high!r}"
                        + (" (a single value belongs in [fixed])" if low == high else ""))
        ok = False
    if log is True and low <= 0:
        problems.append(f"{where}: a log range needs low > 0, got {low!r}")
        ok = False
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or (integer and not isinstance(step, int)):
            problems.append(f"{where}: step must be a positive {'integer' if integer else 'number'}, got {step!r}")
            ok = False
        elif log is True:
            problems.append(f"{where}: step and log cannot be combined (Optuna draws log ranges continuously)")
            ok = False
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 2):
        problems.append(f"{where}: points must be an integer >= 2, got {points!r}")
        ok = False
    return Range(name, typed_low, typed_high, integer, log, step, points) if ok else None


def _options(name: str, options: Any, where: str, problems: _Problems) -> Options | None:
    if not isinstance(options, dict) or not options:
        problems.append(f"{where}: options must be a non-empty table of named override sets, got {options!r}")
        return None
    items = []
    for label, overrides in options.items():
        if not isinstance(overrides, dict):
            problems.append(f"{where}: option '{label}' must be a table of config overrides, got {overrides!r}")
            return None
        flat = _flatten(overrides)
        checked = {}
        for key, value in flat.items():
            if key in NOT_SEARCHABLE:
                problems.append(f"{where}: option '{label}' sets '{key}' ({NOT_SEARCHABLE[key]})")
                continue
            checked[key] = problems.check(_config_value, key, value, f"{where} option '{label}'")
        items.append((label, tuple(checked.items())))
    return Options(name, tuple(items))


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _number(sweep: dict, key: str, default: Any, problems: list[str], *, integer: bool = False,
            positive: bool = True, unit_interval: bool = False) -> Any:
    value = sweep.get(key, default)
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and (not positive or value > 0) and (not unit_interval or 0 < value < 1) and (integer or value >= 0)
    if not ok:
        want = ("a positive integer" if positive else "an integer") if integer else (
            "a number in (0, 1)" if unit_interval else "a positive number" if positive else "a number >= 0")
        problems.append(f"[sweep] '{key}' must be {want}, got {value!r}")
        return default
    return value


def parse_spec(table: dict[str, Any], path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a spec table; raise SpecError listing every problem. `overrides` are extra [fixed] settings."""
    path = Path(path)
    problems = _Problems()
    for key in table:
        if key not in TABLES:
            problems.append(f"unknown table [{key}]{_nearest(key, list(TABLES))}")
    sweep = table.get("sweep", {})
    for key in sweep:
        if key not in SWEEP_KEYS:
            problems.append(f"[sweep] unknown key '{key}'{_nearest(key, SWEEP_KEYS)}")
    name = sweep.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        problems.append(f"[sweep] 'name' must be letters, digits, '_', '.', '-', got {name!r}")
    recipe = sweep.get("recipe", "baseline")
    if isinstance(recipe, str) and recipe.endswith(".toml") and not Path(recipe).is_absolute():
        recipe = str((path.parent / recipe).resolve())
    if not isinstance(recipe, str):
        problems.append(f"[sweep] 'recipe' must be a recipe name or .toml path, got {recipe!r}")
    else:
        problems.check(recipe_path, recipe)
    scale = sweep.get("scale", "full")
    if scale not in ("full", "tiny"):
        problems.append(f"[sweep] 'scale' must be full or tiny, got {scale!r}")
    seeds = sweep.get("seeds", [1337, 42])
    if not _int_list(seeds) or len(set(seeds)) != len(seeds):
        problems.append(f"[sweep] 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
        seeds = [1337]
    strategy = sweep.get("strategy", "tpe")
    if strategy not in STRATEGIES:
        problems.append(f"[sweep] 'strategy' must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    trials = _number(sweep, "trials", None, problems, integer=True)
    minutes = _number(sweep, "minutes", None, problems)
    if trials is None and minutes is None and strategy != "grid":
        problems.append("[sweep] give a budget: 'trials' (finished trials) and/or 'minutes' (wall time)")
    if strategy == "greedy" and len(seeds) < 2:
        problems.append(f"[sweep] greedy search keeps a change only on a Welch test, which needs >= 2 'seeds' "
                        f"(got {seeds!r}); records use 3")

    fixed_table = table.get("fixed", {})
    fixed: dict[str, Any] = {}
    for key, value in {**_flatten(fixed_table if isinstance(fixed_table, dict) else {}), **(overrides or {})}.items():
        if key in NOT_SEARCHABLE:
            problems.append(f"[fixed] '{key}' cannot be set here ({NOT_SEARCHABLE[key]})")
            continue
        typed = problems.check(_config_value, key, value, "[fixed]")
        if typed is not None:
            fixed[key] = typed
    space_table = table.get("space", {})
    space: list[Param] = []
    for name_, param_table in _flatten(space_table if isinstance(space_table, dict) else {}).items():
        param = _param(name_, param_table, problems)
        if param is not None:
            space.append(param)
    if not space_table and "space" in table:
        problems.append("[space] is empty: name at least one config key to search")
    elif "space" not in table:
        problems.append("no [space]: name at least one config key to search")
    seen: dict[str, str] = {}
    for p in space:
        for key in p.keys:
            if key in fixed:
                problems.append(f"[space] '{p.name}' searches '{key}', which [fixed] also sets")
            if key in seen:
                problems.append(f"[space] '{p.name}' and '{seen[key]}' both set '{key}'")
            seen[key] = p.name
    pruning = _pruning(table.get("pruning", {}), problems)
    numbers = {"margin": _number(sweep, "margin", 0.005, problems, positive=False),
               "significance": _number(sweep, "significance", 0.01, problems, unit_interval=True),
               "heartbeat_s": _number(sweep, "heartbeat_s", 30, problems, integer=True),
               "grace_s": _number(sweep, "grace_s", 120, problems, integer=True),
               "passes": _number(sweep, "passes", 1, problems, integer=True),
               "sampler_seed": _number(sweep, "sampler_seed", 0, problems, integer=True, positive=False)}
    if numbers["grace_s"] <= numbers["heartbeat_s"]:
        problems.append(f"[sweep] 'grace_s' ({numbers['grace_s']}) must exceed 'heartbeat_s' ({numbers['heartbeat_s']})")
    if not problems and isinstance(recipe, str):
        problems.check(load_recipe, recipe, scale, dict(fixed))  # the base itself must resolve (combinations too)
    if problems:
        raise SpecError(path, list(problems))
    return SweepSpec(path=path, name=name, recipe=recipe, scale=scale, seeds=list(seeds), strategy=strategy,
                     space=space, fixed=fixed, trials=trials, minutes=minutes, pruning=pruning, **numbers)


def _pruning(table: Any, problems: list[str]) -> Pruning:
    if not isinstance(table, dict):
        problems.append(f"[pruning] must be a table, got {table!r}")
        return Pruning()
    for key in table:
        if key not in PRUNING_KEYS:
            problems.append(f"[pruning] unknown key '{key}'{_nearest(key, list(PRUNING_KEYS))}")
    pruning = Pruning(**{k: v for k, v in table.items() if k in PRUNING_KEYS})
    if pruning.pruner not in PRUNERS:
        problems.append(f"[pruning] 'pruner' must be one of {', '.join(PRUNERS)}, got {pruning.pruner!r}")
    if pruning.enabled and (not isinstance(pruning.val_every, int) or pruning.val_every <= 0):
        problems.append(f"[pruning] 'val_every' must be a positive number of steps when pruning is on "
                        f"(trials then run with train.val_every), got {pruning.val_every!r}")
    return pruning


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(path, ["no such sweep spec file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, [f"not valid TOML: {exc}"]) from exc
    return parse_spec(table, path, overrides)
