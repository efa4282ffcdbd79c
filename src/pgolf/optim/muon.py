"""Muon and its published variants in one optimizer (TECHNIQUES.md §7.2-§7.6).

Per matrix W (rows x cols) with its averaged gradient G, in this order:
  momentum   sum: B <- mu B + G,          U = G + mu B                 (baseline; Nesterov)
             ema: B <- mu B + (1-mu) G,   U = (1-mu) G + mu B          (#206)
  MuonEq-R   U_r <- U_r / max(|U_r|_2, 1e-7) for every row r            (`muon_row_normalize`)
  NS         X = U / ((1+s)|U|_F + 1e-7);  k times: A = X X^T, X <- a X + (b A + c A^2) X  ->  O
             (s = `muon_ns_safety`, 0 as in every record, for the quintic and Polar Express alike)
  NorMuon    v_r <- b2 v_r + (1-b2) mean_j O_rj^2;  O <- O / (sqrt(v) + 1e-10), rescaled to |O|_F  (`muon_normuon_beta2`)
  update     W <- W (1 - lr wd);   W <- W - lr sqrt(max(1, rows/cols)) O
             (`shape_scale`: "update" multiplies O, in its NS dtype, by the shape factor as the baseline's `g *= ...`
             does; "step" folds it into the fp32 step size, as the banked records' `alpha=-lr * scale` (#1573, #1536))

Two different techniques are published under the name "NorMuon" (TECHNIQUES.md §7.4); pgolf gives each its own
switch and never calls either of them plain "NorMuon":
  - `optim.muon_row_normalize` = MuonEq-R: each row of the momentum update divided by its L2 norm BEFORE
    Newton-Schulz. PR #103's code calls this "NorMuon"; PR #1217 -> #1536 call it MuonEq-R.
  - `optim.muon_normuon_beta2` = #206's NorMuon: a per-row second moment of the orthogonalised update AFTER
    Newton-Schulz (used with `muon_momentum_style = "ema"`, as #206 does).

With a constant mu the two momentum styles give the same O: the ema buffer is (1-mu) times the sum buffer, so
U_ema = (1-mu) U_sum, and NS (and MuonEq-R) are scale invariant. They differ only while mu changes (the warm-up).

Why not torch.optim.Muon (checked against torch 2.13's torch/optim/_muon.py): it computes one variant of this
file — ema momentum with Nesterov blend, 5 quintic steps always in bf16, decoupled WD, sqrt(max(1, A/B)) — and
nothing else. It has no sum momentum (the baseline's, which differs under the momentum warm-up), no fp32
Newton-Schulz (bf16 matmuls are ~20x slower on CPUs), one fixed (a, b, c) instead of per-iteration tuples
(Polar Express) with their safety factor, no hook for the row normalisation before NS or the second moment after
it, and no sharded distributed step (every rank would orthogonalise every matrix).

Distributed: matrix i of a group is orthogonalised by rank i mod world; every rank writes its updates into a
flat buffer (zeros elsewhere) and one all-reduce(SUM) shares them. x + 0 is exact, so every rank applies the
same updates as the single-process optimizer given the same averaged gradients. Momentum and NorMuon state of
matrix i live only on its owner rank (checkpoints are written per rank).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

Coefficients = tuple[tuple[float, float, float], ...]

QUINTIC: Coefficients = ((3.4445, -4.7750, 2.0315),)
# Polar Express (PR #1344, used from PR #1787): one minimax tuple per iteration, iterations 1..5.
POLAR_EXPRESS: Coefficients = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_COEFFICIENTS: dict[str, Coefficients] = {"quintic": QUINTIC, "polar_express": POLAR_EXPRESS}
# The safety factor s of the normalisation X = U / ((1 + s)|U|_F + eps). The Polar Express paper's reference code
# divides by (1 + 2e-2)|X|_F (a 2 % cushion against bf16 rounding pushing the top singular value past 1); the
# parameter-golf records that run these tuples (#1344, #1787, #1855) divide by |X|_F + 1e-7, as the quintic
# records do. So the default is 0 (records), and 0.02 is a switch (`optim.muon_ns_safety`).
PAPER_NS_SAFETY = 0.02
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on CUDA (as the records run it), fp32 on CPUs, whose bf16 matmuls are ~20x slower."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


SHAPE_SCALES = ("update", "step")  # where sqrt(max(1, rows/cols)) multiplies: the NS output, or the step size
NS_GROUPINGS = ("c_AA", "cA_A")  # c * (A @ A): #1536, #1573 (and Polar Express); (c * A) @ A: baseline, #103, #206, #595


def newton_schulz(update: Tensor, steps: int, coeffs: Coefficients = QUINTIC,
                  dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7, safety: float = 0.0,
                  grouping: str = "c_AA") -> Tensor:
    """Approximate orthogonal polar factor of a 2-D matrix: X <- a X + (b A + c A^2) X with A = X X^T.

    X starts at U / ((1 + safety) |U|_F + eps), so every singular value is <= 1. A one-tuple schedule (quintic)
    repeats its tuple `steps` times; a per-iteration schedule (Polar Express) runs at most len(coeffs)
    iterations, as the reference does. The 5-step quintic maps singular values in [0.01, 1] (after the
    normalisation) into about [0.68, 1.13]; Polar Express maps [0.001, 1] into about [0.86, 1.14].
    `grouping` is where the rounding falls, nothing else: "c_AA" computes c * (A @ A) as #1536 and #1573 write it,
    "cA_A" (c * A) @ A as the baseline's `c * A @ A` (#103, #206, #595 copy it) evaluates; bit for bit that is
    what makes a bf16 step equal the challenge's own (benchmarks/lockstep_cpu.py)."""
    x = update.to(dtype)
    x = x / (x.norm() * (1.0 + safety) + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the wide orientation: the Gram matrix is min(rows, cols) square
        x = x.T
    n_iter = steps if len(coeffs) == 1 else min(steps, len(coeffs))
    for i in range(n_iter):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        gram = x @ x.T
        cubic = (c * gram) @ gram if grouping == "cA_A" else c * (gram @ gram)
        x = a * x + (b * gram + cubic) @ x
    return x.T if transposed else x


def shape_factor(p: Tensor) -> float:
    """sqrt(max(1, rows / cols)): the RMS-matching factor of a tall matrix's orthogonal update."""
    return math.sqrt(max(1.0, p.size(0) / p.size(1)))


def row_normalize(update: Tensor) -> Tensor:
    """MuonEq-R: U_r / max(|U_r|_2, 1e-7) for each row (output feature), the norm accumulated in fp32 and then
    rounded to the update's dtype before the division, as the records divide: #103 `X / X.norm(dim=1)` on its
    bf16 X (L141), #1536 `update / rn.to(update.dtype)` (L1262-1263). In bf16, dividing by the unrounded fp32
    norm gives other last bits and parts the two codes from step 4 (benchmarks/lockstep_seeds/pr103.py)."""
    norms = update.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(update.dtype)
    return update / norms


def normuon_normalize(update: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """#206's NorMuon, in place on `second_moment` (rows x 1, fp32, starts at 0, no bias correction):
    v_r <- b2 v_r + (1 - b2) mean_j O_rj^2;  O <- O / (sqrt(v) + 1e-10);  then O *= |O_before|_F / |O|_F."""
    o = update.float()
    # in #206's own arithmetic (its normuon_update): lerp, the reciprocal step size, |O|_F / (|O'|_F + 1e-10), so
    # that a bf16 step equals its step bit for bit (benchmarks/lockstep_seeds/pr206.py)
    norm_before = o.norm(dim=(-2, -1), keepdim=True)
    second_moment.lerp_((o * o).mean(dim=-1, keepdim=True), 1.0 - beta2)
    o = o * (1 / (second_moment.sqrt() + 1e-10))
    return o * (norm_before / (o.norm(dim=(-2, -1), keepdim=True) + 1e-10))


class Muon(torch.optim.Optimizer):
    """Muon with the switches of the published submissions (see the module docstring for the equations).

    `row_normalize` = MuonEq-R (#103's "NorMuon", #1536); `normuon_beta2 > 0` = #206's NorMuon.
    Each param group may carry its own switches; the schedule sets `lr` and `momentum` per step."""

    is_muon = True  # pgolf.optim.groups.uses_muon

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float, momentum: float = 0.95,
                 nesterov: bool = True, momentum_style: str = "sum", ns_steps: int = 5, ns_coeffs: str = "quintic",
                 ns_dtype: str = "auto", row_normalize: bool = False, normuon_beta2: float = 0.0,
                 weight_decay: float = 0.0, ns_safety: float = 0.0, ns_grouping: str = "c_AA",
                 shape_scale: str = "update"):
        # the choices as literals (NS_GROUPINGS, SHAPE_SCALES, NS_COEFFICIENTS, _DTYPES; tests/test_optim.py keeps
        # them equal): a train_gpt.py passes constants here, and literal checks of constants fold away
        if ns_grouping not in ("c_AA", "cA_A"):
            raise ValueError(f"ns_grouping must be one of {', '.join(NS_GROUPINGS)}, got {ns_grouping!r}")
        if shape_scale not in ("update", "step"):
            raise ValueError(f"shape_scale must be one of {', '.join(SHAPE_SCALES)}, got {shape_scale!r}")
        if momentum_style not in ("sum", "ema"):
            raise ValueError(f"momentum_style must be 'sum' or 'ema', got {momentum_style!r}")
        if ns_coeffs not in ("quintic", "polar_express"):
            raise ValueError(f"ns_coeffs must be one of {sorted(NS_COEFFICIENTS)}, got {ns_coeffs!r}")
        if ns_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"ns_dtype must be 'auto', 'bfloat16' or 'float32', got {ns_dtype!r}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        if not 0.0 <= normuon_beta2 < 1.0:
            raise ValueError(f"normuon_beta2 must be in [0, 1) (0 = off), got {normuon_beta2}")
        if not 0.0 <= ns_safety < 1.0:
            raise ValueError(f"ns_safety must be in [0, 1), got {ns_safety}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, momentum_style=momentum_style,
                        ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype, row_normalize=row_normalize,
                        normuon_beta2=normuon_beta2, weight_decay=weight_decay, ns_safety=ns_safety,
                        ns_grouping=ns_grouping, shape_scale=shape_scale)
        super().__init__(params, defaults)
        self._newton_schulz = newton_schulz
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    def compile_newton_schulz(self) -> None:
        """Run Newton–Schulz through torch.compile: on GPUs it fuses the scalings and adds between the matmuls
        (one graph per matrix shape). The trainer turns this on wherever it compiles the model."""
        self._newton_schulz = torch.compile(newton_schulz, dynamic=False)

    def _update(self, p: Tensor, group: dict) -> Tensor:
        """The orthogonalised update of one matrix (before lr), times the shape factor under shape_scale = "update";
        advances its state."""
        g = p.grad
        state = self.state[p]
        mu = group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        if group["momentum_style"] == "sum":
            buf.mul_(mu).add_(g)  # B <- mu B + G
            u = g.add(buf, alpha=mu) if group["nesterov"] else buf  # U = G + mu B
        else:
            buf.lerp_(g, 1 - mu)  # B <- mu B + (1 - mu) G, as #206's momentum.lerp_(grad, 1 - beta)
            u = g.lerp(buf, mu) if group["nesterov"] else buf  # U = (1 - mu) G + mu B, its grad.lerp_(momentum, beta)
        dtype = ns_dtype(group["ns_dtype"], g.device)
        if group["row_normalize"]:
            u = row_normalize(u.to(dtype))  # on the NS-dtype update, as #103 (bf16) and #1536 do
        o = self._newton_schulz(u, group["ns_steps"], NS_COEFFICIENTS[group["ns_coeffs"]], dtype,
                                safety=group["ns_safety"], grouping=group.get("ns_grouping", "c_AA"))
        beta2 = group["normuon_beta2"]
        if beta2 > 0:
            if "row_second_moment" not in state:
                state["row_second_moment"] = torch.zeros(o.size(0), 1, device=o.device, dtype=torch.float32)
            o = normuon_normalize(o, state["row_second_moment"], beta2)
        return o * shape_factor(p) if group.get("shape_scale", "update") == "update" else o

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
            # the baseline shares bf16 updates on GPUs; gloo has no bf16 all-reduce, and fp32 holds bf16 exactly
            bf16_ns = ns_dtype(group["ns_dtype"], device) == torch.bfloat16
            buf_dtype = torch.bfloat16 if device.type == "cuda" and bf16_ns else torch.float32
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
            in_step = group.get("shape_scale", "update") == "step"
            for p in params:
                update = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                if wd:
                    p.mul_(1 - lr * wd)  # decoupled WD with the scheduled lr
                p.add_(update, alpha=-lr * shape_factor(p) if in_step else -lr)
                offset += p.numel()
        return loss
