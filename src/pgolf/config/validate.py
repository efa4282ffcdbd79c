"""Validation of a config's values: impossible combinations are errors that name the key.

Only the values are checked here; checks that need a model (the artifact's byte budget) belong to whoever
finalizes a run (pgolf.artifact.budget.check_budget, called by the trainer, the command line and the API).
"""

from __future__ import annotations

from .schema import (DOC_ORDERS, LORA_TARGETS, Config, ConfigError, EvalConfig, ModelConfig, OptimConfig, QuantConfig,
                     TrainConfig, layer_schedule, virtual_layout)


def finalize(cfg: Config) -> Config:
    """Resolve derived defaults (eval.context_len 0 -> train.seq_len) and validate."""
    if cfg.eval.context_len <= 0:
        cfg.eval.context_len = cfg.train.seq_len
    validate(cfg)
    return cfg


def _check_lanes(model: ModelConfig) -> None:
    """Two-lane modes (#1536, #1529): once the lanes split, every later decoder position must run in lane mode."""
    for looped in (False, True):
        schedule = layer_schedule(model) if looped or model.recurrence_start_frac == 0 else list(range(model.num_layers))
        enc, bridge = virtual_layout(model, looped)
        started = False
        for pos, phys in enumerate(schedule):
            lane = pos >= enc + bridge and phys >= model.parallel_start_layer
            if started and not lane:
                raise ConfigError(
                    f"'model.parallel_start_layer' = {model.parallel_start_layer}: virtual position {pos} runs block "
                    f"{phys} after the lanes split; every later decoder position must run a block >= the start layer")
            started = started or lane


def validate(cfg: Config) -> None:
    """Reject impossible combinations, naming the key."""
    m, t, e, q = cfg.model, cfg.train, cfg.eval, cfg.quant
    positive = {
        "model.vocab_size": m.vocab_size, "model.num_layers": m.num_layers, "model.model_dim": m.model_dim,
        "model.num_heads": m.num_heads, "model.num_kv_heads": m.num_kv_heads,
        "train.batch_tokens": t.batch_tokens, "train.seq_len": t.seq_len, "train.steps": t.steps,
        "train.micro_batch_tokens": t.micro_batch_tokens,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' must be positive, got {value}")
    if m.vocab_size > 65536:
        raise ConfigError(f"'model.vocab_size' must fit uint16 shards (<= 65536), got {m.vocab_size}")
    if m.model_dim % m.num_heads:
        raise ConfigError(f"'model.num_heads' ({m.num_heads}) must divide 'model.model_dim' ({m.model_dim})")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"'model.num_kv_heads' ({m.num_kv_heads}) must divide 'model.num_heads' ({m.num_heads})")
    head_dim = m.model_dim // m.num_heads
    if head_dim % 2:
        raise ConfigError(f"head dim {head_dim} (model.model_dim / model.num_heads) must be even for RoPE")
    if m.rope_dims < 0 or m.rope_dims > head_dim or m.rope_dims % 2:
        raise ConfigError(f"'model.rope_dims' must be an even number in [0, {head_dim}], got {m.rope_dims}")
    schedule = layer_schedule(m)
    bad = [i for i in schedule if not 0 <= i < m.num_layers]
    if bad:
        raise ConfigError(f"'model.layer_schedule' names block {bad[0]}, but model.num_layers = {m.num_layers} (valid: 0..{m.num_layers - 1})")
    unused = sorted(set(range(m.num_layers)) - set(schedule))
    if unused:
        raise ConfigError(f"'model.layer_schedule' never runs block(s) {unused}: their weights would be dead bytes")
    if m.encoder_layers > len(schedule) or m.encoder_layers + max(m.bridge_layers, 0) > len(schedule):
        raise ConfigError(f"'model.encoder_layers' + 'model.bridge_layers' exceed the {len(schedule)} virtual layers")
    if m.bridge_layers < 0:
        raise ConfigError(f"'model.bridge_layers' must be >= 0, got {m.bridge_layers}")
    if m.bridge_layers and m.recurrence_start_frac > 0:
        raise ConfigError("'model.bridge_layers' with 'model.recurrence_start_frac' > 0 is not supported (replays are on from step 0)")
    if not 0.0 <= m.recurrence_start_frac < 1.0:
        raise ConfigError(f"'model.recurrence_start_frac' must be in [0, 1), got {m.recurrence_start_frac}")
    bad_ve = [i for i in m.value_embed_layers if not 0 <= i < m.num_layers]
    if bad_ve:
        raise ConfigError(f"'model.value_embed_layers' names layer {bad_ve[0]} outside 0..{m.num_layers - 1}")
    if m.value_embed_layers and m.value_embed_dim <= 0:
        raise ConfigError("'model.value_embed_layers' is set but 'model.value_embed_dim' is 0")
    if m.mlp_hidden < 0 or (m.mlp_hidden == 0 and m.mlp_mult <= 0):
        raise ConfigError("'model.mlp_mult' (or 'model.mlp_hidden') must be positive")
    if m.bigram_buckets < 0 or m.bigram_buckets == 1:
        raise ConfigError(f"'model.bigram_buckets' must be 0 (off) or >= 2, got {m.bigram_buckets}")
    if m.parallel_residual in ("separate_lanes", "cross_lanes"):
        _check_lanes(m)
    _validate_gates(m)
    if t.batch_tokens % t.seq_len:
        raise ConfigError(f"'train.batch_tokens' ({t.batch_tokens}) must be a multiple of 'train.seq_len' ({t.seq_len})")
    if e.sliding_stride < 0:
        raise ConfigError(f"'eval.sliding_stride' must be >= 0, got {e.sliding_stride}")
    ctx = e.context_len or t.seq_len
    if e.sliding_stride > ctx:
        raise ConfigError(f"'eval.sliding_stride' ({e.sliding_stride}) must not exceed the eval context ({ctx})")
    check_eval_config(e, ctx, m.num_layers)
    for key in ("matrix_bits", "attn_bits", "mlp_bits", "embed_bits", "table_bits", "other_bits"):
        bits = getattr(q, key)
        if bits and not 2 <= bits <= 8:
            raise ConfigError(f"'quant.{key}' must be 0 or in 2..8, got {bits}")
    if q.matrix_bits == 0:
        raise ConfigError("'quant.matrix_bits' must be in 2..8")
    _validate_quant_numbers(q)
    _validate_optim(cfg.optim, cfg.train)
    if t.fused_mlp != "off" and m.mlp not in ("relu2", "leaky_relu2"):
        raise ConfigError(f"'train.fused_mlp' = '{t.fused_mlp}' fuses relu2 / leaky_relu2 MLPs only; "
                          f"model.mlp is '{m.mlp}' (set train.fused_mlp = 'off')")


