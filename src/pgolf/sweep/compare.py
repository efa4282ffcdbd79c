"""The statistics of run folders that `pgolf compare` and `pgolf sweep` share (below the command line, which
imports them from here): loading finished runs, the Welch test, comparisons, and the comparison plot.

`compare` answers the challenge's question for a record: does B beat A by at least 0.005 nats (val_loss) at
p < 0.01? With several seeds per side it runs a one-sided Welch t-test of
    H0: mean_A - mean_B <= margin   against   H1: mean_A - mean_B > margin,
    t = (mean_A - mean_B - margin) / sqrt(s_A^2/n_A + s_B^2/n_B),
    df = (s_A^2/n_A + s_B^2/n_B)^2 / ((s_A^2/n_A)^2/(n_A-1) + (s_B^2/n_B)^2/(n_B-1))   (Welch-Satterthwaite),
    p = P(T_df >= t).
It refuses runs scored on different validation data or tokenizers (env.json checksums, target and byte
counts) or under different evaluation modes, unless forced.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..training.runs import read_log

MARGIN_NATS = 0.005     # the challenge's bar for a new record
SIGNIFICANCE = 0.01     # ... at p < 0.01
MIN_SEEDS = 3


class ComparisonError(ValueError):
    """Runs that cannot be compared honestly (different validation data, tokenizer or evaluation mode)."""


class RunFolderError(ValueError):
    """A path is not a finished pgolf run folder (no readable result.json)."""


# ----------------------------------------------------------------------------- run folders

@dataclass
class Run:
    path: Path
    result: dict[str, Any]
    env: dict[str, Any] | None
    config: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.path.name

    def log(self) -> list[dict[str, Any]]:
        return read_log(self.path / "log.jsonl")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return value


def load_run(path: str | Path) -> Run:
    """A finished run folder: result.json (required), env.json and config.toml (when present)."""
    path = Path(path)
    result_file = path / "result.json"
    if not result_file.is_file():
        raise RunFolderError(f"{path}: no result.json (not a finished pgolf run folder)")
    result = _read_json(result_file)
    for key in ("val_loss", "val_bpb"):
        if not isinstance(result.get(key), (int, float)):
            raise RunFolderError(f"{result_file}: '{key}' missing or not a number")
    env = _read_json(path / "env.json") if (path / "env.json").is_file() else None
    config = None
    if (path / "config.toml").is_file():
        try:
            config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise RunFolderError(f"{path / 'config.toml'}: not valid TOML ({exc})") from exc
    return Run(path, result, env, config)


def expand_run_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a run folder, or a folder of run folders (every child with a result.json, sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "result.json").is_file():
            out.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / "result.json").is_file()) if path.is_dir() else []
        if not children:
            raise RunFolderError(f"{path}: no result.json here or in its subfolders (not a finished run folder)")
        out += children
    return out


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    return [load_run(p) for p in expand_run_paths(paths)]


# ----------------------------------------------------------------------------- statistics

@dataclass
class WelchTest:
    """One-sided Welch test of H0: mean_a - mean_b <= margin (B is not better by the margin)."""
    margin: float
    diff: float            # mean_a - mean_b
    se: float
    t: float
    df: float
    p: float


def welch_one_sided(a: Sequence[float], b: Sequence[float], margin: float = MARGIN_NATS) -> WelchTest:
    """p-value that mean(a) - mean(b) > margin (lower is better: B beats A by more than `margin`)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values per side, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical values on both sides: the difference is exact
        return WelchTest(margin, diff, 0.0, math.copysign(math.inf, diff - margin), math.inf, 0.0 if diff > margin else 1.0)
    t = (diff - margin) / se
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy.stats import t as student_t  # scipy's Student-t tail, P(T > t); the report is never bundled
    return WelchTest(margin, diff, se, t, df, float(student_t.sf(t, df)))


# ----------------------------------------------------------------------------- comparisons

@dataclass
class SideStats:
    label: str
    runs: list[str]
    seeds: list[int]
    recipes: list[str]
    val_loss: list[float]
    val_bpb: list[float]

    @property
    def n(self) -> int:
        return len(self.val_loss)

    def mean(self, key: str) -> float:
        return statistics.fmean(getattr(self, key))

    def std(self, key: str) -> float | None:
        values = getattr(self, key)
        return statistics.stdev(values) if len(values) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "seeds": self.seeds, "recipes": self.recipes, "n": self.n,
                "val_loss": self.val_loss, "val_bpb": self.val_bpb,
                "val_loss_mean": self.mean("val_loss"), "val_loss_std": self.std("val_loss"),
                "val_bpb_mean": self.mean("val_bpb"), "val_bpb_std": self.std("val_bpb")}


