"""The pr1855 recipe: PR #1855 (1.06108, the record track's best) as its code and logs ran it.

Every literal below comes from upstream, not from pgolf: `tg:N` is line N of the record folder's train_gpt.py
(records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/), `log:N` line N of its
train_seed42.log (the hyperparameter dump; seeds 0 and 1234 log the same values), where the README's command
overrides the code's default. The end-to-end tiny run is in test_recipes_e2e.py, the carried modules in
test_bundle.py's pattern below.
"""

from __future__ import annotations

import json

import pytest

import pgolf
from pgolf.artifact import bundle
from pgolf.artifact.budget import estimate_breakdown
from pgolf.cli import main
from pgolf.config.optional import needed_optional_modules

# log:132 (all three seeds): model_params:35945671
LOGGED_PARAMS = 35_945_671
# log:186 of seeds 42, 0, 1234: "Total submission size quantized+pergroup" (submission.json artifact_bytes)
SUBMISSION_BYTES = (15_897_259, 15_900_947, 15_907_550)

# (pgolf key, #1855's value, where it is stated)
EXPECTED = [
    # data
    ("data.text_transform", "caseops", "log:14 caseops_enabled: True (tg:380)"),
    ("data.byte_source", "sidecar", "tg:376-380: the fineweb_val_bytes_* sidecar replaces the byte LUTs"),
    # shape
    ("model.vocab_size", 8192, "tg:244"),
    ("model.num_layers", 11, "tg:245"),
    ("model.model_dim", 512, "log model_dim: 512"),
    ("model.num_heads", 8, "log num_heads: 8"),
    ("model.num_kv_heads", 4, "log num_kv_heads: 4"),
    ("model.mlp", "leaky_relu2", "tg:1078-1081 LeakyReLU(0.5)^2 MLP"),
    ("model.mlp_mult", 4.0, "tg:250"),
    ("model.rope_dims", 16, "tg:255"),
    ("model.qk_gain_init", 5.0, "tg:259"),
    ("model.xsa_last_n", -1, "tg:246 XSA_LAST_N=11 = all 11 layers"),
    ("model.logit_softcap", 30.0, "log logit_softcap: 30.0"),
    ("model.embed_init_std", 0.005, "tg:269"),
    ("model.ln_scale", True, "log ln_scale: True"),
    ("model.skip_gates", True, "log skip_gates_enabled: True"),
    ("model.doc_attention", True, "tg:1026-1037 flash_attn_varlen_func over cu_seqlens"),
    # depth recurrence: NUM_LOOPS=2 over LOOP_START=3..LOOP_END=5 (tg:260-262), log "encoder:[0, 1, 2, 3, 4, 5, 3, 4]
    # decoder:[5, 3, 4, 5, 6, 7, 8, 9, 10]"
    ("model.layer_schedule", [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10], "log layer_loop line"),
    ("model.recurrence_start_frac", 0.35, "tg:263"),
    # the #1855 model switches
    ("model.parallel_residual", "cross_lanes", "log parallel_final_lane: mean; tg:1291-1322 _parallel_block"),
    ("model.parallel_start_layer", 8, "tg:264"),
    ("model.lane_resid_init", 1.1, "tg:1239-1240 torch.full((num_layers, 2), 1.1)"),
    ("model.smear", "content_gate", "log:93 smear_gate_enabled: True; tg:1336-1337 the not_bos mask"),
    ("model.gate_window", 12, "tg:334"),
    ("model.sparse_attn_gate", True, "log:94 sparse_attn_gate_enabled: True"),
    ("model.sparse_attn_gate_scale", 0.5, "log:96 sparse_attn_gate_scale: 0.5 (tg:360 default 1.0)"),
    ("model.sparse_attn_gate_init_std", 0.0, "tg:359"),
    # optimizer
    ("optim.matrix_lr", 0.026, "tg:270"),
    ("optim.muon_ns_coeffs", "polar_express", "tg:1720-1748 per-iteration tuples"),
    ("optim.muon_ns_steps", 5, "tg:273 MUON_BACKEND_STEPS=5"),
    ("optim.muon_ns_safety", 0.0, "tg:1730 G / (|G| + eps), eps 1e-07"),
    ("optim.muon_row_normalize", True, "tg:278"),
    ("optim.muon_weight_decay", 0.095, "tg:285"),
    ("optim.muon_wd_taper_start", 1.0, "TECHNIQUES.md 14.15: constant MUON_WD, no #1729 taper"),
    ("optim.muon_momentum", 0.97, "tg:272"),
    ("optim.muon_momentum_warmup_start", 0.92, "tg:275"),
    ("optim.muon_momentum_warmup_steps", 1500, "tg:277"),
    ("optim.embed_lr", 0.03, "tg:268 TIED_EMBED_LR (embeddings tied)"),
    ("optim.embed_weight_decay", 0.085, "tg:286"),
    ("optim.scalar_lr", 0.02, "tg:271"),
    ("optim.scalar_weight_decay", 0.02, "tg:284 ADAM_WD"),
    ("optim.adam_beta1", 0.9, "tg:279"),
    ("optim.adam_beta2", 0.99, "log:13 beta2: 0.99 (tg:280 default 0.95)"),
    ("optim.adam_eps", 1e-8, "tg:281"),
    ("optim.grad_clip_norm", 0.3, "tg:282"),
    # training
    ("train.seq_len", 2048, "tg:238"),
    ("train.batch_tokens", 786_432, "tg:234"),
    ("train.max_wallclock_s", 600.0, "tg:240"),
    ("train.warmdown", "wallclock_frac", "tg:3351-3361 frac = elapsed / (cap - reserve)"),
    ("train.warmdown_frac", 0.85, "log:126 warmdown_frac: 0.85 (tg:232 default 0.75)"),
    ("train.min_lr_frac", 0.1, "log:63 min_lr: 0.1 (tg:266 default 0.0)"),
    ("train.averaging", "ema", "tg:3474-3521"),
    ("train.ema_decay", 0.9965, "tg:287"),
    ("train.compile_priming_steps", 40, "tg:233 WARMUP_STEPS=20, then 20 looped (log loop_warmup_step: 20/20)"),
    ("train.fused_mlp", "triton", "tg:1075-1078 fused LeakyReLU^2 MLP in training"),
    ("train.fused_ce", "liger", "log:27 fused_ce_enabled: True"),
    # quantization and compression
    ("quant.method", "gptq", "tg:2220-2302 gptq_mixed_quantize"),
    ("quant.matrix_bits", 6, "tg:318"),
    ("quant.sdclip_k", 12.85, "tg:320"),
    ("quant.sdclip_k_attn", 13.0, "tg:323"),
    ("quant.sdclip_k_mlp", 11.5, "log:64 mlp_clip_sigmas: 11.5 (tg:322 default 10.0)"),
    ("quant.embed_bits", 7, "log:20 embed_bits: 7 (tg:319 default 8)"),
    ("quant.embed_method", "gptq", "log 'gptq (int7)+lqer_asym: tok_emb.weight'"),
    ("quant.sdclip_k_embed", 14.0, "log:21 embed_clip_sigmas: 14.0 (tg:321 default 20)"),
    ("quant.gate_bits", 8, "log:31 gated_attn_quant_gate: True; tg:2191-2193 int8 per row, max / 127"),
    ("quant.passthrough_max_numel", 65_536, "TECHNIQUES.md 14.12: floats up to 65,536 elements as fp16"),
    ("quant.control_dtype", "float16", "log 'passthrough (float16)'"),
    ("quant.lqer_rank", 4, "tg:364"),
    ("quant.lqer_top_k", 3, "tg:365"),
    ("quant.lqer_asym", True, "tg:367"),
    ("quant.lqer_group", 64, "tg:368"),
    ("quant.gptq_calib_batches", 16, "tg:305"),
    ("quant.gptq_calib_source", "train", "tg:2656 ShuffledSequenceLoader over the training shards"),
    ("quant.gptq_reserve_s", 0.5, "log:42 gptq_reserve_seconds: 0.5 (tg:306 default 4.0)"),
    ("quant.byte_shuffle", False, "tg:2503 the remainder is brotli-compressed as saved, no shuffle"),
    ("quant.compressor", "pergroup", "log:15 compressor: pergroup (tg:304 default brotli)"),
    ("quant.pergroup_codec", "lrzip", "tg:2386 lrzip -z -L 9"),
    ("quant.simsort_groups", ["tok_emb", "attn.c_q", "mlp.fc"], "tg:2360 _SIMSORT_KEYS"),
    # evaluation: phased score-first LoRA TTT
    ("eval.ttt", "lora", "tg:288 TTT_ENABLED=1"),
    ("eval.ttt_lora_rank", 80, "log:115 ttt_lora_rank: 80 (tg:289 default 96)"),
    ("eval.ttt_lora_alpha", 144.0, "tg:1639 TTT_LORA_ALPHA=144"),
    ("eval.ttt_lora_warm_start_a", True, "tg:1642 TTT_WARM_START_A=1"),
    ("eval.ttt_lora_targets", ["q", "k", "v", "o", "mlp", "head"], "log ttt_k_lora / ttt_o_lora / ttt_mlp_lora: True"),
    ("eval.ttt_lora_chunk", 48, "tg:291"),
    ("eval.ttt_lora_lr", 1e-4, "tg:290"),
    ("eval.ttt_lora_beta1", 0.0, "tg:296"),
    ("eval.ttt_lora_beta2", 0.99, "log:107 ttt_beta2: 0.99 (tg:297 default 0.999)"),
    ("eval.ttt_lora_eps", 1e-10, "tg:3088"),
    ("eval.ttt_lora_wd", 0.5, "log:119 ttt_weight_decay: 0.5 (tg:295 default 1.0)"),
    ("eval.ttt_batch_docs", 8 * 64, "tg:293 TTT_BATCH_SIZE=64 per rank, 8 ranks (log world_size: 8)"),
    ("eval.ttt_doc_order", "length_desc", "tg:2815-2825 sorted by length, longest batch first"),
    # log:80-81 3 phases over a 2,500-document prefix; log "boundaries:[833, 1666, 2500]"
    ("eval.ttt_global_phase_docs", [833, 1666, 2500], "log ttt_phased line"),
    ("eval.ttt_global_lr", 1e-3, "tg:309"),
    ("eval.ttt_global_momentum", 0.9, "tg:310"),
    ("eval.ttt_global_epochs", 1, "tg:311"),
    ("eval.ttt_global_chunk_tokens", 32_768, "tg:312"),
    ("eval.ttt_global_grad_clip", 1.0, "tg:316"),
    ("eval.context_len", 2048, "log ttt_eval_seq_len: 2048"),
    ("eval.max_seconds", 600.0, "the challenge's evaluation limit (log total_eval_time:508.8s)"),
]


