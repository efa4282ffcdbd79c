"""Core CPU benchmark: the baseline architecture at DESIGN.md's reference scale on the FineWeb sample.

4 layers, d=256, 4 heads / 2 KV heads, relu^2 MLP 2x, vocab 1024, seq 512, 8 sequences per step, 300 steps;
Muon lr 0.04 (momentum 0.85 -> 0.95 over 50 steps), Adam 0.05 / 0.04, linear warmdown over the last 30%
(= `--recipe baseline --scale tiny --set train.steps=300 --set data.val_tokens_limit=0`), trained on
../shared/data's sp1024 sample train shard and scored on its val shard (all 680,036 targets). Reference (the
challenge's own code on a 2-core CPU): val_bpb 2.583 (seed 1337) and 2.594 (seed 42). Four seeds by default:
at this scale a seed's draw of initial weights moves val_bpb by several hundredths, for pgolf and for the
challenge's code alike (benchmarks/reference_cpu.py), so one seed's figure is not a comparison.

    python benchmarks/core_cpu.py [--seeds 1337 42 7 2024] [--steps 300] [--out benchmarks/results/core_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import pgolf
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
REFERENCE = {"val_bpb": {"1337": 2.583, "42": 2.594}, "train_seconds": 160, "tokens_per_second": 7700,
             "source": "DESIGN.md: the challenge's train_gpt.py model and Muon run on a 2-core CPU"}
SEEDS = [1337, 42, 7, 2024]  # reference_cpu.py runs the same seeds, so the two codes compare seed for seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--recipe", default="baseline")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "core_cpu.json"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--runs-root", default="", help="keep each run folder under this directory (default: discard)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = SHARED / "datasets" / "fineweb10B_sp1024_sample"
    tokenizer = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
    if not data.is_dir():
        print(f"needs the FineWeb sample at {data}", file=sys.stderr)
        return 2
    runs = []
    for seed in args.seeds:
        overrides = {"data.path": str(data), "data.tokenizer": str(tokenizer), "seed": seed, "train.steps": args.steps,
                     "data.val_tokens_limit": 0}
        overrides.update(pgolf.config.parse_set_args(args.overrides))
        cfg = pgolf.load_recipe(args.recipe, scale="tiny", overrides=overrides)
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(args.runs_root) / f"seed{seed}" if args.runs_root else Path(tmp) / "run"
            start = time.perf_counter()
            result = pgolf.train(cfg, run_dir, progress=True)
            result["wall_seconds"] = time.perf_counter() - start
        runs.append({k: result[k] for k in ("seed", "val_bpb", "val_loss", "val_bpb_prequant", "val_bpb_plain",
                                             "artifact_bytes", "model_bytes", "code_bytes", "steps", "train_seconds",
                                             "eval_seconds", "tokens_per_second", "val_targets", "val_bytes",
                                             "wall_seconds")})
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "benchmark": "core_cpu", "recipe": f"{args.recipe} --scale tiny", "steps": args.steps,
        "overrides": args.overrides, "device": result["device"],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs,
        "val_bpb_mean": sum(r["val_bpb"] for r in runs) / len(runs), "reference": REFERENCE,
        "command": " ".join(["python", "benchmarks/core_cpu.py", *sys.argv[1:]]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