def _validate_gates(m: ModelConfig) -> None:
    """The content SmearGate and the SparseAttnGate read the first model.gate_window dims; one attention gate at a time."""
    if (m.smear == "content_gate" or m.sparse_attn_gate) and not 1 <= m.gate_window <= m.model_dim:
        raise ConfigError(f"'model.gate_window' must be in 1..{m.model_dim} (model.model_dim), got {m.gate_window}")
    if m.attn_gate and m.sparse_attn_gate:
        raise ConfigError("'model.attn_gate' and 'model.sparse_attn_gate' are both on: they gate the same attention "
                          "output, choose one")
    if m.sparse_attn_gate_init_std < 0:
        raise ConfigError(f"'model.sparse_attn_gate_init_std' must be >= 0, got {m.sparse_attn_gate_init_std}")


def _validate_quant_numbers(q: QuantConfig) -> None:
    """Scale-rule parameters: percentiles in (0, 100], positive k, block and calibration sizes."""
    if not 0.0 < q.clip_percentile <= 100.0:
        raise ConfigError(f"'quant.clip_percentile' must be in (0, 100], got {q.clip_percentile}")
    bad = [p for p in q.clip_search_percentiles if not 0.0 < p <= 100.0]
    if not q.clip_search_percentiles or bad:
        raise ConfigError(f"'quant.clip_search_percentiles' must be a non-empty list of values in (0, 100], "
                          f"got {q.clip_search_percentiles}")
    for key in ("sdclip_k", "sdclip_k_embed"):
        if getattr(q, key) <= 0:
            raise ConfigError(f"'quant.{key}' must be positive, got {getattr(q, key)}")
    for key in ("sdclip_k_attn", "sdclip_k_mlp"):
        if getattr(q, key) < 0:
            raise ConfigError(f"'quant.{key}' must be >= 0 (0 = quant.sdclip_k), got {getattr(q, key)}")
    if not 0.0 <= q.hessian_clip_lambda <= 1.0:
        raise ConfigError(f"'quant.hessian_clip_lambda' must be in [0, 1], got {q.hessian_clip_lambda}")
    if q.gate_bits and not 2 <= q.gate_bits <= 8:
        raise ConfigError(f"'quant.gate_bits' must be 0 or in 2..8, got {q.gate_bits}")
    if q.lqer_rank < 0 or q.lqer_top_k < 1 or q.lqer_group < 1:
        raise ConfigError(f"'quant.lqer_rank' must be >= 0, 'quant.lqer_top_k' and 'quant.lqer_group' >= 1; got "
                          f"{q.lqer_rank}, {q.lqer_top_k}, {q.lqer_group}")
    if not 2 <= q.lqer_factor_bits <= 8:
        raise ConfigError(f"'quant.lqer_factor_bits' must be in 2..8, got {q.lqer_factor_bits}")
    if q.compressor == "pergroup" and q.bit_pack:
        raise ConfigError("'quant.compressor' = 'pergroup' groups one-byte codes; it cannot be combined with "
                          "'quant.bit_pack' = true")
    if q.gptq_block <= 0 or q.gptq_calib_batches <= 0:
        raise ConfigError(f"'quant.gptq_block' and 'quant.gptq_calib_batches' must be positive, "
                          f"got {q.gptq_block} and {q.gptq_calib_batches}")
    if q.gptq_damp < 0 or q.gptq_reserve_s < 0:
        raise ConfigError(f"'quant.gptq_damp' and 'quant.gptq_reserve_s' must be >= 0, got {q.gptq_damp} and {q.gptq_reserve_s}")
    if not 0.0 <= q.qat_start_lr <= 1.0:
        raise ConfigError(f"'quant.qat_start_lr' must be in [0, 1], got {q.qat_start_lr}")
    if q.fit_reserve_s < 0:
        raise ConfigError(f"'quant.fit_reserve_s' must be >= 0, got {q.fit_reserve_s}")


