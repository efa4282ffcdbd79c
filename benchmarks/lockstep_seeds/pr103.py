"""Lockstep of PR #103 (records/track_non_record_16mb/2026-03-19_LoopedTransformer_LoRA_Int6/train_gpt.py) beside
pgolf's `pr103` recipe: its LoopedGPT (unique blocks cycled to virtual layers, per-virtual-layer LoRA r3 on Q/V,
per-virtual-layer scales, U-Net skips over the virtual depth), its row-normalised bf16 Newton-Schulz Muon, its
four optimizers (Adam tok_emb, Muon matrices, Adam scalars + layer_scales + skip_weights, Adam LoRA), its LR
warm-up (lr 0 at step 0) and momentum warm-up, clip 1.0 over all parameters; then SWA, its int6 + zlib export
(quantize_state_dict_int6) and its round trip scored by its own eval_sliding_window.

Tiny: lockstep's TINY (4 unique blocks, d 64, 4 heads / 2 KV, seq 128, 1,024 tokens a step) looped to 24
virtual layers (#103's 6 loops), everything else the recipe's tiny scale; the challenge side takes its own
Hyperparameters defaults (lr, betas, eps, momentum, clip, LoRA rank) except the sizes and the momentum warm-up
length (50 steps, pgolf's tiny scale), listed in the JSON.
"""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

import torch

import pgolf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_driver import (ChallengeSteps, challenge_luts, challenge_val_file, initial_state, loss_figures,  # noqa: E402
                           pgolf_config, pgolf_score, pgolf_swa_rule, run_pgolf, step_warmdown, temp_dir)

from lockstep_cpu import DATA, NS_SHIM, SEQ_LEN, load_module  # noqa: E402

VIRTUAL = [0, 1, 2, 3] * 6  # 4 unique blocks, 24 virtual layers


def build(ref, cfg, hp):
    m = cfg.model
    return ref.LoopedGPT(vocab_size=m.vocab_size, model_dim=m.model_dim, unique_layers=m.num_layers,
                         virtual_depth=len(VIRTUAL), num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                         mlp_mult=int(m.mlp_mult), tie_embeddings=hp.tie_embeddings,
                         tied_embed_init_std=hp.tied_embed_init_std, logit_softcap=hp.logit_softcap,
                         rope_base=hp.rope_base, qk_gain_init=hp.qk_gain_init, lora_rank=hp.lora_rank)


def to_challenge(ours: dict, model) -> dict:
    """pgolf's state dict under #103's names: tok_emb -> tok_emb.weight, lora_{a,b}_{q,v}[i] -> lora_{q,v}.i.{A,B}."""
    out = {}
    for name in model.state_dict():
        if name == "tok_emb.weight":
            out[name] = ours["tok_emb"]
        elif name.startswith(("lora_q.", "lora_v.")):
            which, i, ab = name.split(".")
            out[name] = ours[f"lora_{ab.lower()}_{which[-1]}"][int(i)]
        else:
            out[name] = ours[name]
    return out


def to_pgolf(theirs: dict, cfg) -> dict:
    """#103's state dict (e.g. its dequantized artifact) under pgolf's names (the inverse of to_challenge)."""
    out = {k: v for k, v in theirs.items() if not k.startswith(("lora_", "tok_emb.")) and "_cached" not in k}
    out["tok_emb"] = theirs["tok_emb.weight"]
    n = len(VIRTUAL)
    for which in ("q", "v"):
        for ab in ("a", "b"):
            out[f"lora_{ab}_{which}"] = torch.stack([theirs[f"lora_{which}.{i}.{ab.upper()}"] for i in range(n)])
    return out


def clip_in_pgolf_layout(model, cfg, max_norm: float):
    """Diagnostic: clip_grad_norm_'s total norm taken over the gradients as pgolf holds them (its parameter order,
    the LoRA stacked into four tensors), then every gradient scaled as clip_grad_norm_ does. Only the summation
    order of the norm changes."""
    with torch.device("meta"):
        names = [n for n, _ in pgolf.build_model(cfg.model, cfg.data.bos_id).named_parameters()]

    def clip() -> None:
        grads = to_pgolf({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, cfg)
        total = torch.nn.utils.get_total_norm([grads[n] for n in names])
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, total)
    return clip


