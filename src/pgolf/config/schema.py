"""The schema of a run configuration: one dataclass per section, every field with its default, help and choices.

Every technique is a field whose default turns it off. The functions here read a config without changing it:
its keys, its dictionary and TOML forms, and the quantities derived from the model section (layer schedule,
U-Net layout, MLP width).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import tomli_w

SCALES = ("full", "tiny")
# The adapters LoRA test-time training can attach (eval.ttt_lora_targets); eval/lora_adapters.py hooks each one.
LORA_TARGETS = ("q", "k", "v", "o", "mlp", "head")
# The orders LoRA test-time training can process documents in (eval.ttt_doc_order); eval/ttt_lora.py builds them.
DOC_ORDERS = ("stream", "length_desc")


class ConfigError(ValueError):
    """A configuration value, key or combination is invalid; the message names the key."""


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with a help text and optional allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    path: str = _f("", "folder with fineweb_train_*.bin / fineweb_val_*.bin shards; '' = the embedded corpus")
    tokenizer: str = _f("", "SentencePiece .model, pure-byte .json or byte260; '' = tokenizer.model/.json in the data folder, else ../../tokenizers/fineweb_{vocab}_bpe.model")
    train_pattern: str = _f("fineweb_train_*.bin", "glob of training shards inside data.path")
    val_pattern: str = _f("fineweb_val_*.bin", "glob of validation shards inside data.path (files matching data.val_bytes_pattern excluded)")
    bos_id: int = _f(1, "token id that starts every document")
    val_tokens_limit: int = _f(0, "score only the first N validation tokens (0 = the whole split); results say so")
    loader: str = _f("stream", "training batches: the baseline's sequential stream over the shards, or #1060's coprime-stride multi-shard blocks (data/coprime.py)", ("stream", "coprime"))
    text_transform: str = _f("none", "what the shards' text went through before the tokenizer: nothing, or CaseOps (#1729: case operators as user-defined pieces; pgolf data prepare --transform caseops); it sets the byte rule of the operator pieces", ("none", "caseops"))
    byte_source: str = _f("tokens", "bytes behind val_bpb: the token-id rule (CaseOps operators 0 bytes; the same denominator as the plain tokenizer on the same text), or the per-token sidecar of original bytes (#1855's fineweb_val_bytes_*.bin, before normalisation)", ("tokens", "sidecar"))
    val_bytes_pattern: str = _f("fineweb_val_bytes_*.bin", "glob of the per-token byte sidecar shards inside data.path (data.byte_source = sidecar)")


@dataclass
class ModelConfig:
    vocab_size: int = _f(1024, "vocabulary size (must equal the tokenizer's)")
    num_layers: int = _f(9, "physical transformer blocks")
    model_dim: int = _f(512, "residual stream width d")
    num_heads: int = _f(8, "query heads")
    num_kv_heads: int = _f(4, "key/value heads (GQA)")
    mlp: str = _f("relu2", "MLP activation", ("relu2", "leaky_relu2", "swiglu"))
    mlp_mult: float = _f(2.0, "MLP hidden width as a multiple of model_dim")
    mlp_hidden: int = _f(0, "MLP hidden width (overrides mlp_mult when > 0)")
    leaky_slope: float = _f(0.5, "negative slope of leaky_relu2")
    rope_base: float = _f(10000.0, "RoPE base")
    rope_dims: int = _f(0, "rotated dims per head (partial RoPE); 0 = the whole head")
    rope_ntk_train_len: int = _f(0, "if > 0 and a sequence is longer, NTK-rescale the base (#1573's hidden rescale)")
    qk_gain_init: float = _f(1.5, "initial per-head query gain after QK RMS-norm")
    logit_softcap: float = _f(30.0, "logits = c*tanh(z/c); 0 = off")
    tie_embeddings: bool = _f(True, "output head = token embedding transposed")
    embed_init_std: float = _f(0.005, "std of the token embedding init")
    init: str = _f("default", "init of non-zero-init matrices", ("default", "orthogonal"))
    ortho_min_dim: int = _f(0, "orthogonal init only for matrices with both dims >= this")
    # layer schedule (depth recurrence) and residual routing
    layer_schedule: list[int] = _f([], "physical block run at each virtual position; [] = 0..num_layers-1")
    recurrence_start_frac: float = _f(0.0, "train on the plain stack until this training fraction, then on layer_schedule")
    encoder_layers: int = _f(-1, "virtual positions that push U-Net skips; -1 = half of the schedule")
    bridge_layers: int = _f(0, "virtual positions after the encoder that neither push nor pop skips (#1573 replays)")
    bridge_modulation: bool = _f(False, "per-dim affine x*s+b before each bridge position (#1573 RecycleModulation)")
    unet_skips: bool = _f(True, "U-Net skips from encoder to decoder positions with learned per-dim weights")
    skip_gates: bool = _f(False, "sigmoid skip gates: x = lerp(w*skip, x, sigmoid(g))")
    resid_mix: bool = _f(True, "per-block learned mix of the residual with the embedding x0")
    ln_scale: bool = _f(False, "scale normed sublayer inputs by 1/sqrt(physical_layer+1)")
    layer_scales: bool = _f(False, "per-virtual-layer scalar on both residual branches (#103)")
    parallel_residual: str = _f("none", "parallel attention/MLP from parallel_start_layer on: GPT-J (one input), #1536's separate lanes, or #1529/#1855's two lanes with learned cross routing", ("none", "gptj", "separate_lanes", "cross_lanes"))
    parallel_start_layer: int = _f(0, "first physical layer that runs in parallel mode")
    lane_resid_init: float = _f(1.1, "cross_lanes: init of each lane's residual weight rho (L x 2)")
    lane_post_init: float = _f(1.0, "cross_lanes: init of the routing weights P[layer, source (attn, mlp), lane] (L x 2 x 2)")
    lora_rank: int = _f(0, "per-virtual-layer LoRA rank on Q and V (0 = off)")
    # attention
    attn_gate: bool = _f(False, "per-head sigmoid gate on the attention output (W zero, bias 4)")
    sparse_attn_gate: bool = _f(False, "#1787 SparseAttnGate: y_h *= sigmoid(s * W_h . n[:gate_window]) from the attention input n, after XSA")
    sparse_attn_gate_scale: float = _f(1.0, "SparseAttnGate scale s inside the sigmoid (#1855: 0.5)")
    sparse_attn_gate_init_std: float = _f(0.0, "SparseAttnGate init std of W (0 = zeros: every head x 0.5 at init)")
    value_residual: bool = _f(False, "blend the first layer's V into later layers (learned lambdas)")
    xsa_last_n: int = _f(0, "exclusive self-attention on the last N physical layers; -1 = all")
    doc_attention: bool = _f(False, "no attention across BOS boundaries (document-isolated / varlen)")
    attention_backend: str = _f("auto", "attention kernel (auto: CUDA -> FlashAttention-3 if installed, else flex_attention for document masks / SDPA; CPU -> SDPA)", ("auto", "sdpa", "flex", "fa3", "math"))
    # embeddings
    bigram_buckets: int = _f(0, "BigramHash buckets (0 = off)")
    bigram_dim: int = _f(128, "BigramHash table width")
    bigram_scale_init: float = _f(0.05, "BigramHash output scale init")
    bigram_proj_init_scale: float = _f(1.0, "extra factor on the BigramHash projection's orthogonal init (#595: 1/sqrt(2L))")
    smear: str = _f("none", "SmearGate: blend with the previous token (never across BOS); content_gate = #1855's e_t += lam * sigmoid(w . e_t[:gate_window]) * e_{t-1}", ("none", "pre_norm", "post_norm", "content_gate"))
    gate_window: int = _f(12, "leading dims of the input that the content SmearGate and the SparseAttnGate read")
    value_embed_dim: int = _f(0, "value-embedding table width (0 = off)")
    value_embed_layers: list[int] = _f([], "physical layers that add value embeddings to V")


@dataclass
class OptimConfig:
    matrix_optimizer: str = _f("muon", "optimizer for block matrices: Muon, or Adam(W) for an Adam-only baseline (then set matrix_lr to an Adam lr, ~10x lower)", ("muon", "adam"))
    matrix_lr: float = _f(0.04, "matrix learning rate (of Muon, or of Adam when matrix_optimizer = adam)")
    muon_momentum: float = _f(0.95, "Muon momentum after warm-up")
    muon_momentum_warmup_start: float = _f(0.85, "Muon momentum at step 0")
    muon_momentum_warmup_steps: int = _f(500, "steps of linear momentum warm-up")
    muon_momentum_style: str = _f("sum", "momentum buffer: B=mu*B+G (sum) or B=mu*B+(1-mu)*G (ema, #206)", ("sum", "ema"))
    muon_nesterov: bool = _f(True, "Nesterov momentum")
    muon_ns_steps: int = _f(5, "Newton-Schulz iterations")
    muon_ns_coeffs: str = _f("quintic", "Newton-Schulz coefficients: the fixed quintic (3.4445, -4.775, 2.0315), or Polar Express's 5 per-iteration tuples (PR #1344; at most 5 iterations)", ("quintic", "polar_express"))
    muon_ns_safety: float = _f(0.0, "Newton-Schulz input X = G / ((1 + s)|G|_F + 1e-7): 0 as every record (#1344, #1787, #1855 divide by |G|_F + eps); 0.02 = the Polar Express paper's cushion against bf16 rounding")
    muon_ns_grouping: str = _f("c_AA", "Newton-Schulz's cubic term: c*(A@A) as #1536/#1573 write it, or (c*A)@A as the baseline's `c * A @ A` evaluates (#103, #206, #595 copy it); the same polynomial, rounded elsewhere: with it a bf16 step equals the challenge's bit for bit", ("c_AA", "cA_A"))
    muon_shape_scale: str = _f("update", "where Muon's sqrt(max(1, rows/cols)) multiplies: the orthogonalised update in its NS dtype (update: the baseline's `g *= ...`, #103, #206, #595) or the fp32 step size (step: the banked records' `alpha=-lr * scale`, #1573, #1536); the same step, rounded elsewhere", ("update", "step"))
    muon_ns_dtype: str = _f("auto", "dtype of the Newton-Schulz iteration (auto = bf16 on CUDA as the records; fp32 on CPU, where bf16 matmuls are ~20x slower)", ("auto", "bfloat16", "float32"))
    muon_row_normalize: bool = _f(False, "MuonEq-R: divide each row of the momentum update by its L2 norm BEFORE Newton-Schulz (#1217..#1536; what PR #103's code calls 'NorMuon'); not #206's NorMuon")
    muon_normuon_beta2: float = _f(0.0, "#206's NorMuon: per-row second moment of the orthogonalised update (AFTER Newton-Schulz) with this beta2, update rescaled to its Frobenius norm; 0 = off; not MuonEq-R")
    muon_weight_decay: float = _f(0.0, "decoupled weight decay on matrices, W <- W(1 - lr*wd) (Muon, or AdamW when matrix_optimizer = adam)")
    muon_wd_taper_start: float = _f(1.0, "tapered Muon WD (#1729): from this training fraction on, wd falls linearly to muon_wd_taper_final x wd at the end; 1 = off (#1729: 0.70)")
    muon_wd_taper_final: float = _f(1.0, "Muon WD multiplier reached at the end of training with the taper on (#1729: 0.50)")
    proj_muon: bool = _f(False, "train small projections (BigramHash, value embeddings) with Muon (#595) instead of the scalar group (#1573)")
    embed_lr: float = _f(0.05, "token embedding lr (tied); untied embeddings use untied_embed_lr")
    untied_embed_lr: float = _f(0.6, "token embedding lr when embeddings are untied")
    head_lr: float = _f(0.008, "output head lr when untied")
    scalar_lr: float = _f(0.04, "lr of scalars, gains, gates, mixes, small projections")
    lora_lr: float = _f(0.01, "lr of per-virtual-layer LoRA adapters")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.95, "Adam beta2")
    adam_eps: float = _f(1e-8, "Adam eps")
    embed_weight_decay: float = _f(0.0, "AdamW decoupled weight decay on embedding tables")
    scalar_weight_decay: float = _f(0.0, "AdamW decoupled weight decay on scalars/gates")
    grad_clip_norm: float = _f(0.0, "global grad-norm clip (0 = off); of the averaged gradient or of each rank's own, train.clip_scope")


@dataclass
class TrainConfig:
    steps: int = _f(20000, "optimizer steps (the wall-clock cap may stop earlier)")
    batch_tokens: int = _f(524288, "global tokens per optimizer step")
    seq_len: int = _f(1024, "training sequence length")
    micro_batch_tokens: int = _f(65536, "tokens per forward per rank; sets gradient accumulation")
    grad_accum_steps: int = _f(0, "micro-steps per optimizer step; 0 = from micro_batch_tokens")
    max_wallclock_s: float = _f(0.0, "end training cleanly after this many seconds of training (0 = no cap)")
    warmup_steps: int = _f(0, "linear LR warm-up steps")
    warmdown: str = _f("steps", "how the LR decays to min_lr_frac: over the last warmdown_steps steps, the last warmdown_frac of train.steps, the last warmdown_steps (estimated) steps before the wall-clock cap, or the last warmdown_frac of the cap; the wall-clock modes end exactly at max_wallclock_s - quant.gptq_reserve_s", ("none", "steps", "frac", "wallclock_steps", "wallclock_frac"))
    warmdown_steps: int = _f(1200, "steps of linear warmdown (steps / wallclock_steps)")
    warmdown_frac: float = _f(0.0, "fraction of training spent in warmdown (frac / wallclock_frac)")
    min_lr_frac: float = _f(0.0, "LR multiplier floor during warmdown")
    averaging: str = _f("none", "weights exported at the end: live, EMA, SWA (live if no snapshot), or SWA when it holds > 1 snapshot else EMA (#1573); the choice is written to result.json and log.jsonl as 'averaging'", ("none", "ema", "swa", "swa_else_ema"))
    ema_decay: float = _f(0.997, "EMA decay per step")
    swa_every: int = _f(50, "steps between SWA snapshots")
    swa_start_lr: float = _f(0.5, "collect SWA snapshots while the LR multiplier is below this (LR warm-up steps never count)")
    compile: str = _f("auto", "torch.compile the model (auto = on CUDA only)", ("auto", "on", "off"))
    compile_priming_steps: int = _f(0, "steps run then undone before training, to compile off the clock")
    clip_scope: str = _f("global", "what optim.grad_clip_norm clips on several ranks: the averaged gradient (global), or each rank's own gradient before the ranks average them (local: #1536's and #1573's order, their clip_grad_norm_ before their all-reduce; then their average, in each gradient's own dtype); one rank: the same", ("global", "local"))
    ddp_grad_dtype: str = _f("auto", "dtype of DDP's gradient all-reduce (auto = bf16 on CUDA as the records, via DDP's bf16_compress_hook; fp32 elsewhere)", ("auto", "bfloat16", "float32"))
    fused_mlp: str = _f("off", "training-only fused MLP kernel on CUDA: own Triton up-projection + LeakyReLU(slope)^2 (relu2 = slope 0) forward and backward; eval, GPTQ and TTT use the PyTorch MLP, the same function", ("off", "triton"))
    fused_ce: str = _f("chunked", "training loss kernel on CUDA: pgolf's chunked PyTorch soft-capped CE, or liger-kernel's fused linear CE with softcap (Triton; the same function)", ("chunked", "liger"))
    check_fast_paths: bool = _f(False, "debug: at start-up, compare the fast kernels with the plain reference and stop on a mismatch")
    dtype: str = _f("auto", "compute dtype (auto = bf16 autocast on CUDA, fp32 on CPU)", ("auto", "bfloat16", "float32"))
    log_every: int = _f(10, "log a training line every N steps")
    val_every: int = _f(0, "evaluate on the validation split every N steps (0 = only at the end)")
    checkpoint_every: int = _f(0, "write a resumable checkpoint every N steps (0 = only on interrupt)")
    keep_checkpoint: bool = _f(False, "keep the full-precision checkpoint after a finished run")


@dataclass
class QuantConfig:
    method: str = _f("percentile", "how scales are chosen", ("percentile", "rowmax", "clip_search", "sdclip", "gptq"))
    matrix_bits: int = _f(8, "bits for attention and MLP matrices")
    attn_bits: int = _f(0, "bits for attention matrices (0 = matrix_bits)")
    mlp_bits: int = _f(0, "bits for MLP matrices (0 = matrix_bits)")
    embed_bits: int = _f(8, "bits for the token embedding / untied head (0 = fp16 passthrough)")
    table_bits: int = _f(8, "bits for auxiliary tables (BigramHash, value embeddings); 0 = fp16")
    other_bits: int = _f(8, "bits for other large tensors (projections, LoRA); 0 = fp16")
    embed_method: str = _f("percentile", "how scales are chosen for embeddings and tables", ("percentile", "rowmax", "clip_search", "sdclip", "gptq"))
    embed_scale_floor: bool = _f(True, "floor embedding/table scales at 1/clip_max (the baseline's int8 rule)")
    keep_float: list[str] = _f([], "parameter names always stored as fp16 (e.g. #595's last-layer attn.c_k)")
    passthrough_max_numel: int = _f(65536, "float tensors with at most this many elements are stored as floats")
    control_dtype: str = _f("float32", "dtype of small control tensors", ("float32", "float16"))
    clip_percentile: float = _f(99.99984, "per-row clip percentile (method=percentile)")
    scale_floor: bool = _f(True, "floor per-row scales at 1/clip_max (the baseline's clamp_min)")
    clip_search_percentiles: list[float] = _f([99.9, 99.95, 99.99, 99.999, 100.0], "GPTQ-lite: candidate clip percentiles; the one with the lowest tensor MSE wins")
    clip_search_scope: str = _f("tensor", "GPTQ-lite: one percentile per tensor by whole-tensor MSE (§9.5), or the best per row", ("tensor", "row"))
    sdclip_k: float = _f(12.85, "SDClip: scale = k*std(row)/clip_max for matrices")
    sdclip_k_embed: float = _f(20.0, "SDClip k for embedding tables")
    sdclip_k_attn: float = _f(0.0, "SDClip k for attention matrices (0 = sdclip_k; #1586/#1855: 13.0)")
    sdclip_k_mlp: float = _f(0.0, "SDClip k for MLP matrices (0 = sdclip_k; #1586/#1855: 11.5)")
    hessian_clip_lambda: float = _f(0.0, "Hessian-aware SDClip (#1412, GPTQ only): row scale x (1 + lambda (r_i - 1)), r_i the row's Hessian-weighted |W| (mean 1); 0 = plain SDClip")
    gate_bits: int = _f(0, "QuantGate (#1736): bits of attention-gate weights (class 'gate'), per-row max scale; 0 = stored as control_dtype")
    lqer_rank: int = _f(0, "LQER (#1797): rank of the low-rank correction of the quantization error (0 = off)")
    lqer_top_k: int = _f(3, "LQER: corrected tensors, those with the largest ||W - W_hat||_F")
    lqer_asym: bool = _f(True, "LQER: A int2 with one scale, B int4 in groups of lqer_group (else both per-row lqer_factor_bits)")
    lqer_group: int = _f(64, "LQER asym: elements of B (row-major) per fp16 scale")
    lqer_factor_bits: int = _f(4, "LQER symmetric packing: bits of A and B, per-row scales")
    gptq_calib_batches: int = _f(64, "GPTQ calibration batches of training sequences")
    gptq_block: int = _f(128, "GPTQ column block size")
    gptq_damp: float = _f(0.01, "GPTQ damping as a fraction of mean(diag H)")
    gptq_reserve_s: float = _f(0.0, "seconds of the training cap reserved for GPTQ calibration")
    gptq_calib_source: str = _f("train", "GPTQ calibration tokens: training data, or text the model generates itself", ("train", "generated"))
    qat: str = _f("none", "fake-quantization during training", ("none", "always", "late"))
    qat_start_lr: float = _f(0.15, "late QAT turns on when the LR multiplier falls below this")
    bit_pack: bool = _f(False, "pack sub-byte codes densely instead of one code per byte")
    byte_shuffle: bool = _f(False, "stride-2 byte shuffle before compression")
    compressor: str = _f("zlib", "compressor of the packed weights (none = stored as is, for inspection; pergroup = #1855's grouped int8 codes)", ("zlib", "lzma", "zstd", "brotli", "auto", "none", "pergroup"))
    pergroup_codec: str = _f("lrzip", "pergroup: codec of the code groups (lrzip -z -L9, the system tool; auto = lrzip if installed, else brotli)", ("lrzip", "brotli", "auto"))
    simsort_groups: list[str] = _f(["tok_emb", "attn.c_q", "mlp.fc"], "pergroup: tensors (name substrings) whose rows are stored in L1 nearest-neighbour order")
    allow_over_budget: bool = _f(False, "accept configs whose artifact estimate is far over 16,000,000 bytes")
    fit: bool = _f(False, "an artifact over 16,000,000 bytes is brought under by pruning the cheapest +-1 codes (#609)")
    fit_reserve_s: float = _f(60.0, "quant.fit: seconds of the training cap reserved for the fit's search")


@dataclass
class EvalConfig:
    context_len: int = _f(0, "evaluation window length (0 = train.seq_len)")
    sliding_stride: int = _f(0, "sliding-window stride (0 = plain non-overlapping windows)")
    batch_seqs: int = _f(32, "windows per forward pass")
    doc_boundaries: bool = _f(False, "clip each window's context at the start of its document")
    plain_windows: str = _f("fixed", "plain scoring's windows (eval.sliding_stride = 0, val_bpb_plain): fixed windows of eval.context_len over the stream, or #1536's eval_val pieces: each document from its BOS in pieces of <= eval.context_len tokens (a piece starts at every BOS and every context_len tokens after it)", ("fixed", "doc_pieces"))
    ttt: str = _f("none", "test-time training: score-first chunks, per-document LoRA, or #595's pre-scoring epochs (not legal)", ("none", "chunk", "lora", "pre"))
    ttt_lr: float = _f(0.002, "chunk TTT SGD lr (cosine over chunks) / pre TTT AdamW lr")
    ttt_epochs: int = _f(3, "TTT epochs per chunk (chunk) or over the whole split (pre)")
    ttt_chunk_tokens: int = _f(32768, "chunk TTT: targets per chunk")
    ttt_momentum: float = _f(0.9, "chunk TTT SGD momentum / pre TTT AdamW beta1")
    ttt_freeze_blocks: int = _f(0, "chunk/pre TTT: keep the first N physical blocks frozen")
    ttt_batch_seqs: int = _f(32, "chunk/pre TTT: sequences per optimizer step, over all ranks together")
    ttt_grad_clip: float = _f(1.0, "chunk/pre TTT: global grad-norm clip (0 = off)")
    ttt_lora_rank: int = _f(96, "LoRA TTT rank")
    ttt_lora_targets: list[str] = _f(["q", "k", "v", "o", "mlp", "head"], "LoRA TTT adapters: any of q, k, v, o, mlp, head")
    ttt_lora_chunk: int = _f(64, "LoRA TTT: targets per chunk within a document")
    ttt_lora_lr: float = _f(1e-4, "LoRA TTT AdamW lr")
    ttt_lora_beta1: float = _f(0.0, "LoRA TTT AdamW beta1")
    ttt_lora_beta2: float = _f(0.999, "LoRA TTT AdamW beta2")
    ttt_lora_eps: float = _f(1e-10, "LoRA TTT AdamW eps")
    ttt_lora_wd: float = _f(0.5, "LoRA TTT AdamW weight decay")
    ttt_batch_docs: int = _f(64, "LoRA TTT documents per batch (with warm start or phases: per batch over all ranks, its rows split over them)")
    ttt_lora_alpha: float = _f(0.0, "LoRA TTT output scale: delta * alpha / rank (0 = no scaling, #1536; #1855: 144)")
    ttt_lora_warm_start_a: bool = _f(False, "LoRA TTT: each batch row keeps its A for the next batch's document, only B and AdamW reset (#1767; legal, not document-independent)")
    ttt_doc_order: str = _f("stream", "LoRA TTT document order: stream, or #1855's batches of similar length, longest batch first", DOC_ORDERS)
    ttt_global_phase_docs: list[int] = _f([], "phased global TTT: after this many documents are scored, SGD on all of them before scoring on ([] = off; #1855: [833, 1666, 2500])")
    ttt_global_lr: float = _f(1e-3, "phased global TTT: SGD lr, cosine over the phase's chunks")
    ttt_global_momentum: float = _f(0.9, "phased global TTT: SGD momentum (reset every phase)")
    ttt_global_epochs: int = _f(1, "phased global TTT: passes over each chunk")
    ttt_global_chunk_tokens: int = _f(32768, "phased global TTT: targets per chunk (one lr per chunk; the last chunk is not trained)")
    ttt_global_batch_seqs: int = _f(16, "phased global TTT: sequences per SGD step, over all ranks together")
    ttt_global_grad_clip: float = _f(1.0, "phased global TTT: global grad-norm clip (0 = off)")
    max_seconds: float = _f(0.0, "abort evaluation past this many seconds (0 = no cap)")
    compile: str = _f("auto", "torch.compile the scoring and TTT forwards with static (padded) shapes (auto = on CUDA)", ("auto", "on", "off"))
    tail: str = _f("score", "score every target, or drop the tail past the last multiple of eval.context_len "
                   "as the challenge's train_gpt.py does", ("score", "drop"))


@dataclass
class Config:
    recipe: str = _f("custom", "recipe name this config came from")
    scale: str = _f("full", "full = published sizes, tiny = the same switches at CPU size", SCALES)
    seed: int = _f(1337, "random seed")
    description: str = _f("", "one line about the recipe")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
    "train": TrainConfig, "quant": QuantConfig, "eval": EvalConfig,
}
# Resolved once at import: resolving string annotations evaluates source text, which loading must never do.
TYPE_HINTS: dict[type, dict[str, Any]] = {cls: typing.get_type_hints(cls) for cls in (Config, *SECTIONS.values())}


# ----------------------------------------------------------------------------- keys and forms

def all_keys() -> list[str]:
    """Every settable dotted key, e.g. 'model.num_layers'."""
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_delta(cfg: Config) -> dict[str, Any]:
    """The fields of `cfg` that differ from pgolf's defaults, as nested tables (what a script embeds and an
    artifact's header stores; config_from_dict reads them back onto the defaults)."""
    default = dataclasses.asdict(Config())
    delta: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items():
        if key in SECTIONS:
            table = {k: v for k, v in value.items() if v != default[key][k]}
            if table:
                delta[key] = table
        elif value != default[key]:
            delta[key] = value
    return delta


