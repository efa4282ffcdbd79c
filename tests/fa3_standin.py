"""A CPU stand-in for FlashAttention-3 (`flash_attn_interface`), so the fa3 path can run and be traced on CPU.

Its two entry points are torch.library custom ops (as the FA3 wheels register theirs), so torch.compile sees one
opaque kernel, not Python. They compute FA3's function with the fp32 reference (softmax(q k^T / sqrt(hd)) v over
causal, same-segment keys; native GQA) and enforce FA3's input contract: q, k, v in fp16/bf16 and ONE dtype,
max_seqlen a Python int that bounds every segment. `installed()` puts the module in sys.modules.
"""

from __future__ import annotations

import math
import sys
import types
from contextlib import contextmanager

import torch
from torch import Tensor

CALLS: list[dict] = []  # one entry per kernel call: the dtypes and shapes it received


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if not (q.dtype == k.dtype == v.dtype):
        raise RuntimeError(f"FlashAttention-3 stand-in: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"FlashAttention-3 stand-in: only fp16 and bf16 are supported, got {q.dtype}")


def _reference(q: Tensor, k: Tensor, v: Tensor, segment: Tensor) -> Tensor:
    """q (N, H, hd), k/v (N, Hkv, hd); token i sees j iff j <= i and segment[i] == segment[j]."""
    n, H, hd = q.shape
    rep = H // k.size(1)
    qf = q.float().transpose(0, 1)
    kf = k.float().repeat_interleave(rep, dim=1).transpose(0, 1)
    vf = v.float().repeat_interleave(rep, dim=1).transpose(0, 1)
    pos = torch.arange(n, device=q.device)
    mask = (pos[:, None] >= pos[None, :]) & (segment[:, None] == segment[None, :])
    scores = (qf @ kf.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(0, 1).to(q.dtype)


def _segments(cu: Tensor, n: int) -> Tensor:
    return torch.searchsorted(cu.long(), torch.arange(n, device=cu.device), right=True) - 1


@torch.library.custom_op("pgolf_test::fa3_varlen", mutates_args=())
def fa3_varlen(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> Tensor:
    _check(q, k, v)
    if cu.dtype != torch.int32:
        raise RuntimeError(f"FlashAttention-3 stand-in: cu_seqlens must be int32, got {cu.dtype}")
    lengths = cu[1:].long() - cu[:-1].long()
    if int(cu[0]) != 0 or int(cu[-1]) != q.size(0) or bool((lengths < 0).any()):
        raise RuntimeError(f"FlashAttention-3 stand-in: cu_seqlens is not a partition of {q.size(0)} tokens")
    if int(lengths.max()) > max_seqlen:
        raise RuntimeError(f"FlashAttention-3 stand-in: a segment of {int(lengths.max())} tokens > max_seqlen {max_seqlen}")
    CALLS.append({"dtypes": (q.dtype, k.dtype, v.dtype), "varlen": True, "segments": int((lengths > 0).sum())})
    return _reference(q, k, v, _segments(cu, q.size(0)))


@fa3_varlen.register_fake
def _(q, k, v, cu, max_seqlen):
    _check(q, k, v)
    return torch.empty_like(q)


@torch.library.custom_op("pgolf_test::fa3_dense", mutates_args=())
def fa3_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    _check(q, k, v)
    CALLS.append({"dtypes": (q.dtype, k.dtype, v.dtype), "varlen": False})
    B, T = q.shape[:2]
    segment = torch.arange(B, device=q.device).repeat_interleave(T)
    flat = [x.reshape(B * T, *x.shape[2:]) for x in (q, k, v)]
    return _reference(*flat, segment).reshape(q.shape)


@fa3_dense.register_fake
def _(q, k, v):
    _check(q, k, v)
    return torch.empty_like(q)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*[x for x in inputs if isinstance(x, Tensor)])
    ctx.extra = [x for x in inputs if not isinstance(x, Tensor)]


def _backward_through_reference(op_reference):
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        q, k, v = (t.detach().requires_grad_() for t in tensors[:3])
        with torch.enable_grad():
            out = op_reference(q, k, v, *tensors[3:])
        grads = torch.autograd.grad(out, (q, k, v), grad)
        return (*grads, *([None] * (len(tensors) - 3 + len(ctx.extra))))
    return backward


def _varlen_reference(q, k, v, cu):
    return _reference(q, k, v, _segments(cu, q.size(0)))


def _dense_reference(q, k, v):
    B, T = q.shape[:2]
    segment = torch.arange(B, device=q.device).repeat_interleave(T)
    flat = [x.reshape(B * T, *x.shape[2:]) for x in (q, k, v)]
    return _reference(*flat, segment).reshape(q.shape)


fa3_varlen.register_autograd(_backward_through_reference(_varlen_reference), setup_context=_setup)
fa3_dense.register_autograd(_backward_through_reference(_dense_reference), setup_context=_setup)


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    assert causal, "pgolf only calls causal attention"
    return torch.ops.pgolf_test.fa3_dense(q, k, v)


def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, causal: bool = False) -> Tensor:
    assert causal and cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
    if not isinstance(max_seqlen_q, int):
        raise TypeError(f"FlashAttention-3 stand-in: max_seqlen must be a Python int, got {type(max_seqlen_q)}")
    return torch.ops.pgolf_test.fa3_varlen(q, k, v, cu_seqlens_q, max_seqlen_q)


@contextmanager
def installed():
    """`import flash_attn_interface` finds this stand-in for the duration of the block."""
    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    previous = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = module
    CALLS.clear()
    try:
        yield module
    finally:
        if previous is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = previous
