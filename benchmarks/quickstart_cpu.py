"""The README's Quick start, timed: `pgolf train` with no arguments, from an empty cache, as a new user runs it.

Runs the command in a fresh process inside a temporary folder with `PGOLF_CACHE` pointing at an empty folder, so
the embedded corpus is prepared and its tokenizer trained on the clock, then records the whole process's wall
time, the run's result.json figures, the machine's CPU count and torch threads, and the load average before and
after (a loaded machine slows the run; the val_bpb does not change).

    python benchmarks/quickstart_cpu.py [--out benchmarks/results/quickstart_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
KEEP = ("recipe", "scale", "seed", "val_bpb", "val_bpb_prequant", "val_loss", "artifact_bytes", "model_bytes",
        "code_bytes", "under_limit", "steps", "train_tokens", "train_seconds", "eval_seconds", "tokens_per_second",
        "val_targets")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quickstart_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgolf-quickstart-") as tmp:
        work, cache = Path(tmp) / "work", Path(tmp) / "cache"
        work.mkdir()
        env = {**os.environ, "PGOLF_CACHE": str(cache)}
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pgolf", "train"], cwd=work, env=env, capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        results = sorted(work.glob("runs/*/result.json"))
        if proc.returncode != 0 or not results:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"pgolf train failed with exit status {proc.returncode}", file=sys.stderr)
            return 1
        result = json.loads(results[0].read_text())
    report = {
        "benchmark": "quickstart_cpu", "command": "pgolf train (empty PGOLF_CACHE)", "wall_seconds": wall,
        "result": {k: result[k] for k in KEEP if k in result},
        "device": f"cpu ({platform.processor() or platform.machine()})", "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "load_average_before": load_before, "load_average_after": load_after,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    r = report["result"]
    print(f"pgolf train: {wall:.0f} s wall ({r['steps']} steps, {r['tokens_per_second']:,.0f} tokens/s), "
          f"val_bpb {r['val_bpb']:.4f}, artifact {r['artifact_bytes']:,} bytes -> wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