def _side(label: str, runs: list[Run]) -> SideStats:
    return SideStats(label, [str(r.path) for r in runs], [r.result.get("seed") for r in runs],
                     sorted({str(r.result.get("recipe")) for r in runs}),
                     [float(r.result["val_loss"]) for r in runs], [float(r.result["val_bpb"]) for r in runs])


@dataclass
class Comparison:
    a: SideStats
    b: SideStats
    test: WelchTest | None
    margin: float = MARGIN_NATS
    warnings: list[str] = field(default_factory=list)
    forced_problems: list[str] = field(default_factory=list)
    a_runs: list[Run] = field(default_factory=list, repr=False)
    b_runs: list[Run] = field(default_factory=list, repr=False)

    @property
    def diff_loss(self) -> float:
        """B - A in nats (negative: B is better)."""
        return self.b.mean("val_loss") - self.a.mean("val_loss")

    @property
    def diff_bpb(self) -> float:
        return self.b.mean("val_bpb") - self.a.mean("val_bpb")

    def significant(self, alpha: float = SIGNIFICANCE) -> bool:
        return self.test is not None and self.test.p < alpha

    def to_dict(self) -> dict[str, Any]:
        test = None if self.test is None else {
            "h0": f"mean_A - mean_B <= {self.margin} nats", "t": _finite(self.test.t), "df": _finite(self.test.df),
            "p": self.test.p, "se": self.test.se}
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "diff_val_loss_nats": self.diff_loss,
                "diff_val_bpb": self.diff_bpb, "margin_nats": self.margin, "welch_one_sided": test,
                "beats_by_margin_at_p_0.01": self.significant(), "warnings": self.warnings,
                "forced_past": self.forced_problems}

    def format(self) -> str:
        """The human-readable verdict printed by `pgolf compare`."""
        def pm(side: SideStats, key: str, digits: int) -> str:
            std = side.std(key)
            return f"{side.mean(key):.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else " (1 seed)")

        lines = [f"{'side':<5} {'n':>2}  {'val_bpb':<22} {'val_loss (nats)':<22} recipe / seeds"]
        for side in (self.a, self.b):
            lines.append(f"{side.label:<5} {side.n:>2}  {pm(side, 'val_bpb', 5):<22} {pm(side, 'val_loss', 5):<22} "
                         f"{', '.join(side.recipes)} / {', '.join(map(str, side.seeds))}")
        lines.append(f"B - A: {self.diff_loss:+.5f} nats val_loss, {self.diff_bpb:+.5f} val_bpb "
                     f"({'B is better' if self.diff_loss < 0 else 'B is not better'})")
        if self.test is None:
            lines.append("one-sided Welch t-test: needs at least 2 seeds per side (not run)")
        else:
            t = self.test
            lines.append(f"one-sided Welch t-test, H0: mean_A - mean_B <= {self.margin} nats: "
                         f"t = {t.t:.3f}, df = {t.df:.2f}, p = {t.p:.3g}")
            verdict = ("YES: B beats A by >= {m} nats at p < {a} (the challenge's bar for a record)" if self.significant()
                       else "no: B does not beat A by >= {m} nats at p < {a}")
            lines.append(verdict.format(m=self.margin, a=SIGNIFICANCE))
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"forced past: {p}" for p in self.forced_problems]
        return "\n".join(lines)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def comparability_problems(runs: Sequence[Run]) -> list[str]:
    """Why these runs' scores are not comparable: validation data, tokenizer, scored targets, eval mode."""
    problems: list[str] = []

    def differing(label: str, value_of) -> None:
        values: dict[str, list[str]] = {}
        for run in runs:
            values.setdefault(json.dumps(value_of(run), sort_keys=True, default=str), []).append(run.name)
        if len(values) > 1:
            shown = "; ".join(f"{v} in {', '.join(names)}" for v, names in values.items())
            problems.append(f"{label} differ: {shown}")

    missing_env = [r.name for r in runs if r.env is None]
    if missing_env:
        problems.append(f"cannot check the validation data and tokenizer: no env.json in {', '.join(missing_env)}")
    with_env = [r for r in runs if r.env is not None]
    if with_env:
        differing("validation data (env.json val_sha256)", lambda r: r.env.get("val_sha256") if r.env else None)
        differing("tokenizers (env.json tokenizer_sha256)", lambda r: r.env.get("tokenizer_sha256") if r.env else None)
    differing("scored validation targets/bytes (result.json val_targets, val_bytes)",
              lambda r: [r.result.get("val_targets"), r.result.get("val_bytes")])
    differing("evaluation modes (result.json eval_mode)", lambda r: r.result.get("eval_mode"))
    return problems