def _validate_optim(o: OptimConfig, t: TrainConfig) -> None:
    """Optimizer, schedule and averaging numbers; Muon-only switches are an error under the Adam baseline."""
    if o.matrix_optimizer == "adam":
        muon_only = {"muon_row_normalize": o.muon_row_normalize, "muon_normuon_beta2": o.muon_normuon_beta2 > 0,
                     "muon_ns_coeffs": o.muon_ns_coeffs != "quintic", "muon_momentum_style": o.muon_momentum_style != "sum",
                     "muon_ns_safety": o.muon_ns_safety != 0.0, "muon_wd_taper_start": o.muon_wd_taper_start < 1.0}
        for key, on in muon_only.items():
            if on:
                raise ConfigError(f"'optim.{key}' is a Muon switch and does nothing with optim.matrix_optimizer = 'adam'; "
                                  f"reset it (--set optim.{key}=...) or use matrix_optimizer = 'muon'")
    if o.muon_ns_steps < 1:
        raise ConfigError(f"'optim.muon_ns_steps' must be >= 1, got {o.muon_ns_steps}")
    if not 0.0 <= o.muon_ns_safety < 1.0:
        raise ConfigError(f"'optim.muon_ns_safety' must be in [0, 1) (0 = no cushion, as the records), got {o.muon_ns_safety}")
    if not 0.0 <= o.muon_wd_taper_start <= 1.0 or o.muon_wd_taper_final < 0.0:
        raise ConfigError(f"'optim.muon_wd_taper_start' must be in [0, 1] (1 = off) and 'optim.muon_wd_taper_final' "
                          f">= 0, got {o.muon_wd_taper_start} and {o.muon_wd_taper_final}")
    if o.muon_wd_taper_start < 1.0 and o.muon_weight_decay == 0.0:
        raise ConfigError("'optim.muon_wd_taper_start' < 1 tapers 'optim.muon_weight_decay', which is 0: the taper "
                          "would do nothing; set a weight decay or leave the taper off (1.0)")
    if not 0.0 <= o.muon_normuon_beta2 < 1.0:
        raise ConfigError(f"'optim.muon_normuon_beta2' must be in [0, 1) (0 = off), got {o.muon_normuon_beta2}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
    if t.swa_every < 1:
        raise ConfigError(f"'train.swa_every' must be >= 1, got {t.swa_every}")
    if not 0.0 <= t.warmdown_frac <= 1.0 or not 0.0 <= t.min_lr_frac <= 1.0:
        raise ConfigError(f"'train.warmdown_frac' and 'train.min_lr_frac' must be in [0, 1], got {t.warmdown_frac} and {t.min_lr_frac}")
    if t.warmup_steps < 0 or t.warmdown_steps < 0:
        raise ConfigError(f"'train.warmup_steps' and 'train.warmdown_steps' must be >= 0, got {t.warmup_steps} and {t.warmdown_steps}")


def check_eval_config(e: EvalConfig, context_len: int, num_layers: int | None = None) -> None:
    """Raise ConfigError for an eval setting that cannot run; `context_len` is the resolved eval context."""
    if e.sliding_stride < 0 or e.sliding_stride > context_len:
        raise ConfigError(f"'eval.sliding_stride' must be in 0..{context_len} (the eval context), got {e.sliding_stride}")
    if e.batch_seqs <= 0:
        raise ConfigError(f"'eval.batch_seqs' must be positive, got {e.batch_seqs}")
    if e.max_seconds < 0:
        raise ConfigError(f"'eval.max_seconds' must be >= 0 (0 = no cap), got {e.max_seconds}")
    if e.ttt in ("chunk", "pre"):
        for key in ("ttt_epochs", "ttt_batch_seqs") + (("ttt_chunk_tokens",) if e.ttt == "chunk" else ()):
            if getattr(e, key) <= 0:
                raise ConfigError(f"'eval.{key}' must be positive with eval.ttt = '{e.ttt}', got {getattr(e, key)}")
        if e.ttt_lr <= 0 or e.ttt_grad_clip < 0 or not 0 <= e.ttt_momentum < 1:
            raise ConfigError(f"'eval.ttt_lr' must be > 0, 'eval.ttt_grad_clip' >= 0 and 'eval.ttt_momentum' in [0, 1); "
                              f"got {e.ttt_lr}, {e.ttt_grad_clip}, {e.ttt_momentum}")
        if e.ttt_freeze_blocks < 0 or (num_layers is not None and e.ttt_freeze_blocks > num_layers):
            raise ConfigError(f"'eval.ttt_freeze_blocks' must be in 0..{num_layers}, got {e.ttt_freeze_blocks}")
    if e.ttt == "lora":
        unknown = [t for t in e.ttt_lora_targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(f"'eval.ttt_lora_targets' names {unknown[0]!r}; choose from {list(LORA_TARGETS)}")
        if e.ttt_lora_rank <= 0:
            raise ConfigError(f"'eval.ttt_lora_rank' must be positive, got {e.ttt_lora_rank}")
        if not 0 < e.ttt_lora_chunk <= context_len:
            raise ConfigError(f"'eval.ttt_lora_chunk' must be in 1..{context_len} (the eval context), got {e.ttt_lora_chunk}")
        if e.ttt_batch_docs <= 0:
            raise ConfigError(f"'eval.ttt_batch_docs' must be positive, got {e.ttt_batch_docs}")
        if e.ttt_lora_lr <= 0 or e.ttt_lora_eps <= 0 or e.ttt_lora_wd < 0:
            raise ConfigError("'eval.ttt_lora_lr' and 'eval.ttt_lora_eps' must be > 0 and 'eval.ttt_lora_wd' >= 0")
        if not (0 <= e.ttt_lora_beta1 < 1 and 0 <= e.ttt_lora_beta2 < 1):
            raise ConfigError(f"'eval.ttt_lora_beta1' and 'eval.ttt_lora_beta2' must be in [0, 1), "
                              f"got {e.ttt_lora_beta1}, {e.ttt_lora_beta2}")
        if e.ttt_doc_order not in DOC_ORDERS:
            raise ConfigError(f"'eval.ttt_doc_order' must be one of {', '.join(DOC_ORDERS)}; got {e.ttt_doc_order!r}")
        if e.ttt_lora_alpha < 0:
            raise ConfigError(f"'eval.ttt_lora_alpha' must be >= 0 (0 = no alpha / rank scaling), got {e.ttt_lora_alpha}")
        _check_global_phases(e)


def _check_global_phases(e: EvalConfig) -> None:
    """Phased global TTT: document counts in increasing order, and SGD numbers that can run."""
    docs = e.ttt_global_phase_docs
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in docs) or any(b <= a for a, b in zip(docs, docs[1:])):
        raise ConfigError(f"'eval.ttt_global_phase_docs' must be document counts >= 0 in increasing order "
                          f"(e.g. [833, 1666, 2500]), got {docs}")
    if not docs:
        return
    for key in ("ttt_global_epochs", "ttt_global_chunk_tokens", "ttt_global_batch_seqs"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"'eval.{key}' must be positive with eval.ttt_global_phase_docs set, got {getattr(e, key)}")
    if e.ttt_global_lr <= 0 or e.ttt_global_grad_clip < 0 or not 0 <= e.ttt_global_momentum < 1:
        raise ConfigError(f"'eval.ttt_global_lr' must be > 0, 'eval.ttt_global_grad_clip' >= 0 and "
                          f"'eval.ttt_global_momentum' in [0, 1); got {e.ttt_global_lr}, {e.ttt_global_grad_clip}, "
                          f"{e.ttt_global_momentum}")
