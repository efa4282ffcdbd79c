"""Causal self-attention with every switch of the published submissions.

GQA, QK RMS-norm with a learned per-head query gain, (partial) RoPE, optional per-head sigmoid output gate
(dense from the whole input, or #1787's sparse one from its first gate_window dims), value residual (blend the first layer's V), value embeddings, XSA (remove each head's component along the
token's own value), per-virtual-layer LoRA on Q and V, and document-boundary masking.

Kernels (`backend`): "math" is the plain PyTorch reference; "sdpa" is torch's scaled_dot_product_attention
(flash on GPU for plain causal); "flex" is flex_attention with a document block mask (the GPU fast path for
document-isolated attention); "fa3" is FlashAttention-3 (`flash_attn_interface`, varlen over document
segments) where it is installed. All compute the same function; tests check it (fa3 through a stand-in op).

Every kernel receives q, k and v in ONE dtype, the compute dtype (autocast's, else v's): CUDA autocast runs
rms_norm in fp32 (torch >= 2.12), so after the QK norm q and k would be fp32 next to a bf16 v, which FA3
rejects and flex_attention's backward refuses. The fp32 math reference gets the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .layers import Linear, apply_rotary, rms_norm, scalar_param
from .precision import compute_dtype  # the dtype attention runs in (q, k, v are cast to it)


@dataclass
class AttentionContext:
    """Per-forward state shared by all layers."""
    cos: Tensor
    sin: Tensor
    rotary_dims: int
    doc_ids: Tensor | None = None        # (B, T) document index of each position, None = plain causal
    value_embed: Tensor | None = None    # (B, T, kv_dim) value-embedding output, added on VE layers
    v0: Tensor | None = None             # first executed layer's V, for the value residual
    backend: str = "sdpa"
    block_masks: dict = field(default_factory=dict)
    cu_seqlens: Tensor | None = None     # int32 document segments of the flattened batch (fa3 varlen)
    max_seqlen: int = 0                  # longest segment bound (the row length), a Python int
    cache: Any = None                    # incremental decoding: model.decode.KVCache (keys/values of earlier tokens)
    layer: int = 0                       # virtual position of the running block (the cache's slot)


def document_mask(doc_ids: Tensor) -> Tensor:
    """(B, 1, T, T) bool: key j is visible from query i iff j <= i and both are in the same document."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal[None] & same_doc)[:, None]


def attention_math(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None) -> Tensor:
    """Reference: softmax(q k^T / sqrt(hd) + mask) v in fp32. q (B,H,T,hd), k/v (B,Hkv,T,hd)."""
    rep = q.size(1) // k.size(1)
    k = k.repeat_interleave(rep, dim=1).float()
    v = v.repeat_interleave(rep, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    T = q.size(2)
    if doc_ids is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[None, None]
    else:
        mask = document_mask(doc_ids)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)


def attention_sdpa(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None) -> Tensor:
    gqa = q.size(1) != k.size(1)
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(doc_ids), enable_gqa=gqa)