def config_to_toml(cfg: Config) -> str:
    """The fully resolved config as TOML text (what a run folder's config.toml holds)."""
    return tomli_w.dumps(config_to_dict(cfg))


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key — the reference table of the README."""
    rows = []
    for section, cls in [("", Config)] + list(SECTIONS.items()):
        hints = TYPE_HINTS[cls]
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{section}.{f.name}" if section else f.name
            typ = hints[f.name]
            tname = getattr(typ, "__name__", str(typ))
            choices = f.metadata.get("choices")
            help_text = f.metadata.get("help", "") + (f" ({' | '.join(map(str, choices))})" if choices else "")
            rows.append((key, tname, default, help_text))
    return rows


# ----------------------------------------------------------------------------- derived from the model section

def layer_schedule(model: ModelConfig) -> list[int]:
    """The full (looped) virtual -> physical schedule."""
    return list(model.layer_schedule) if model.layer_schedule else list(range(model.num_layers))


def virtual_layout(model: ModelConfig, looped: bool = True) -> tuple[int, int]:
    """(encoder positions, bridge positions) of the looped schedule, or of the plain stack before looping starts."""
    if not looped and model.recurrence_start_frac > 0:
        return model.num_layers // 2, 0
    n = len(layer_schedule(model))
    if model.encoder_layers >= 0:
        return model.encoder_layers, model.bridge_layers
    return (n - model.bridge_layers) // 2, model.bridge_layers


def mlp_hidden_dim(model: ModelConfig) -> int:
    return model.mlp_hidden if model.mlp_hidden > 0 else int(round(model.mlp_mult * model.model_dim))
