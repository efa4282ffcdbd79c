"""Self-generated GPTQ calibration (#1019) on CPU: sampling tokens/s with the KV cache (model/decode.py) and
without it (every token reruns the whole prefix, O(T^2)), at tiny scale, from a freshly initialised model
(throughput does not depend on the weights).

    python benchmarks/generate_cpu.py [--recipes baseline pr1536] [--seq-len 256] [--rows 8]
                                      [--out benchmarks/results/generate_cpu.json]

Per recipe: the no-cache reference and the cache, both with --rows rows at once, must sample the same tokens
(same seed; checked here too); then the cache with 8x the rows at once (as calibration samples all
quant.gptq_calib_batches sequences together). Tokens/s counts sampled tokens (rows x (seq_len - 1)).
Run with OMP_NUM_THREADS=1 on a shared 2-core machine: timings are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

import pgolf
from pgolf.quant.gptq import generate_calibration
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
DECODER = importlib.import_module("pgolf.model.decode")  # the module calibration reaches through the registry


def timed(model, rows: int, seq_len: int, decoder) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    ids = generate_calibration(model, rows, seq_len, torch.device("cpu"), seed=1337, decoder=decoder)
    return ids, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["baseline", "pr1536"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "generate_cpu.json"))
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes:
        cfg = pgolf.load_recipe(recipe, scale="tiny")
        torch.manual_seed(0)
        model = pgolf.build_model(cfg.model).eval()
        model.set_looping(True)
        sampled = args.rows * (args.seq_len - 1)
        ref, ref_s = timed(model, args.rows, args.seq_len, None)
        cached, cached_s = timed(model, args.rows, args.seq_len, DECODER)
        wide, wide_s = timed(model, 8 * args.rows, args.seq_len, DECODER)
        row = {"recipe": recipe, "scale": "tiny", "params": pgolf.count_parameters(cfg.model),
               "seq_len": args.seq_len, "rows": args.rows,
               "no_cache_tokens_per_s": sampled / ref_s, "cache_tokens_per_s": sampled / cached_s,
               "speedup": ref_s / cached_s, "same_tokens": bool(torch.equal(ref, cached)),
               "cache_rows_x8_tokens_per_s": 8 * sampled / wide_s,
               "no_cache_seconds": ref_s, "cache_seconds": cached_s, "cache_rows_x8_seconds": wide_s}
        rows.append(row)
        print(f"{recipe}: no cache {row['no_cache_tokens_per_s']:,.0f} tok/s, cache {row['cache_tokens_per_s']:,.0f} "
              f"tok/s (x{row['speedup']:.1f}, same tokens {row['same_tokens']}), cache x8 rows "
              f"{row['cache_rows_x8_tokens_per_s']:,.0f} tok/s", flush=True)
    report = {"benchmark": "generate_cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "command": " ".join(["python", "benchmarks/generate_cpu.py", *sys.argv[1:]]), "rows": rows}
    write_json(Path(args.out), report)
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
