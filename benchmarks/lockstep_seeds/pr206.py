"""Lockstep of PR #206 (records/track_10min_16mb/2026-03-20_Int6STE_SmearGate_Seq2048_OrthoInit_RoPE50K_SWA100/
train_gpt.py) beside pgolf's `pr206` recipe: its GPT with SmearGate (pre-norm) and int6 STE fake quantization in
every CastedLinear's training forward, its NorMuon (ema momentum, bf16 Newton-Schulz, per-row second moment,
decoupled WD 0.02 with the scheduled lr), its Adam groups, its momentum warm-up and step warmdown, SWA summed
while the multiplier is below 0.5; then its int6 export (quantize_state_dict_int8 with INT6 ranges, zstd-22) and
the round trip scored by its own eval_val_sliding_window.

Each seed runs twice. `as_written`: the record's code as it is (the shims listed). `deviations_off`: what
pr206.toml states as deviations is taken out of the record's side, patched in memory, to show that what is left
agrees bit for bit: its SmearGate made not to blend across BOS (pgolf's rule), its QAT forward put on the export
grid pgolf's QAT uses (scale floor 1/31, fp16 scales: pgolf's fake_quantize_grid, value W_hat exactly), and its
K/V head repetition replaced by SDPA's enable_gqa (the same function; only the backward's summation order moves).

Tiny: lockstep's TINY (4 layers, d 64, 4 heads / 2 KV, seq 128, 1,024 tokens a step); quant.passthrough_max_numel
1,024 on both sides (its 65,536 would keep every tiny matrix float, and then no matrix has QAT on pgolf's side
while its CastedLinear fake-quantizes every matrix: at full size every matrix is over 65,536 and quantized).
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_driver import (ChallengeSteps, add_mode, challenge_luts, challenge_val_file, initial_state,  # noqa: E402
                           pgolf_config, pgolf_score, pgolf_swa_rule, run_pgolf, seed_row, step_warmdown, swa_mean,
                           temp_dir)

from lockstep_cpu import DATA, NS_SHIM, load_module  # noqa: E402

PASSTHROUGH = 1024
SMEAR_LINE = "        x_shifted = torch.cat([x[:, :1, :], x[:, :-1, :]], dim=1)\n"
GQA_LINES = """        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k = k[:, :, None, :, :].expand(bsz, self.num_kv_heads, rep, seqlen, self.head_dim).reshape(bsz, self.num_heads, seqlen, self.head_dim)
            v = v[:, :, None, :, :].expand(bsz, self.num_kv_heads, rep, seqlen, self.head_dim).reshape(bsz, self.num_heads, seqlen, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True)
"""
# (what, its lines, the lines put in): the deviations_off patches of its source, each checked to occur once
SOURCE_PATCHES = (
    ("SmearGate never blends across BOS (pgolf's rule; the record's blends, stated in pr206.toml)", SMEAR_LINE,
     SMEAR_LINE + "        x_shifted = torch.where((input_ids == 1)[..., None], x, x_shifted)\n"),
    ("GQA by SDPA's enable_gqa (pgolf's call) in place of its K/V expand: the same function, whose backward sums "
     "the repeated heads' gradients in another order (last bits only)", GQA_LINES,
     "        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True, "
     "enable_gqa=self.num_kv_heads != self.num_heads)\n"),
)


def load(path: str, ns_dtype: str, deviations_off: bool):
    """The record's module; with deviations_off its source gets SOURCE_PATCHES."""
    if not deviations_off:
        return load_module(path, ns_dtype)
    source = Path(path).read_text()
    for _, old, new in SOURCE_PATCHES:
        if source.count(old) != 1:
            raise SystemExit(f"{path}: expected the lines {old.strip()[:60]!r}... once, found {source.count(old)}")
        source = source.replace(old, new)
    patched = Path(tempfile.mkdtemp()) / f"{Path(path).stem}_deviations_off.py"
    patched.write_text(source)
    return load_module(str(patched), ns_dtype)


def export_grid_qat(ref, cfg):
    """CastedLinear.forward with pgolf's QAT value: W_hat on the export grid (pgolf.quant.methods), straight through."""
    from pgolf.quant.methods import fake_quantize_grid

    def forward(self, x):
        w = self.weight.to(x.dtype)
        if self.training and w.ndim == 2:
            with torch.no_grad():
                w_hat = fake_quantize_grid(w.float(), cfg.quant.matrix_bits, cfg.quant, "attn").to(x.dtype)
            w = w_hat + (w - w.detach())
        return F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)
    return forward


