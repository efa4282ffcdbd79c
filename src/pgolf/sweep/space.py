"""The search space of a sweep: each parameter maps a value to config overrides and tells Optuna how to draw it.

Three kinds: a config key over listed values (`choices`), a config key over a numeric range (`low`/`high`,
optionally `log` and `step`), and a named group of overrides (`options`: one switch that sets several keys,
e.g. SwiGLU = `model.mlp = "swiglu"` + `model.mlp_hidden = 341`). Grid and greedy search need a finite list of
candidates: a range gives `points` values spaced evenly (geometrically with `log`), or every value of an
integer range with a `step` and no `points`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import optuna

DEFAULT_POINTS = 5  # candidates of a float range under grid / greedy search when `points` is not given


def choice_label(value: Any) -> Any:
    """Optuna's categorical choices must be None, bool, int, float or str: lists are labelled by their JSON."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


@dataclass(frozen=True)
class Choice:
    """A config key over listed values."""
    name: str
    values: tuple[Any, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)

    def labels(self) -> list[Any]:
        return [choice_label(v) for v in self.values]

    def overrides(self, label: Any) -> dict[str, Any]:
        return {self.name: self.values[self.labels().index(label)]}

    def candidates(self) -> list[Any]:
        return self.labels()

    def suggest(self, trial: optuna.Trial, discrete: bool) -> Any:
        return trial.suggest_categorical(self.name, self.labels())

    def describe(self) -> str:
        return f"{self.name} in {list(self.values)}"


@dataclass(frozen=True)
class Range:
    """A numeric config key over [low, high]; integer when the field is an int."""
    name: str
    low: float
    high: float
    integer: bool
    log: bool = False
    step: float | None = None
    points: int | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)

    def overrides(self, value: Any) -> dict[str, Any]:
        return {self.name: int(value) if self.integer else float(value)}

    def candidates(self) -> list[Any]:
        if self.integer and self.step is not None and self.points is None:
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        n = self.points or DEFAULT_POINTS
        if self.log:  # geometric: low * (high/low)^(i/(n-1))
            values = [self.low * (self.high / self.low) ** (i / (n - 1)) for i in range(n)]
        else:
            values = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        if self.integer:
            return sorted({int(round(v)) for v in values})
        return [float(f"{v:.6g}") for v in values]

    def suggest(self, trial: optuna.Trial, discrete: bool) -> Any:
        if discrete:
            return trial.suggest_categorical(self.name, self.candidates())
        if self.integer:
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        extra = ((", log" if self.log else "") + (f", step {self.step:g}" if self.step else "")
                 + (f", {self.points} points" if self.points else ""))
        return f"{self.name} in [{self.low:g}, {self.high:g}] ({kind}{extra})"


@dataclass(frozen=True)
class Options:
    """A named switch: each option is a set of config overrides ({} = the base recipe's values)."""
    name: str
    options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted({k for _, items in self.options for k, _ in items}))

    def overrides(self, label: Any) -> dict[str, Any]:
        return dict(dict(self.options)[label])

    def candidates(self) -> list[Any]:
        return [name for name, _ in self.options]

    def suggest(self, trial: optuna.Trial, discrete: bool) -> Any:
        return trial.suggest_categorical(self.name, self.candidates())

    def describe(self) -> str:
        return f"{self.name} in {self.candidates()}"


Param = Choice | Range | Options


def overrides_of(space: list[Param], params: dict[str, Any]) -> dict[str, Any]:
    """The config overrides of a trial's Optuna params (params absent from the trial keep the base values)."""
    out: dict[str, Any] = {}
    by_name = {p.name: p for p in space}
    for name, value in params.items():
        out.update(by_name[name].overrides(value))
    return out


def grid_size(space: list[Param]) -> int:
    return math.prod(len(p.candidates()) for p in space)
