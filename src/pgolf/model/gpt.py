"""The GPT of parameter golf: one model, every published technique a config switch.

Depth recurrence in all its forms is one list, `layer_schedule`: which physical block runs at each virtual
position. The virtual positions are split into encoder (pushes a U-Net skip), bridge (neither pushes nor
pops; #1573's replays) and decoder (pops skips LIFO). Per-virtual-layer LoRA and layer scales are indexed by
virtual position; LN scale, parallel residuals, XSA, value embeddings and value-residual lambdas belong to the
physical block.

model(input_ids) -> logits (B, T, vocab); documents are separated by BOS inside input_ids. `cu_seqlens` (the
batch's document segments, data/segments.py) may be passed along for the FlashAttention-3 varlen kernel; without
it the model derives the same segments in-graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, layer_schedule, virtual_layout
from .attention import AttentionContext, CausalSelfAttention
from .embeddings import BigramHash, ContentSmearGate, SmearGate, ValueEmbedding
from .layers import Linear, Rotary, rms_norm, scalar_param, tag
from .loss import softcapped_cross_entropy
from .mlp import MLP
from .precision import compute_dtype

BOS_ID = 1


def to_compute_dtype(x: Tensor) -> Tensor:
    """x in the autocast dtype where autocast is on (the embedding lookup and its norm are not autocast ops, so
    the residual stream would otherwise stay fp32: twice the activation bytes of the records' bf16 stream)."""
    return x.to(compute_dtype(x))


class Block(nn.Module):
    """resid_mix -> x + a*Attn(norm(x)*c) -> x + m*MLP(norm(x)*c), with c = 1/sqrt(layer+1) under ln_scale."""

    def __init__(self, cfg: ModelConfig, layer: int, use_value_residual: bool):
        super().__init__()
        d = cfg.model_dim
        # the switch first (0 = off): it folds in a train_gpt.py
        use_xsa = cfg.xsa_last_n != 0 and (cfg.xsa_last_n < 0 or layer >= cfg.num_layers - cfg.xsa_last_n)
        self.attn = CausalSelfAttention(cfg, use_value_residual, use_xsa,
                                        cfg.value_embed_layers != [] and layer in cfg.value_embed_layers)
        self.mlp = MLP(cfg)
        self.attn_scale = scalar_param(torch.ones(d))
        self.mlp_scale = scalar_param(torch.ones(d))
        self.resid_mix = scalar_param(torch.stack((torch.ones(d), torch.zeros(d)))) if cfg.resid_mix else None
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.parallel = cfg.parallel_residual != "none" and layer >= cfg.parallel_start_layer

    def mix(self, x: Tensor, x0: Tensor) -> Tensor:
        """x <- m0 * x + m1 * x0."""
        if self.resid_mix is None:
            return x
        m = self.resid_mix.to(x.dtype)
        return m[0] * x + m[1] * x0

    def _norm(self, x: Tensor) -> Tensor:
        return rms_norm(x) * self.norm_scale if self.norm_scale != 1.0 else rms_norm(x)

    def forward(self, x: Tensor, x0: Tensor, ctx: AttentionContext, scale: Tensor | None = None,
                lora: tuple[Tensor, ...] | None = None) -> Tensor:
        x = self.mix(x, x0)
        a = self.attn_scale.to(x.dtype) if scale is None else self.attn_scale.to(x.dtype) * scale.to(x.dtype)
        m = self.mlp_scale.to(x.dtype) if scale is None else self.mlp_scale.to(x.dtype) * scale.to(x.dtype)
        if self.parallel:  # GPT-J: both branches read the same input
            n = self._norm(x)
            return x + a * self.attn(n, ctx, lora) + m * self.mlp(n)
        x = x + a * self.attn(self._norm(x), ctx, lora)
        return x + m * self.mlp(self._norm(x))

    def forward_lanes(self, lane_a: Tensor, lane_m: Tensor, x0: Tensor, ctx: AttentionContext,
                      scale: Tensor | None = None, lora: tuple[Tensor, ...] | None = None) -> tuple[Tensor, Tensor]:
        """#1536 separate lanes: attention on lane_a (with resid_mix), MLP on lane_m; the lanes never mix."""
        u = self.mix(lane_a, x0)
        a = self.attn_scale.to(u.dtype) if scale is None else self.attn_scale.to(u.dtype) * scale.to(u.dtype)
        m = self.mlp_scale.to(u.dtype) if scale is None else self.mlp_scale.to(u.dtype) * scale.to(u.dtype)
        lane_a = u + a * self.attn(self._norm(u), ctx, lora)
        lane_m = lane_m + m * self.mlp(self._norm(lane_m))
        return lane_a, lane_m

    def forward_cross_lanes(self, lane0: Tensor, lane1: Tensor, x0: Tensor, ctx: AttentionContext, rho: Tensor,
                            post: Tensor, scale: Tensor | None = None,
                            lora: tuple[Tensor, ...] | None = None) -> tuple[Tensor, Tensor]:
        """#1529/#1855 two lanes with cross routing; rho (2,) the lanes' residual weights, post (2, 2) = P[source, lane]:

            a = attn_scale * Attn(norm(mix(lane0, x0)) * c)      (resid_mix forms only the attention input)
            m = mlp_scale * MLP(norm(lane1) * c)
            lane0' = rho0 * lane0 + P[attn,0] a + P[mlp,0] m,   lane1' = rho1 * lane1 + P[attn,1] a + P[mlp,1] m
        """
        dt = lane0.dtype
        a = self.attn_scale.to(dt) if scale is None else self.attn_scale.to(dt) * scale.to(dt)
        m = self.mlp_scale.to(dt) if scale is None else self.mlp_scale.to(dt) * scale.to(dt)
        attn_out = a * self.attn(self._norm(self.mix(lane0, x0)), ctx, lora)
        mlp_out = m * self.mlp(self._norm(lane1))
        rho, post = rho.to(dt), post.to(dt)
        new0 = rho[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out
        new1 = rho[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out
        return new0, new1


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, bos_id: int = BOS_ID):
        super().__init__()
        self.cfg = cfg
        self.bos_id = bos_id
        d, L = cfg.model_dim, cfg.num_layers
        head_dim = d // cfg.num_heads
        kv_dim = cfg.num_kv_heads * head_dim
        self.looped_schedule = layer_schedule(cfg)
        self.plain_schedule = list(range(L)) if cfg.recurrence_start_frac > 0 else self.looped_schedule
        self.looping = cfg.recurrence_start_frac == 0
        schedules = [(self.plain_schedule, False), (self.looped_schedule, True)]

        self.tok_emb = tag(nn.Parameter(torch.empty(cfg.vocab_size, d)), "embed", "embed")
        self.bigram = (BigramHash(cfg.bigram_buckets, cfg.bigram_dim, d, cfg.bigram_scale_init, bos_id)
                       if cfg.bigram_buckets else None)
        if cfg.smear == "content_gate":
            self.smear = ContentSmearGate(cfg.gate_window, bos_id)
        else:
            self.smear = SmearGate(d, cfg.smear, bos_id) if cfg.smear != "none" else None
        self.value_embed = (ValueEmbedding(cfg.vocab_size, cfg.value_embed_dim, kv_dim)
                            if cfg.value_embed_layers else None)
        self.rotary = Rotary(head_dim, cfg.rope_dims, cfg.rope_base, cfg.rope_ntk_train_len)

        # value-residual lambdas only where a block runs after virtual position 0 (otherwise never used)
        later = {b for sched, _ in schedules for b in sched[1:]}
        self.blocks = nn.ModuleList(Block(cfg, i, cfg.value_residual and i in later) for i in range(L))

        n_skip = max(min(enc, len(s) - enc - br) for s, looped in schedules for enc, br in [virtual_layout(cfg, looped)])
        self.skip_weights = scalar_param(torch.ones(n_skip, d)) if cfg.unet_skips and n_skip > 0 else None
        self.skip_gates = scalar_param(torch.zeros(n_skip, d)) if cfg.skip_gates and self.skip_weights is not None else None
        n_virtual = len(self.looped_schedule)
        self.layer_scales = scalar_param(torch.ones(n_virtual)) if cfg.layer_scales else None
        if cfg.bridge_modulation and cfg.bridge_layers:
            self.bridge_scale = scalar_param(torch.ones(cfg.bridge_layers, d))
            self.bridge_bias = scalar_param(torch.zeros(cfg.bridge_layers, d))
        else:
            self.bridge_scale = None  # one store each (not chained): a train_gpt.py folds the constant
            self.bridge_bias = None
        self.lane_merge = scalar_param(torch.tensor(0.5)) if cfg.parallel_residual == "separate_lanes" else None
        if cfg.parallel_residual == "cross_lanes":  # all L rows, as #1855 allocates them (only lane layers use theirs)
            self.lane_resid = scalar_param(torch.full((L, 2), cfg.lane_resid_init))
            self.lane_post = scalar_param(torch.full((L, 2, 2), cfg.lane_post_init))
        else:
            self.lane_resid = None
            self.lane_post = None
        r = cfg.lora_rank
        if r:
            self.lora_a_q = tag(nn.Parameter(torch.empty(n_virtual, d, r)), "lora", "lora")
            self.lora_b_q = tag(nn.Parameter(torch.zeros(n_virtual, r, d)), "lora", "lora")
            self.lora_a_v = tag(nn.Parameter(torch.empty(n_virtual, d, r)), "lora", "lora")
            self.lora_b_v = tag(nn.Parameter(torch.zeros(n_virtual, r, kv_dim)), "lora", "lora")
        self.lm_head = None if cfg.tie_embeddings else Linear(d, cfg.vocab_size, "head", "embed", zero_init=True)
        self.attention_backend = "sdpa"
        self.fused_loss = False  # True: training loss via the chunked soft-capped CE (same function, less memory)
        self.loss_kernel = None  # with fused_loss, in training mode: a fused kernel of that CE (train.fused_ce)
        self.head_adapter = None  # optional callable h -> delta z added to the logits before the softcap (LoRA TTT)
        if self.tok_emb.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.cfg
        nn.init.normal_(self.tok_emb, std=cfg.embed_init_std)
        for module in self.modules():
            if isinstance(module, Linear):
                module.reset_parameters()
                w = module.weight
                if not module.zero_init and cfg.init == "orthogonal" and min(w.shape) >= cfg.ortho_min_dim:
                    nn.init.orthogonal_(w, gain=1.0)
        if self.bigram is not None:
            with torch.no_grad():
                self.bigram.proj.weight.mul_(cfg.bigram_proj_init_scale)
        if cfg.lora_rank:  # A ~ N(0, 1/d), B = 0: a fresh model equals the model without LoRA
            nn.init.normal_(self.lora_a_q, std=1.0 / math.sqrt(cfg.model_dim))
            nn.init.normal_(self.lora_a_v, std=1.0 / math.sqrt(cfg.model_dim))

    # ------------------------------------------------------------------ forward

    @property
    def active_schedule(self) -> list[int]:
        return self.looped_schedule if self.looping else self.plain_schedule

    def set_looping(self, on: bool) -> None:
        """Switch from the plain stack to the looped schedule (recurrence_start_frac)."""
        self.looping = on or self.cfg.recurrence_start_frac == 0

    def embed(self, ids: Tensor, cache=None) -> Tensor:
        """With a decoding `cache`, ids continue the cached tokens: BigramHash and SmearGate read its last token."""
        prev_id = cache.prev_id if cache is not None else None
        x = F.embedding(ids, self.tok_emb)
        if self.bigram is not None:
            x = x + self.bigram(ids, prev_id)
        # model.smear decides (self.smear.variant is model.smear): a train_gpt.py folds the other variants away
        if self.cfg.smear in ("pre_norm", "content_gate"):
            x = self._smear(x, ids, cache)
        x = rms_norm(x)
        if self.cfg.smear == "post_norm":
            x = self._smear(x, ids, cache)
        return x

    def _smear(self, x: Tensor, ids: Tensor, cache) -> Tensor:
        if cache is None:
            return self.smear(x, ids)
        prev, cache.next_smear_input = cache.smear_input, x[:, -1:]
        if prev is None:
            return self.smear(x, ids)
        return self.smear(torch.cat((prev, x), 1), torch.cat((cache.prev_id, ids), 1))[:, 1:]

    def _skip(self, x: Tensor, skip: Tensor, i: int) -> Tensor:
        w_skip = self.skip_weights[i].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + w_skip
        return torch.lerp(w_skip, x, torch.sigmoid(self.skip_gates[i]).to(x.dtype))

    def hidden(self, ids: Tensor, cu_seqlens: Tensor | None = None, cache=None) -> Tensor:
        """Final normed hidden states (B, T, d). With `cache` (model/decode.py), ids are the next T tokens after
        the cached ones: their positions, keys and previous token continue the cache, which they then extend."""
        cfg = self.cfg
        T = ids.size(1)
        start = 0 if cache is None else cache.length
        cos, sin = self.rotary.tables(start + T, ids.device)
        ctx = AttentionContext(cos=cos[start:], sin=sin[start:], rotary_dims=self.rotary.rotary_dims,
                               backend=self.attention_backend)
        if cfg.doc_attention:
            ctx.doc_ids = torch.cumsum((ids == self.bos_id).to(torch.int32), dim=1)
            ctx.cu_seqlens, ctx.max_seqlen = cu_seqlens, T  # no segment crosses a row end
        if cache is not None:
            ctx.doc_ids = cache.begin(self, ids, ctx.doc_ids)
            ctx.cache = cache
        x = to_compute_dtype(self.embed(ids, cache))  # the residual stream in the autocast dtype (bf16), as the records'
        if cfg.value_embed_layers and self.value_embed is not None:  # the switch first: it folds
            ctx.value_embed = self.value_embed(ids).to(x.dtype)
        x0 = x
        schedule = self.active_schedule
        enc, bridge = virtual_layout(cfg, self.looping)
        skips: list[Tensor] = []
        lane_a = lane_m = None
        for pos, phys in enumerate(schedule):
            block = self.blocks[phys]
            ctx.layer = pos
            scale = self.layer_scales[pos] if self.layer_scales is not None else None
            lora = ((self.lora_a_q[pos], self.lora_b_q[pos], self.lora_a_v[pos], self.lora_b_v[pos])
                    if cfg.lora_rank else None)
            if self.bridge_scale is not None and enc <= pos < enc + bridge:  # the constant first: it folds
                i = pos - enc
                x = x * self.bridge_scale[i].to(x.dtype) + self.bridge_bias[i].to(x.dtype)
            if pos >= enc + bridge:
                i = pos - enc - bridge
                in_lanes = cfg.parallel_residual in ("separate_lanes", "cross_lanes") and phys >= cfg.parallel_start_layer
                if in_lanes and lane_a is None and cfg.parallel_residual == "cross_lanes":
                    lane_a, lane_m = x, x  # #1855 splits before the skip: the first lane skip reaches lane 0 only
                if self.skip_weights is not None and skips:
                    if cfg.parallel_residual not in ("separate_lanes", "cross_lanes") or lane_a is None:
                        x = self._skip(x, skips.pop(), i)
                    else:
                        lane_a = self._skip(lane_a, skips.pop(), i)
                if in_lanes and cfg.parallel_residual == "cross_lanes":
                    lane_a, lane_m = block.forward_cross_lanes(lane_a, lane_m, x0, ctx, self.lane_resid[phys],
                                                               self.lane_post[phys], scale, lora)
                    continue
                if cfg.parallel_residual == "separate_lanes" and in_lanes:  # the switch first: it folds
                    if lane_a is None:
                        lane_a, lane_m = x, x
                    lane_a, lane_m = block.forward_lanes(lane_a, lane_m, x0, ctx, scale, lora)
                    continue
            x = block(x, x0, ctx, scale, lora)
            if pos < enc and self.skip_weights is not None:
                skips.append(x)
        if cfg.parallel_residual == "cross_lanes" and lane_a is not None:  # cross lanes: x = (lane0 + lane1) / 2
            x = 0.5 * (lane_a + lane_m)
        elif cfg.parallel_residual == "separate_lanes" and lane_a is not None:  # separate lanes: x = l * lane_a + (1 - l) * lane_m
            lam = self.lane_merge.to(lane_a.dtype)
            x = lam * lane_a + (1 - lam) * lane_m
        if cache is not None:
            cache.commit(ids)
        return rms_norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """Soft-capped logits c * tanh(z / c) from final hidden states."""
        z = F.linear(h, self.tok_emb.to(h.dtype)) if self.lm_head is None else self.lm_head(h)
        if self.head_adapter is not None:
            z = z + self.head_adapter(h)
        c = self.cfg.logit_softcap
        return c * torch.tanh(z / c) if c > 0 else z

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, cu_seqlens: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab) as float32; with `targets`, the mean cross-entropy instead."""
        h = self.hidden(input_ids, cu_seqlens)
        if targets is not None and self.fused_loss and getattr(self, "head_adapter", None) is None:
            weight = self.tok_emb if self.lm_head is None else self.lm_head.weight
            loss_fn = self.loss_kernel if self.training and self.loss_kernel is not None else softcapped_cross_entropy
            return loss_fn(h.flatten(0, 1), weight, targets.flatten(), self.cfg.logit_softcap)
        logits = self.logits(h).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def build_model(cfg: ModelConfig, bos_id: int = BOS_ID) -> GPT:
    return GPT(cfg, bos_id)


def count_parameters(cfg: ModelConfig) -> int:
    """Parameter count of a config, without allocating weights."""
    with torch.device("meta"):
        model = GPT(cfg)
    return sum(p.numel() for p in model.parameters())
