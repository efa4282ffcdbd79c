"""Where the bytes go, for every recipe at full and tiny scale: the counted code, and the model's share.

Code columns (`code_columns`): the size of the train_gpt.py `pgolf submit` writes for the recipe's own config
(`pgolf.artifact.sizes.runtime_code_bytes(pgolf.load_recipe(name, scale))`, the number every result.json
records), split into its bz2 payload (with raw LZMA2's size of the same sources for comparison), the bootstrap + embedded config and the escaping overhead, with the
base85 alternative for comparison, the modules carried and what each of them costs (the payload's growth when
the module is added last: bz2 bytes it does not share with the others).

Model columns (`model_columns`): the budget estimate of the whole artifact (pgolf.artifact.budget) and the
margin to 16,000,000 bytes; the header and tensor figures of the container belong here too.

`--before SRC` also measures `runtime_code_bytes` with the pgolf sources in SRC (e.g. a checkout of main) in a
subprocess, so the JSON holds the figures before and after a change, each with its commit.

    python benchmarks/budget.py [--before /work/main/src] [--out benchmarks/results/budget.json]
"""

from __future__ import annotations

import argparse
import json
import bz2
import lzma
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pgolf
from pgolf.artifact import bundle
from pgolf.artifact.budget import LIMIT_BYTES, estimate_artifact_bytes
from pgolf.artifact.sizes import runtime_code_bytes
from pgolf.config import recipe_names
from pgolf.config.optional import needed_optional_modules
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SCALES = ("full", "tiny")
# the compressor bz2 replaced, at its strongest: raw LZMA2, preset 9e, pb=0 (text)
LZMA_ALTERNATIVE = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "pb": 0}]
TARGETS = {"all": 26_505, "baseline": 20_000}  # issue #19: #1536's record carried 26,505 bytes of code


def load(name: str, scale: str) -> pgolf.Config:
    return pgolf.load_recipe(name, scale, {"quant.allow_over_budget": True})


def code_columns(cfg: pgolf.Config) -> dict[str, Any]:
    """The script's bytes and where they go (this checkout's pgolf)."""
    cfg.quant.allow_over_budget = False  # price the recipe's own config, not the override that loaded it
    script = bundle.bundle_bytes(cfg)
    payload = bundle.compressed_sources(cfg)
    head = script[: script.rindex(bundle.BLOB_PREFIX) + 1]
    modules, frozen = bundle.modules_for(cfg), bundle.frozen_keys(cfg)
    joined = bundle.joined_sources(modules, frozen).encode("utf-8")
    per_module = {"(importer)": len(payload) - len(bz2.compress(joined[len(bundle.BOOT):], 9)),
                  "(frozen keys)": len(payload) - len(bz2.compress(bundle.joined_sources(modules).encode("utf-8"), 9))}
    for m in modules:
        rest = bundle.joined_sources(tuple(x for x in modules if x.path != m.path), frozen).encode("utf-8")
        per_module[m.path] = len(payload) - len(bz2.compress(rest, 9))
    return {
        "code_bytes": len(script), "priced_by": runtime_code_bytes(cfg),
        "payload_bz2": len(payload), "bootstrap_and_config": len(head),
        "payload_lzma_alternative": len(lzma.compress(joined, format=lzma.FORMAT_RAW, filters=LZMA_ALTERNATIVE)),
        "escape_overhead": len(script) - len(head) - len(payload) - len(bundle.BLOB_PREFIX) - 1,
        "code_bytes_base85": len(bundle.bundle_bytes(cfg, "base85")),
        "minified_source_chars": len(joined), "modules": len(modules), "frozen_keys": len(frozen),
        "optional_modules": needed_optional_modules(bundle.script_config(cfg)),
        "per_module_bz2": dict(sorted(per_module.items(), key=lambda kv: -kv[1])),
    }


def model_columns(cfg: pgolf.Config) -> dict[str, Any]:
    """The artifact estimate (code included) and the margin to the limit."""
    estimate = estimate_artifact_bytes(cfg)
    return {"artifact_estimate": estimate, "margin_to_limit": LIMIT_BYTES - estimate}


def measure_before(src: Path) -> dict[str, Any]:
    """runtime_code_bytes of every recipe with the pgolf sources in `src` (another checkout), in a subprocess."""
    probe = (
        "import json, sys, pgolf\n"
        "try:\n"
        "    from pgolf.artifact.sizes import runtime_code_bytes\n"
        "except ImportError:  # before the layout move\n"
        "    from pgolf.artifact.codesize import runtime_code_bytes\n"
        "out = {}\n"
        "for name in pgolf.config.recipe_names():\n"
        "    for scale in ('full', 'tiny'):\n"
        "        cfg = pgolf.load_recipe(name, scale, {'quant.allow_over_budget': True})\n"
        "        cfg.quant.allow_over_budget = False\n"
        "        out[f'{name}/{scale}'] = runtime_code_bytes(cfg)\n"
        "print(json.dumps(out))\n")
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"src": str(src), "commit": commit, "code_bytes": json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="pgolf sources (a src/ folder) to measure code bytes against")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "budget.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for name in recipe_names():
        for scale in SCALES:
            cfg = load(name, scale)
            row = {"recipe": name, "scale": scale, **code_columns(cfg), **model_columns(load(name, scale))}
            target = TARGETS.get(name, TARGETS["all"])
            row["code_target"], row["code_meets_target"] = target, row["code_bytes"] <= target
            rows.append(row)
    before = measure_before(args.before) if args.before else None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python benchmarks/budget.py" + (f" --before {args.before}" if args.before else ""),
        "commit": commit, "dirty": bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                                                       capture_output=True, text=True).stdout.strip()),
        "python": sys.version.split()[0], "pgolf_version": pgolf.__version__,
        "note": "code_bytes embed the data paths the trainer resolves on this machine (a recipe without data.path "
                "names the embedded corpus's cache folder), as a run here would record them",
        "rows": rows, "before": before, "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, result)
    print(f"{'recipe':9s} {'scale':5s} {'code':>7s} {'before':>7s} {'target':>7s} {'bz2':>7s} {'base85':>7s} "
          f"{'modules':>7s} {'estimate':>11s}")
    for row in rows:
        old = (before or {}).get("code_bytes", {}).get(f"{row['recipe']}/{row['scale']}")
        print(f"{row['recipe']:9s} {row['scale']:5s} {row['code_bytes']:7,d} {old if old is None else f'{old:,}'!s:>7s} "
              f"{row['code_target']:7,d} {row['payload_bz2']:7,d} {row['code_bytes_base85']:7,d} {row['modules']:7d} "
              f"{row['artifact_estimate']:11,d}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
