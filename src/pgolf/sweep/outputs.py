"""What a sweep writes: the trial table (sweep.md, sweep.json), the search plot (sweep.png), the best config as a
recipe that `extends` the base (best.toml), and `pgolf compare` of best vs base over all seeds (compare.txt,
compare.png). Everything is rebuilt from the study, so any worker (or `pgolf sweep SPEC --report`) can write it.
"""

from __future__ import annotations

import statistics
import textwrap
import warnings
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.trial import FrozenTrial, TrialState

from ..data.atomic import atomic_write_text
from ..config import RECIPES_DIR, recipe_path
from .compare import ComparisonError, compare_loaded, plot_comparison
from ..training.runs import write_json
from .greedy import greedy_plan, params_key, runs_of, trial_params
from .spec import SweepSpec
from .study import failure_kind, finished_count, retry_of, role

MIN_TRIALS_FOR_IMPORTANCE = 4
TINY_NOTE = ("A tiny-scale optimum is an early-training result (a small model, a few hundred steps), not a "
             "full-scale one: re-check it at the scale you care about.")


def trial_rows(study: optuna.Study, spec: SweepSpec) -> list[dict[str, Any]]:
    trials = [t for t in study.get_trials(deepcopy=False) if failure_kind(t) != "skipped"]
    base = next((t for t in trials if role(t) == "base" and t.state == TrialState.COMPLETE), None)
    rows = []
    for t in trials:
        per_seed = {s: t.user_attrs[f"seed_{s}"] for s in spec.seeds if t.user_attrs.get(f"seed_{s}")}
        bpb = [r["val_bpb"] for r in per_seed.values()]
        complete = t.state == TrialState.COMPLETE
        rows.append({
            "trial": t.number, "role": role(t), "state": t.state.name, "params": trial_params(t),
            "changes": t.user_attrs.get("changes", {}),
            "val_bpb": t.value if complete else None,
            "val_bpb_std": statistics.stdev(bpb) if complete and len(bpb) > 1 else None,
            "val_loss": statistics.fmean(r["val_loss"] for r in per_seed.values()) if complete else None,
            "vs_base": t.value - base.value if complete and base is not None else None,
            "seeds": {str(s): {"val_bpb": r["val_bpb"], "val_loss": r["val_loss"], "run_dir": r.get("run_dir"),
                               "host": r.get("host")} for s, r in per_seed.items()},
            "artifact_bytes": max((r["artifact_bytes"] for r in per_seed.values()), default=None),
            "under_limit": t.user_attrs.get("under_limit") if complete else None,
            "seconds": t.user_attrs.get("seconds"), "retry_of": retry_of(t), "worker": t.user_attrs.get("worker"),
            "failure": (f"{failure_kind(t)}: {t.user_attrs.get('failure')}" if t.state == TrialState.FAIL
                        else t.user_attrs.get("pruned")),
        })
    return rows


