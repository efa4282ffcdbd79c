"""Soft-capped cross-entropy from hidden states through liger-kernel's fused linear cross-entropy (Triton).

    loss = mean_i [ LSE_v(s_iv) - s_i,t_i ],  s = c * tanh(h W^T / c)      (c = 0: no cap)
    dL/dz = (softmax(s) - onehot(t)) / N * (1 - tanh^2(z / c))

liger computes exactly this function (its `softcap` is c * tanh(z / c) on the logits before the log-sum-exp,
its 'mean' divides by the number of targets, and pgolf never uses its ignore_index -100), chunk by chunk with the
gradients in the forward pass, as pgolf.model.loss.softcapped_cross_entropy does in PyTorch. The logits and
dL/dz are in h's dtype (bf16 under autocast), the weight gradient accumulates in fp32 (accum_dtype).
Cost to know: liger reads the number of targets with a host sync once per call.

The call is wrapped in a custom op (liger's own autograd Function would break a fullgraph compile on that
host read); the op returns the loss and both gradients, and its backward scales them by the incoming gradient.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from liger_kernel.ops.fused_linear_cross_entropy import fused_linear_cross_entropy_forward
from torch import Tensor


@torch.library.custom_op("pgolf::liger_softcapped_ce", mutates_args=())
def _loss_and_grads(h: Tensor, weight: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss, dL/dh, dL/dW). With h in a lower precision than W, the matmuls run in h's dtype (autocast)."""
    mixed = h.dtype != weight.dtype
    with torch.autocast(h.device.type, dtype=h.dtype) if mixed else nullcontext():
        loss, _, _, _, grad_h, grad_w, _ = fused_linear_cross_entropy_forward(
            _input=h, weight=weight, target=targets, softcap=cap if cap > 0 else None, reduction="mean",
            accum_dtype=torch.float32, compute_gradients=True, weight_requires_grad=True)
    return loss.float(), grad_h.to(h.dtype), grad_w.to(weight.dtype)


@_loss_and_grads.register_fake
def _(h: Tensor, weight: Tensor, targets: Tensor, cap: float):
    return h.new_empty((), dtype=torch.float32), torch.empty_like(h), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    _, grad_h, grad_w = output
    ctx.save_for_backward(grad_h, grad_w)


def _backward(ctx, grad_loss: Tensor, _gh, _gw):
    grad_h, grad_w = ctx.saved_tensors
    return (grad_h * grad_loss).to(grad_h.dtype), (grad_w * grad_loss).to(grad_w.dtype), None, None


_loss_and_grads.register_autograd(_backward, setup_context=_setup_context)


def softcapped_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, cap: float) -> Tensor:
    """Mean CE of cap * tanh((h W^T) / cap) against `targets`; h (N, d), weight (V, d), targets (N,).

    h is cast to the compute dtype (autocast's, else its own) before the op, so the matmuls run in that dtype
    whatever the dtype of the final norm's output (CUDA autocast keeps rms_norm in fp32).
    """
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    loss, _, _ = _loss_and_grads(h.to(dtype).contiguous(), weight, targets.long().contiguous(), float(cap))
    return loss
