"""`pgolf plan`: what a recipe costs on N GPUs, from its config alone, on any CPU (nothing is allocated).

- parameters, and training FLOPs per token: 6 x (matmul weights used per token, every virtual layer use
  counted) + 6 x L_virtual x T x d for causal attention (QK^T and AV: 2 T d forward, x3 with backward);
- activation memory per GPU: the full-size model runs one training forward on the meta device while
  saved_tensors_hooks add up every tensor autograd keeps for backward (one count per storage, parameters
  excluded), at the per-rank micro-batch. The meta device has no fused attention kernel, so SDPA's math
  path saves T x T score matrices that FlashAttention-3 / flex / the fused SDPA kernels never keep: those are
  dropped and each attention call's log-sum-exp (B x H x T fp32) is counted instead. Checked against the saved
  tensors of real CPU runs (tests/test_plan.py: within 10%);
- optimizer-side memory: fp32 parameters and gradients, Muon momentum (each matrix on its owner rank only),
  Adam moments, EMA / SWA copies, DDP's gradient buckets, the bf16 weight copies of autocast;
- ms per step and steps inside the cap at a stated MFU of the GPU's dense bf16 peak (plain and looped phases
  apart when the schedule loops late), the artifact estimate (artifact.budget), and the evaluation time at
  a stated MFU (forward FLOPs of the eval mode over the validation tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..artifact.budget import estimate_artifact_bytes
from ..artifact.sizes import LIMIT_BYTES, runtime_code_bytes
from ..config import Config
from ..data.shards import find_shards, read_header
from ..model.gpt import GPT
from ..model.layers import Linear, role_of
from .loop import grad_accum_steps

# Dense bf16 tensor-core peaks of the spec sheets (SXM parts), and memory.
GPUS = {
    "h100": {"name": "NVIDIA H100 SXM", "peak_bf16_flops": 989e12, "memory_bytes": 80 * 2**30},
    "h200": {"name": "NVIDIA H200 SXM", "peak_bf16_flops": 989e12, "memory_bytes": 141 * 2**30},
    "a100": {"name": "NVIDIA A100 SXM", "peak_bf16_flops": 312e12, "memory_bytes": 80 * 2**30},
}
DEFAULT_MFU = 0.30          # the records reach ~20% (baseline) to ~35% (#1536) of 989 TFLOP/s on 8xH100
DEFAULT_EVAL_MFU = 0.20     # evaluation forwards are smaller and less fused
# LoRA TTT is not compute-bound (per-document batches, many small steps): #1536's log scored 40.5 M tokens in 252 s
# on 8 x H100 with FA3, i.e. ~1.2% of the peak for the 4 forward-equivalents per token counted below.
LORA_TTT_MFU = 0.012
CUDA_CONTEXT_BYTES = 2**30  # CUDA context, cuBLAS workspaces, compiler caches: about 1 GiB per process
# Validation tokens of the challenge's FineWeb split (50,000 documents) by tokenizer vocabulary, as the records'
# logs print them (cut to whole training sequences), for when no data folder is given to count them.
FINEWEB_VAL_TOKENS = {1024: 62_021_632, 4096: 45_508_608, 8192: 40_540_160}
EVAL_LIMIT_S = 600.0


def _meta_model(cfg: Config, looped: bool) -> GPT:
    with torch.device("meta"):
        model = GPT(cfg.model)
    model.set_looping(looped)
    return model


def matmul_weights_per_token(model: GPT) -> int:
    """Weights multiplied per token by the active schedule: each block's Linears once per virtual use, the
    other Linears (projections, untied head) once, the tied head (vocab x d) once."""
    uses = {i: model.active_schedule.count(i) for i in range(len(model.blocks))}
    total = 0
    for i, block in enumerate(model.blocks):
        total += uses[i] * sum(m.weight.numel() for m in block.modules() if isinstance(m, Linear))
    in_blocks = {id(m) for b in model.blocks for m in b.modules()}
    total += sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear) and id(m) not in in_blocks)
    if model.lm_head is None:
        total += model.tok_emb.numel()
    if model.cfg.lora_rank:
        d, r = model.cfg.model_dim, model.cfg.lora_rank
        kv = model.cfg.num_kv_heads * (d // model.cfg.num_heads)
        total += len(model.active_schedule) * (2 * d * r + r * d + r * kv)
    return total


def flops_per_token(cfg: Config, looped: bool = True, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 x matmul weights used + 6 x L_virtual x T x d (causal attention)."""
    model = _meta_model(cfg, looped)
    T = seq_len or cfg.train.seq_len
    return 6.0 * matmul_weights_per_token(model) + 6.0 * len(model.active_schedule) * T * cfg.model.model_dim


