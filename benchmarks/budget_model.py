"""Where the 16,000,000 bytes go beyond the code, per recipe (issue #19; benchmarks/budget.py has the code columns).

Full size (no training: from the config alone): code bytes (the recipe's own train_gpt.py), header bytes (the
container's framing + header, exact: compressed config and part checks), the model-bytes estimate (header +
estimated payload) and the margin to 16,000,000; plus how long one compression of a full-size payload takes
with the recipe's compressor (synthetic Gaussian codes in the recipe's layout: what each step of quant.fit's
search costs, to size quant.fit_reserve_s).

Tiny size: the same figures measured on real packed artifacts: each recipe's tiny run (config.toml +
model.safetensors, as `pgolf train --scale tiny` leaves it) re-packed with this pgolf, estimate vs actual.

    python benchmarks/budget_model.py --runs DIR [--train] [--recipes baseline pr103 ...] [--no-timing]
                                [--out benchmarks/results/budget_model.json] [--merge]

DIR/<recipe>/ holds each recipe's tiny run; --train trains the missing ones first (seed 1337, the recipe's tiny
steps, the FineWeb sample; benchmarks/recipes_cpu.py's command). Each column is one small function below
(`code_column`, `header_column`, ...), so a column can be changed without touching the others. --merge keeps the
rows of the recipes not named in --recipes from the existing --out JSON (and lists each invocation's command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pgolf
from pgolf.artifact.budget import estimate_breakdown
from pgolf.artifact.sizes import LIMIT_BYTES
from pgolf.artifact.sizes import runtime_code_bytes
from pgolf.artifact.sizes import pack_artifact
from pgolf.cli.repack import load_run
from pgolf.config import Config, recipe_names
from pgolf.quant.bitpack import pack_codes
from pgolf.quant.container import FRAMING_BYTES, encode_payload
from pgolf.quant.layout import artifact_layout
from pgolf.quant.pack import header_bytes
from pgolf.quant.quantize import clip_max
from pgolf.training.runs import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes_cpu import RECIPES, run_one  # noqa: E402  (the tiny runs are trained exactly as that benchmark does)

REPO = Path(__file__).resolve().parent.parent
SEED = 1337


# ----------------------------------------------------------------------------- columns (one function each)

def code_column(cfg: Config) -> dict[str, int]:
    """Bytes of the recipe's own train_gpt.py (B1's side: what the bundle ships)."""
    return {"code_bytes": runtime_code_bytes(cfg)}


def header_column(cfg: Config) -> dict[str, int]:
    """Container framing + header (compressed config, one check per part), exact."""
    return {"header_bytes": FRAMING_BYTES + header_bytes(cfg)}


def estimate_columns(cfg: Config) -> dict[str, int]:
    b = estimate_breakdown(cfg)
    return {"payload_bytes_estimate": b["payload_bytes_estimate"], "model_bytes_estimate": b["model_bytes_estimate"],
            "artifact_bytes_estimate": b["artifact_bytes_estimate"], "margin_bytes_estimate": b["margin_bytes"]}


def compression_seconds_column(cfg: Config) -> dict[str, float]:
    """Seconds of one compression of a full-size payload with the recipe's compressor: every int tensor's codes
    drawn as Gaussian codes (std = a quarter of the clip range, clipped), every float as Gaussian noise."""
    rng = np.random.default_rng(0)
    parts = []
    for t in artifact_layout(cfg):
        for spec in t.parts:
            count = math.prod(t.shape if spec.kind == "packed_codes" else spec.shape)
            if spec.kind in ("codes", "packed_codes"):
                q = clip_max(t.plan.bits)
                codes = np.clip(np.rint(rng.normal(0, q / 4, count)), -q, q).astype(np.int8)
                parts.append((codes if spec.kind == "codes" else pack_codes(codes, t.plan.bits)).tobytes())
            else:
                parts.append(rng.normal(0, 0.02, count).astype(spec.dtype).tobytes())
    start = time.perf_counter()
    payload, used = encode_payload(parts, cfg.quant.compressor, cfg.quant.byte_shuffle)
    return {"compress_seconds": round(time.perf_counter() - start, 1), "compressor": used,
            "raw_bytes": sum(len(p) for p in parts)}


# ----------------------------------------------------------------------------- rows

def full_row(name: str, timing: bool) -> dict[str, Any]:
    cfg = pgolf.load_recipe(name, "full", {"quant.allow_over_budget": True})
    row = {"recipe": name, "params": sum(math.prod(t.shape) for t in artifact_layout(cfg)),
           **code_column(cfg), **header_column(cfg), **estimate_columns(cfg)}
    if timing:
        row.update(compression_seconds_column(cfg))
    return row


def tiny_row(name: str, run_dir: Path) -> dict[str, Any]:
    """Estimate vs the artifact this pgolf packs from the run's weights (its own config)."""
    model, cfg = load_run(run_dir)
    estimate = {**code_column(cfg), **header_column(cfg), **estimate_columns(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        sizes, _ = pack_artifact(model, cfg, Path(tmp) / "a.pgolf")
    actual = {"code_bytes": sizes["code_bytes"], "header_bytes": FRAMING_BYTES + sizes["header_bytes"],
              "payload_bytes": sizes["model_bytes"] - FRAMING_BYTES - sizes["header_bytes"],
              "model_bytes": sizes["model_bytes"], "artifact_bytes": sizes["artifact_bytes"]}
    return {"recipe": name, "run": str(run_dir), "compressor": sizes["compressor"], "estimate": estimate, "actual": actual,
            "payload_error": estimate["payload_bytes_estimate"] / actual["payload_bytes"] - 1,
            "artifact_error": estimate["artifact_bytes_estimate"] / actual["artifact_bytes"] - 1}


# ----------------------------------------------------------------------------- tables

def markdown(report: dict[str, Any]) -> str:
    lines = ["Full size (from the config alone; code and header exact, payload estimated):", "",
             "| recipe | params | code bytes | header bytes | model bytes (est.) | artifact (est.) | margin to 16,000,000 "
             "| one compression |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["full"]:
        timing = f"{r['compress_seconds']:.0f} s ({r['compressor']})" if "compress_seconds" in r else "—"
        lines.append(f"| {r['recipe']} | {r['params']:,} | {r['code_bytes']:,} | {r['header_bytes']:,} | "
                     f"{r['model_bytes_estimate']:,} | {r['artifact_bytes_estimate']:,} | {r['margin_bytes_estimate']:+,} "
                     f"| {timing} |")
    if report["tiny"]:
        lines += ["", "Tiny size, measured on the re-packed tiny runs (estimate / actual):", "",
                  "| recipe | compressor | code bytes | header bytes | payload bytes | artifact bytes | payload error "
                  "| artifact error |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["tiny"]:
            e, a = r["estimate"], r["actual"]
            lines.append(f"| {r['recipe']} | {r['compressor']} | {e['code_bytes']:,} / {a['code_bytes']:,} | "
                         f"{e['header_bytes']:,} / {a['header_bytes']:,} | {e['payload_bytes_estimate']:,} / "
                         f"{a['payload_bytes']:,} | {e['artifact_bytes_estimate']:,} / {a['artifact_bytes']:,} | "
                         f"{100 * r['payload_error']:+.1f} % | {100 * r['artifact_error']:+.1f} % |")
    return "\n".join(lines)


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with `new`'s full and tiny rows in place of those of the recipes `new` ran, ordered by recipe name."""
    ran = {r["recipe"] for r in new["full"]}
    out = {**old, "commands": old.get("commands", [old.get("command")]) + [new["command"]]}
    for part in ("full", "tiny"):
        rows = [r for r in old[part] if r["recipe"] not in ran] + new[part]
        out[part] = sorted(rows, key=lambda r: r["recipe"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="folder of tiny runs, one per recipe (DIR/<recipe>/model.safetensors)")
    parser.add_argument("--train", action="store_true", help="train the missing tiny runs first")
    parser.add_argument("--recipes", nargs="+", default=recipe_names(), help="full-size rows (default: every recipe)")
    parser.add_argument("--no-timing", action="store_true", help="skip the full-size compression timing")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "budget_model.json"))
    parser.add_argument("--merge", action="store_true", help="keep the other recipes' rows from the existing --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    full = [full_row(name, timing=not args.no_timing) for name in args.recipes]
    tiny = []
    for name in [r for r in args.recipes if r in RECIPES] if args.runs else []:  # the tiny runs of recipes_cpu
        run_dir = Path(args.runs) / name
        if not (run_dir / "model.safetensors").is_file():
            if not args.train:
                print(f"no tiny run in {run_dir}; --train trains it", file=sys.stderr)
                continue
            result = run_one(name, SEED, run_dir, None, [])
            if result.get("failed"):
                print(f"{name}: training failed: {result['error']}", file=sys.stderr)
                continue
        tiny.append(tiny_row(name, run_dir))
    report = {"benchmark": "budget_model", "command": "python benchmarks/budget_model.py " + " ".join(sys.argv[1:]),
              "limit_bytes": LIMIT_BYTES, "seed_of_tiny_runs": SEED, "load_average_at_start": round(load, 1),
              "python": platform.python_version(), "torch": torch.__version__, "full": full, "tiny": tiny}
    if args.merge and Path(args.out).is_file():
        report = merged(json.loads(Path(args.out).read_text()), report)
    report["markdown"] = markdown(report)
    out = Path(args.out)
    write_json(out, report)
    out.with_suffix(".md").write_text(report["markdown"] + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
