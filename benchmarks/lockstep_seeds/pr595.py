"""Lockstep of PR #595 (records/track_10min_16mb/2026-03-23_LoquiAuris_10L_SWA_StandardTTT_1.1100/train_gpt.py)
beside pgolf's `pr595` recipe: its GPT with BigramHash (hashed pair table + projection, scale 0.05) and post-norm
SmearGate, its plain Muon (sum momentum, Nesterov, bf16 Newton-Schulz, WD 0.04 with the scheduled lr, bigram.proj
among the matrices), its AdamW groups (tok_emb + bigram table at the tied-embedding lr, scalars; wd 0.01), its
global-norm clip 0.3 on every parameter after the backward, its momentum warm-up and step warmdown, SWA summed
while the multiplier is below 0.5; then its export (mixed_quantize_int6: int5 MLP, int6 attention and bigram.proj,
int8 bigram table, fp16 tok_emb and last layer's c_k, zstd-22), the round trip, its pre-scoring "standard" TTT
(AdamW over the validation sequences, clip 1.0; NOT LEGAL, the record's scoring) and its eval_val_sliding.

Each seed runs three times. `as_written`: the record's code as it is (the shims listed). `deviations_off`: what pgolf
does differently on purpose is taken out of the record's side, patched in memory (SOURCE_PATCHES, each checked to
occur as often as stated), to show that what is left agrees bit for bit: its SmearGate and its bigram hash made not
to reach across BOS (pgolf's rule; pr595.toml states it), its K/V repeat_interleave replaced by SDPA's
enable_gqa (the same function; only the backward's summation order moves), and its global-norm clip given the
parameters in pgolf's order (CLIP_ORDER: the same norm summed in another order; the clip 0.3 bites at every step).
`bos_as_written`: only the two summation orders taken out, so what parts the losses is the BOS deviation alone.

Precision: both sides compute in fp32 (pgolf's CPU default; the record's model stays fp32 on a CPU, its main()
casts to bf16 only on CUDA, the stated deviation 1 of pr595.toml, and this driver calls its model outside its
autocast), with bf16 Newton-Schulz on both sides: its CPU branch runs Newton-Schulz and the update buffer in fp32,
shimmed to its CUDA branch (bf16) for --ns-dtype bfloat16; --ns-dtype float32 runs its CPU branch as written beside
pgolf's fp32 Newton-Schulz.

Tiny: lockstep's TINY (4 layers, d 64, 4 heads / 2 KV, seq 128, 1,024 tokens a step) with the recipe's tiny
bigram (1,024 buckets, dim 32); its literal 65,536 passthrough (L407) set to 1,024 on both sides (else every tiny
matrix stays fp16 and nothing is quantized); the kept-fp16 c_k is the last layer's on both sides (its
FP16_KEEP_NAME_PATTERNS reads NUM_LAYERS, the README run's 10 -> blocks.9; tiny: blocks.3); the pre-scoring TTT
runs TTT_EPOCHS epochs of TTT_BATCH_SEQS sequences a step over the 256 validation sequences on both sides (the
record: 10 epochs, 32 sequences on each of 8 ranks).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _banks import load_shimmed  # noqa: E402
from record_driver import (ChallengeSteps, add_mode, challenge_luts, challenge_val_file, initial_state,  # noqa: E402
                           pgolf_config, pgolf_score, pgolf_swa_rule, run_pgolf, seed_row, step_warmdown, swa_mean,
                           temp_dir)

from lockstep_cpu import DATA, TINY  # noqa: E402

PASSTHROUGH = 1024
TTT_EPOCHS, TTT_BATCH_SEQS = 2, 32
# (old, new, count): the record's CPU branches of Newton-Schulz and its update buffer, shimmed to the CUDA branch
NS_BF16 = [("    X = G.bfloat16() if G.device.type == \"cuda\" else G.float()\n", "    X = G.bfloat16()\n", 1),
           ("            muon_dtype = torch.bfloat16 if params[0].device.type == \"cuda\" else torch.float32\n",
            "            muon_dtype = torch.bfloat16\n", 1)]
PASS_LINE = "        if not t.is_floating_point() or t.numel() <= 65536:\n"
# its sliding eval's bf16 autocast (device_type "cpu" on a CPU) off: the artifact scored in fp32 as pgolf scores it
SLIDING_AUTOCAST = ("            with torch.autocast(device_type=device.type if device.type in (\"cuda\",\"cpu\") else "
                    "\"cpu\", dtype=torch.bfloat16):\n                logits = base_model.forward_logits(x_batch)\n")
SHIMS = [(PASS_LINE, PASS_LINE.replace("65536", str(PASSTHROUGH)), 1),
         (SLIDING_AUTOCAST, SLIDING_AUTOCAST.replace("dtype=torch.bfloat16)", "dtype=torch.bfloat16, enabled=False)"),
          1)]
# the eval_note's check: its eval_val_sliding with full windows only (each target scored once, as pgolf's tiling)
FULL_WINDOWS = ("    window_starts = [ws for ws in range(0, total_tokens, stride)\n",
                "    window_starts = [ws for ws in range(0, total_tokens - seq_len + 1, stride)\n", 1)
SMEAR_LINES = """    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate.to(dtype=x.dtype))[None, None, :]
        x_prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