def forward_flops_per_token(cfg: Config, context: int) -> float:
    model = _meta_model(cfg, True)
    return 2.0 * matmul_weights_per_token(model) + 2.0 * len(model.active_schedule) * context * cfg.model.model_dim


def saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor, drop_scores: bool) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward (one count per storage,
    parameters excluded); `drop_scores`: leave out (.., T, T) attention score matrices."""
    T = ids.shape[1]
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in params and key not in seen:
            scores = drop_scores and t.dim() >= 2 and tuple(t.shape[-2:]) == (T, T)
            seen[key] = 0 if scores else storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, ids)
    return sum(seen.values())


def activation_bytes(cfg: Config, sequences: int, dtype: torch.dtype = torch.bfloat16, looped: bool = True,
                     fused_loss: bool = True) -> int:
    """Activation memory of one training forward of `sequences` rows of train.seq_len, from a meta trace."""
    model = _meta_model(cfg, looped).to(dtype)
    model.fused_loss = fused_loss
    model.attention_backend = "sdpa"
    T = cfg.train.seq_len
    ids = torch.zeros(sequences, T, dtype=torch.long, device="meta")  # meta: any batch costs nothing
    saved = saved_activation_bytes(model, ids, drop_scores=True)
    lse = sequences * cfg.model.num_heads * T * 4 * len(model.active_schedule)  # fused kernels' log-sum-exp, fp32
    return saved + lse


def optimizer_bytes(cfg: Config, world: int) -> dict[str, int]:
    """Per-GPU bytes of weights, gradients and optimizer-side state."""
    model = _meta_model(cfg, True)
    params = sum(p.numel() for p in model.parameters())
    matrix = sum(p.numel() for p in model.parameters() if role_of(p) == "matrix" or
                 (role_of(p) == "proj" and cfg.optim.proj_muon))
    muon = cfg.optim.matrix_optimizer == "muon"
    adam_params = params - matrix if muon else params
    out = {
        "weights_fp32": 4 * params,
        "gradients_fp32": 4 * params,
        "adam_moments": 8 * adam_params,
        "muon_momentum": (4 * math.ceil(matrix / world)) if muon else 0,
        "muon_update_buffer": 2 * matrix if muon else 0,
        "averaging": 4 * params * ((cfg.train.averaging in ("ema", "swa_else_ema")) + (cfg.train.averaging in ("swa", "swa_else_ema"))),
        "ddp_buckets": 4 * params if world > 1 else 0,
        "autocast_weight_copies": 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear)),
    }
    return out


def _val_tokens(cfg: Config) -> tuple[int, str]:
    if cfg.data.val_tokens_limit > 0:
        return cfg.data.val_tokens_limit, "data.val_tokens_limit"
    if cfg.data.path:
        try:
            files = find_shards(cfg.data.path, cfg.data.val_pattern, "validation")
            return sum(read_header(f) for f in files), f"the validation shards in {cfg.data.path}"
        except (OSError, ValueError):
            pass
    v = cfg.model.vocab_size
    if v in FINEWEB_VAL_TOKENS:
        return FINEWEB_VAL_TOKENS[v], f"FineWeb's validation split at sp{v}"
    return FINEWEB_VAL_TOKENS[1024], f"FineWeb's validation split (sp1024's count: no figure for vocab {v})"


def eval_seconds(cfg: Config, gpu: dict[str, Any], world: int, mfu: float) -> tuple[float, dict[str, Any]]:
    """Seconds to score the validation split under cfg.eval on `world` GPUs at `mfu` of the bf16 peak."""
    tokens, source = _val_tokens(cfg)
    e = cfg.eval
    context = e.context_len or cfg.train.seq_len
    passes = context / e.sliding_stride if e.sliding_stride > 0 else 1.0  # each target's window, forward
    per_token = forward_flops_per_token(cfg, context) * passes
    mode = "sliding" if e.sliding_stride > 0 else "plain"
    if e.ttt == "lora":   # score-first: a forward to score each chunk, then forward + backward to adapt on it
        per_token = forward_flops_per_token(cfg, context) * 4.0
        mode = "lora_ttt"
    elif e.ttt in ("chunk", "pre"):
        per_token = per_token + forward_flops_per_token(cfg, context) * 3.0 * e.ttt_epochs
        mode = f"{e.ttt}_ttt"
    if mode == "lora_ttt":
        mfu = min(mfu, LORA_TTT_MFU)
    seconds = tokens * per_token / (world * gpu["peak_bf16_flops"] * mfu)
    return seconds, {"val_tokens": tokens, "val_tokens_from": source, "mode": mode, "mfu": mfu,
                     "flops_per_scored_token": per_token}


def plan(cfg: Config, gpus: int = 8, gpu: str = "h100", mfu: float = DEFAULT_MFU,
         eval_mfu: float = DEFAULT_EVAL_MFU) -> dict[str, Any]:
    """Everything `pgolf plan` prints, as a dict; `warnings` lists what would not fit."""
    if gpu not in GPUS:
        raise ValueError(f"unknown --gpu {gpu!r}; known: {', '.join(GPUS)}")
    spec = GPUS[gpu]
    t = cfg.train
    accum = grad_accum_steps(cfg, gpus)
    micro_sequences = t.batch_tokens // (gpus * accum * t.seq_len)
    model = _meta_model(cfg, True)
    params = sum(p.numel() for p in model.parameters())
    late_loop = cfg.model.recurrence_start_frac > 0
    phases = {"looped": flops_per_token(cfg, True)}
    if late_loop:
        phases["plain"] = flops_per_token(cfg, False)
    peak = spec["peak_bf16_flops"]
    ms_per_step = {k: 1000 * f * t.batch_tokens / (gpus * peak * mfu) for k, f in phases.items()}
    budget_s = t.max_wallclock_s - cfg.quant.gptq_reserve_s if t.max_wallclock_s > 0 else math.inf
    if late_loop:
        r = cfg.model.recurrence_start_frac
        steps_in_cap = budget_s * (r / ms_per_step["plain"] + (1 - r) / ms_per_step["looped"]) * 1000
    else:
        steps_in_cap = budget_s / ms_per_step["looped"] * 1000
    steps = min(t.steps, int(steps_in_cap)) if math.isfinite(steps_in_cap) else t.steps
    activations = {k: activation_bytes(cfg, micro_sequences, looped=(k == "looped")) for k in phases}
    optimizer = optimizer_bytes(cfg, gpus)
    memory_total = max(activations.values()) + sum(optimizer.values()) + CUDA_CONTEXT_BYTES
    artifact = estimate_artifact_bytes(cfg)
    code = runtime_code_bytes(cfg)
    ev_s, ev = eval_seconds(cfg, spec, gpus, eval_mfu)
    warnings = []
    if memory_total > spec["memory_bytes"]:
        warnings.append(f"memory: {memory_total / 2**30:.1f} GiB per GPU is more than the {spec['name']}'s "
                        f"{spec['memory_bytes'] / 2**30:.0f} GiB (lower train.micro_batch_tokens)")
    if artifact > LIMIT_BYTES:
        warnings.append(f"artifact: the estimate {artifact:,} bytes is over the {LIMIT_BYTES:,}-byte limit")
    if ev_s > EVAL_LIMIT_S:
        warnings.append(f"evaluation: {ev_s:.0f} s estimated at {eval_mfu:.0%} MFU, over the challenge's "
                        f"{EVAL_LIMIT_S:.0f} s evaluation limit")
    if t.max_wallclock_s <= 0:
        warnings.append("no wall-clock cap (train.max_wallclock_s = 0): the record track trains at most 600 s")
    elif t.max_wallclock_s > 600:
        warnings.append(f"train.max_wallclock_s = {t.max_wallclock_s:g} s is over the record track's 600 s")
    if math.isfinite(steps_in_cap) and t.steps < steps_in_cap:
        warnings.append(f"train.steps = {t.steps} ends training before the cap (about {steps_in_cap:.0f} steps fit)")
    return {
        "recipe": cfg.recipe, "scale": cfg.scale, "gpus": gpus, "gpu": spec["name"], "mfu": mfu,
        "parameters": params, "flops_per_token": phases,
        "batch_tokens": t.batch_tokens, "seq_len": t.seq_len, "grad_accum_steps": accum,
        "micro_batch_sequences_per_gpu": micro_sequences,
        "ms_per_step": ms_per_step, "tokens_per_s_per_gpu": {k: t.batch_tokens / gpus / (v / 1000) for k, v in ms_per_step.items()},
        "train_budget_s": budget_s if math.isfinite(budget_s) else None, "steps_in_cap": steps,
        "memory_per_gpu_bytes": {"activations": activations, **optimizer, "cuda_context": CUDA_CONTEXT_BYTES,
                                 "total": memory_total, "gpu_memory": spec["memory_bytes"]},
        "artifact_bytes": {"code": code, "model": artifact - code, "total": artifact, "limit": LIMIT_BYTES},
        "eval": {"seconds": ev_s, **ev},
        "warnings": warnings,
    }


def format_plan(p: dict[str, Any]) -> str:
    gib = 2**30
    mem = p["memory_per_gpu_bytes"]
    lines = [f"{p['recipe']} ({p['scale']}) on {p['gpus']} x {p['gpu']}, at {p['mfu']:.0%} MFU of the bf16 peak",
             f"  parameters        {p['parameters']:,}",
             f"  batch             {p['batch_tokens']:,} tokens/step = {p['gpus']} GPUs x {p['grad_accum_steps']} micro-steps "
             f"x {p['micro_batch_sequences_per_gpu']} sequences of {p['seq_len']}"]
    for phase, f in p["flops_per_token"].items():
        lines.append(f"  {phase:<8} phase    {f / 1e6:,.1f} MFLOP/token -> {p['ms_per_step'][phase]:.1f} ms/step, "
                     f"{p['tokens_per_s_per_gpu'][phase] / 1e6:.2f} M tokens/s per GPU")
    budget = f"{p['train_budget_s']:.0f} s" if p["train_budget_s"] else "no cap"
    lines.append(f"  steps in the cap  {p['steps_in_cap']:,} ({budget} of training)")
    acts = ", ".join(f"{k} {v / gib:.1f}" for k, v in mem["activations"].items())
    state = sum(v for k, v in mem.items() if k not in ("activations", "total", "gpu_memory", "cuda_context"))
    lines.append(f"  memory per GPU    activations {acts} GiB + weights/gradients/optimizer {state / gib:.1f} GiB "
                 f"+ context {mem['cuda_context'] / gib:.0f} GiB = {mem['total'] / gib:.1f} of {mem['gpu_memory'] / gib:.0f} GiB")
    a = p["artifact_bytes"]
    lines.append(f"  artifact          {a['total']:,} bytes estimated = code {a['code']:,} + model {a['model']:,} "
                 f"(limit {a['limit']:,})")
    e = p["eval"]
    lines.append(f"  evaluation        {e['mode']}: {e['seconds']:.0f} s at {e['mfu']:.0%} MFU for {e['val_tokens']:,} "
                 f"tokens ({e['val_tokens_from']})")
    lines += [f"  WARNING: {w}" for w in p["warnings"]]
    return "\n".join(lines)


__all__ = ["GPUS", "activation_bytes", "eval_seconds", "flops_per_token", "format_plan", "matmul_weights_per_token",
           "optimizer_bytes", "plan", "saved_activation_bytes"]
