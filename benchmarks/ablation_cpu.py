"""Architecture ablation on CPU: the baseline at the core benchmark scale, each technique alone on top of it,
then each recipe's tiny form — val_bpb (2 seeds), tokens/s and parameter count, on the FineWeb sample.

    python benchmarks/ablation_cpu.py [--steps 300] [--seeds 1337 42] [--val-tokens 0] [--only NAME ...] [--jobs 2]

With --jobs N, N runs train side by side, each in its own process with --threads torch threads (default 1): on
the 2-core machine two 1-thread runs together train ~35% more tokens per second than one 2-thread run, and
val_bpb does not depend on the thread count. Results are appended to benchmarks/results/ablation_cpu.json as
each run finishes (a rerun skips finished entries), and a markdown table is written next to it (ablation_cpu.md;
--table rewrites it from the JSON alone). --only runs the named entries in the order given. Every run uses the
same data, steps, batch and evaluation; only the named switch differs. Quantization is the baseline's (int8,
passthrough of tensors <= 65,536 values), so the scored artifact is close to the full-precision model.
Data: $PGOLF_SHARED_DATA (default ../shared/data next to the repository).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

import pgolf
from pgolf.data.atomic import atomic_write_text
from pgolf.config import recipe_names
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "results" / "ablation_cpu.json"

# Each technique alone, at the 4 x 256 scale (4 physical layers, 4 heads / 2 KV heads, head dim 64).
TECHNIQUES: dict[str, dict] = {
    "baseline": {},
    "leaky_relu2": {"model.mlp": "leaky_relu2"},
    "swiglu": {"model.mlp": "swiglu", "model.mlp_hidden": 341},
    "mlp3x": {"model.mlp_mult": 3.0},
    "partial_rope16": {"model.rope_dims": 16},
    "qk_gain5": {"model.qk_gain_init": 5.0},
    "attn_gate": {"model.attn_gate": True},
    "sparse_attn_gate": {"model.sparse_attn_gate": True, "model.sparse_attn_gate_scale": 0.5},
    "value_residual": {"model.value_residual": True},
    "xsa_all": {"model.xsa_last_n": -1},
    "doc_attention": {"model.doc_attention": True},
    "bigram_hash": {"model.bigram_buckets": 2048, "model.bigram_dim": 64},
    "smear_post": {"model.smear": "post_norm"},
    "smear_content": {"model.smear": "content_gate"},
    "value_embed": {"model.value_embed_dim": 64, "model.value_embed_layers": [2, 3]},
    "loop_2x": {"model.layer_schedule": [0, 1, 2, 3, 0, 1, 2, 3]},
    "replay_1_2": {"model.layer_schedule": [0, 1, 1, 2, 2, 3], "model.encoder_layers": 2, "model.bridge_layers": 2,
                   "model.bridge_modulation": True},
    "lora_layer_scales": {"model.layer_schedule": [0, 1, 2, 3, 0, 1, 2, 3], "model.lora_rank": 4,
                          "model.layer_scales": True},
    "skip_gates": {"model.skip_gates": True},
    "ln_scale": {"model.ln_scale": True},
    "parallel_lanes": {"model.parallel_residual": "separate_lanes", "model.parallel_start_layer": 2},
    "cross_lanes": {"model.parallel_residual": "cross_lanes", "model.parallel_start_layer": 2},
    "orthogonal_init": {"model.init": "orthogonal"},
    # Optimizer / data switches of the #1855 stack (issue #22). The baseline has no Muon WD, so the taper (#1729:
    # 0.7 -> 0.5) is measured against the same WD without it.
    "muon_wd": {"optim.muon_weight_decay": 0.095},
    "muon_wd_taper": {"optim.muon_weight_decay": 0.095, "optim.muon_wd_taper_start": 0.7,
                      "optim.muon_wd_taper_final": 0.5},
    "muon_ns_safety": {"optim.muon_ns_safety": 0.02},
    "coprime_loader": {"data.loader": "coprime"},
}


def run_one(name: str, recipe: str, overrides: dict, seed: int, args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    vocab = pgolf.load_recipe(recipe, scale="tiny").model.vocab_size
    data = SHARED / "datasets" / f"fineweb10B_sp{vocab}_sample"
    base = {"data.path": str(data), "data.tokenizer": str(SHARED / "tokenizers" / f"fineweb_{vocab}_bpe.model"),
            "seed": seed, "train.steps": args.steps, "data.val_tokens_limit": args.val_tokens,
            "quant.allow_over_budget": True}
    cfg = pgolf.load_recipe(recipe, scale="tiny", overrides={**base, **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        result = pgolf.train(cfg, Path(tmp) / "run", progress=False)
    return {"name": name, "recipe": recipe, "seed": seed, "overrides": overrides,
            "params": pgolf.count_parameters(cfg.model), "val_bpb": result["val_bpb"],
            "val_bpb_prequant": result["val_bpb_prequant"], "tokens_per_second": result["tokens_per_second"],
            "train_seconds": result["train_seconds"], "artifact_bytes": result["artifact_bytes"],
            "legal": result["legal"], "eval_mode": result["eval_mode"], "val_targets": result["val_targets"],
            "threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - start,
            "load_average_end": os.getloadavg()[0]}


def table(runs: list[dict]) -> str:
    """Markdown table in plan order; "vs baseline" is the mean of per-seed differences over the seeds both ran."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    order = {name: i for i, name in enumerate(TECHNIQUES)}
    base_by_seed = {r["seed"]: r["val_bpb"] for r in groups.get("baseline", [])}
    lines = ["| config | switch | seeds | val_bpb (mean ± std over seeds) | vs baseline (same seeds) | tokens/s "
             "| params |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        vals = [r["val_bpb"] for r in rs]
        spread = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
        diffs = [r["val_bpb"] - base_by_seed[r["seed"]] for r in rs if r["seed"] in base_by_seed]
        delta = f"{statistics.mean(diffs):+.4f}" if diffs and name != "baseline" else "—"
        tps = statistics.mean(r["tokens_per_second"] for r in rs)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        switch = ", ".join(f"`{k.removeprefix('model.')}={v}`" for k, v in rs[0]["overrides"].items()) or "—"
        lines.append(f"| {name} | {switch} | {seeds} | {statistics.mean(vals):.4f}{spread} | {delta} | {tps:,.0f} "
                     f"| {rs[0]['params']:,} |")
    return "\n".join(lines)


def write_table(out: Path, runs: list[dict]) -> None:
    atomic_write_text(out.with_suffix(".md"), table(runs) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    parser.add_argument("--val-tokens", type=int, default=0, help="score only this many validation tokens (0 = all)")
    parser.add_argument("--only", nargs="*",
                        help="names of techniques or recipes (recipe:<name>) to run, in this order")
    parser.add_argument("--with-recipes", action="store_true",
                        help="also train each recipe's tiny form at these steps (benchmarks/recipes_cpu.py runs them "
                             "as published, 3 seeds)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side, one process each")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0 = torch's default; 1 when --jobs > 1)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="only rewrite the markdown table from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        if not out.is_file():
            raise SystemExit(f"{out}: no results to tabulate yet (run without --table first)")
        write_table(out, json.loads(out.read_text())["runs"])
        return 0
    report = json.loads(out.read_text()) if out.is_file() else {
        "benchmark": "ablation_cpu", "steps": args.steps, "val_tokens": args.val_tokens,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "runs": []}
    if report["steps"] != args.steps or report["val_tokens"] != args.val_tokens:
        raise SystemExit(f"{out} holds runs at another scale; pass --out for a new file")
    report.setdefault("command", " ".join(["python", "benchmarks/ablation_cpu.py", *sys.argv[1:]]))
    plan = [(n, "baseline", o) for n, o in TECHNIQUES.items()]
    if args.with_recipes:
        plan += [(f"recipe:{r}", r, {}) for r in recipe_names() if r not in ("baseline", "tiny")]
    if args.only:  # in the order given, so the cheap runs can go first
        unknown = sorted(set(args.only) - {p[0] for p in plan})
        if unknown:
            raise SystemExit(f"--only: unknown names {unknown}; known: {[p[0] for p in plan]}")
        plan = [p for name in args.only for p in plan if p[0] == name]
    if args.jobs > 1 and not args.threads:
        args.threads = 1
    done = {(r["name"], r["seed"]) for r in report["runs"]}
    todo = [(name, recipe, overrides, seed) for seed in args.seeds for name, recipe, overrides in plan
            if (name, seed) not in done]

    out.parent.mkdir(parents=True, exist_ok=True)

    def record(entry: dict) -> None:
        report["runs"].append(entry)
        write_json(out, report)  # atomic: a kill mid-write must not lose hours of finished runs
        write_table(out, report["runs"])
        print(f"{entry['name']} seed {entry['seed']}: val_bpb {entry['val_bpb']:.4f} "
              f"({entry['tokens_per_second']:,.0f} tok/s, {entry['wall_seconds']:.0f} s)", flush=True)

    if args.jobs <= 1:
        for item in todo:
            record(run_one(*item, args))
    else:  # spawn: each run starts from a clean interpreter with its own torch thread pool
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, *item, args) for item in todo]  # the pool starts them in order
            for future in as_completed(futures):
                record(future.result())
    print(table(report["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
