"""Muon and its published variants in one optimizer.

Per matrix W with (averaged) gradient G:
  momentum   sum: B <- mu B + G,          U = G + mu B            (baseline; Nesterov)
             ema: B <- mu B + (1-mu) G,   U = (1-mu) G + mu B     (#206)
  MuonEq-R   U_r <- U_r / max(|U_r|, 1e-7) for every row r        (#1217..#1536; #103 calls it NorMuon)
  NS         O = NewtonSchulz_k(U): X <- a X + (b A + c A^2) X, A = X X^T, on X = U/|U|_F
  NorMuon    v_r <- b2 v_r + (1-b2) mean_j O_rj^2; O <- O / (sqrt(v) + 1e-10), rescaled to |O|_F before  (#206)
  update     W <- W (1 - lr wd);  W <- W - lr sqrt(max(1, rows/cols)) O

Why not torch.optim.Muon: it implements only the ema momentum with one fixed (a, b, c) tuple and runs
Newton-Schulz in the gradient's dtype; the baseline's sum momentum under a momentum warm-up, bf16
Newton-Schulz, per-iteration Polar Express coefficients, row normalisation, NorMuon's second moment and the
sharded distributed step are all outside what it computes.

Distributed: matrix i is orthogonalised by rank i mod world; every rank writes its updates into a flat
buffer (zeros elsewhere) and one all-reduce(SUM) shares them, so every rank applies identical updates —
the same numbers as the single-process optimizer given the same averaged gradients.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

QUINTIC = ((3.4445, -4.7750, 2.0315),)
# Polar Express (PR #1344): one minimax tuple per iteration, iterations 1..5.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_COEFFICIENTS = {"quintic": QUINTIC, "polar_express": POLAR_EXPRESS}
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on CUDA (as the records run it), fp32 on CPUs, whose bf16 matmuls are ~20x slower."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def newton_schulz(update: Tensor, steps: int, coeffs: tuple[tuple[float, float, float], ...] = QUINTIC,
                  dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7) -> Tensor:
    """Approximate orthogonal polar factor of a 2-D matrix. Per-iteration tuples past the list's end
    are not repeated: a 5-tuple schedule (Polar Express) runs at most 5 iterations, as the reference does."""
    x = update.to(dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    n_iter = steps if len(coeffs) == 1 else min(steps, len(coeffs))
    for i in range(n_iter):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if transposed else x


def row_normalize(update: Tensor) -> Tensor:
    """MuonEq-R: U_r / max(|U_r|_2, 1e-7), the norm taken in fp32."""
    norms = update.float().norm(dim=-1, keepdim=True).clamp_min(1e-7)
    return (update.float() / norms).to(update.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 momentum_style: str = "sum", ns_steps: int = 5, ns_coeffs: str = "quintic",
                 ns_dtype: str = "auto", row_normalize: bool = False, normuon_beta2: float = 0.0,
                 weight_decay: float = 0.0):
        if momentum_style not in ("sum", "ema"):
            raise ValueError(f"momentum_style must be 'sum' or 'ema', got {momentum_style!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, momentum_style=momentum_style,
                        ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype, row_normalize=row_normalize,
                        normuon_beta2=normuon_beta2, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    def _update(self, p: Tensor, group: dict) -> Tensor:
        """The orthogonalised, scaled update of one matrix (before lr)."""
        g = p.grad
        state = self.state[p]
        mu = group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        if group["momentum_style"] == "sum":
            buf.mul_(mu).add_(g)
            u = g.add(buf, alpha=mu) if group["nesterov"] else buf
        else:
            buf.mul_(mu).add_(g, alpha=1 - mu)
            u = g.mul(1 - mu).add_(buf, alpha=mu) if group["nesterov"] else buf
        dtype = ns_dtype(group["ns_dtype"], g.device)
        if group["row_normalize"]:
            u = row_normalize(u.to(dtype))
        o = newton_schulz(u, group["ns_steps"], NS_COEFFICIENTS[group["ns_coeffs"]], dtype)
        beta2 = group["normuon_beta2"]
        if beta2 > 0:
            o = o.float()
            if "row_second_moment" not in state:
                state["row_second_moment"] = torch.zeros(o.size(0), 1, device=o.device, dtype=torch.float32)
            v = state["row_second_moment"]
            v.mul_(beta2).add_(o.square().mean(dim=1, keepdim=True), alpha=1 - beta2)
            norm_before = o.norm()
            o = o / (v.sqrt() + 1e-10)
            o = o * (norm_before / o.norm().clamp_min(1e-12))
        return o * math.sqrt(max(1.0, p.size(0) / p.size(1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            device = params[0].device
            # gloo has no bf16 all-reduce; updates are bf16-exact either way
            buf_dtype = torch.bfloat16 if device.type == "cuda" and ns_dtype(group["ns_dtype"], device) == torch.bfloat16 else torch.float32
            flat = torch.zeros(sum(p.numel() for p in params), device=device, dtype=buf_dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank:
                    flat[offset : offset + p.numel()] = self._update(p, group).reshape(-1).to(buf_dtype)
                offset += p.numel()
            if world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            lr, wd = group["lr"], group["weight_decay"]
            for p in params:
                update = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
                offset += p.numel()
        return loss
