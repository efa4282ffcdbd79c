"""Optimizer benchmark on CPU: Adam-only vs Muon vs its published variants, each with live / EMA / SWA weights.

Scale: the core benchmark's model (`--recipe baseline --scale tiny`: 4 x 256, 4 heads / 2 KV heads, relu^2 MLP 2x,
vocab 1024, seq 512, 4,096 tokens per step) on the FineWeb sample in ../shared/data, for fewer steps than the
core benchmark's 300 (default 70) so the whole grid fits in about two hours of a heavily shared 2-core CPU
(measured: ~13 s per step per process at 1 thread under a load average of 13; ~0.5 s when the machine is idle). The
schedule is scaled with the run: momentum warm-up over steps/6 (50 of 300 in the core benchmark), linear warmdown
over the last 30%. Scored on the first `--val-tokens` tokens of the sample's validation shard.

Variants (optim.* overrides of the baseline; everything else equal):
  adam_3e-3       matrix_optimizer = adam, matrix_lr = 0.003 (Adam-only baseline)
  adam_1e-2       matrix_optimizer = adam, matrix_lr = 0.01
  muon            the baseline's Muon (sum momentum, Nesterov, 5 quintic NS steps, lr 0.04)
  muoneq_r        + muon_row_normalize (MuonEq-R; #1536, and #103's "NorMuon")
  normuon_206     + muon_momentum_style = ema, muon_normuon_beta2 = 0.95 (#206's NorMuon)
  polar_express   + muon_ns_coeffs = polar_express
  muon_wd         + muon_weight_decay = 0.04 (#595 / #1573)

EMA and SWA never change the training trajectory, so each run tracks both (pgolf's WeightAverager, as the
trainer) and scores three weight sets: live, EMA (decay --ema-decay), SWA (every --swa-every steps while the LR
multiplier < 0.5). val_bpb is the artifact's score (int8 + zlib round trip, as `pgolf train` reports it);
val_bpb_prequant (with --prequant) the full-precision weights.
The loop reproduces pgolf.train bit for bit (checked: identical final weights at the tests' micro scale).

The machine is shared and noisy, so all variants of a seed train in lockstep: step s of every variant runs before
step s + 1 of any, and the seconds-per-step ratios are medians of per-step ratios taken seconds apart.
The loop mirrors pgolf.training.loop's step (schedule, momentum, zero_grad, forward/backward, clip, step, averaging).

    python benchmarks/optim_cpu.py [--steps 70] [--seeds 1337 42] [--val-tokens 65536] [--jobs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import pgolf
from pgolf.artifact.sizes import pack
from pgolf.data.atomic import atomic_write_text
from pgolf.data.dataset import load_validation, resolve_dataset
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.eval.bpb import evaluate
from pgolf.model.gpt import build_model
from pgolf.model.precision import autocast_for
from pgolf.optim.averaging import WeightAverager
from pgolf.optim.groups import build_optimizers, muon_momentum_at, set_lr_multiplier, set_muon_momentum
from pgolf.optim.schedule import lr_multiplier
from pgolf.quant.pack import unpack
from pgolf.training.loop import plain_eval_config
from pgolf.training.runs import write_json
from pgolf.training.runtime import seed_everything

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED / "datasets" / "fineweb10B_sp1024_sample"
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"

VARIANTS: dict[str, dict[str, Any]] = {
    # Adam-only baseline at two matrix lrs (no sweep fits the budget: 3e-3 is the usual small-model Adam lr,
    # 1e-2 the short-run end); Muon's 0.04 would be ~10x too large for Adam
    "adam_3e-3": {"optim.matrix_optimizer": "adam", "optim.matrix_lr": 0.003},
    "adam_1e-2": {"optim.matrix_optimizer": "adam", "optim.matrix_lr": 0.01},
    "muon": {},
    "muoneq_r": {"optim.muon_row_normalize": True},
    "normuon_206": {"optim.muon_momentum_style": "ema", "optim.muon_normuon_beta2": 0.95},
    "polar_express": {"optim.muon_ns_coeffs": "polar_express"},
    "muon_wd": {"optim.muon_weight_decay": 0.04},
}
WEIGHTS = ("live", "ema", "swa")


class Run:
    """One variant's model, optimizers, data stream and averagers, stepped by the lockstep loop."""

    def __init__(self, name: str, cfg: pgolf.Config, dataset, ema_decay: float, swa_every: int):
        self.name, self.cfg = name, cfg
        seed_everything(cfg.seed)
        self.model = build_model(cfg.model, cfg.data.bos_id)
        self.model.attention_backend = "sdpa"
        self.optimizers = build_optimizers(self.model, cfg.optim, cfg.model.tie_embeddings)
        self.loader = DistributedTokenLoader(dataset.train_files, 0, 1, cfg.model.vocab_size)
        self.ema = WeightAverager(self.model, replace(cfg.train, averaging="ema", ema_decay=ema_decay))
        self.swa = WeightAverager(self.model, replace(cfg.train, averaging="swa", swa_every=swa_every, swa_start_lr=0.5))
        self.step, self.elapsed = 0, 0.0
        self.step_seconds: list[float] = []
        self.average_seconds: list[float] = []
        self.losses: list[float] = []

    def train_step(self) -> None:
        """One step exactly as pgolf.training.loop takes it (single process, no accumulation at this scale)."""
        t, device = self.cfg.train, torch.device("cpu")
        start = time.perf_counter()
        mult = lr_multiplier(self.step, self.elapsed, t, self.cfg.quant.gptq_reserve_s)
        set_lr_multiplier(self.optimizers, mult)
        set_muon_momentum(self.optimizers, muon_momentum_at(self.step, self.cfg.optim))
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        x, y = self.loader.next_batch(t.batch_tokens, t.seq_len, 1)
        with autocast_for(device, t.dtype):
            loss = self.model(x, y)
        loss.backward()
        if self.cfg.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        for opt in self.optimizers.values():
            opt.step()
        self.step += 1
        trained = time.perf_counter()
        self.ema.update(self.model, self.step, mult)
        self.swa.update(self.model, self.step, mult)
        done = time.perf_counter()
        self.elapsed += trained - start  # the schedule's clock: training only, like a run without averaging
        self.step_seconds.append(trained - start)
        self.average_seconds.append(done - trained)
        self.losses.append(float(loss.detach()))

    def weights(self, which: str) -> torch.nn.Module:
        model = build_model(self.cfg.model, self.cfg.data.bos_id)  # (deepcopy would drop the parameters' role tags)
        model.load_state_dict(self.model.state_dict())
        model.attention_backend = "sdpa"
        source = {"live": None, "ema": self.ema, "swa": self.swa}[which]
        if source is not None:
            source.apply_to(model)
        return model