def best_trial(study: optuna.Study, spec: SweepSpec, sweep_dir: Path) -> tuple[FrozenTrial | None, dict | None]:
    """Greedy: the final incumbent. Otherwise: the lowest mean val_bpb among finished trials under the limit."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if spec.strategy == "greedy":
        plan = greedy_plan(study, spec, spec.base_config(), sweep_dir)
        key = params_key(plan.incumbent)
        match = [t for t in trials if params_key(trial_params(t)) == key]
        return (min(match, key=lambda t: t.number) if match else None), plan.to_dict()
    feasible = [t for t in trials if t.user_attrs.get("under_limit", True)]
    return (min(feasible, key=lambda t: (t.value, t.number)) if feasible else None), None


def best_recipe_text(spec: SweepSpec, trial: FrozenTrial) -> str:
    """A recipe that `extends` the base and sets [fixed] plus the best trial's changes, at the sweep's scale."""
    settings = {**spec.fixed, **(trial.user_attrs.get("changes") or {})}
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[name] = value
    path = recipe_path(spec.recipe)
    body: dict[str, Any] = {"extends": path.stem if path.parent == RECIPES_DIR else str(path.resolve()),
                            "description": f"found by pgolf sweep {spec.name} (trial {trial.number})"}
    body.update({"tiny": nested} if spec.scale == "tiny" else nested)
    seeds = [trial.user_attrs[f"seed_{s}"]["val_bpb"] for s in spec.seeds]
    header = [f"# Found by `pgolf sweep {spec.path.name}` ({spec.strategy} search, study '{spec.name}'): trial {trial.number},",
              f"# mean val_bpb {trial.value:.4f} over seeds {spec.seeds} ({', '.join(f'{v:.4f}' for v in seeds)}),",
              f"# at --scale {spec.scale}. Train it with: pgolf train --recipe THIS.toml --scale {spec.scale}"]
    if spec.scale == "tiny":
        header += ["# The settings are [tiny] tables: at --scale full this recipe is its base.", "# " + TINY_NOTE]
    return "\n".join(header) + "\n" + tomli_w.dumps(body)


def importances(study: optuna.Study, spec: SweepSpec) -> tuple[dict[str, float] | None, str]:
    names = [p.name for p in spec.space]
    usable = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if set(names) <= set(t.params)]
    if len(names) < 2 or len(usable) < MIN_TRIALS_FOR_IMPORTANCE or len({t.value for t in usable}) < 2:
        return None, (f"parameter importances need >= 2 parameters and >= {MIN_TRIALS_FOR_IMPORTANCE} finished trials "
                      f"that set all of them (have {len(names)} and {len(usable)})")
    with warnings.catch_warnings():  # "some regimes have < 2 trials": the note under the plot says how many there are
        warnings.simplefilter("ignore", UserWarning)
        found = optuna.importance.get_param_importances(study, params=names)
    return found, f"PED-ANOVA importances (optuna.importance) over {len(usable)} trials"


def plot_search(study: optuna.Study, spec: SweepSpec, rows: list[dict[str, Any]], best: FrozenTrial | None,
                imp: dict[str, float] | None, imp_note: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    done = [r for r in rows if r["state"] == "COMPLETE"]
    ok = [r for r in done if r["under_limit"] is not False and r["role"] != "base"]
    over = [r for r in done if r["under_limit"] is False]
    left.scatter([r["trial"] for r in ok], [r["val_bpb"] for r in ok], color="tab:blue", label="trial (mean over seeds)", zorder=3)
    if over:
        left.scatter([r["trial"] for r in over], [r["val_bpb"] for r in over], color="tab:red", marker="x", label="over the limit")
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if pruned:
        left.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                     color="0.6", marker="v", label="pruned (last intermediate)")
    base = next((r for r in done if r["role"] == "base"), None)
    if base:
        left.axhline(base["val_bpb"], color="0.3", ls="--", lw=1, label=f"base {base['val_bpb']:.4f}")
    running, xs, ys = None, [], []
    for r in sorted(ok, key=lambda r: r["trial"]):
        running = r["val_bpb"] if running is None else min(running, r["val_bpb"])
        xs.append(r["trial"])
        ys.append(running)
    if xs:
        left.step(xs, ys, where="post", color="tab:green", lw=1.2, label="best so far")
    if best is not None:
        left.scatter([best.number], [best.value], s=140, facecolors="none", edgecolors="tab:green", lw=2, label="best")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("trial")
    left.set_ylabel("val_bpb of the artifact")
    left.set_title(f"{spec.name}: {spec.strategy}, seeds {spec.seeds}", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    if imp:
        names = list(imp)[::-1]
        right.barh(names, [imp[n] for n in names], color="tab:purple")
        right.set_xlabel("importance")
        right.set_title(imp_note, fontsize=9)
        right.tick_params(axis="y", labelsize=7)
    else:
        right.axis("off")
        right.text(0.5, 0.5, textwrap.fill(imp_note, 48), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], spec: SweepSpec) -> str:
    lines = ["| trial | role | state | changes | val_bpb | ± std | vs base | per seed | artifact bytes | min | note |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    order = sorted(rows, key=lambda r: (r["val_bpb"] is None, r["val_bpb"] or 0.0, r["trial"]))
    for r in order:
        changes = ", ".join(f"`{k}={v}`" for k, v in r["changes"].items()) or ("(base)" if r["role"] == "base" else "—")
        seeds = ", ".join(f"{s}: {v['val_bpb']:.4f}" for s, v in r["seeds"].items())
        note = r["failure"] or ("" if r["under_limit"] is not False else "OVER THE LIMIT")
        if r["retry_of"] is not None:
            note = f"retry of {r['retry_of']}" + (f"; {note}" if note else "")
        minutes = r["seconds"] / 60 if r["seconds"] else None
        lines.append(f"| {r['trial']} | {r['role']} | {r['state'].lower()} | {changes} | {_fmt(r['val_bpb'])} | "
                     f"{_fmt(r['val_bpb_std'])} | {_fmt(r['vs_base'] if r['role'] != 'base' else None, 4)} | {seeds} | "
                     f"{'—' if r['artifact_bytes'] is None else format(r['artifact_bytes'], ',')} | {_fmt(minutes, 1)} | "
                     f"{str(note).replace('|', '/')[:160]} |")
    return "\n".join(lines)


def write_outputs(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, storage_url: str,
                  stopped_because: str = "") -> dict[str, Any]:
    """Write sweep.json, sweep.md, sweep.png, best.toml, compare.txt/.png; return the summary."""
    rows = trial_rows(study, spec)
    best, greedy = best_trial(study, spec, sweep_dir)
    imp, imp_note = importances(study, spec)
    base = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if role(t) == "base"), None)
    summary: dict[str, Any] = {
        "sweep": spec.name, "storage": storage_url, "spec": spec.to_dict(), "budget": spec.trial_budget,
        "finished": finished_count(study), "stopped_because": stopped_because, "trials": rows,
        "best": None, "compare": None, "importances": imp, "importances_note": imp_note, "greedy": greedy,
        "note": TINY_NOTE if spec.scale == "tiny" else None,
    }
    text = [f"# sweep {spec.name}", "",
            f"{spec.strategy} search over {', '.join(p.describe() for p in spec.space)}; base `{spec.recipe}` at "
            f"--scale {spec.scale}; seeds {spec.seeds}; objective: mean val_bpb of the artifact (lower is better).",
            f"{summary['finished']} of {spec.trial_budget if spec.trial_budget is not None else '—'} trials finished"
            + (f" ({stopped_because})" if stopped_because else "") + ".", ""]
    compare_text = ""
    if best is not None:
        recipe_file = sweep_dir / "best.toml"
        atomic_write_text(recipe_file, best_recipe_text(spec, best))
        summary["best"] = {"trial": best.number, "val_bpb": best.value, "changes": best.user_attrs.get("changes", {}),
                           "recipe": str(recipe_file)}
        text.append(f"Best: trial {best.number}, val_bpb {best.value:.4f} "
                    f"[{', '.join(f'{k}={v}' for k, v in (best.user_attrs.get('changes') or {}).items()) or 'the base'}]; "
                    f"recipe `{recipe_file.name}`.")
        if base is not None and best.number != base.number:
            compare_text = _compare(spec, sweep_dir, base, best, summary)
    text += ["", markdown(rows, spec), ""]
    if compare_text:
        text += ["## best vs base (pgolf compare)", "", "```", compare_text, "```", ""]
    if greedy:
        text += ["## greedy steps", ""] + [
            f"- {s['param']}: " + "; ".join(
                f"{c['params'].get(s['param'], 'base')} {c['status']}"
                + (f" (Δ {c['diff_nats']:+.4f} nats, p = {c['p']:.3g})" if c["diff_nats"] is not None and c["p"] is not None else "")
                + (f" {c['note']}" if c["note"] else "")
                for c in s["candidates"]) + f" -> kept: {s['kept'] if s['kept'] is not None else 'no change'}"
            for s in greedy["steps"]] + [""]
    text.append(f"Parameter importances: {imp if imp else imp_note}")
    if spec.scale == "tiny":
        text += ["", TINY_NOTE]
    plot_search(study, spec, rows, best, imp, imp_note, sweep_dir / "sweep.png")
    atomic_write_text(sweep_dir / "sweep.md", "\n".join(text) + "\n")
    write_json(sweep_dir / "sweep.json", summary)
    return summary


def _compare(spec: SweepSpec, sweep_dir: Path, base: FrozenTrial, best: FrozenTrial, summary: dict[str, Any]) -> str:
    try:
        comparison = compare_loaded(runs_of(base, spec.seeds, sweep_dir), runs_of(best, spec.seeds, sweep_dir),
                                    margin=spec.margin)
    except ComparisonError as exc:
        summary["compare"] = {"error": str(exc)}
        return f"not compared: {exc}"
    plot_comparison(comparison, sweep_dir / "compare.png")
    summary["compare"] = comparison.to_dict()
    text = "A = base, B = best\n" + comparison.format()
    atomic_write_text(sweep_dir / "compare.txt", text + "\n")
    return text