def _flex_block_mask(doc_ids: Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = doc_ids.shape

    def doc_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    return create_block_mask(doc_causal, B, None, T, T, device=doc_ids.device)


_compiled_flex = None


def _flex_kernel(device: torch.device):
    """flex_attention itself inside a compiled graph or on the CPU; on CUDA outside one, a compiled flex_attention
    (eager flex materialises the whole (B, H, T, T) score matrix: GBs per call at evaluation batch sizes)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)  # as documented; new shapes (generation) go dynamic
    return _compiled_flex


def attention_flex(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None, cache: dict) -> Tensor:
    if doc_ids is None:
        doc_ids = torch.zeros(q.size(0), q.size(2), dtype=torch.int32, device=q.device)
    if "flex" not in cache:  # one block mask per forward, shared by every layer
        cache["flex"] = _flex_block_mask(doc_ids)
    return _flex_kernel(q.device)(q, k, v, block_mask=cache["flex"], enable_gqa=q.size(1) != k.size(1))


def flash3_available() -> bool:
    try:
        import flash_attn_interface  # noqa: F401  (FlashAttention-3, Hopper)
    except ImportError:
        return False
    return torch.cuda.is_available()


def segment_offsets(doc_ids: Tensor) -> Tensor:
    """int32 cu_seqlens of the flattened (B*T) batch, in-graph with a static shape (B*T + 1): a segment starts at
    every row start and every document change; the starts are sorted to the front, the rest padded with B*T.

    The loader builds the same list on the host, padded to a much smaller fixed capacity (data/segments.py);
    this is the fallback for callers that pass none.
    """
    B, T = doc_ids.shape
    n = B * T
    keys = (doc_ids.long() + torch.arange(B, device=doc_ids.device)[:, None] * (T + 1)).flatten()
    is_start = torch.ones_like(keys, dtype=torch.bool)
    is_start[1:] = keys[1:] != keys[:-1]
    position = torch.arange(n, device=doc_ids.device)
    starts = torch.where(is_start, position, n).sort().values
    return torch.cat((starts, starts.new_full((1,), n))).to(torch.int32)


def attention_flash3(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None, cu_seqlens: Tensor | None = None,
                     max_seqlen: int = 0) -> Tensor:
    """FlashAttention-3 (native GQA, layout (B, T, H, hd)); varlen over document segments when doc_ids is set."""
    import flash_attn_interface as fa3

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    B, T, H, hd = qt.shape
    if doc_ids is None:
        out = fa3.flash_attn_func(qt, kt, vt, causal=True)
    else:
        cu = segment_offsets(doc_ids) if cu_seqlens is None else cu_seqlens
        flat = [x.reshape(B * T, x.size(2), hd) for x in (qt, kt, vt)]
        out = fa3.flash_attn_varlen_func(*flat, cu, cu, max_seqlen or T, max_seqlen or T, causal=True)
    out = out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
    return out.reshape(B, T, H, hd).transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
    """Attention of q (B,H,T,hd) over k, v (B,Hkv,T,hd), all cast to the compute dtype first (see the module doc)."""
    dtype = compute_dtype(v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if ctx.backend == "math":
        return attention_math(q, k, v, ctx.doc_ids)
    if ctx.backend == "flex":
        return attention_flex(q, k, v, ctx.doc_ids, ctx.block_masks)
    if ctx.backend == "fa3":
        return attention_flash3(q, k, v, ctx.doc_ids, ctx.cu_seqlens, ctx.max_seqlen)
    return attention_sdpa(q, k, v, ctx.doc_ids)


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """XSA: y_h <- y_h - (y_h . v_hat) v_hat with v_hat = v/|v| of the head's KV group. y (B,T,H,hd), v (B,T,Hkv,hd)."""
    B, T, H, hd = y.shape
    Hkv = v.size(2)
    v_hat = F.normalize(v, dim=-1)[:, :, :, None, :]
    grouped = y.reshape(B, T, Hkv, H // Hkv, hd)
    grouped = grouped - (grouped * v_hat).sum(-1, keepdim=True) * v_hat
    return grouped.reshape(B, T, H, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, use_value_residual: bool, use_xsa: bool, use_value_embed: bool):
        super().__init__()
        d, H, Hkv = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hkv, d // H
        kv_dim = Hkv * self.head_dim
        self.c_q = Linear(d, d, "matrix", "attn")
        self.c_k = Linear(d, kv_dim, "matrix", "attn")
        self.c_v = Linear(d, kv_dim, "matrix", "attn")
        self.proj = Linear(d, d, "matrix", "attn", zero_init=True)
        self.q_gain = scalar_param(torch.full((H,), cfg.qk_gain_init))
        self.use_xsa = use_xsa
        # gate g = sigmoid(W x + b), W zero, b = 4 (sigmoid(4) ~ 0.982: near no-op at init)
        self.gate_w = scalar_param(torch.zeros(H, d), "gate") if cfg.attn_gate else None
        self.gate_b = scalar_param(torch.full((H,), 4.0)) if cfg.attn_gate else None
        # SparseAttnGate (#1787): g = sigmoid(s * W x[:window]), W (H, window) ~ N(0, std) (std 0: zeros, g = 0.5)
        self.sparse_gate_w = None
        if cfg.sparse_attn_gate:
            w = torch.zeros(H, cfg.gate_window)
            if cfg.sparse_attn_gate_init_std > 0:
                nn.init.normal_(w, std=cfg.sparse_attn_gate_init_std)
            self.sparse_gate_w = scalar_param(w, "gate")
            self.sparse_gate_scale = cfg.sparse_attn_gate_scale
        # v <- l0 * v0 + l1 * v
        self.vr_lambda = scalar_param(torch.tensor([0.5, 0.5])) if use_value_residual else None
        self.ve_scale = scalar_param(torch.ones(1)) if use_value_embed else None

    def forward(self, x: Tensor, ctx: AttentionContext, lora: tuple[Tensor, ...] | None = None) -> Tensor:
        B, T, d = x.shape
        H, Hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        # q += (x A_q) B_q, v += (x A_v) B_v, built in #103's order (c_q, LoRA q, c_k, c_v, LoRA v: its L567-569):
        # autograd sums the gradient of x over these uses in reverse creation order, so the order is its last bits
        a_q, b_q, a_v, b_v = (t.to(x.dtype) for t in lora) if lora is not None else (None,) * 4
        q = self.c_q(x) if lora is None else self.c_q(x) + (x @ a_q) @ b_q
        k = self.c_k(x)
        v = self.c_v(x) if lora is None else self.c_v(x) + (x @ a_v) @ b_v
        if self.ve_scale is not None and ctx.value_embed is not None:
            v = v + self.ve_scale.to(x.dtype) * ctx.value_embed
        q = q.view(B, T, H, hd)
        k = k.view(B, T, Hkv, hd)
        v = v.view(B, T, Hkv, hd)
        if ctx.v0 is None:
            ctx.v0 = v
        elif self.vr_lambda is not None:
            lam = self.vr_lambda.to(x.dtype)
            v = lam[0] * ctx.v0 + lam[1] * v
        q = apply_rotary(rms_norm(q), ctx.cos, ctx.sin, ctx.rotary_dims)
        k = apply_rotary(rms_norm(k), ctx.cos, ctx.sin, ctx.rotary_dims)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        qkv = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = (attend(*qkv, ctx) if ctx.cache is None else ctx.cache.attend(ctx.layer, *qkv)).transpose(1, 2)
        if self.use_xsa:
            y = exclusive_self_attention(y, v)
        if self.gate_w is not None:
            gate = torch.sigmoid(F.linear(x, self.gate_w.to(x.dtype), self.gate_b.to(x.dtype)))
            y = y * gate[..., None]
        if self.sparse_gate_w is not None:  # y_h <- sigmoid(s * W_h . x[:window]) * y_h, after XSA, before W_o
            window = self.sparse_gate_w.size(1)
            gate = torch.sigmoid(self.sparse_gate_scale * F.linear(x[..., :window], self.sparse_gate_w.to(x.dtype)))
            y = y * gate[..., None]
        return self.proj(y.reshape(B, T, d))
