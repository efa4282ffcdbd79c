"""Every recipe end to end at `--scale tiny` on the FineWeb sample (CPU), several seeds, compared with baseline.

Each (recipe, seed) is one `pgolf train --recipe R --scale tiny --data ... --tokenizer ...` in its own process
(train -> pack -> evaluate the artifact -> result.json), exactly as a user runs it; pr1536 uses the sp8192
sample, pr1855 CaseOps shards of the same documents (the 600 validation documents, then the 200 training ones)
made first with `pgolf data prepare --transform caseops` and the record's CaseOps tokenizer, as the README says. The table gives val_bpb mean ± std over the seeds, artifact bytes, train/eval seconds, the longest wall
time of one whole CLI process (the tiny recipes are sized to finish in under 5 minutes on a quiet 2-core CPU),
legality and the one-sided Welch p-value that the recipe beats baseline by >= 0.005 nats
(pgolf.report.compare_runs); none for pr1536, whose sp8192 nats per token do not compare with sp1024's.
Recipes whose evaluation differs from baseline's (sliding windows, TTT) or that score a limited validation
prefix ([tiny.data] val_tokens_limit) are compared anyway (forced) and the JSON says so: at tiny scale the
p-value is a sanity check, not a record claim.

    python benchmarks/recipes_cpu.py [--recipes baseline pr103 ...] [--seeds 1337 42 7] [--steps N]
                                     [--out benchmarks/results/recipes_cpu.json] [--runs-root DIR] [--merge]

--merge keeps the rows of the recipes not run from the existing --out JSON (a new recipe's row added to the
table without rerunning the others; the comparison with baseline then uses baseline's runs under --runs-root
when there, else none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgolf.cli.report import ComparisonError, compare_runs
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
RECIPES = ("baseline", "pr103", "pr206", "pr595", "pr1573", "pr1536", "pr1855")
VOCAB = {"pr1536": 8192, "pr1855": 8192}
CASEOPS = {"pr1855"}  # recipes trained on CaseOps shards (data.text_transform = caseops)
CASEOPS_TOKENIZER = SHARED / "tokenizers" / "alt" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
WALL_FILE = "recipes_cpu_wall.json"  # the whole CLI process's wall time, written beside result.json


def caseops_sample(root: Path) -> Path:
    """CaseOps shards of the FineWeb sample's documents under `root`, made once by the CLI as a user does."""
    out = root / "caseops_sample"
    if (out / "meta.json").is_file():
        return out
    docs = root / "caseops_sample_docs.jsonl"
    with docs.open("w") as f:  # validation documents first: prepare puts the first --val-docs there
        for name in ("val_prefix_docs_sp1024_decoded.jsonl", "docs_sample_200.jsonl"):
            f.write((SHARED / "fineweb" / name).read_text())
    subprocess.run([sys.executable, "-m", "pgolf", "data", "prepare", "--input", str(docs), "--tokenizer",
                    str(CASEOPS_TOKENIZER), "--val-docs", "600", "--transform", "caseops", "--no-docs-check",
                    "--out", str(out), "--quiet"], check=True)
    return out


def data_args(recipe: str, root: Path | None = None) -> list[str]:
    if recipe in CASEOPS:
        folder = caseops_sample(root)
        return ["--data", str(folder), "--tokenizer", str(folder / "tokenizer.model")]
    vocab = VOCAB.get(recipe, 1024)
    return ["--data", str(SHARED / "datasets" / f"fineweb10B_sp{vocab}_sample"),
            "--tokenizer", str(SHARED / "tokenizers" / f"fineweb_{vocab}_bpe.model")]


def run_one(recipe: str, seed: int, out: Path, steps: int | None, overrides: list[str]) -> dict:
    """One CLI run in a fresh process; returns its result.json plus the process's wall time and exit status."""
    cmd = [sys.executable, "-m", "pgolf", "train", "--recipe", recipe, "--scale", "tiny", *data_args(recipe, out.parent),
           "--seed", str(seed), "--out", str(out), "--quiet", "--device", "cpu"]
    if steps is not None:
        cmd += ["--set", f"train.steps={steps}"]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not (out / "result.json").is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"recipe": recipe, "seed": seed, "failed": True, "returncode": proc.returncode,
                "wall_seconds": wall, "error": tail}
    result = json.loads((out / "result.json").read_text())
    result.update(wall_seconds=wall, returncode=proc.returncode, run_dir=str(out))
    (out / WALL_FILE).write_text(json.dumps({"wall_seconds": wall}) + "\n")  # kept for --reuse
    return result