def _value(cfg: pgolf.Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.fixture(scope="module")
def full() -> pgolf.Config:
    return pgolf.load_recipe("pr1855")


@pytest.mark.parametrize("key, value, where", EXPECTED, ids=[k for k, _, _ in EXPECTED])
def test_each_setting_is_the_value_1855_ran(full, key, value, where):
    assert _value(full, key) == value, f"{key}: #1855 runs {value!r} ({where})"


def test_the_switches_1855_leaves_off_stay_off(full):
    """TECHNIQUES.md 14.15: no coprime loader, no Hessian-aware clip, no ±1 pruning, no value embeddings."""
    assert full.data.loader == "stream" and full.quant.hessian_clip_lambda == 0.0 and full.quant.fit is False
    assert full.model.bigram_buckets == 0 and full.model.value_embed_dim == 0 and full.model.attn_gate is False
    assert full.quant.qat == "none" and full.eval.sliding_stride == 0


def test_pgolf_recipes_lists_pr1855_with_the_logged_parameter_count(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["pr1855"]["params_full"] == LOGGED_PARAMS
    assert "data.text_transform=caseops" in rows["pr1855"]["switches"]
    assert "eval.ttt_global_phase_docs=[833, 1666, 2500]" in rows["pr1855"]["switches"]
    assert pgolf.count_parameters(pgolf.load_recipe("pr1855").model) == LOGGED_PARAMS


def test_the_artifact_estimate_is_within_1_percent_of_every_seeds_submission(full):
    estimate = estimate_breakdown(full)["artifact_bytes_estimate"]
    for submitted in SUBMISSION_BYTES:
        assert abs(estimate / submitted - 1) <= 0.01, (estimate, submitted)


def test_the_tiny_form_keeps_every_switch_and_only_shrinks_sizes():
    """--scale tiny changes widths, steps, batch sizes, calibration and TTT sizes: never a technique."""
    full, tiny = pgolf.load_recipe("pr1855"), pgolf.load_recipe("pr1855", "tiny")
    sizes = {"model.model_dim", "model.num_heads", "model.num_kv_heads", "model.rope_dims",
             "optim.muon_momentum_warmup_steps", "train.steps", "train.batch_tokens", "train.seq_len",
             "train.micro_batch_tokens", "train.max_wallclock_s", "train.warmdown", "train.ema_decay",
             "train.compile_priming_steps", "quant.passthrough_max_numel", "quant.gptq_calib_batches",
             "quant.gptq_reserve_s", "eval.ttt_lora_rank", "eval.ttt_batch_docs", "eval.ttt_global_phase_docs",
             "eval.ttt_global_chunk_tokens", "eval.ttt_global_batch_seqs", "eval.max_seconds", "eval.context_len",
             "data.val_tokens_limit", "scale"}
    changed = {f"{s}.{k}" for s in ("data", "model", "optim", "train", "quant", "eval")
               for k, v in vars(getattr(tiny, s)).items() if v != getattr(getattr(full, s), k)}
    changed |= {"scale"} if tiny.scale != full.scale else set()
    assert changed <= sizes, changed - sizes
    assert tiny.train.warmdown == "frac" and tiny.train.warmdown_frac == full.train.warmdown_frac


def test_the_bundle_carries_the_modules_1855s_switches_need():
    """As tests/test_bundle.py: the optional modules the switches pull in, at full and tiny size alike."""
    wanted = {"pgolf.data.caseops", "pgolf.eval.modes", "pgolf.eval.ttt_lora", "pgolf.eval.ttt_phased",
              "pgolf.quant.gptq", "pgolf.quant.lqer", "pgolf.quant.pergroup", "pgolf.model.kernels.mlp_triton",
              "pgolf.model.kernels.ce_liger"}
    paths = {"pgolf/data/caseops.py", "pgolf/eval/ttt_phased.py", "pgolf/quant/lqer.py", "pgolf/quant/pergroup.py",
             "pgolf/model/kernels/mlp_triton.py", "pgolf/model/kernels/ce_liger.py"}
    for scale in ("full", "tiny"):
        cfg = pgolf.load_recipe("pr1855", scale, {"data.path": "/d", "data.tokenizer": "/t.model"})
        script_cfg = bundle.script_config(cfg)
        assert set(needed_optional_modules(script_cfg)) == wanted
        assert paths <= set(bundle.module_sources(cfg))
        assert not {"pgolf/data/coprime.py", "pgolf/eval/ttt_chunk.py", "pgolf/eval/ttt_pre.py",
                    "pgolf/quant/qat.py"} & set(bundle.module_sources(cfg))
