"""Lockstep: a seed's own train_gpt.py beside pgolf's recipe, same initial weights, same batches, tiny size, CPU.

For each seed given as NAME=PATH (PATH: that submission's train_gpt.py, e.g. from a clone of
openai/parameter-golf; never part of pgolf), both codes train the same tiny model for STEPS steps on the FineWeb
sp1024 sample's train shard, read in order by each code's own loader (the batches are checked equal), from
pgolf's initial weights of the seed (loaded into the challenge's model under its names), with the recipe's
optimizer settings. Reported per seed: the largest |train-loss difference| over the steps, then the exported
int8 + zlib artifact's val_bpb from each side on the same validation tokens (the challenge's round trip through
its own eval_val; pgolf's result.json), and pgolf's score of the challenge's own artifact (`pgolf eval --recipe`).

Seeds: `baseline` (main:train_gpt.py). A record's file runs through benchmarks/lockstep_seeds/<name>.py, its model
mapped onto pgolf's names (pr103.py, pr206.py, pr595.py, pr1573.py, pr1536.py: their docstrings say what each
drives and patches; one JSON per record, benchmarks/results/lockstep_<name>.json); a record without a mapping
(NOT_MAPPED; every record there has one now) is listed as not run.

Shims on the challenge's side (listed in the JSON): its model stays fp32 (its main() casts it to bf16 and
restores CastedLinear / control tensors; pgolf has no bf16 parameter storage), so tok_emb is fp32 on both sides;
no torch.compile; Adam not fused (CPU); the round-trip model is scored in fp32 (CUDA autocast is off on a CPU).
Newton–Schulz: by default (--ns-dtype bfloat16) the challenge's own bf16 function runs beside pgolf's bf16 one
(optim.muon_ns_dtype = bfloat16; the recipe's muon_ns_grouping = "cA_A" rounds the cubic term as the baseline's
`c * A @ A` does; with c·(A·A), #1536's grouping, the two sides part at step 2 by ~1e-4). --ns-dtype float32
shims the challenge's one `X = G.bfloat16()` line to `X = G.float()` and runs pgolf's in fp32; that is not an
fp32 Muon on its side, since its Muon still rounds every update to bf16 (its updates_flat buffer, L140), so the
two drift apart by float rounding.

    git -C parameter-golf show main:train_gpt.py > /tmp/train_gpt.py
    python benchmarks/lockstep_cpu.py baseline=/tmp/train_gpt.py [--steps 40] [--out benchmarks/results/lockstep_cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

import pgolf
from pgolf.cli.evaluate_artifact import evaluate_artifact
from pgolf.data.loader import DistributedTokenLoader as PgolfLoader
from pgolf.training.runs import read_log, write_json
from pgolf.training.runtime import seed_everything

from challenge_fixture import export, roundtrip_eval

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "datasets" / "fineweb10B_sp1024_sample"
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
SEQ_LEN, BATCH_TOKENS, WARMDOWN = 128, 1024, 12
VAL_TOKENS = 32_769  # 256 sequences of 128
TINY = {"model.num_layers": 4, "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
        "train.seq_len": SEQ_LEN, "train.batch_tokens": BATCH_TOKENS, "train.micro_batch_tokens": BATCH_TOKENS,
        "train.warmdown": "steps", "train.warmdown_steps": WARMDOWN, "train.log_every": 1,
        "eval.context_len": SEQ_LEN, "eval.tail": "drop",
        "data.val_tokens_limit": VAL_TOKENS}
NOT_MAPPED = {"pr103": "LoopedGPT with per-virtual-layer LoRA: no name mapping yet",
              "pr206": "SmearGate / BigramHash / int6 STE model: no name mapping yet",
              "pr1573": "parameter banks (qo/kv/mlp) and recycled core: no name mapping yet",
              "pr1536": "parameter banks, varlen packing loader and FA3: no name mapping yet"}


NS_SHIM = ("    X = G.bfloat16()\n", "    X = G.float()\n")  # zeropower_via_newtonschulz5's one cast


def load_module(path: str, ns_dtype: str) -> types.ModuleType:
    """The challenge's file as a module; with ns_dtype float32 its Newton-Schulz casts to fp32 instead of bf16
    (the one line NS_SHIM names, checked to occur once), everything else as written."""
    source = Path(path).read_text()
    if ns_dtype == "float32":
        if source.count(NS_SHIM[0]) != 1:
            raise SystemExit(f"{path}: expected one line {NS_SHIM[0].strip()!r} to shim, found {source.count(NS_SHIM[0])}")
        source = source.replace(*NS_SHIM)
    module = types.ModuleType("challenge_train_gpt")
    module.__file__ = path
    sys.modules[module.__name__] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def tiny_config(recipe: str, seed: int, steps: int, ns_dtype: str, overrides: dict | None = None,
                data: Path = DATA, tokenizer: Path = TOKENIZER) -> pgolf.Config:
    """The recipe at --scale tiny with `overrides` (default: lockstep's TINY dimensions), the seed, steps and NS dtype."""
    over = {**(TINY if overrides is None else overrides), "optim.muon_ns_dtype": ns_dtype, "train.steps": steps,
            "seed": seed, "data.path": str(data), "data.tokenizer": str(tokenizer)}
    return pgolf.load_recipe(recipe, scale="tiny", overrides=over)


def run_pgolf(cfg: pgolf.Config, tmp: Path) -> tuple[dict, list[float]]:
    """pgolf.train on the config in tmp/run: (result.json, per-step train losses)."""
    result = pgolf.train(cfg, tmp / "run", progress=False, device="cpu")
    return result, [r["train_loss"] for r in read_log(tmp / "run" / "log.jsonl") if "train_loss" in r]


def challenge_model(ref, cfg: pgolf.Config) -> torch.nn.Module:
    m = cfg.model
    model = ref.GPT(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                    num_kv_heads=m.num_kv_heads, mlp_mult=int(m.mlp_mult), tie_embeddings=m.tie_embeddings,
                    tied_embed_init_std=m.embed_init_std, logit_softcap=m.logit_softcap, rope_base=m.rope_base,
                    qk_gain_init=m.qk_gain_init)
    seed_everything(cfg.seed)  # the weights pgolf.train starts from, under the challenge's names
    ours = pgolf.build_model(cfg.model, cfg.data.bos_id).state_dict()
    model.load_state_dict({name: ours["tok_emb" if name == "tok_emb.weight" else name] for name in model.state_dict()})
    return model


def run_challenge(ref, cfg: pgolf.Config) -> tuple[torch.nn.Module, list[float], bool]:
    """main()'s training step with one rank and one micro-step: its optimizer split, lr_mul, momentum warm-up."""
    o, t = cfg.optim, cfg.train
    model = challenge_model(ref, cfg)
    named = list(model.blocks.named_parameters())
    control = lambda n, p: p.ndim < 2 or any(c in n for c in ref.CONTROL_TENSOR_NAME_PATTERNS)  # noqa: E731
    betas = (o.adam_beta1, o.adam_beta2)
    groups = [(torch.optim.Adam([model.tok_emb.weight], lr=o.embed_lr, betas=betas, eps=o.adam_eps), o.embed_lr),
              (ref.Muon([p for n, p in named if p.ndim == 2 and not control(n, p)], lr=o.matrix_lr,
                        momentum=o.muon_momentum, backend_steps=o.muon_ns_steps), o.matrix_lr),
              (torch.optim.Adam([p for n, p in named if control(n, p)] + [model.skip_weights], lr=o.scalar_lr,
                                betas=betas, eps=o.adam_eps), o.scalar_lr)]
    loader = ref.DistributedTokenLoader(str(DATA / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    ours = PgolfLoader(sorted(DATA.glob("fineweb_train_*.bin")), 0, 1, cfg.model.vocab_size)
    same_batches, losses = True, []
    for step in range(t.steps):
        scale = max((t.steps - step) / WARMDOWN, 0.0) if t.steps - WARMDOWN <= step < t.steps else 1.0
        frac = min(step / o.muon_momentum_warmup_steps, 1.0)
        for opt, _ in groups:
            opt.zero_grad(set_to_none=True)
        x, y = loader.next_batch(t.batch_tokens, t.seq_len, 1)
        px, py = ours.next_batch(t.batch_tokens, t.seq_len, 1)
        same_batches &= torch.equal(x, px) and torch.equal(y, py)
        loss = model(x, y)
        loss.backward()
        for group in groups[1][0].param_groups:
            group["momentum"] = (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum
        for opt, base_lr in groups:
            for group in opt.param_groups:
                group["lr"] = base_lr * scale
            opt.step()
        losses.append(loss.item())
    return model, losses, same_batches


def run_seed(name: str, path: str, seeds: list[int], steps: int, ns_dtype: str) -> dict:
    ref = load_module(path, ns_dtype)
    runs = []
    for seed in seeds:
        cfg = tiny_config("baseline", seed, steps, ns_dtype)
        with tempfile.TemporaryDirectory() as tmp:
            result, ours = run_pgolf(cfg, Path(tmp))
            model, theirs, same_batches = run_challenge(ref, cfg)
            ptz = Path(tmp) / "final_model.int8.ptz"
            export(ref, model, ptz)
            _, their_bpb, _ = roundtrip_eval(ref, ptz, challenge_model(ref, cfg), DATA, TOKENIZER,
                                                      VAL_TOKENS, SEQ_LEN)
            cross = evaluate_artifact(ptz, str(DATA), overrides={"eval.context_len": SEQ_LEN}, val_tokens=VAL_TOKENS,
                                      recipe="baseline", device="cpu")
            their_bytes = ptz.stat().st_size
        diffs = [abs(a - b) for a, b in zip(ours, theirs)]
        runs.append({"seed": seed, "steps": len(diffs), "same_batches": same_batches,
                     "max_abs_train_loss_diff": max(diffs), "step_of_max": int(np.argmax(diffs)) + 1,
                     "max_rel_train_loss_diff": max(d / abs(b) for d, b in zip(diffs, theirs)),
                     "max_abs_train_loss_diff_steps_1_10": max(diffs[:10]),
                     "median_abs_train_loss_diff": float(np.median(diffs)),
                     "abs_train_loss_diff_per_step": [round(d, 7) for d in diffs],
                     "train_loss_pgolf": [round(v, 6) for v in ours],
                     "train_loss_challenge": [round(v, 6) for v in theirs],
                     "val_bpb_pgolf_artifact": result["val_bpb"], "val_bpb_challenge_artifact": their_bpb,
                     "val_bpb_challenge_artifact_scored_by_pgolf": cross["val_bpb"],
                     "val_targets": result["val_targets"], "artifact_bytes_pgolf": result["artifact_bytes"],
                     "model_bytes_pgolf": result["model_bytes"], "artifact_bytes_challenge": their_bytes})
        print(json.dumps({"seed_recipe": name, **runs[-1]}), flush=True)
    return {"train_gpt": path, "recipe": "baseline --scale tiny", "overrides": TINY, "runs": runs,
            "max_abs_train_loss_diff": max(r["max_abs_train_loss_diff"] for r in runs)}


SEED_MODULES = Path(__file__).resolve().parent / "lockstep_seeds"  # pr103.py, ...: one record's mapping each


def seed_runner(name: str):
    """`run_seed(name, path, seeds, steps, ns_dtype) -> dict` for a seed recipe: the baseline's here, a record's
    from benchmarks/lockstep_seeds/<name>.py (None when that record has no mapping yet)."""
    if name == "baseline":
        return run_seed
    file = SEED_MODULES / f"{name}.py"
    if not file.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"lockstep_seeds.{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="NAME=PATH", help="seed recipe and its train_gpt.py (baseline=...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ns-dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="Newton-Schulz dtype on both sides (bfloat16: the challenge's own function; float32: "
                             "its one cast line shimmed)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lockstep_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"needs the FineWeb sample at {DATA}", file=sys.stderr)
        return 2
    seeds = {}
    for item in args.files:
        name, _, path = item.partition("=")
        runner = seed_runner(name)
        if runner is None:
            seeds[name] = {"train_gpt": path, "not_run": NOT_MAPPED.get(name, "unknown seed recipe")}
            continue
        if not Path(path).is_file():
            print(f"{name}: no train_gpt.py at {path!r}", file=sys.stderr)
            return 2
        seeds[name] = runner(name, path, args.seeds, args.steps, args.ns_dtype)
    for name, why in NOT_MAPPED.items():
        if not (SEED_MODULES / f"{name}.py").is_file():  # a mapped record not given here is simply left out
            seeds.setdefault(name, {"not_run": why})
    ns_shim = ([f"zeropower_via_newtonschulz5: {NS_SHIM[0].strip()!r} -> {NS_SHIM[1].strip()!r}"]
               if args.ns_dtype == "float32" else [])
    report = {"benchmark": "lockstep_cpu", "steps": args.steps, "seeds": args.seeds, "ns_dtype": args.ns_dtype,
              "seed_recipes": seeds,
              "shims": ns_shim + ["challenge model kept fp32 (its main() stores tok_emb in bf16; pgolf has no bf16 storage)",
                        "no torch.compile; Adam not fused; one rank, one micro-step",
                        "round-trip model scored in fp32 (CUDA bf16 autocast is off on a CPU)"],
              "pgolf_side": f"pgolf.train on the recipe with optim.muon_ns_dtype = {args.ns_dtype}",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "command": " ".join(["python", "benchmarks/lockstep_cpu.py", *sys.argv[1:]])}
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
