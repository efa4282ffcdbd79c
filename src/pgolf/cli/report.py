"""`pgolf compare` and `pgolf report` over run folders: the tables, the loss-curve plot and the command line's
`RUNS_A... -- RUNS_B...` split. The statistics themselves (the one-sided Welch test against the challenge's
0.005-nat margin, the refusals of runs not scored alike) live in `pgolf.sweep.compare`, which `pgolf sweep`
uses too; they are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..sweep.compare import (MARGIN_NATS, MIN_SEEDS, SIGNIFICANCE, Comparison, ComparisonError, Run,  # noqa: F401
                             RunFolderError, SideStats, WelchTest, comparability_problems,
                             compare_loaded, compare_runs, expand_run_paths, load_run, load_runs, plot_comparison,
                             pyplot, train_curve, welch_one_sided)


# ----------------------------------------------------------------------------- tables

REPORT_COLUMNS = ("run", "recipe", "seed", "val_bpb", "artifact_bytes", "steps", "train_seconds", "eval_seconds", "legal")


def report_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        r = run.result
        rows.append({"run": run.name, "path": str(run.path), "recipe": r.get("recipe"), "seed": r.get("seed"),
                     "val_bpb": r.get("val_bpb"), "val_loss": r.get("val_loss"), "artifact_bytes": r.get("artifact_bytes"),
                     "under_limit": r.get("under_limit"), "steps": r.get("steps"), "train_seconds": r.get("train_seconds"),
                     "eval_seconds": r.get("eval_seconds"), "eval_mode": r.get("eval_mode"), "legal": r.get("legal")})
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key == "val_bpb":
        return f"{value:.4f}"
    if key == "artifact_bytes":
        return f"{value:,}"
    if key.endswith("seconds"):
        return f"{value:.1f}"
    if key == "legal":
        return "yes" if value else "**no**"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    headers = {"artifact_bytes": "artifact bytes", "train_seconds": "train s", "eval_seconds": "eval s"}
    right = {"seed", "val_bpb", "artifact_bytes", "steps", "train_seconds", "eval_seconds"}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "| " + " | ".join("---:" if c in right else "---" for c in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def plot_runs(runs: Sequence[Run], path: str | Path) -> Path:
    """Overlaid training-loss curves of every run (one line each) from their log.jsonl."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for run in runs:
        steps, losses = train_curve(run)
        if steps:
            ax.plot(steps, losses, lw=1.1, label=f"{run.name} ({run.result['val_bpb']:.4f} bpb)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def split_sides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """`RUNS_A... -- RUNS_B...` -> (A, B); a leading '--' is ignored."""
    items = list(tokens)
    if items and items[0] == "--":
        items = items[1:]
    if "--" not in items:
        raise ComparisonError("give the two sides as RUNS_A... -- RUNS_B... (separated by --)")
    cut = items.index("--")
    a, b = items[:cut], items[cut + 1:]
    if not a or not b:
        raise ComparisonError("both sides need at least one run folder: RUNS_A... -- RUNS_B...")
    return a, b