def score(model: torch.nn.Module, cfg: pgolf.Config, val_tokens, tables, folder: Path,
          prequant: bool) -> dict[str, float | None]:
    """The artifact's val_bpb (quantize -> pack -> unpack -> evaluate, as pgolf.train reports it) and, if asked,
    the full-precision weights' val_bpb_prequant."""
    plain = plain_eval_config(cfg)
    pre = evaluate(model, val_tokens, None, plain, tables=tables) if prequant else None
    path = folder / "a.pgolf"
    sizes = pack(model, cfg, path)
    scored, _ = unpack(path)
    scored.attention_backend = "sdpa"
    post = evaluate(scored, val_tokens, None, plain, tables=tables)
    return {"val_bpb": post.val_bpb, "val_loss": post.val_loss, "val_bpb_prequant": pre.val_bpb if pre else None,
            "model_bytes": sizes["model_bytes"], "eval_seconds": post.seconds + (pre.seconds if pre else 0.0)}


def run_seed(seed: int, args: argparse.Namespace, variants: list[str], base: dict[str, Any]) -> list[dict[str, Any]]:
    cfgs = {}
    for name in variants:
        over = {**base, "seed": seed, **VARIANTS[name]}
        cfgs[name] = pgolf.load_recipe("baseline", scale="tiny", overrides=over)
    any_cfg = next(iter(cfgs.values()))
    dataset = resolve_dataset(any_cfg, False)
    val_tokens = load_validation(dataset, any_cfg.model.vocab_size, any_cfg.data.val_tokens_limit)
    tables = byte_tables(load_tokenizer(dataset.tokenizer_path), any_cfg.model.vocab_size)
    runs = [Run(name, cfgs[name], dataset, args.ema_decay, args.swa_every) for name in variants]
    start = time.perf_counter()
    for step in range(args.steps):
        for run in runs:
            run.train_step()
        if (step + 1) % 10 == 0 or step == 0:
            line = " ".join(f"{r.name} {r.losses[-1]:.3f}" for r in runs)
            print(f"seed {seed} step {step + 1}/{args.steps} ({time.perf_counter() - start:.0f} s): {line}", flush=True)
    out = []
    reference = next((r for r in runs if r.name == "muon"), runs[0])
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            ratios = [a / b for a, b in zip(run.step_seconds, reference.step_seconds)]
            row: dict[str, Any] = {
                "variant": run.name, "seed": seed, "overrides": VARIANTS[run.name],
                "steps": run.step, "train_loss_last10": statistics.fmean(run.losses[-10:]),
                "seconds_per_step_median": statistics.median(run.step_seconds),
                "seconds_per_step_mean": statistics.fmean(run.step_seconds),
                f"step_time_ratio_vs_{reference.name}": statistics.median(ratios),
                "averaging_seconds_per_step": statistics.fmean(run.average_seconds),
                "swa_snapshots": run.swa.swa_count, "weights": {},
            }
            for which in WEIGHTS:
                row["weights"][which] = score(run.weights(which), cfgs[run.name], val_tokens, tables, Path(tmp),
                                              args.prequant)
                print(f"seed {seed} {run.name:14s} {which:4s} val_bpb {row['weights'][which]['val_bpb']:.4f}", flush=True)
            out.append(row)
    return out


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    ratio_key = "step_time_ratio_vs_muon"
    base = {w: statistics.fmean(r["weights"][w]["val_bpb"] for r in runs if r["variant"] == "muon") for w in WEIGHTS} \
        if any(r["variant"] == "muon" for r in runs) else None
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        row = {"variant": name, "seeds": [r["seed"] for r in mine]}
        for w in WEIGHTS:
            vals = [r["weights"][w]["val_bpb"] for r in mine]
            row[f"val_bpb_{w}"] = vals
            row[f"val_bpb_{w}_mean"] = statistics.fmean(vals)
            pre = [r["weights"][w]["val_bpb_prequant"] for r in mine]
            row[f"val_bpb_prequant_{w}_mean"] = statistics.fmean(pre) if None not in pre else None
            if base is not None:
                row[f"delta_vs_muon_live_{w}"] = row[f"val_bpb_{w}_mean"] - base["live"]
        row["seconds_per_step"] = statistics.fmean(r["seconds_per_step_median"] for r in mine)
        if all(ratio_key in r for r in mine):
            row["step_time_ratio_vs_muon"] = statistics.fmean(r[ratio_key] for r in mine)
        row["averaging_ms_per_step"] = 1000 * statistics.fmean(r["averaging_seconds_per_step"] for r in mine)
        rows.append(row)
    return rows