def build(ref, cfg, hp):
    m = cfg.model
    return ref.GPT(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                   num_kv_heads=m.num_kv_heads, mlp_mult=int(m.mlp_mult), tie_embeddings=hp.tie_embeddings,
                   tied_embed_init_std=hp.tied_embed_init_std, logit_softcap=hp.logit_softcap,
                   rope_base=hp.rope_base, qk_gain_init=hp.qk_gain_init)


NAMES = {"tok_emb.weight": "tok_emb", "smear_gate": "smear.gate"}  # #206 name -> pgolf name; the rest equal


def to_pgolf(theirs: dict) -> dict:
    return {NAMES.get(k, k): v for k, v in theirs.items()}


def challenge_run(ref, cfg, hp):
    model = build(ref, cfg, hp)
    ours = initial_state(cfg)
    model.load_state_dict({n: ours[NAMES.get(n, n)] for n in model.state_dict()}, strict=True)
    control = ref.CONTROL_TENSOR_NAME_PATTERNS
    named = list(model.blocks.named_parameters())
    matrices = [p for n, p in named if p.ndim == 2 and not any(c in n for c in control)]
    scalars = [p for n, p in named if p.ndim < 2 or any(c in n for c in control)] + [model.skip_weights,
                                                                                      model.smear_gate]
    betas = (hp.beta1, hp.beta2)
    muon = ref.NorMuon(matrices, lr=cfg.optim.matrix_lr, momentum=hp.muon_momentum, beta2=hp.muon_beta2,
                       backend_steps=hp.muon_backend_steps, weight_decay=hp.muon_weight_decay)
    token_lr = hp.tied_embed_lr if hp.tie_embeddings else hp.embed_lr
    optimizers = [torch.optim.Adam([model.tok_emb.weight], lr=token_lr, betas=betas, eps=hp.adam_eps), muon,
                  torch.optim.Adam(scalars, lr=hp.scalar_lr, betas=betas, eps=hp.adam_eps)]
    warm = cfg.optim.muon_momentum_warmup_steps  # tiny: 50 (its default 1500)

    def set_momentum(step: int) -> None:  # its main(): frac = min(step / warm-up, 1), (1 - frac) m0 + frac m1
        frac = min(step / warm, 1.0) if warm > 0 else 1.0
        for g in muon.param_groups:
            g["momentum"] = (1 - frac) * hp.muon_momentum_warmup_start + frac * hp.muon_momentum

    # its lr_mul without a wall clock: max((iterations - step) / warmdown_iters, 0) in the last warmdown_iters
    # steps, no LR warm-up (its WARMUP_STEPS are compile priming steps, undone); SWA: scale < swa_start_frac and
    # step % swa_every == 0 after the step, the rule pgolf_swa_rule states
    steps = ChallengeSteps(model, optimizers, step_warmdown(cfg, 0), set_momentum, hp.grad_clip_norm,
                           pgolf_swa_rule(cfg), swa_mean(model))  # its fp32 sums / count, applied if count > 1
    loader = ref.DistributedTokenLoader(str(DATA / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    losses, same = steps.run(loader, cfg.train.steps, cfg.train.batch_tokens, cfg.train.seq_len, cfg.model.vocab_size)
    return model, losses, same, len(steps.snapshots)


def export_and_score(ref, cfg, hp, model, tmp: Path) -> dict:
    """Its export (quantize_state_dict_int8 = int6 rows + fp16 tok_emb, torch.save, zstd-22) and round trip
    (dequantize_state_dict_int8, load_state_dict, eval_val_sliding_window at seq_len = eval.context_len)."""
    import zstandard

    obj, _ = ref.quantize_state_dict_int8(model.state_dict())
    buf = io.BytesIO()
    torch.save(obj, buf)
    blob = zstandard.ZstdCompressor(level=22).compress(buf.getvalue())
    state = ref.dequantize_state_dict_int8(torch.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(blob)),
                                                      map_location="cpu"))
    rt_model = build(ref, cfg, hp)
    rt_model.load_state_dict(state, strict=True)
    val = challenge_val_file(ref, tmp, cfg.train.seq_len)
    args = SimpleNamespace(train_seq_len=cfg.eval.context_len, val_batch_size=32 * cfg.eval.context_len)
    _, bpb = ref.eval_val_sliding_window(args, rt_model, 0, 1, torch.device("cpu"), val,
                                         *challenge_luts(ref, cfg.model.vocab_size), stride=cfg.eval.sliding_stride)
    seq, stride = cfg.eval.context_len, cfg.eval.sliding_stride
    n_windows = max((val.numel() - 1 - seq) // stride + 1, 1)
    cross = pgolf_score(cfg, to_pgolf(state))
    return {"val_bpb_challenge_artifact": bpb, "val_targets_challenge": n_windows * stride,
            "val_bpb_challenge_artifact_scored_by_pgolf": cross["val_bpb"], "artifact_bytes_challenge_model": len(blob)}


def run_seed(name: str, path: str, seeds: list[int], steps: int, ns_dtype: str) -> dict:
    extra = {"quant.passthrough_max_numel": PASSTHROUGH}
    out = {"train_gpt": path, "recipe": "pr206 --scale tiny", "overrides": {**extra, "lockstep TINY": "as baseline"}}
    for mode in ("as_written", "deviations_off"):
        ref = load(path, ns_dtype, mode != "as_written")
        ref.INT8_KEEP_FLOAT_MAX_NUMEL = PASSTHROUGH
        hp = ref.Hyperparameters()
        runs = []
        for seed in seeds:
            cfg = pgolf_config("pr206", seed, steps, ns_dtype, extra)
            if mode != "as_written":
                ref.CastedLinear.forward = export_grid_qat(ref, cfg)
            with temp_dir() as tmp:
                tmp = Path(tmp)
                result, ours = run_pgolf(cfg, tmp)
                model, theirs, same_batches, n_swa = challenge_run(ref, cfg, hp)
                scored = export_and_score(ref, cfg, hp, model, tmp)
            runs.append(seed_row(name, mode, seed, same_batches, ours, theirs, result, scored, n_swa))
        add_mode(out, mode, runs)
    out["challenge_hyperparameters"] = {k: getattr(hp, k) for k in (
        "matrix_lr", "scalar_lr", "tied_embed_lr", "beta1", "beta2", "adam_eps", "muon_momentum", "muon_beta2",
        "muon_momentum_warmup_start", "muon_weight_decay", "muon_backend_steps", "grad_clip_norm", "rope_base",
        "qk_gain_init", "logit_softcap", "tied_embed_init_std", "swa_start_frac")}
    out["shims"] = [
        "tok_emb kept fp32 (its main() L966-970 stores it bf16; the stated deviation in pr206.toml)",
        "no torch.compile; Adam not fused (CPU); one rank, one micro-step; its compile warm-up steps (undone by it) not run",
        f"MATRIX_LR: this file's default {hp.matrix_lr} -> the recipe's {0.021} (the source every train_seed*.log "
        "embeds reads 0.021; pr206.toml)",
        "warmdown: its no-wall-clock rule (last WARMDOWN_ITERS of ITERATIONS, = lockstep's 12 of the run's steps); "
        "momentum warm-up over 50 steps (pgolf's tiny scale; its default 1500); SWA every train.swa_every (2) "
        "while the multiplier < 0.5 (its SWA_EVERY 100)",
        f"INT8_KEEP_FLOAT_MAX_NUMEL 65,536 -> {PASSTHROUGH} (and quant.passthrough_max_numel on pgolf's side)",
        "round trip scored in fp32 (CUDA bf16 autocast is off on a CPU)"]
    out["deviations_off_patches"] = [what for what, _, _ in SOURCE_PATCHES] + [
        "CastedLinear.forward: W_hat from pgolf's fake_quantize_grid (floor 1/31, fp16 scales) with W_hat + (W - "
        "stopgrad W) in place of its clip/31 grid and W + stopgrad(W_q - W) (stated in pr206.toml)"]
    if ns_dtype == "float32":
        out["shims"].insert(0, f"zeropower_via_newtonschulz5: {NS_SHIM[0].strip()!r} -> {NS_SHIM[1].strip()!r}")
    out["eval_note"] = ("its eval_val_sliding_window scores the last stride targets of each full window (the first "
                        "context_len - stride targets and the tail unscored); pgolf's scores every target once: "
                        "val_bpb_challenge_artifact_scored_by_pgolf is its artifact on pgolf's targets")
    return out
