"""GPU throughput benchmark: baseline and pr1536 at full size on one GPU, with the records' global batch.

On a CUDA machine, one command:

    python benchmarks/gpu.py [--data-root ../shared/data] [--steps 20] [--out benchmarks/results/gpu_<device>.json]

For each recipe it builds the full-size model (bf16 autocast, fp32 master weights), compiles it, measures
compile seconds (first steps), then times optimizer steps at the record's global batch (baseline 524,288
tokens, pr1536 786,432; gradient accumulation on one GPU) on the real sp1024 / sp8192 sample shards, and
reports tokens/s, ms per step, MFU (model FLOPs per token counted from the config, over the measured peak of a
large bf16 matmul on the same GPU), peak memory, and the fast-path-vs-fallback max error (pgolf.fastpath).
Targets (issue #7): baseline >= 1.9 M tokens/s on one H100 (1.25x the published per-GPU rate of ~1.5 M);
pr1536 within its published per-GPU rate (786,432 / 0.122 s / 8 = 0.81 M tokens/s).
`--device cpu --scale tiny --steps 2` runs the same code on a CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import pgolf
from pgolf.config import layer_schedule, mlp_hidden_dim
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import find_shards
from pgolf.model.precision import autocast_for
from pgolf.optim.groups import build_optimizers
from pgolf.training.fastpath import check_fast_paths
from pgolf.training.loop import choose_attention_backend, grad_accum_steps
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_PER_GPU = {"baseline": 524_288 / 0.04354 / 8, "pr1536": 786_432 / 0.1220 / 8}
DATA = {"baseline": ("fineweb10B_sp1024_sample", "fineweb_1024_bpe.model"),
        "pr1536": ("fineweb10B_sp8192_sample", "fineweb_8192_bpe.model")}


def flops_per_token(cfg: pgolf.Config) -> float:
    """Training FLOPs per token: 6 x (matmul params per virtual layer use + head) + 6 x T x d per layer (causal attention)."""
    m = cfg.model
    d, kv = m.model_dim, m.num_kv_heads * (m.model_dim // m.num_heads)
    mlp_matrices = 3 if m.mlp == "swiglu" else 2
    per_layer = 2 * d * d + 2 * d * kv + mlp_matrices * d * mlp_hidden_dim(m)
    virtual = len(layer_schedule(m))
    matmul_params = virtual * per_layer + m.vocab_size * d
    return 6.0 * matmul_params + 6.0 * virtual * cfg.train.seq_len * d


def peak_bf16_flops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def bench_recipe(name: str, data_root: Path, device: torch.device, steps: int, scale: str, compile_model: bool) -> dict:
    folder, tok = DATA[name]
    cfg = pgolf.load_recipe(name, scale=scale, overrides={"data.path": str(data_root / "datasets" / folder),
                                                         "data.tokenizer": str(data_root / "tokenizers" / tok)})
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model).to(device)
    model.set_looping(True)  # time the (slower) looped schedule
    model.attention_backend = choose_attention_backend(cfg.model.attention_backend, device, cfg.model.doc_attention)
    model.fused_loss = device.type == "cuda"
    optimizers = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    forward = torch.compile(model) if compile_model else model
    accum = grad_accum_steps(cfg, 1)
    loader = DistributedTokenLoader(find_shards(cfg.data.path, cfg.data.train_pattern, "training"), 0, 1, cfg.model.vocab_size)
    t = cfg.train

    def one_step() -> float:
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accum):
            x, y = loader.next_batch(t.batch_tokens, t.seq_len, accum)
            with autocast_for(device):
                loss = forward(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / accum).backward()
            total += loss.detach()
        for opt in optimizers.values():
            opt.step()
        return float(total) / accum

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first_loss = one_step()
    one_step()
    sync()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        last_loss = one_step()
    sync()
    step_s = (time.perf_counter() - start) / steps
    tokens_per_s = t.batch_tokens / step_s
    x, _ = loader.next_batch(t.batch_tokens, t.seq_len, accum)
    fast = check_fast_paths(model, x[:2].to(device), "auto", forward if compile_model else None)
    result = {
        "recipe": name, "scale": scale, "params": pgolf.count_parameters(cfg.model),
        "global_batch_tokens": t.batch_tokens, "seq_len": t.seq_len, "grad_accum_steps": accum,
        "attention_backend": model.attention_backend, "compiled": compile_model,
        "ms_per_step": 1000 * step_s, "tokens_per_s": tokens_per_s, "compile_and_first_2_steps_s": compile_s,
        "flops_per_token": flops_per_token(cfg), "loss_first": first_loss, "loss_last": last_loss,
        "fast_path_vs_fallback": fast, "published_tokens_per_s_per_gpu": PUBLISHED_PER_GPU[name],
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--recipes", nargs="+", default=["baseline", "pr1536"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", default="full", choices=("full", "tiny"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: this benchmark measures GPU throughput (use --device cpu for a smoke test)", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    peak = peak_bf16_flops(device) if device.type == "cuda" else None
    report = {"benchmark": "gpu", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "peak_bf16_matmul_flops": peak, "recipes": []}
    for recipe in args.recipes:
        result = bench_recipe(recipe, Path(args.data_root), device, args.steps, args.scale, not args.no_compile)
        if peak:
            result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / peak
        report["recipes"].append(result)
        print(json.dumps(result, indent=1), flush=True)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"gpu_{name.replace(' ', '_').replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print("| recipe | tokens/s | ms/step | MFU | peak GiB | fast-path rel err |\n|---|---|---|---|---|---|")
    for r in report["recipes"]:
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        mem = f"{r.get('peak_memory_gib', 0):.1f}"
        print(f"| {r['recipe']} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | {mfu} | {mem} | "
              f"{r['fast_path_vs_fallback']['logits_max_rel_err']:.2e} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
