"""Fused LeakyReLU(slope)^2 MLP (#1530 -> #1855), forward and backward, with Triton matmuls and fused epilogues.

    pre  = x W_fc^T                              post = phi(pre) = leaky_relu(pre, s)^2        out = post W_proj^T
    dW_proj = dout^T post      dpre = (dout W_proj) * phi'(pre),  phi'(z) = 2z (z > 0), 2 s^2 z (z <= 0)
    dW_fc = dpre^T x           dx = dpre W_fc

The two kernels are one tiled matmul C = A B^T with fp32 accumulation and an epilogue: forward stores pre and
post = phi(pre) (phi from the rounded pre, as PyTorch computes it from the stored pre); backward multiplies the
tile by phi'(pre) before the single rounding. The remaining products are cuBLAS matmuls. slope 0 is relu^2.
Same function as pgolf.model.mlp.MLP (tests/test_kernels.py checks values and gradients under Triton's CPU
interpreter; benchmarks/gpu.py on the GPU). #1855's kernel is Hopper-specific (TMA descriptors, persistent
tiles); this one is plain Triton and runs on any GPU Triton supports, at untuned tile sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tiles: (M, N, K, warps, stages) on CUDA; smaller ones under the CPU interpreter, where tests use small shapes.
CUDA_TILES = (128, 128, 64, 8, 3)
INTERPRETER_TILES = (32, 32, 16, 1, 1)


@triton.jit
def _matmul_leaky_relu2_kernel(a_ptr, b_ptr, c_ptr, aux_ptr, M, N, K,
                               stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                               SLOPE: tl.constexpr, FORWARD: tl.constexpr, IEEE: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = A B^T (A: M x K, B: N x K). FORWARD: C = pre, aux <- phi(pre). Else aux holds pre: C = (A B^T) phi'(pre)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + offs_n[:, None] * stride_bn + k[None, :] * stride_bk,
                    mask=(offs_n[:, None] < N) & (k[None, :] < K), other=0.0)
        if IEEE:  # fp32 inputs: full fp32 products (no TF32), as torch's fp32 matmul by default
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_offs = offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    out_ty = c_ptr.dtype.element_ty
    if FORWARD:
        pre = acc.to(out_ty)
        tl.store(c_ptr + c_offs, pre, mask=mask)
        z = pre.to(tl.float32)
        act = tl.where(z > 0, z, SLOPE * z)
        tl.store(aux_ptr + c_offs, (act * act).to(out_ty), mask=mask)
    else:
        z = tl.load(aux_ptr + c_offs, mask=mask, other=0.0).to(tl.float32)
        dphi = tl.where(z > 0, 2.0 * z, (2.0 * SLOPE * SLOPE) * z)
        tl.store(c_ptr + c_offs, (acc * dphi).to(out_ty), mask=mask)


def _launch(a: Tensor, b: Tensor, slope: float, aux: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Forward (aux None): (pre, post) of a b^T. Backward: ((a b^T) * phi'(aux), aux) with aux = pre."""
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    forward = aux is None
    if forward:
        aux = torch.empty((M, N), device=a.device, dtype=a.dtype)
    bm, bn, bk, warps, stages = CUDA_TILES if a.is_cuda else INTERPRETER_TILES
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _matmul_leaky_relu2_kernel[grid](a, b, c, aux, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                                     c.stride(0), c.stride(1), SLOPE=float(slope), FORWARD=forward,
                                     IEEE=a.dtype == torch.float32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                     num_warps=warps, num_stages=stages)
    return c, aux


@torch.library.custom_op("pgolf::leaky_relu2_mlp", mutates_args=())
def _mlp_forward(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(out, pre, post) for x (M, d), w_fc (hidden, d), w_proj (d, hidden), all of one dtype."""
    pre, post = _launch(x, w_fc, slope)
    return post @ w_proj.T, pre, post


@_mlp_forward.register_fake
def _(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float):
    hidden = x.new_empty((x.shape[0], w_fc.shape[0]))
    return x.new_empty((x.shape[0], w_proj.shape[0])), hidden, torch.empty_like(hidden)


@torch.library.custom_op("pgolf::leaky_relu2_mlp_backward", mutates_args=())
def _mlp_backward(dout: Tensor, x: Tensor, w_fc: Tensor, w_proj: Tensor, pre: Tensor, post: Tensor,
                  slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dW_fc, dW_proj)."""
    dpre, _ = _launch(dout, w_proj.T, slope, aux=pre)  # (dout W_proj) * phi'(pre): B = W_proj^T as (hidden, d)
    return dpre @ w_fc, dpre.T @ x, dout.T @ post


@_mlp_backward.register_fake
def _(dout, x, w_fc, w_proj, pre, post, slope):
    return torch.empty_like(x), torch.empty_like(w_fc), torch.empty_like(w_proj)


def _setup_context(ctx, inputs, output) -> None:
    x, w_fc, w_proj, slope = inputs
    _, pre, post = output
    ctx.save_for_backward(x, w_fc, w_proj, pre, post)
    ctx.slope = slope


def _backward(ctx, dout: Tensor, _dpre, _dpost):
    x, w_fc, w_proj, pre, post = ctx.saved_tensors
    dx, dw_fc, dw_proj = _mlp_backward(dout.contiguous(), x, w_fc, w_proj, pre, post, ctx.slope)
    return dx, dw_fc, dw_proj, None


_mlp_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_mlp(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> Tensor:
    """leaky_relu(x W_fc^T, slope)^2 W_proj^T in the compute dtype (autocast's, else x's); x (..., d)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    flat = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    out, _, _ = _mlp_forward(flat, w_fc.to(dtype), w_proj.to(dtype), float(slope))
    return out.view(*x.shape[:-1], w_proj.shape[0])