def summarize(recipe: str, results: list[dict], baseline_dirs: list[Path]) -> dict:
    ok = [r for r in results if not r.get("failed")]
    row: dict = {"recipe": recipe, "seeds": [r["seed"] for r in ok], "failed": [r for r in results if r.get("failed")]}
    if not ok:
        return row
    bpb = [r["val_bpb"] for r in ok]
    walls = [r["wall_seconds"] for r in ok if r.get("wall_seconds") is not None]
    row.update(
        val_bpb_mean=statistics.fmean(bpb), val_bpb_std=statistics.stdev(bpb) if len(bpb) > 1 else None,
        val_loss_mean=statistics.fmean(r["val_loss"] for r in ok),
        artifact_bytes=max(r["artifact_bytes"] for r in ok), code_bytes=max(r["code_bytes"] for r in ok),
        train_seconds=statistics.fmean(r["train_seconds"] for r in ok),
        eval_seconds=statistics.fmean(r["eval_seconds"] for r in ok),
        wall_seconds=statistics.fmean(walls) if walls else None, wall_seconds_max=max(walls) if walls else None,
        legal=all(r.get("legal", True) for r in ok), eval_mode=ok[0].get("eval_mode"),
        val_targets=ok[0].get("val_targets"), train_tokens=ok[0].get("train_tokens"),
        under_limit=all(r["under_limit"] for r in ok))
    if VOCAB.get(recipe, 1024) != VOCAB.get("baseline", 1024):
        row["p_vs_baseline_note"] = "other tokenizer: its val_loss (nats per token) does not compare; val_bpb does"
    elif recipe != "baseline" and baseline_dirs:
        try:
            comparison = compare_runs(baseline_dirs, [Path(r["run_dir"]) for r in ok], force=True)
        except ComparisonError as exc:  # never raised with force=True; kept for clarity
            row["p_vs_baseline_error"] = str(exc)
        else:
            row["diff_nats_vs_baseline"] = comparison.diff_loss
            row["p_vs_baseline"] = comparison.test.p if comparison.test else None
            row["comparison_forced_past"] = comparison.forced_problems
    return row


