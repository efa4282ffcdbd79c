"""The challenge's own baseline code at the core benchmark scale on this CPU, to set pgolf's core figure beside it.

DESIGN.md quotes val_bpb 2.583 / 2.594 for the challenge's `train_gpt.py` model and Muon at the core benchmark's
scale, measured on some other 2-core CPU. This script trains that very code here, under the same settings as
`benchmarks/core_cpu.py` (4 layers, d=256, 4 heads / 2 KV heads, seq 512, 4,096 tokens per step, 300 steps, Muon
0.04 with momentum 0.85 -> 0.95 over 50 steps, Adam 0.05 tied embedding / 0.04 scalars, betas (0.9, 0.95), linear
warmdown over the last 90 steps, the sample's train shard read in order), in fp32, and scores the full-precision
model with pgolf's exact evaluator on all 680,036 validation targets. The challenge's Muon runs Newton–Schulz in
bf16, which CPUs without bf16 matrix units (this one: AVX2) run ~3x slower than the whole fp32 step; by default
that one function is swapped for pgolf's fp32 Newton–Schulz (the same quintic), as pgolf itself runs on CPUs;
`--ns-dtype bfloat16` keeps the challenge's own. Compare with core_cpu.json's
`val_bpb_prequant` (pgolf's full-precision score) — ideally run both at once, one thread each.

The challenge's file is not part of pgolf; point at a copy, e.g. from a clone of openai/parameter-golf:

    git -C parameter-golf show main:train_gpt.py > /tmp/train_gpt.py
    python benchmarks/reference_cpu.py --train-gpt /tmp/train_gpt.py [--seeds 1337 42 7 2024] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import pgolf
from pgolf.config import EvalConfig
from pgolf.data.shards import read_shard
from pgolf.optim.muon import QUINTIC, newton_schulz
from pgolf.training.runs import write_json
from pgolf.training.runtime import seed_everything

from core_cpu import REFERENCE, SEEDS  # same seeds and DESIGN.md figures as pgolf's side

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
STEPS, WARMDOWN, MOMENTUM_WARMUP, TOKENS_PER_STEP, SEQ_LEN = 300, 90, 50, 4096, 512


class ReferenceLogits(torch.nn.Module):
    """The reference GPT's forward up to the soft-capped logits (its own forward returns only the mean loss)."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.gpt
        x = F.rms_norm(m.tok_emb(input_ids), (m.tok_emb.embedding_dim,))
        x0, skips = x, []
        for i in range(m.num_encoder_layers):
            x = m.blocks[i](x, x0)
            skips.append(x)
        for i in range(m.num_decoder_layers):
            if skips:
                x = x + m.skip_weights[i][None, None, :] * skips.pop()
            x = m.blocks[m.num_encoder_layers + i](x, x0)
        logits = F.linear(m.final_norm(x), m.tok_emb.weight)
        return m.logit_softcap * torch.tanh(logits / m.logit_softcap)  # softcap · tanh(z / softcap)


def pgolf_initial_weights(gpt: torch.nn.Module, seed: int) -> None:
    """Load the weights `pgolf train --recipe baseline --scale tiny --seed S` starts from (same tensors, pgolf's
    names), so that only the code that trains them differs."""
    seed_everything(seed)
    ours = pgolf.build_model(pgolf.load_recipe("baseline", scale="tiny").model).state_dict()
    gpt.load_state_dict({name: ours[name.replace("tok_emb.weight", "tok_emb")] for name in gpt.state_dict()})


