"""Evaluation-mode CPU benchmark: one artifact scored plain, sliding (stride 64, 256), chunk TTT, LoRA TTT, pre TTT.

The model is the core benchmark's (`--recipe baseline --scale tiny` on ../shared/data's sp1024 sample, 300 steps:
4 x 256, seq 512); `--run-dir` reuses a trained run's artifact.pgolf instead of training. Every mode scores the
same fixed prefix of the validation shard (`--val-tokens`, default 65,537 tokens = 65,536 targets; 0 = all
680,037 tokens), on the model decompressed from the artifact, with eval.context_len = 512.

    python benchmarks/eval_cpu.py [--run-dir RUN] [--steps 300] [--val-tokens 65537] [--modes plain sliding64 ...]
                                  [--out benchmarks/results/eval_cpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

import pgolf
from pgolf.data.shards import load_tokens
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED / "datasets" / "fineweb10B_sp1024_sample"
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"

# eval.* settings of each mode (on top of the artifact's own eval config: context 512, batch 32 windows)
MODES: dict[str, dict] = {
    "plain": {},
    "sliding64": {"sliding_stride": 64},
    "sliding256": {"sliding_stride": 256},
    # #549-style score-first chunk TTT over stride-64 windows; chunks sized for a 65k-target prefix
    "chunk": {"ttt": "chunk", "sliding_stride": 64, "ttt_chunk_tokens": 8192, "ttt_lr": 0.005, "ttt_epochs": 3,
              "ttt_momentum": 0.9, "ttt_batch_seqs": 4, "ttt_grad_clip": 1.0},
    # #1536's LoRA TTT at the pr1536 recipe's tiny settings (rank 8, 16 documents per batch), chunks of 64
    "lora": {"ttt": "lora", "ttt_lora_rank": 8, "ttt_lora_chunk": 64, "ttt_batch_docs": 16, "ttt_lora_lr": 1e-4,
             "ttt_lora_beta1": 0.0, "ttt_lora_beta2": 0.999, "ttt_lora_eps": 1e-10, "ttt_lora_wd": 0.5},
    # #595's pre-scoring TTT (NOT LEGAL), one epoch, then stride-64 windows
    "pre": {"ttt": "pre", "sliding_stride": 64, "ttt_lr": 5e-4, "ttt_epochs": 1, "ttt_momentum": 0.9,
            "ttt_batch_seqs": 8, "ttt_grad_clip": 1.0},
}


def train_artifact(steps: int, seed: int, out: Path) -> tuple[Path, dict]:
    overrides = {"data.path": str(DATA), "data.tokenizer": str(TOKENIZER), "train.steps": steps, "seed": seed,
                 "data.val_tokens_limit": 0}
    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides=overrides)
    result = pgolf.train(cfg, out, progress=True)
    return out / "artifact.pgolf", result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="reuse this run's artifact.pgolf (default: train one)")
    parser.add_argument("--train-dir", default=str(REPO / "runs" / "eval-cpu-bench"), help="where a new run goes")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--val-tokens", type=int, default=65_537, help="score this prefix of the val shard (0 = all)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "eval_cpu.json"))
    args = parser.parse_args()
    if not DATA.is_dir() or not TOKENIZER.is_file():
        print(f"needs the FineWeb sample at {DATA} and {TOKENIZER}", file=sys.stderr)
        return 2
    train_result = None
    if args.run_dir:
        artifact = Path(args.run_dir) / "artifact.pgolf"
    else:
        artifact, train_result = train_artifact(args.steps, args.seed, Path(args.train_dir))
    model, cfg = pgolf.unpack(artifact, "cpu")
    model.set_looping(True)
    tokens = load_tokens(sorted(DATA.glob("fineweb_val_*.bin")), cfg.model.vocab_size, args.val_tokens)
    tables = byte_tables(load_tokenizer(TOKENIZER), cfg.model.vocab_size)
    rows = []
    for name in args.modes:
        ev_cfg = dataclasses.replace(cfg.eval, **MODES[name])
        start = time.perf_counter()
        ev = pgolf.evaluate(model, tokens, None, ev_cfg, tables=tables)
        wall = time.perf_counter() - start
        rows.append({"mode": name, "eval_mode": ev.mode, "legal": ev.legal, "val_bpb": ev.val_bpb,
                     "val_loss": ev.val_loss, "eval_seconds": ev.seconds, "wall_seconds": wall,
                     "targets": ev.targets, "bytes": ev.bytes, "targets_per_second": ev.targets / ev.seconds,
                     "settings": MODES[name], "notes": ev.notes})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "notes"}), flush=True)
    base = next((r["val_bpb"] for r in rows if r["mode"] == "plain"), None)
    result_file = artifact.parent / "result.json"  # read last: the run may still be finishing its own eval
    if train_result is None and result_file.is_file():
        train_result = json.loads(result_file.read_text())
    report = {
        "benchmark": "eval_cpu", "artifact": str(artifact), "recipe": "baseline --scale tiny",
        "steps": train_result.get("steps") if train_result else None,
        "artifact_file_bytes": artifact.stat().st_size,  # the .pgolf file (= model_bytes; code bytes not included)
        "artifact_bytes": train_result.get("artifact_bytes") if train_result else None,
        "val_bpb_full_split_plain": train_result.get("val_bpb") if train_result else None,
        "val_tokens_limit": args.val_tokens, "val_tokens": int(tokens.size), "val_targets": int(tokens.size - 1),
        "context_len": cfg.eval.context_len, "batch_seqs": cfg.eval.batch_seqs,
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(), "modes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), report)
    print(f"\nval prefix: {tokens.size - 1:,} targets ({report['val_tokens_limit']:,}-token limit), context "
          f"{cfg.eval.context_len}, {torch.get_num_threads()} CPU threads\n")
    print("| mode | val_bpb | vs plain | eval s | targets/s | legal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        delta = f"{r['val_bpb'] - base:+.4f}" if base is not None else "-"
        print(f"| {r['mode']} | {r['val_bpb']:.4f} | {delta} | {r['eval_seconds']:.1f} | "
              f"{r['targets_per_second']:,.0f} | {'yes' if r['legal'] else 'NO'} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
