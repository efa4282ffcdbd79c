"""A stand-in for `python -m pgolf train` in the sweep tests only: same arguments, an ordinary run folder
(env.json, log.jsonl, result.json), and a planted objective instead of training, in milliseconds.

Planted val_loss (nats): 6.0, -0.30 for model.smear=post_norm (-0.10 pre_norm), -0.20 for model.mlp=swiglu,
+0.1 * ln(optim.matrix_lr / 0.02)^2, -0.002 for model.qk_gain_init=5 (a decoy below the 0.005-nat margin), -0.5 for
model.model_dim > 1000 (whose artifact is 20 MB: over the limit, exit status 4), and a per-seed offset of at most
0.0018. Knobs (environment): FAKE_TRAIN_LOG (append one JSON line per start),
FAKE_TRAIN_GATE (wait until this file exists), FAKE_TRAIN_SLEEP (seconds), FAKE_TRAIN_CRASH (a file: crash with
exit status 1 if it does not exist yet, creating it; 'always': crash every time), FAKE_TRAIN_VAL_SLEEP (seconds
between intermediate validation lines when train.val_every is set).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path

LIMIT = 16_000_000


def parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def planted_loss(settings: dict, seed: int) -> float:
    loss = 6.0
    loss -= {"post_norm": 0.30, "pre_norm": 0.10}.get(settings.get("model.smear"), 0.0)
    loss -= 0.20 if settings.get("model.mlp") == "swiglu" else 0.0
    loss += 0.1 * math.log(settings.get("optim.matrix_lr", 0.04) / 0.02) ** 2
    loss -= 0.002 if settings.get("model.qk_gain_init") == 5.0 else 0.0
    loss -= 0.5 if int(settings.get("model.model_dim", 256)) > 1000 else 0.0  # better, but its artifact is too big
    return loss + ((seed * 7919) % 13 - 6) * 0.0003


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe")
    parser.add_argument("--scale")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    settings = {}
    for item in args.sets:
        key, text = item.split("=", 1)
        settings[key] = parse_value(text)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out}: run folder exists and is not empty", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAKE_TRAIN_LOG"):
        with open(os.environ["FAKE_TRAIN_LOG"], "a") as f:
            f.write(json.dumps({"out": str(out), "seed": args.seed, "pid": os.getpid(), "ppid": os.getppid(),
                                "settings": settings, "omp": os.environ.get("OMP_NUM_THREADS"),
                                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
    crash = os.environ.get("FAKE_TRAIN_CRASH")
    if crash == "always" or (crash and not Path(crash).exists()):
        if crash != "always":
            Path(crash).touch()
        print("fake_train: crashing on purpose", file=sys.stderr)
        return 1
    gate = os.environ.get("FAKE_TRAIN_GATE")
    while gate and not Path(gate).exists():
        time.sleep(0.05)
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
    loss = planted_loss(settings, args.seed)
    steps = int(settings.get("train.steps", 100))
    write_json(out / "env.json", {"val_sha256": "fake-val", "tokenizer_sha256": "fake-tok"})
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 1, "train_loss": loss + 1.0}) + "\n")
        every = int(settings.get("train.val_every", 0))
        for step in range(every, steps, every) if every else []:
            val = loss + 2.0 * (1 - step / steps)  # a curve that falls to the final loss
            log.write(json.dumps({"step": step, "val_loss": val, "val_bpb": val * 0.4}) + "\n")
            log.flush()
            time.sleep(float(os.environ.get("FAKE_TRAIN_VAL_SLEEP", "0")))
    artifact = 20_000_000 if int(settings.get("model.model_dim", 256)) > 1000 else 1_000_000
    result = {"recipe": args.recipe, "scale": args.scale, "seed": args.seed, "val_loss": loss, "val_bpb": loss * 0.4,
              "val_bpb_prequant": loss * 0.4, "artifact_bytes": artifact, "limit_bytes": LIMIT,
              "under_limit": artifact <= LIMIT, "steps": steps, "train_seconds": 0.1, "eval_seconds": 0.1,
              "tokens_per_second": 1.0, "val_targets": 1000, "val_bytes": 2400, "val_tokens_limited": False,
              "eval_mode": "plain", "legal": True, "omp": os.environ.get("OMP_NUM_THREADS")}
    write_json(out / "result.json", result)
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": steps, "val_loss": loss, "val_bpb": loss * 0.4}) + "\n")
    return 0 if artifact <= LIMIT else 4


if __name__ == "__main__":
    raise SystemExit(main())