def train_reference(ref, seed: int, data: Path, pgolf_init: bool) -> tuple[torch.nn.Module, list[float], float]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    gpt = ref.GPT(vocab_size=1024, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=2,
                  tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                  qk_gain_init=1.5)
    if pgolf_init:
        pgolf_initial_weights(gpt, seed)
    named = list(gpt.blocks.named_parameters())
    is_control = lambda name, p: p.ndim < 2 or any(c in name for c in ref.CONTROL_TENSOR_NAME_PATTERNS)  # noqa: E731
    matrices = [p for n, p in named if not is_control(n, p)]
    scalars = [p for n, p in named if is_control(n, p)] + [gpt.skip_weights]
    embed_opt = torch.optim.Adam([gpt.tok_emb.weight], lr=0.05, betas=(0.9, 0.95), eps=1e-8)
    muon = ref.Muon(matrices, lr=0.04, momentum=0.95, backend_steps=5)
    scalar_opt = torch.optim.Adam(scalars, lr=0.04, betas=(0.9, 0.95), eps=1e-8)
    optimizers = [(embed_opt, 0.05), (muon, 0.04), (scalar_opt, 0.04)]
    loader = ref.DistributedTokenLoader(str(data / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    accum = TOKENS_PER_STEP // SEQ_LEN  # one sequence per micro-step, as the reference splits 4,096 tokens
    losses, start = [], time.perf_counter()
    for step in range(STEPS):
        lr_scale = (STEPS - step) / WARMDOWN if step >= STEPS - WARMDOWN else 1.0
        frac = min(step / MOMENTUM_WARMUP, 1.0)
        for opt, _ in optimizers:
            opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accum):
            x, y = loader.next_batch(TOKENS_PER_STEP, SEQ_LEN, accum)
            loss = gpt(x, y)
            (loss / accum).backward()
            step_loss += loss.item() / accum
        for group in muon.param_groups:
            group["momentum"] = (1 - frac) * 0.85 + frac * 0.95
        for opt, base_lr in optimizers:
            for group in opt.param_groups:
                group["lr"] = base_lr * lr_scale
            opt.step()
        losses.append(step_loss)
        if step % 50 == 0 or step == STEPS - 1:
            print(f"seed {seed} step {step} loss {step_loss:.4f} {time.perf_counter() - start:.0f}s", flush=True)
    return gpt, losses, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-gpt", required=True, help="path to the challenge's train_gpt.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--ns-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="Newton–Schulz dtype (bfloat16 = the challenge's function, unchanged)")
    parser.add_argument("--pgolf-init", action="store_true",
                        help="start from the weights pgolf's run of the same seed starts from (isolates the init draw)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reference_cpu.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = SHARED / "datasets" / "fineweb10B_sp1024_sample"
    tokenizer = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
    if not data.is_dir() or not Path(args.train_gpt).is_file():
        print(f"needs the FineWeb sample at {data} and the challenge's train_gpt.py at {args.train_gpt}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("challenge_train_gpt", args.train_gpt)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    if args.ns_dtype == "float32":
        ref.zeropower_via_newtonschulz5 = lambda g, steps=5, eps=1e-7: newton_schulz(g, steps, QUINTIC, torch.float32, eps)
    val = np.asarray(read_shard(data / "fineweb_val_000000.bin"))
    runs = []
    for seed in args.seeds:
        gpt, losses, train_s = train_reference(ref, seed, data, args.pgolf_init)
        with torch.no_grad():
            result = pgolf.evaluate(ReferenceLogits(gpt).eval(), val, str(tokenizer),
                                    EvalConfig(context_len=SEQ_LEN, batch_seqs=32))
        runs.append({"seed": seed, "val_bpb_prequant": result.val_bpb, "val_loss_prequant": result.val_loss,
                     "val_targets": result.targets, "train_seconds": train_s,
                     "tokens_per_second": STEPS * TOKENS_PER_STEP / train_s, "final_train_loss": losses[-1],
                     "train_loss_every_50": losses[::50]})
        print(json.dumps(runs[-1]), flush=True)
    report = {"benchmark": "reference_cpu", "code": "the challenge's train_gpt.py (GPT, Muon, loader), fp32 on CPU",
              "newton_schulz_dtype": args.ns_dtype, "initial_weights": "pgolf's" if args.pgolf_init else "its own",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs,
              "design_md_figures": REFERENCE["val_bpb"],
              "command": " ".join(["python", "benchmarks/reference_cpu.py", *sys.argv[1:]])}
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