"""
HASH_LINE = "        out[..., 1:] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % mod\n"
GQA_LINES = """        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True)
"""
CLIP_ORDER = ("clip_grad_norm_ over its parameters in pgolf's order (pgolf registers tok_emb before skip_weights, "
              "its GPT lists skip_weights, a direct parameter, before its submodules' tok_emb.weight): the same "
              "global norm of the same gradients, its squares summed in another order (last bits; with 0.3 the clip "
              "bites at every tiny step, so the bits reach the weights)")
# (what, its lines, the lines put in, occurrences): the deviations_off patches of its source
SOURCE_PATCHES = (
    ("SmearGate has no predecessor at a BOS (pgolf's rule; the record blends across BOS, stated in pr595.toml)",
     SMEAR_LINES, SMEAR_LINES.replace("x: Tensor)", "x: Tensor, input_ids: Tensor)") +
     "        x_prev = torch.where((input_ids == BOS_ID)[..., None], torch.zeros_like(x), x_prev)\n", 1),
    ("SmearGate called with the input ids (forward and forward_logits)", "        x = self.smear(x)\n",
     "        x = self.smear(x, input_ids)\n", 2),
    ("bigram hash: a BOS gets the reserved bucket (pgolf's rule; the record hashes the pair across BOS, stated in "
     "pr595.toml)", HASH_LINE, HASH_LINE + "        out[..., 1:] = torch.where(t[..., 1:] == BOS_ID, mod, out[..., 1:])\n",
     1),
    ("GQA by SDPA's enable_gqa (pgolf's call) in place of its K/V repeat_interleave: the same function, whose "
     "backward sums the repeated heads' gradients in another order (last bits only)", GQA_LINES,
     "        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True, "
     "enable_gqa=self.num_kv_heads != self.num_heads)\n", 1),
)


# mode -> (SOURCE_PATCHES applied, clip in pgolf's order): bos_as_written takes out only the summation orders (K/V
# repeat, clip order), so what is left is the stated BOS deviation alone
MODES = {"as_written": ((), False), "bos_as_written": ((3,), True), "deviations_off": ((0, 1, 2, 3), True)}


def load(path: str, ns_dtype: str, mode: str, num_layers: int):
    shims = SHIMS + (NS_BF16 if ns_dtype == "bfloat16" else [])
    shims = shims + [SOURCE_PATCHES[i][1:] for i in MODES[mode][0]]
    ref = load_shimmed(path, shims, f"challenge_pr595_{mode}")
    ref.FP16_KEEP_NAME_PATTERNS = (f"blocks.{num_layers - 1}.attn.c_k",)  # its default: NUM_LAYERS - 1 (L321-324)
    return ref


def build(ref, cfg, hp):
    m = cfg.model
    return ref.GPT(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                   num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, tie_embeddings=hp.tie_embeddings,
                   tied_embed_init_std=hp.tied_embed_init_std, logit_softcap=hp.logit_softcap,
                   rope_base=hp.rope_base, qk_gain_init=hp.qk_gain_init, bigram_vocab_size=m.bigram_buckets,
                   bigram_dim=m.bigram_dim)


NAMES = {"tok_emb.weight": "tok_emb", "bigram.embed.weight": "bigram.table"}  # #595 name -> pgolf's; the rest equal


def to_pgolf(theirs: dict) -> dict:
    return {NAMES.get(k, k): v for k, v in theirs.items()}


def challenge_run(ref, cfg, hp, pgolf_clip_order: bool = False):
    """main() L1329-1383 (optimizer split), L1486-1528 (the step) with one rank and one micro-step. With
    pgolf_clip_order its clip_grad_norm_ (L1510) takes the parameters in pgolf's order (CLIP_ORDER)."""
    model = build(ref, cfg, hp)
    ours = initial_state(cfg)
    model.load_state_dict({n: ours[NAMES.get(n, n)] for n in model.state_dict()}, strict=True)
    control = ref.CONTROL_TENSOR_NAME_PATTERNS
    named = list(model.blocks.named_parameters())
    matrices = [p for n, p in named if p.ndim == 2 and not any(c in n for c in control)] + [model.bigram.proj.weight]
    scalars = [p for n, p in named if p.ndim < 2 or any(c in n for c in control)] + [
        model.skip_weights, model.smear.gate, model.bigram.scale]
    betas, token_lr = (hp.beta1, hp.beta2), hp.tied_embed_lr
    muon = ref.Muon(matrices, lr=hp.matrix_lr, momentum=hp.muon_momentum, backend_steps=hp.muon_backend_steps,
                    weight_decay=0.04)
    optimizers = [torch.optim.AdamW([{"params": [model.tok_emb.weight], "lr": token_lr},
                                     {"params": [model.bigram.embed.weight], "lr": token_lr}],
                                    betas=betas, eps=hp.adam_eps, weight_decay=hp.weight_decay), muon,
                  torch.optim.AdamW(scalars, lr=hp.scalar_lr, betas=betas, eps=hp.adam_eps,
                                    weight_decay=hp.weight_decay)]
    warm = cfg.optim.muon_momentum_warmup_steps  # tiny: 50 (its default 1500)

    def set_momentum(step: int) -> None:  # L1500-1503
        frac = min(step / warm, 1.0) if warm > 0 else 1.0
        for g in muon.param_groups:
            g["momentum"] = (1 - frac) * hp.muon_momentum_warmup_start + frac * hp.muon_momentum

    # its lr_mul without a wall clock (L1414-1418: the last WARMDOWN_ITERS steps), no LR warm-up (its WARMUP_STEPS
    # are compile priming, undone); SWA (L1519-1527): scale < swa_start_frac and step % swa_every == 0
    steps = ChallengeSteps(model, optimizers, step_warmdown(cfg, 0), set_momentum, hp.grad_clip_norm,
                           pgolf_swa_rule(cfg), swa_mean(model))
    if pgolf_clip_order:
        params, theirs = dict(model.named_parameters()), {v: k for k, v in NAMES.items()}
        in_order = [params[theirs.get(n, n)] for n in ours if theirs.get(n, n) in params]
        assert len(in_order) == len(params), (len(in_order), len(params))
        steps.clip = lambda: torch.nn.utils.clip_grad_norm_(in_order, hp.grad_clip_norm)
    loader = ref.DistributedTokenLoader(str(DATA / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    losses, same = steps.run(loader, cfg.train.steps, cfg.train.batch_tokens, cfg.train.seq_len, cfg.model.vocab_size)
    return model, losses, same, len(steps.snapshots)


def challenge_ttt(model, val: torch.Tensor, seq_len: int, hp) -> list[float]:
    """Its "standard" TTT (L1617-1662), one rank: AdamW(every parameter, lr TTT_LR, betas (TTT_MOMENTUM, 0.999),
    wd 0), TTT_BATCH_SEQS consecutive sequences a step, clip 1.0, TTT_EPOCHS epochs; per-epoch mean losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp.ttt_lr, weight_decay=0.0, betas=(hp.ttt_momentum, 0.999))
    total_seqs = (val.numel() - 1) // seq_len
    epochs = []
    for _ in range(TTT_EPOCHS):
        loss_sum, count = 0.0, 0
        for start in range(0, total_seqs, TTT_BATCH_SEQS):
            end = min(start + TTT_BATCH_SEQS, total_seqs)
            local = val[start * seq_len:end * seq_len + 1].to(dtype=torch.int64)
            x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
            opt.zero_grad(set_to_none=True)
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss_sum += loss.item() * y.numel()
            count += y.numel()
        epochs.append(loss_sum / count)
    model.eval()
    return epochs


def pgolf_ttt_state(cfg, state: dict) -> dict:
    """pgolf's pre-scoring TTT (eval/ttt_pre.py) on weights under pgolf's names: the weights it ends with."""
    import pgolf
    from pgolf.data.dataset import load_validation, resolve_dataset
    from pgolf.eval.deadline import Deadline
    from pgolf.eval.ttt_pre import pre_ttt

    model = pgolf.build_model(cfg.model, cfg.data.bos_id)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    tokens = load_validation(resolve_dataset(cfg, False, check_ids=False), cfg.model.vocab_size,
                             cfg.data.val_tokens_limit)
    pre_ttt(model, np.asarray(tokens), cfg.eval, Deadline(0))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def export_and_score(ref, path: str, cfg, no_ttt, hp, model, tmp: Path) -> dict:
    """Its export (L1588-1616: mixed_quantize_int6 with int6 attention, int5 MLP, fp16 embeddings; torch.save of
    {w, m}; zstd-22) and round trip (dequantize_mixed_int6, load_state_dict), its TTT, its eval_val_sliding.
    `no_ttt`: the config with eval.ttt = "none" (pgolf's sliding scoring alone)."""
    import zstandard

    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    result, meta = ref.mixed_quantize_int6(sd, {"attn"}, int5_cats={"mlp"}, embed_quant=hp.embed_quant)
    buf = io.BytesIO()
    torch.save({"w": result, "m": meta}, buf)
    blob = zstandard.ZstdCompressor(level=22).compress(buf.getvalue())
    loaded = torch.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(blob)), map_location="cpu")
    state = ref.dequantize_mixed_int6(loaded["w"], loaded["m"], sd)
    rt_model = build(ref, cfg, hp)
    rt_model.load_state_dict(state, strict=True)
    val = challenge_val_file(ref, tmp, cfg.train.seq_len)
    luts = challenge_luts(ref, cfg.model.vocab_size)
    args = SimpleNamespace(train_seq_len=cfg.eval.context_len)
    score = lambda m: ref.eval_val_sliding(args, m, 0, 1, torch.device("cpu"), val, *luts,  # noqa: E731
                                           stride=cfg.eval.sliding_stride, batch_seqs=hp.eval_batch_seqs)[1]
    bpb_no_ttt = score(rt_model)
    ttt_losses = challenge_ttt(rt_model, val, cfg.eval.context_len, hp)
    bpb = score(rt_model)
    full_windows = load_shimmed(path, SHIMS + [FULL_WINDOWS], "challenge_pr595_full_windows")
    bpb_full = full_windows.eval_val_sliding(args, rt_model, 0, 1, torch.device("cpu"), val, *luts,
                                             stride=cfg.eval.sliding_stride, batch_seqs=hp.eval_batch_seqs)[1]
    theirs_after = to_pgolf(rt_model.state_dict())
    ours_after = pgolf_ttt_state(cfg, to_pgolf(state))
    ttt_diff = max((theirs_after[k].float() - ours_after[k]).abs().max().item() for k in ours_after)
    from pgolf.quant.pack import unpack_written
    exported = unpack_written(tmp / "run" / "artifact.pgolf", cfg).state_dict()  # pgolf's artifact, dequantized
    mapped = to_pgolf(state)
    export_diff = {k: int((exported[k].float() != mapped[k].float()).sum()) for k in exported}
    cross = pgolf_score(cfg, mapped)
    cross_after = pgolf_score(no_ttt, theirs_after)
    return {"val_bpb_challenge_artifact": bpb, "val_bpb_challenge_artifact_before_ttt": bpb_no_ttt,
            "val_bpb_challenge_artifact_its_eval_full_windows_only": bpb_full,
            "ttt_epoch_losses_challenge": ttt_losses,
            "max_abs_weight_diff_after_ttt_challenge_vs_pgolf_ttt": ttt_diff,
            "val_bpb_challenge_artifact_scored_by_pgolf": cross["val_bpb"],
            "val_bpb_challenge_ttt_weights_scored_by_pgolf_sliding": cross_after["val_bpb"],
            "artifact_bytes_challenge_model": len(blob),
            "dequantized_values_differing_pgolf_vs_challenge_artifact": {k: n for k, n in export_diff.items() if n}}


def run_seed(name: str, path: str, seeds: list[int], steps: int, ns_dtype: str) -> dict:
    extra = {"quant.passthrough_max_numel": PASSTHROUGH, "eval.ttt_epochs": TTT_EPOCHS,
             "eval.ttt_batch_seqs": TTT_BATCH_SEQS}
    out = {"train_gpt": path, "recipe": "pr595 --scale tiny", "overrides": {**extra, "lockstep TINY": "as baseline"}}
    for mode, (patches, clip_order) in MODES.items():
        runs = []
        for seed in seeds:
            keep = {"quant.keep_float": [f"blocks.{TINY['model.num_layers'] - 1}.attn.c_k.weight"]}
            cfg = pgolf_config("pr595", seed, steps, ns_dtype, {**extra, **keep})
            no_ttt = pgolf_config("pr595", seed, steps, ns_dtype, {**extra, **keep, "eval.ttt": "none"})
            ref = load(path, ns_dtype, mode, cfg.model.num_layers)
            hp = ref.Hyperparameters()
            with temp_dir() as tmp:
                tmp = Path(tmp)
                result, ours = run_pgolf(cfg, tmp)
                model, theirs, same_batches, n_swa = challenge_run(ref, cfg, hp, clip_order)
                scored = export_and_score(ref, path, cfg, no_ttt, hp, model, tmp)
            runs.append(seed_row(name, mode, seed, same_batches, ours, theirs, result, scored, n_swa))
        add_mode(out, mode, runs)
    out["challenge_hyperparameters"] = {k: getattr(hp, k) for k in (
        "matrix_lr", "scalar_lr", "tied_embed_lr", "beta1", "beta2", "adam_eps", "weight_decay", "muon_momentum",
        "muon_momentum_warmup_start", "muon_backend_steps", "grad_clip_norm", "rope_base", "qk_gain_init",
        "logit_softcap", "tied_embed_init_std", "swa_start_frac", "embed_quant", "ttt_lr", "ttt_momentum")}
    out["shims"] = [
        "model fp32 on both sides, called outside its autocast (its main() L1314-1318 casts to bf16 on CUDA only; "
        "stated deviation 1 of pr595.toml)",
        "no torch.compile; AdamW not fused (CPU); one rank, one micro-step; its compile warm-up steps (undone by it) "
        "not run",
        "warmdown: its no-wall-clock rule (last WARMDOWN_ITERS of ITERATIONS, = lockstep's 12 of the run's steps); "
        "momentum warm-up over 50 steps (pgolf's tiny scale; its default 1500); SWA every train.swa_every (2) "
        "while the multiplier < 0.5 (its SWA_EVERY 50)",
        f"mixed_quantize_int6's literal passthrough 65,536 (L407) -> {PASSTHROUGH} (and quant.passthrough_max_numel "
        "on pgolf's side); FP16_KEEP_NAME_PATTERNS and quant.keep_float: the last layer's attn.c_k",
        f"pre-scoring TTT: {TTT_EPOCHS} epochs, {TTT_BATCH_SEQS} sequences a step on one rank, on both sides (its "
        "10 epochs of 32 a rank on 8 ranks; pgolf's eval.ttt_epochs / eval.ttt_batch_seqs)",
        "eval_val_sliding's bf16 autocast (device_type 'cpu', on on a CPU) off: the round trip scored in fp32, as "
        "pgolf scores on a CPU"]
    if ns_dtype == "bfloat16":
        out["shims"].insert(0, "Newton-Schulz and Muon's update buffer in bf16, its CUDA branch (L139, L178; its CPU "
                               "branch is fp32)")
    out["deviations_off_patches"] = [what for what, _, _, _ in SOURCE_PATCHES] + [CLIP_ORDER]
    out["bos_as_written_patches"] = [SOURCE_PATCHES[i][0] for i in MODES["bos_as_written"][0]] + [CLIP_ORDER]
    out["eval_note"] = ("its eval_val_sliding scores every window start up to the end, each window's last stride "
                        "targets, so the targets of the tail windows are scored more than once; pgolf's scores every "
                        "target once: val_bpb_challenge_artifact_scored_by_pgolf is its artifact through pgolf's TTT "
                        "and scoring, val_bpb_challenge_ttt_weights_scored_by_pgolf_sliding its TTT'd weights scored "
                        "by pgolf's sliding windows, val_bpb_challenge_artifact_its_eval_full_windows_only the same weights by its "
                        "eval_val_sliding with window starts up to total - seq_len only (FULL_WINDOWS: each target "
                        "once); dequantized_values_differing_pgolf_vs_challenge_artifact counts, per tensor, "
                        "the values of pgolf's artifact that differ from the record's (an export comparison where the "
                        "trained weights are bit-identical, deviations_off)")
    return out
