"""Fused soft-capped cross-entropy: the training loss straight from hidden states, in row chunks.

loss = mean_i CE(softmax(s_i), t_i) with s = c * tanh(h W^T / c). The plain path materialises the (N, V)
logits in fp32 and keeps them for backward; this one computes, chunk by chunk, the loss and its gradients
dL/dz = (softmax(s) - onehot(t)) / N * (1 - (s/c)^2), then grad_h = dL/dz W and grad_W = dL/dz^T h, so peak
memory holds one chunk of logits. The matmul runs in h's dtype (bf16 under autocast), the softcap, softmax
and sums in fp32. Same function as `F.cross_entropy(model.logits(h))`; tests check values and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ROWS = 8192


class _SoftcappedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, cap: float, chunk: int) -> Tensor:
        n = h.size(0)
        w = weight.to(h.dtype)
        grad_h = torch.empty_like(h, dtype=torch.float32)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, n, chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            z = (hc @ w.T).float()
            s = cap * torch.tanh(z / cap) if cap > 0 else z
            logp = torch.log_softmax(s, dim=-1)
            loss -= logp.gather(1, tc[:, None]).sum()
            dz = logp.exp_()
            dz[torch.arange(tc.numel(), device=dz.device), tc] -= 1.0
            dz /= n
            if cap > 0:
                dz *= 1.0 - (s / cap).square()
            grad_h[start : start + chunk] = dz @ w.float()
            grad_w += dz.T @ hc.float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return loss / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), None, None, None


def softcapped_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, cap: float, chunk: int = CHUNK_ROWS) -> Tensor:
    """Mean CE of cap * tanh((h W^T) / cap) against `targets`; h (N, d), weight (V, d), targets (N,)."""
    return _SoftcappedCrossEntropy.apply(h, weight, targets.long(), float(cap), int(chunk))