def challenge_run(ref, cfg, hp, pgolf_clip_order: bool = False):
    """#103's main() training step at tiny size (see the module docstring), then its SWA mean."""
    model = build(ref, cfg, hp)
    model.load_state_dict(to_challenge(initial_state(cfg), model), strict=True)
    for block in model.blocks:  # main() builds the RoPE caches (as parameters) before compiling
        block.attn.rotary._build_cache(SEQ_LEN, torch.device("cpu"))
    control = ref.CONTROL_TENSOR_NAME_PATTERNS
    named = list(model.blocks.named_parameters())
    matrices = [p for n, p in named if p.ndim == 2 and not any(c in n for c in control)]
    scalars = [p for n, p in named if p.ndim < 2 or any(c in n for c in control)] + [model.layer_scales,
                                                                                      model.skip_weights]
    lora = list(model.lora_q.parameters()) + list(model.lora_v.parameters())
    betas = (hp.beta1, hp.beta2)
    muon = ref.Muon(matrices, lr=hp.matrix_lr, momentum=hp.muon_momentum, backend_steps=hp.muon_backend_steps)
    token_lr = hp.tied_embed_lr if hp.tie_embeddings else hp.embed_lr
    optimizers = [torch.optim.Adam([model.tok_emb.weight], lr=token_lr, betas=betas, eps=hp.adam_eps),
                  muon,
                  torch.optim.Adam(scalars, lr=hp.scalar_lr, betas=betas, eps=hp.adam_eps),
                  torch.optim.Adam(lora, lr=hp.lora_lr, betas=betas, eps=hp.adam_eps)]
    warm = cfg.optim.muon_momentum_warmup_steps  # tiny: 50 (its default 1500)

    def set_momentum(step: int) -> None:  # main() L835-839: only while step < warm-up steps
        if step < warm:
            frac = step / max(warm, 1)
            for g in muon.param_groups:
                g["momentum"] = hp.muon_momentum_warmup_start + frac * (hp.muon_momentum - hp.muon_momentum_warmup_start)

    def swa_average(snaps):  # main() L901-906
        return {k: torch.stack([s[k].float() for s in snaps]).mean(dim=0).to(snaps[0][k].dtype) for k in snaps[0]}

    steps = ChallengeSteps(model, optimizers, step_warmdown(cfg, hp.warmup_steps), set_momentum,
                           hp.grad_clip_norm, pgolf_swa_rule(cfg), swa_average,
                           clip=clip_in_pgolf_layout(model, cfg, hp.grad_clip_norm) if pgolf_clip_order else None)
    loader = ref.DistributedTokenLoader(str(DATA / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    losses, same = steps.run(loader, cfg.train.steps, cfg.train.batch_tokens, cfg.train.seq_len, cfg.model.vocab_size)
    return model, losses, same, len(steps.snapshots)


def export_and_score(ref, cfg, hp, model, tmp: Path) -> dict:
    """Its export (quantize_state_dict_int6, torch.save, zlib 9) and round trip (dequantize_state_dict_int6 into a
    fresh LoopedGPT, eval_sliding_window at eval_seq_len = eval.context_len, stride eval.sliding_stride)."""
    obj = ref.quantize_state_dict_int6({k: v for k, v in model.state_dict().items()})
    buf = io.BytesIO()
    torch.save(obj, buf)
    blob = zlib.compress(buf.getvalue(), level=9)
    rt_sd = ref.dequantize_state_dict_int6(torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu"))
    val = challenge_val_file(ref, tmp, cfg.train.seq_len)
    luts = challenge_luts(ref, cfg.model.vocab_size)
    scores = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rt_model = build(ref, cfg, hp).to(dtype)  # its L942-950: .bfloat16(), load_state_dict(strict=False)
        rt_model.load_state_dict(rt_sd, strict=False)
        _, bpb = ref.eval_sliding_window(rt_model, val, torch.device("cpu"), *luts,
                                         eval_seq_len=cfg.eval.context_len, eval_stride=cfg.eval.sliding_stride)
        scores[label] = bpb
    n_windows = len(range(0, val.numel() - cfg.eval.context_len, cfg.eval.sliding_stride))
    cross = pgolf_score(cfg, to_pgolf(rt_sd, cfg))
    return {"val_bpb_challenge_artifact": scores["fp32"], "val_bpb_challenge_artifact_bf16_model": scores["bf16"],
            "val_targets_challenge": n_windows * cfg.eval.sliding_stride,
            "val_bpb_challenge_artifact_scored_by_pgolf": cross["val_bpb"],
            "artifact_bytes_challenge_model": len(blob)}


def run_seed(name: str, path: str, seeds: list[int], steps: int, ns_dtype: str) -> dict:
    ref = load_module(path, ns_dtype)
    hp = ref.Hyperparameters()
    extra = {"model.layer_schedule": VIRTUAL}
    runs = []
    for seed in seeds:
        cfg = pgolf_config("pr103", seed, steps, ns_dtype, extra)
        ref.INT6_KEEP_FLOAT_MAX_NUMEL = cfg.quant.passthrough_max_numel
        with temp_dir() as tmp:
            tmp = Path(tmp)
            result, ours = run_pgolf(cfg, tmp)
            model, theirs, same_batches, n_swa = challenge_run(ref, cfg, hp)
            scored = export_and_score(ref, cfg, hp, model, tmp)
            model, theirs_pgolf_order, _, _ = challenge_run(ref, cfg, hp, pgolf_clip_order=True)
            diag = loss_figures(ours, theirs_pgolf_order)
            diag.update(export_and_score(ref, cfg, hp, model, tmp))
        runs.append({"seed": seed, "same_batches": same_batches, **loss_figures(ours, theirs),
                     "val_bpb_pgolf_artifact": result["val_bpb"], **scored,
                     "val_targets_pgolf": result["val_targets"], "swa_snapshots_pgolf": result["swa_snapshots"],
                     "swa_snapshots_challenge": n_swa, "artifact_bytes_pgolf": result["artifact_bytes"],
                     "model_bytes_pgolf": result["model_bytes"],
                     "diagnostic_clip_norm_in_pgolf_layout": {
                         k: diag[k] for k in ("max_abs_train_loss_diff", "step_of_max", "abs_train_loss_diff_per_step",
                                              "val_bpb_challenge_artifact", "val_bpb_challenge_artifact_bf16_model",
                                              "val_bpb_challenge_artifact_scored_by_pgolf",
                                              "artifact_bytes_challenge_model")}})
        print({"seed_recipe": name, **{k: v for k, v in runs[-1].items() if not isinstance(v, list)}}, flush=True)
    hp_used = {k: getattr(hp, k) for k in ("matrix_lr", "scalar_lr", "tied_embed_lr", "lora_lr", "beta1", "beta2",
                                           "adam_eps", "muon_momentum", "muon_momentum_warmup_start",
                                           "muon_backend_steps", "grad_clip_norm", "warmup_steps", "lora_rank",
                                           "qk_gain_init", "rope_base", "logit_softcap", "tied_embed_init_std")}
    shims = ["tok_emb and LoRA A/B kept fp32 (its main() L762-769 stores them bf16; stated deviation 1 in pr103.toml)",
             "no torch.compile; Adam not fused (CPU); one rank, one micro-step (its grad_accum 8 // world_size)",
             "warmdown by steps (lockstep's train.warmdown = steps, 12) in place of its wall-clock fraction; its "
             "LR warm-up (step / 10, lr 0 at step 0) and momentum warm-up as written (over 50 steps, pgolf's tiny scale)",
             "SWA snapshots at pgolf's steps (every train.swa_every in the warmdown, warm-up excluded) averaged by its "
             "code; its own interval needs the wall clock, and its warm-up bug is a stated deviation",
             "INT6_KEEP_FLOAT_MAX_NUMEL 65,536 -> the recipe's tiny quant.passthrough_max_numel (4,096), so a d-64 "
             "model still has int6 matrices",
             "round trip scored in fp32 (its model is wholly bf16 under CUDA autocast; the bf16-model score is "
             "val_bpb_challenge_artifact_bf16_model)"]
    if ns_dtype == "float32":
        shims.insert(0, f"zeropower_via_newtonschulz5: {NS_SHIM[0].strip()!r} -> {NS_SHIM[1].strip()!r}")
    return {"train_gpt": path, "recipe": "pr103 --scale tiny", "overrides": {**extra, "lockstep TINY": "as baseline"},
            "challenge_hyperparameters": hp_used, "runs": runs, "shims": shims,
            "max_abs_train_loss_diff": max(r["max_abs_train_loss_diff"] for r in runs),
            "why_not_zero": "clip_grad_norm_'s total norm is summed over each side's own parameter list: #103's 96 LoRA "
                            "tensors in its order, pgolf's 4 stacked LoRA tensors in its order; the totals differ in the "
                            "last bit and, once the norm exceeds 1.0 (clip 1.0), so does every clipped gradient; from "
                            "there bf16 Newton-Schulz rounding grows it. diagnostic_clip_norm_in_pgolf_layout runs its "
                            "step with the norm summed in pgolf's layout (nothing else changed)",
            "artifact_note": "with bit-identical training (the diagnostic) the two artifacts still score apart by ~1e-5: "
                             "its dequantize_state_dict_int6 rounds every int6 value q * s to bf16 (L346-348; the "
                             "stated bf16 round trip of pr103.toml) and its SWA mean is a stacked mean (L904-905) "
                             "where pgolf divides an fp32 sum",
            "eval_note": "its eval_sliding_window scores the last stride targets of windows starting at 0 (the first "
                         "context_len - 1 - stride targets and the tail are never scored); pgolf's sliding eval scores "
                         "every target once: val_bpb_challenge_artifact_scored_by_pgolf is its artifact on pgolf's targets"}