def compare_runs(a_paths: Sequence[str | Path], b_paths: Sequence[str | Path], *, force: bool = False,
                 margin: float = MARGIN_NATS) -> Comparison:
    """Compare side A with side B (several seeds each). Raises ComparisonError for incomparable runs unless forced."""
    return compare_loaded(load_runs(a_paths), load_runs(b_paths), force=force, margin=margin)


def compare_loaded(a_runs: Sequence[Run], b_runs: Sequence[Run], *, force: bool = False,
                   margin: float = MARGIN_NATS) -> Comparison:
    """`compare_runs` on runs already loaded (or rebuilt from a sweep's study records)."""
    a_runs, b_runs = list(a_runs), list(b_runs)
    problems = comparability_problems(a_runs + b_runs)
    if problems and not force:
        raise ComparisonError("refusing to compare: " + "; ".join(problems) + " (pass --force to compare anyway)")
    a, b = _side("A", a_runs), _side("B", b_runs)
    warnings = []
    for side, runs in ((a, a_runs), (b, b_runs)):
        if side.n < MIN_SEEDS:
            warnings.append(f"side {side.label} has {side.n} run{'s' if side.n != 1 else ''}; records need "
                            f"{MIN_SEEDS} seeds or more for a trustworthy p-value")
        repeated = sorted({s for s in side.seeds if side.seeds.count(s) > 1}, key=str)
        if repeated:
            warnings.append(f"side {side.label} repeats seed(s) {repeated}: repeated seeds are not independent samples")
        illegal = [r.name for r in runs if r.result.get("legal") is False]
        if illegal:
            warnings.append(f"side {side.label}: {', '.join(illegal)} used an evaluation that is not legal under the challenge rules")
    limited = [r.name for r in a_runs + b_runs if r.result.get("val_tokens_limited")]
    if limited:
        warnings.append(f"{len(limited)} run(s) scored only part of the validation split (data.val_tokens_limit)")
    test = None
    if a.n >= 2 and b.n >= 2:
        test = welch_one_sided(a.val_loss, b.val_loss, margin)
    return Comparison(a, b, test, margin, warnings, problems, a_runs, b_runs)


# ----------------------------------------------------------------------------- plots

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def train_curve(run: Run) -> tuple[list[int], list[float]]:
    points = [(rec["step"], rec["train_loss"]) for rec in run.log() if rec.get("train_loss") is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Left: val_bpb per seed on each side with mean ± std. Right: the training-loss curves, coloured by side."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [1, 2]})
    colors = {"A": "tab:blue", "B": "tab:orange"}
    for x, side in enumerate((comparison.a, comparison.b)):
        n = side.n
        xs = [x + (i - (n - 1) / 2) * 0.08 for i in range(n)]
        left.scatter(xs, side.val_bpb, color=colors[side.label], zorder=3)
        for xi, v, seed in zip(xs, side.val_bpb, side.seeds):
            left.annotate(str(seed), (xi, v), textcoords="offset points", xytext=(4, 0), fontsize=7)
        std = side.std("val_bpb") or 0.0
        left.errorbar([x + 0.3], [side.mean("val_bpb")], yerr=[std], fmt="s", color=colors[side.label], capsize=4)
    left.set_xticks([0, 1], [f"A (n={comparison.a.n})", f"B (n={comparison.b.n})"])
    left.set_xlim(-0.5, 1.6)
    left.set_ylabel("val_bpb (per seed; mean ± std)")
    title = f"B - A = {comparison.diff_loss:+.4f} nats"
    if comparison.test is not None:
        title += f", p = {comparison.test.p:.2g}"
    left.set_title(title, fontsize=9)
    left.grid(alpha=0.3)
    for label, runs in (("A", comparison.a_runs), ("B", comparison.b_runs)):
        for i, run in enumerate(runs):
            steps, losses = train_curve(run)
            if steps:
                right.plot(steps, losses, lw=1.0, alpha=0.8, color=colors[label], label=label if i == 0 else None)
    right.set_xlabel("step")
    right.set_ylabel("train loss (nats)")
    right.grid(alpha=0.3)
    if right.lines:
        right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