def table(rows: list[dict]) -> str:
    def fmt(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        return "—" if value is None else format(value, spec)

    lines = ["| recipe | train tokens | scored targets | val_bpb (mean ± std) | artifact bytes | train s | eval s "
             "| wall s (max) | legal | B−A nats | p vs baseline |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        if "val_bpb_mean" not in row:
            lines.append(f"| {row['recipe']} | failed | | | | | | | | | |")
            continue
        std = f" ± {row['val_bpb_std']:.4f}" if row.get("val_bpb_std") is not None else ""
        forced = " (forced)" if row.get("comparison_forced_past") else ""
        p_value = "n/a (other tokenizer)" if row.get("p_vs_baseline_note") else fmt(row, "p_vs_baseline", ".3g") + forced
        lines.append(f"| {row['recipe']} | {row['train_tokens'] / 1e6:.2f} M | {row['val_targets']:,} | "
                     f"{row['val_bpb_mean']:.4f}{std} | {row['artifact_bytes']:,} | "
                     f"{row['train_seconds']:.1f} | {row['eval_seconds']:.1f} | {fmt(row, 'wall_seconds_max', '.0f')} | "
                     f"{'yes' if row['legal'] else '**no**'} | "
                     f"{fmt(row, 'diff_nats_vs_baseline', '+.4f')} | {p_value} |")
    return "\n".join(lines)


def merged(old: dict, new: dict) -> dict:
    """`new`'s rows and runs replace `old`'s for the recipes `new` ran; the others stay, in RECIPES order. The
    top-level fields (date, machine, note) become lists with one entry per invocation."""
    ran = {row["recipe"] for row in new["summary"]}
    rows = {row["recipe"]: row for row in old["summary"] if row["recipe"] not in ran} | {r["recipe"]: r for r in new["summary"]}
    order = sorted(rows, key=lambda r: RECIPES.index(r) if r in RECIPES else len(RECIPES))
    out = dict(old)
    out["summary"] = [rows[r] for r in order]
    out["runs"] = {r: (new["runs"] if r in ran else old["runs"])[r] for r in order if r in new["runs"] or r in old["runs"]}
    out["markdown"] = table(out["summary"])
    out["merged_invocations"] = old.get("merged_invocations", []) + [
        {k: new[k] for k in ("seeds", "steps", "overrides", "device", "cpus", "torch_threads", "torch", "date",
                             "load_average_at_end", "note")} | {"recipes": sorted(ran)}]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 42, 7])
    parser.add_argument("--steps", type=int, help="override train.steps (default: each recipe's tiny steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for every run (e.g. data.val_tokens_limit=65537)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "recipes_cpu.json"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other recipes' rows and runs from the existing --out JSON")
    parser.add_argument("--note", default="", help="free text stored in the JSON (how the machine was shared, ...)")
    parser.add_argument("--runs-root", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse (recipe, seed) runs already finished under --runs-root instead of rerunning them "
                             "(lets two processes split the recipes, then one more summarise them all)")
    args = parser.parse_args()
    if not (SHARED / "datasets" / "fineweb10B_sp1024_sample").is_dir():
        print(f"needs the FineWeb sample in {SHARED}", file=sys.stderr)
        return 2
    recipes = list(args.recipes)
    if "baseline" in recipes:  # baseline first: every other recipe is compared with it
        recipes.remove("baseline")
        recipes.insert(0, "baseline")
    root = Path(args.runs_root) if args.runs_root else Path(tempfile.mkdtemp(prefix="pgolf-recipes-"))
    per_recipe: dict[str, list[dict]] = {}
    rows = []
    baseline_dirs: list[Path] = []
    for recipe in recipes:
        per_recipe[recipe] = []
        for seed in args.seeds:
            out = root / f"{recipe}-s{seed}"
            if args.reuse and (out / "result.json").is_file():
                result = {**json.loads((out / "result.json").read_text()), "run_dir": str(out), "returncode": 0,
                          "reused": True}
                wall_file = out / WALL_FILE
                result["wall_seconds"] = (json.loads(wall_file.read_text())["wall_seconds"] if wall_file.is_file()
                                          else None)
            else:
                if out.exists():
                    shutil.rmtree(out)
                result = run_one(recipe, seed, out, args.steps, args.overrides)
            per_recipe[recipe].append(result)
            status = "FAILED" if result.get("failed") else f"val_bpb {result['val_bpb']:.4f}"
            wall = "wall unknown" if result["wall_seconds"] is None else f"{result['wall_seconds']:.0f} s"
            print(f"{recipe} seed {seed}: {status} ({wall})", flush=True)
        if recipe == "baseline":
            baseline_dirs = [Path(r["run_dir"]) for r in per_recipe[recipe] if not r.get("failed")]
        rows.append(summarize(recipe, per_recipe[recipe], baseline_dirs))
    markdown = table(rows)
    print(markdown)
    keep = ("seed", "val_bpb", "val_loss", "val_bpb_prequant", "val_bpb_plain", "artifact_bytes", "model_bytes",
            "code_bytes", "steps", "train_tokens", "train_seconds", "eval_seconds", "wall_seconds", "tokens_per_second", "val_targets",
            "eval_mode", "legal", "under_limit", "failed", "returncode", "error")
    report = {
        "benchmark": "recipes_cpu", "scale": "tiny", "seeds": args.seeds, "steps": args.steps,
        "overrides": args.overrides, "device": f"cpu ({platform.processor() or platform.machine()})",
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "load_average_at_end": os.getloadavg(), "note": args.note,
        "summary": rows, "runs": {k: [{f: r[f] for f in keep if f in r} for r in v] for k, v in per_recipe.items()},
        "markdown": markdown,
    }
    if args.merge and Path(args.out).is_file():
        report = merged(json.loads(Path(args.out).read_text()), report)
    for row in report["summary"]:
        row["failed"] = [{k: r[k] for k in ("seed", "returncode", "error") if k in r} for r in row["failed"]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), report)
    print(f"wrote {args.out} (runs in {root})")
    return 0 if all("val_bpb_mean" in row for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