def markdown(report: dict[str, Any]) -> str:
    s = report["scale"]
    lines = [
        f"Optimizers on CPU ({report['device']}, torch {report['torch']}, {report['threads']} threads): baseline "
        f"--scale tiny (4 x 256, 4,096 tokens/step), {s['steps']} steps, momentum warm-up {s['momentum_warmup_steps']} "
        f"steps, warmdown last 30%, EMA decay {s['ema_decay']}, SWA every {s['swa_every']} steps while lr < 0.5; "
        f"val_bpb of the int8+zlib artifact on the first {s['val_tokens']:,} val tokens; seeds "
        f"{', '.join(map(str, report['seeds']))} (mean; per seed in the JSON).",
        "",
        "| variant | val_bpb live | EMA | SWA | Δ live vs Muon | s/step | time vs Muon |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["summary"]:
        ratio = r.get("step_time_ratio_vs_muon")
        lines.append(
            f"| {r['variant']} | {r['val_bpb_live_mean']:.4f} | {r['val_bpb_ema_mean']:.4f} | {r['val_bpb_swa_mean']:.4f} "
            f"| {r.get('delta_vs_muon_live_live', float('nan')):+.4f} | {r['seconds_per_step']:.3f} "
            f"| {'' if ratio is None else f'{ratio:.3f}x'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--val-tokens", type=int, default=65536, help="score the first N validation tokens (0 = all)")
    parser.add_argument("--prequant", action="store_true", help="also score the full-precision weights")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel processes")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="default: horizon 1/(1-d) = 6.9%% of the run, as 0.997 is of #1536's 4,826 steps")
    parser.add_argument("--swa-every", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra key=value for every run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "optim_cpu.json"))
    args = parser.parse_args()
    if not DATA.is_dir() or not TOKENIZER.is_file():
        print(f"needs the FineWeb sample at {DATA} and {TOKENIZER}", file=sys.stderr)
        return 2
    if args.ema_decay is None:
        args.ema_decay = max(0.0, round(1.0 - 1.0 / (args.steps * (1 / (1 - 0.997)) / 4826), 3))
    warmup = max(1, round(args.steps / 6))
    base = {"data.path": str(DATA), "data.tokenizer": str(TOKENIZER), "train.steps": args.steps,
            "data.val_tokens_limit": args.val_tokens, "optim.muon_momentum_warmup_steps": warmup,
            "train.averaging": "none"}
    base.update(pgolf.config.parse_set_args(args.overrides))
    start = time.perf_counter()
    runs = []
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
            futures = [pool.submit(run_seed, seed, args, args.variants, base) for seed in args.seeds]
            for future in futures:
                runs += future.result()
    else:
        torch.set_num_threads(args.threads)
        for seed in args.seeds:
            runs += run_seed(seed, args, args.variants, base)
    report = {
        "benchmark": "optim_cpu", "recipe": "baseline --scale tiny", "command": " ".join(sys.argv),
        "scale": {"steps": args.steps, "batch_tokens": 4096, "seq_len": 512, "model": "4 x 256, 4 heads / 2 KV",
                  "momentum_warmup_steps": warmup, "warmdown": "frac 0.3 (linear to 0)",
                  "val_tokens": args.val_tokens, "ema_decay": args.ema_decay, "swa_every": args.swa_every,
                  "swa_start_lr": 0.5, "overrides": base, "threads_per_process": args.threads,
                  "parallel_seed_processes": args.jobs},
        "variants": {k: VARIANTS[k] for k in args.variants}, "seeds": args.seeds,
        "device": "cpu", "torch": torch.__version__, "threads": args.threads,
        "wall_seconds": time.perf_counter() - start, "runs": runs, "summary": summarize(runs, args.variants),
        "notes": "lockstep training (step s of every variant before step s+1 of any); EMA/SWA scored from the same "
                 "trajectories (they do not change training); val_bpb = int8+zlib artifact round trip, "
                 "val_bpb_prequant = full precision; seconds/step = median over steps, training only "
                 "(averaging cost separately as averaging_ms_per_step)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    table = markdown(report)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
