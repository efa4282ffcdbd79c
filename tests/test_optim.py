"""Optimizers, schedules and weight averaging: properties of Muon and its variants, the wall-clock warmdown
under a simulated clock, EMA/SWA closed forms, the export rule, and optimizer/averager state across a resume."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import pgolf
from pgolf.training.checkpoint import load_checkpoint, save_checkpoint
from pgolf.config import ConfigError, ModelConfig, OptimConfig, TrainConfig
from pgolf.model.gpt import build_model
from pgolf.model.layers import tag
from pgolf.optim.averaging import WeightAverager
from pgolf.optim.groups import (build_optimizers, muon_momentum_at, set_lr_multiplier, set_muon_momentum,
                                set_muon_weight_decay_multiplier)
from pgolf.optim.muon import (PAPER_NS_SAFETY, POLAR_EXPRESS, QUINTIC, Muon, newton_schulz, normuon_normalize,
                              row_normalize)
from pgolf.optim.schedule import lr_multiplier, muon_wd_multiplier, training_fraction, warmdown_start_s


@pytest.fixture(autouse=True)
def _one_thread():
    """These matrices are tiny: one thread avoids OpenMP spinning on a shared CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _with_singular_values(rows: int, cols: int, sv: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """G = U diag(sv) V^T with random orthonormal U, V (float64)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(sv.double()) @ v.T, u, v


def _scalar_map(s: torch.Tensor, coeffs, steps: int) -> torch.Tensor:
    n = steps if len(coeffs) == 1 else min(steps, len(coeffs))
    for i in range(n):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        s = a * s + b * s**3 + c * s**5
    return s


# ----------------------------------------------------------------------------- Newton-Schulz

@pytest.mark.parametrize("shape", [(64, 64), (48, 96), (96, 48)])
def test_newton_schulz_acts_on_singular_values_only(shape):
    """NS(U diag(s) V^T) = U diag(p(s / ((1+safety)|s|))) V^T: the recurrence is an odd polynomial of the singular
    values (the singular vectors are kept), for both coefficient sets, tall matrices included."""
    k = min(shape)
    sv = torch.linspace(0.05, 1.0, k)
    g, u, v = _with_singular_values(*shape, sv)
    for coeffs, safety in ((QUINTIC, 0.0), (POLAR_EXPRESS, 0.0), (POLAR_EXPRESS, PAPER_NS_SAFETY)):
        o = newton_schulz(g, 5, coeffs, torch.float64, eps=0.0, safety=safety)
        expected = _scalar_map(sv.double() / (sv.double().norm() * (1 + safety)), coeffs, 5)
        torch.testing.assert_close(o, u @ torch.diag(expected) @ v.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_newton_schulz_grouping_rounds_as_each_record_writes_it(shape):
    """bf16: "cA_A" is the baseline's `B = b * A + c * A @ A; X = a * X + B @ X` bit for bit, "c_AA" #1536's
    `c * (A @ A)`; the two differ in bf16 only by rounding (float64: the same polynomial)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(3))

    def record(x: torch.Tensor, scale_first: bool) -> torch.Tensor:
        a, b, c = QUINTIC[0]
        x = x.bfloat16()
        x = x / (x.norm() + 1e-7)
        t = x.size(0) > x.size(1)
        x = x.T if t else x
        for _ in range(5):
            A = x @ x.T
            B = b * A + c * A @ A if scale_first else b * A + c * (A @ A)
            x = a * x + B @ x
        return x.T if t else x

    base = newton_schulz(g, 5, QUINTIC, torch.bfloat16, grouping="cA_A")
    late = newton_schulz(g, 5, QUINTIC, torch.bfloat16, grouping="c_AA")
    assert torch.equal(base, record(g, True)) and torch.equal(late, record(g, False))
    assert not torch.equal(base, late)
    exact = [newton_schulz(g.double(), 5, QUINTIC, torch.float64, grouping=k) for k in ("cA_A", "c_AA")]
    torch.testing.assert_close(exact[0], exact[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("recipe, grouping", [("baseline", "cA_A"), ("pr103", "cA_A"), ("pr206", "cA_A"),
                                              ("pr595", "cA_A"), ("pr1573", "c_AA"), ("pr1536", "c_AA")])
def test_recipes_group_newton_schulz_as_their_code(recipe, grouping):
    assert pgolf.load_recipe(recipe).optim.muon_ns_grouping == grouping


@pytest.mark.parametrize("shape", [(96, 32), (32, 96)])
def test_muon_shape_scale_places_the_factor_as_each_record_does(shape):
    """bf16 NS: shape_scale = "step" is the banked records' `p.add_(O.to(p.dtype), alpha=-lr * scale)` (#1573, #1536)
    bit for bit, "update" the baseline's `g *= scale` on the bf16 O, then p - lr g; the two differ by bf16 rounding
    only, and only where scale != 1 (tall matrices)."""
    gen = torch.Generator().manual_seed(5)
    w0, grad = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    lr, mu, wd = 0.05, 0.9, 0.1
    out = {}
    for placement in ("step", "update"):
        w = nn.Parameter(w0.clone())
        w.grad = grad.clone()
        Muon([w], lr=lr, momentum=mu, ns_dtype="bfloat16", weight_decay=wd, shape_scale=placement).step()
        out[placement] = w.detach()
    o = newton_schulz(grad + mu * grad, 5, QUINTIC, torch.bfloat16, grouping="c_AA")  # Nesterov: U = G + mu B, B = G
    scale = max(1, shape[0] / shape[1]) ** 0.5
    assert torch.equal(out["step"], (w0 * (1 - lr * wd)).add_(o.float(), alpha=-lr * scale))
    assert torch.equal(out["update"], (w0 * (1 - lr * wd)).add_((o * scale).float(), alpha=-lr))
    assert torch.equal(out["step"], out["update"]) == (scale == 1)
    torch.testing.assert_close(out["step"], out["update"], rtol=0, atol=lr * scale * 2 ** -7)
    with pytest.raises(ValueError, match="shape_scale"):
        Muon([nn.Parameter(w0.clone())], lr=lr, shape_scale="rows")


@pytest.mark.parametrize("recipe, placement", [("baseline", "update"), ("pr103", "update"), ("pr206", "update"),
                                               ("pr595", "update"), ("pr1573", "step"), ("pr1536", "step")])
def test_recipes_place_the_muon_shape_factor_as_their_code(recipe, placement):
    assert pgolf.load_recipe(recipe).optim.muon_shape_scale == placement


def _band(coeffs, safety, dtype, shape=(64, 128), seed=0) -> tuple[float, float]:
    k = min(shape)
    # well-conditioned: singular values spread over [0.1, 1] x 7 (any scale: NS normalises first)
    sv = 7.0 * torch.linspace(0.1, 1.0, k)[torch.randperm(k, generator=torch.Generator().manual_seed(seed))]
    g, _, _ = _with_singular_values(*shape, sv, seed)
    o = newton_schulz(g.float(), 5, coeffs, dtype, safety=safety)
    s = torch.linalg.svdvals(o.double())
    return s.min().item(), s.max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quintic_band_after_five_steps(dtype):
    """Keller Jordan's quintic does not converge to 1: it maps singular values into about [0.68, 1.13]."""
    lo, hi = _band(QUINTIC, 0.0, dtype)
    slack = 0.01 if dtype == torch.float32 else 0.03
    assert 0.68 - slack <= lo and hi <= 1.135 + slack, (lo, hi)
    assert lo < 0.75 and hi > 1.05  # the band is really that wide, not trivially satisfied


@pytest.mark.parametrize("safety", [0.0, PAPER_NS_SAFETY])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_band_is_tighter_and_close_to_one(dtype, safety):
    """Polar Express's per-iteration tuples land every singular value within about 15% of 1 after 5 steps,
    where the quintic leaves 32% below; extra steps are not iterated (5 tuples, 5 iterations). Without the
    paper's cushion (as the records run it) as with it."""
    lo, hi = _band(POLAR_EXPRESS, safety, dtype)
    q_lo, _ = _band(QUINTIC, 0.0, dtype)
    slack = 0.0 if dtype == torch.float32 else 0.03
    assert 0.85 - slack <= lo and hi <= 1.145 + slack, (lo, hi)
    assert lo > q_lo + 0.1
    g = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(newton_schulz(g, 9, POLAR_EXPRESS, torch.float32), newton_schulz(g, 5, POLAR_EXPRESS, torch.float32))


# ----------------------------------------------------------------------------- Muon variants

def _matrices(shapes=((32, 32), (64, 32), (32, 96), (48, 48), (16, 40)), seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=gen) * 0.1) for s in shapes]


def _grads(params, step: int, seed: int = 100) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + step)
    # rows of very different scale, so row normalisation and the per-row second moment matter
    return [torch.randn(*p.shape, generator=gen) * torch.logspace(-2, 1, p.size(0)).unsqueeze(1) for p in params]


def _run_muon(params, steps: int, **kwargs) -> list[torch.Tensor]:
    opt = Muon(params, lr=0.05, **kwargs)
    for s in range(steps):
        for p, g in zip(params, _grads(params, s)):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def test_row_normalize_gives_unit_rows_and_is_muoneq_r_before_ns():
    g = _grads(_matrices(), 0)[1]
    rows = row_normalize(g).norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert torch.equal(row_normalize(torch.zeros(3, 4)), torch.zeros(3, 4))  # floor 1e-7, no NaN
    # first step, sum momentum: U = (1 + mu) G, so MuonEq-R on G = plain Muon on row-normalised G (NS is scale invariant)
    a, b = _matrices(), _matrices()
    opt_a = Muon(a, lr=0.05, row_normalize=True, ns_dtype="float32")
    opt_b = Muon(b, lr=0.05, ns_dtype="float32")
    for pa, pb, grad in zip(a, b, _grads(a, 0)):
        pa.grad, pb.grad = grad.clone(), row_normalize(grad)
    opt_a.step(), opt_b.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_row_normalize_in_bf16_divides_by_the_norm_rounded_to_bf16():
    """#103 (X / X.norm(dim=1) on bf16 X) and #1536 (update / rn.to(bf16)) divide by the bf16-rounded row norm;
    dividing by the fp32 norm gives other last bits (it parted pgolf from #103's own step at step 4)."""
    u = (torch.randn(64, 48, generator=torch.Generator().manual_seed(3)) * 0.01).bfloat16()
    norm = u.float().norm(dim=-1, keepdim=True)
    expected = (u.float() / norm.bfloat16().float()).bfloat16()
    unrounded = (u.float() / norm).bfloat16()
    assert not torch.equal(expected, unrounded)  # the data tells the two divisions apart
    out = row_normalize(u)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_ema_normuon_bf16_step_is_bit_equal_to_206s_arithmetic():
    """#206's normuon_update, written as it is (lerp momentum, grad.lerp_ Nesterov, bf16 NS, lerp second moment,
    reciprocal step size, |O|_F / (|O'|_F + 1e-10), WD then update): pgolf's ema + NorMuon step gives the same bits.
    mul/add in place of the lerps rounds differently and parted pgolf from #206's own step (lockstep_seeds/pr206.py)."""
    gen = torch.Generator().manual_seed(11)
    w0 = torch.randn(48, 32, generator=gen) * 0.1
    grads = [torch.randn(48, 32, generator=gen) * 0.01 for _ in range(4)]
    moms = [0.92, 0.93, 0.94, 0.95]
    ours = nn.Parameter(w0.clone())
    opt = Muon([ours], lr=0.02, momentum_style="ema", normuon_beta2=0.95, weight_decay=0.02, ns_dtype="bfloat16",
               ns_grouping="cA_A")
    ref, buf, v = w0.clone(), torch.zeros_like(w0), torch.zeros(48, 1)
    for g, mu in zip(grads, moms):
        ours.grad = g.clone()
        opt.param_groups[0]["momentum"] = mu
        opt.step()
        grad = g.clone()
        buf.lerp_(grad, 1 - mu)
        update = newton_schulz(grad.lerp_(buf, mu), 5, QUINTIC, torch.bfloat16, grouping="cA_A").to(torch.float32)
        vnorm = update.norm(dim=(-2, -1), keepdim=True)
        v.lerp_(torch.mean(update * update, dim=-1, keepdim=True), 1 - 0.95)
        update.mul_(1 / v.sqrt().add_(1e-10))
        update.mul_(vnorm / (update.norm(dim=(-2, -1), keepdim=True).add_(1e-10)))
        update *= max(1, 48 / 32) ** 0.5
        ref.mul_(1.0 - 0.02 * 0.02)
        ref.add_(update, alpha=-0.02)
    assert torch.equal(ours.detach(), ref)


def test_normuon_second_moment_equals_closed_form_and_keeps_frobenius_norm():
    """#206: v_T = sum_t (1 - b2) b2^(T-1-t) mean_j O_t^2 (from 0, no bias correction); the update keeps |O|_F."""
    beta2, mu, lr, steps = 0.95, 0.9, 0.05, 4
    params = _matrices()
    opt = Muon(params, lr=lr, momentum=mu, momentum_style="ema", normuon_beta2=beta2, ns_dtype="float32")
    bufs = [torch.zeros_like(p) for p in params]
    expected_v = [torch.zeros(p.size(0), 1) for p in params]
    for s in range(steps):
        before = [p.detach().clone() for p in params]
        grads = _grads(params, s)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            bufs[i] = mu * bufs[i] + (1 - mu) * g
            o = newton_schulz((1 - mu) * g + mu * bufs[i], 5, QUINTIC, torch.float32)
            expected_v[i] = beta2 * expected_v[i] + (1 - beta2) * o.square().mean(dim=1, keepdim=True)
            torch.testing.assert_close(opt.state[p]["row_second_moment"], expected_v[i], rtol=1e-4, atol=1e-9)
            step_norm = (before[i] - p.detach()).norm() / (lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
            torch.testing.assert_close(step_norm, o.norm(), rtol=1e-4, atol=0)
    # the normalisation itself: rows equalised by sqrt(v), Frobenius norm unchanged
    o = torch.randn(8, 16) * torch.logspace(-1, 1, 8).unsqueeze(1)
    out = normuon_normalize(o, torch.zeros(8, 1), 0.0)  # b2 = 0: v = mean_j O^2 -> rows of equal RMS
    torch.testing.assert_close(out.norm(), o.norm())
    rms = out.square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, rms.mean().expand(8))


def test_sum_and_ema_momentum_agree_for_constant_momentum():
    """B_ema = (1 - mu) B_sum, U_ema = (1 - mu) U_sum, and NS is scale invariant: same updates (not under warm-up)."""
    a = _run_muon(_matrices(), 3, momentum=0.9, momentum_style="sum", ns_dtype="float32")
    b = _run_muon(_matrices(), 3, momentum=0.9, momentum_style="ema", ns_dtype="float32")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_weight_decay_is_decoupled_with_the_scheduled_lr():
    p = nn.Parameter(torch.ones(4, 4))
    opt = Muon([p], lr=0.1, weight_decay=0.5, ns_dtype="float32")
    opt.param_groups[0]["base_lr"] = 0.1
    set_lr_multiplier({"matrix": opt}, 0.5)  # the schedule's lr, 0.05, is the one WD uses
    p.grad = torch.zeros(4, 4)  # zero update: only the decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4, 4), 1 - 0.05 * 0.5))


def test_polar_express_divides_by_the_frobenius_norm_plus_eps_as_the_records():
    """#1344/#1787/#1855: X = G / (|G|_F + 1e-7), then the 5 tuples; pgolf's default (optim.muon_ns_safety = 0)
    is that, and the paper's 1.02 cushion is a switch. One Muon step written out by hand, in float64."""
    g = torch.randn(16, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = g / (g.norm() + 1e-7)
    for a, b, c in POLAR_EXPRESS:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    cfg = OptimConfig(muon_ns_coeffs="polar_express", muon_momentum=0.0, muon_nesterov=False, muon_ns_dtype="float32",
                      matrix_lr=0.1)
    for safety, should_match in ((cfg.muon_ns_safety, True), (PAPER_NS_SAFETY, False)):
        cfg.muon_ns_safety = safety
        model = nn.Linear(40, 16, bias=False).double()
        model.weight.data.zero_()
        tag(model.weight, "matrix", "other")
        opt = build_optimizers(model, cfg)["matrix"]
        assert opt.param_groups[0]["ns_safety"] == safety
        opt._newton_schulz = lambda u, steps, coeffs, dtype, safety, grouping: newton_schulz(  # float64: exact check
            u, steps, coeffs, torch.float64, safety=safety, grouping=grouping)
        model.weight.grad = g.clone()
        opt.step()
        matches = torch.allclose(model.weight.detach(), -0.1 * x, rtol=0, atol=1e-7)  # fp32 update buffer
        assert matches == should_match, safety


def test_wd_taper_multiplier_is_1729s_rule():
    """wd_mul(f) = 1 for f <= 0.7, then linear to 0.5 at f = 1 (#1729's WD_TAPER_START_FRAC / _FINAL_MULT)."""
    on = OptimConfig(muon_weight_decay=0.095, muon_wd_taper_start=0.70, muon_wd_taper_final=0.50)
    got = [muon_wd_multiplier(f, on) for f in (0.0, 0.5, 0.70, 0.85, 1.0, 1.2)]
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.5], abs=1e-12)
    assert {muon_wd_multiplier(f, OptimConfig()) for f in (0.0, 0.9, 1.0)} == {1.0}  # default: off


def test_tapered_wd_shrinks_a_matrix_with_zero_update_by_exactly_its_share():
    """One Muon step at training fraction 0.85 with a zero update: W <- W (1 - lr wd 0.75)."""
    cfg = OptimConfig(muon_weight_decay=0.2, muon_wd_taper_start=0.70, muon_wd_taper_final=0.50, matrix_lr=0.1,
                      muon_ns_dtype="float32")
    model = nn.Linear(4, 4, bias=False)
    model.weight.data.fill_(1.0)
    tag(model.weight, "matrix", "other")
    optimizers = build_optimizers(model, cfg)
    set_muon_weight_decay_multiplier(optimizers, muon_wd_multiplier(0.85, cfg))
    model.weight.grad = torch.zeros(4, 4)
    optimizers["matrix"].step()
    torch.testing.assert_close(model.weight.detach(), torch.full((4, 4), 1 - 0.1 * 0.2 * 0.75))


def test_training_applies_the_wd_taper_each_step(micro, tmp_path):
    """The loop sets Muon's weight decay from the training fraction s / S each step (no cap: f = s / 6 before step
    s + 1): start 0.25, final 0.5 -> steps 1, 2 at 0.1; step 4 (f = 1/2) 0.1 * 5/6; step 6 (f = 5/6) 0.1 * 11/18."""
    cfg = micro(optim__muon_weight_decay=0.1, optim__muon_wd_taper_start=0.25, optim__muon_wd_taper_final=0.5)
    pgolf.train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = {x["step"]: x["muon_weight_decay"] for x in lines if "train_loss" in x}
    assert logged == pytest.approx({1: 0.1, 2: 0.1, 4: 0.1 * 5 / 6, 6: 0.1 * 11 / 18}, abs=1e-12)


def test_taper_and_safety_are_muon_switches():
    with pytest.raises(ConfigError, match="muon_wd_taper_start"):
        pgolf.load_recipe("baseline", overrides={"optim.muon_wd_taper_start": 0.7})  # baseline: no weight decay
    with pytest.raises(ConfigError, match="muon_ns_safety"):
        pgolf.load_recipe("baseline", overrides={"optim.matrix_optimizer": "adam", "optim.muon_ns_safety": 0.02})


def test_matches_torch_optim_muon_where_torch_computes_the_same_variant():
    """torch.optim.Muon = ema momentum + Nesterov + bf16 quintic + decoupled WD: it lands within bf16 noise of
    pgolf's ema variant computed in fp32 (as close as pgolf's own bf16 run), which is the one variant the module
    docstring says torch could compute; MuonEq-R, a different variant, is far outside that noise."""
    def run(make, steps=3):
        params = _matrices()
        init = [p.detach().clone() for p in params]
        opt = make(params)
        for s in range(steps):
            for p, g in zip(params, _grads(params, s)):
                p.grad = g.clone()
            opt.step()
        return [p.detach() - p0 for p, p0 in zip(params, init)]

    kw = dict(lr=0.02, momentum=0.95, weight_decay=0.1)
    exact = run(lambda ps: Muon(ps, momentum_style="ema", ns_dtype="float32", **kw))
    torch_muon = run(lambda ps: torch.optim.Muon(ps, **kw))
    ours_bf16 = run(lambda ps: Muon(ps, momentum_style="ema", ns_dtype="bfloat16", **kw))
    other = run(lambda ps: Muon(ps, momentum_style="ema", ns_dtype="float32", row_normalize=True, **kw))
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    for e, t, o, x in zip(exact, torch_muon, ours_bf16, other):
        assert rel(t, e) < 0.03 and rel(o, e) < 0.03, (rel(t, e), rel(o, e))
        assert rel(x, e) > 0.1


# ----------------------------------------------------------------------------- distributed Muon

VARIANT = dict(momentum=0.9, row_normalize=True, normuon_beta2=0.95, momentum_style="ema", weight_decay=0.1,
               ns_dtype="float32", shape_scale="step")  # the step-size placement: ranks share unscaled updates


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params = _run_muon(_matrices(), 3, **VARIANT)
        torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_muon_equals_single_process_exactly(tmp_path):
    """Round-robin ownership + one all-reduce(SUM) of a zero-filled buffer: bit-identical to one process."""
    single = _run_muon(_matrices(), 3, **VARIANT)
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for a, b in zip(single, got):
            assert torch.equal(a, b), f"rank {rank} differs by {(a - b).abs().max()}"


# ----------------------------------------------------------------------------- optimizer groups

def _micro_model_config(**kw) -> ModelConfig:
    return replace(ModelConfig(), vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, **kw)


def test_adam_only_baseline_trains_matrices_with_adam_at_matrix_lr():
    torch.manual_seed(0)
    model = build_model(_micro_model_config())
    cfg = replace(OptimConfig(), matrix_optimizer="adam", matrix_lr=0.003)
    opts = build_optimizers(model, cfg)
    assert type(opts["matrix"]) is torch.optim.Adam and opts["matrix"].param_groups[0]["lr"] == 0.003
    assert not any(isinstance(o, Muon) for o in opts.values())
    set_muon_momentum(opts, 0.5)  # a no-op without Muon
    opts = build_optimizers(model, replace(cfg, muon_weight_decay=0.1))
    assert type(opts["matrix"]) is torch.optim.AdamW and opts["matrix"].param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match="muon_row_normalize"):
        pgolf.load_recipe("pr1536", scale="tiny", overrides={"optim.matrix_optimizer": "adam"})
    pgolf.load_recipe("pr1536", scale="tiny", overrides={"optim.matrix_optimizer": "adam",
                                                          "optim.muon_row_normalize": False})


def test_momentum_warmup_is_linear_then_flat():
    cfg = replace(OptimConfig(), muon_momentum=0.99, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500)
    assert muon_momentum_at(0, cfg) == 0.92 and muon_momentum_at(1500, cfg) == pytest.approx(0.99)
    assert muon_momentum_at(750, cfg) == pytest.approx(0.955) and muon_momentum_at(9000, cfg) == pytest.approx(0.99)


# ----------------------------------------------------------------------------- schedules under a simulated clock

def _simulate(cfg: TrainConfig, step_time, reserve: float = 0.0) -> list[tuple[int, float, float]]:
    """The trainer's loop with a fake clock: [(step, elapsed at its start, multiplier)] until the cap stops it."""
    out, elapsed, step = [], 0.0, 0
    while step < cfg.steps:
        mult = lr_multiplier(step, elapsed, cfg, reserve)
        out.append((step, elapsed, mult))
        elapsed += step_time(step)
        step += 1
        if cfg.max_wallclock_s > 0 and elapsed >= cfg.max_wallclock_s - reserve:
            break
    return out


@pytest.mark.parametrize("mode,reserve,floor", [("wallclock_steps", 0.0, 0.0), ("wallclock_steps", 12.0, 0.05),
                                                ("wallclock_frac", 12.0, 0.0), ("wallclock_frac", 0.0, 0.05)])
def test_wallclock_warmdown_reaches_its_floor_at_the_cap(mode, reserve, floor):
    """Steps of 0.1 s +- 5% (wallclock_frac: plus an 8 s first step, #103's compile on the clock): LR is 1 until the
    warmdown, then decreases to min_lr_frac, reached exactly at t = max_wallclock_s - gptq_reserve_s; the last step
    runs within one step's share of it. (wallclock_steps recipes prime the compile off the clock: its mean step
    time would otherwise count the compile, as in the reference.)"""
    cfg = replace(TrainConfig(), steps=100_000, max_wallclock_s=600.0, warmdown=mode, warmdown_steps=1500,
                  warmdown_frac=0.5, min_lr_frac=floor)
    spike = 8.0 if mode == "wallclock_frac" else 0.1
    jitter = lambda s: spike if s == 0 else 0.1 * (1 + 0.05 * math.sin(s))  # noqa: E731
    trace = _simulate(cfg, jitter, reserve)
    budget = 600.0 - reserve
    assert trace[-1][1] < budget <= trace[-1][1] + jitter(trace[-1][0])  # stopped by the cap, not the steps
    mults = [m for _, _, m in trace]
    start = next(i for i, m in enumerate(mults) if m < 1.0)
    assert all(m == 1.0 for m in mults[:start])
    assert all(b <= a + 1e-12 for a, b in zip(mults[start:], mults[start + 1:]))  # monotone decay
    mean_step = trace[start][1] / start
    expected_start = budget - 1500 * mean_step if mode == "wallclock_steps" else budget * 0.5
    assert trace[start][1] == pytest.approx(expected_start, abs=0.25)
    assert warmdown_start_s(cfg, mean_step, reserve) == pytest.approx(expected_start, rel=1e-6)
    decay_span = budget - trace[start][1]
    assert floor <= mults[-1] <= max(floor, 0.106 / decay_span)  # the last step: within one step of the floor
    for t in (budget, budget + 1.0, 1e6):
        assert lr_multiplier(len(trace), t, cfg, reserve) == floor  # at (and past) the cap: the floor
    assert training_fraction(len(trace), budget, cfg, reserve) == 1.0


def test_step_schedules_and_warmup():
    cfg = replace(TrainConfig(), steps=100, warmup_steps=10, warmdown="steps", warmdown_steps=20)
    assert [lr_multiplier(s, 0.0, cfg) for s in (0, 5, 10, 80, 90, 99)] == [0.0, 0.5, 1.0, 1.0, 0.5, 0.05]
    frac = replace(cfg, warmup_steps=0, warmdown="frac", warmdown_frac=0.3)
    assert lr_multiplier(70, 0.0, frac) == 1.0 and lr_multiplier(85, 0.0, frac) == pytest.approx(0.5)
    # a wall-clock mode whose step limit comes first still decays to 0 at the last step
    capped = replace(cfg, warmup_steps=0, warmdown="wallclock_steps", max_wallclock_s=1e6)
    trace = _simulate(capped, lambda s: 0.1)
    assert len(trace) == 100 and trace[-1][2] == pytest.approx(1 / 20) and trace[79][2] == 1.0
    assert lr_multiplier(0, 0.0, replace(capped, max_wallclock_s=0.0)) == 1.0  # no cap: by steps


# ----------------------------------------------------------------------------- EMA / SWA

class _Toy(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=dtype))


def _sequence(n: int) -> list[torch.Tensor]:
    return [torch.tensor([float(t), math.sin(t), (-1.0) ** t]) for t in range(n + 1)]


def test_ema_equals_closed_form():
    d, n = 0.8, 12
    seq, model = _sequence(n), _Toy()
    model.w.data.copy_(seq[0])
    avg = WeightAverager(model, replace(TrainConfig(), averaging="ema", ema_decay=d))
    for t in range(1, n + 1):
        model.w.data.copy_(seq[t])
        avg.update(model, t, 1.0)
    closed = d**n * seq[0] + sum((1 - d) * d ** (n - t) * seq[t] for t in range(1, n + 1))
    torch.testing.assert_close(avg.ema["w"], closed, rtol=1e-6, atol=1e-6)
    assert avg.choice() == "ema" and avg.apply_to(model) == "ema"
    torch.testing.assert_close(model.w.detach(), closed, rtol=1e-6, atol=1e-6)


def test_swa_equals_closed_form_and_skips_warmup():
    """Snapshots after steps that are multiples of swa_every with multiplier < swa_start_lr, never in the warm-up;
    the export is their uniform mean, cast back to the parameter's dtype (sums stay fp32)."""
    n, every = 20, 3
    cfg = replace(TrainConfig(), averaging="swa", swa_every=every, swa_start_lr=0.5, warmup_steps=4)
    mult = lambda t: 0.3 if t <= 4 else (1.0 if t < 10 else 0.4)  # noqa: E731  (warm-up multipliers are < 0.5 too)
    seq, model = _sequence(n), _Toy(torch.bfloat16)
    avg = WeightAverager(model, cfg)
    for t in range(1, n + 1):
        model.w.data.copy_(seq[t])
        avg.update(model, t, mult(t))
    taken = [t for t in range(1, n + 1) if t > 4 and mult(t) < 0.5 and t % every == 0]
    assert taken == [12, 15, 18] and avg.swa_count == 3
    mean = sum(seq[t].to(torch.bfloat16).float() for t in taken) / len(taken)
    torch.testing.assert_close(avg.averaged()["w"], mean)
    assert avg.apply_to(model) == "swa" and model.w.dtype == torch.bfloat16
    torch.testing.assert_close(model.w.detach().float(), mean.to(torch.bfloat16).float())


def test_export_rule_is_explicit():
    model = _Toy()
    for mode, snapshots, expected in [("none", 0, "live"), ("ema", 0, "ema"), ("swa", 0, "live"), ("swa", 1, "swa"),
                                      ("swa_else_ema", 1, "ema"), ("swa_else_ema", 2, "swa")]:
        avg = WeightAverager(model, replace(TrainConfig(), averaging=mode, swa_every=1, swa_start_lr=1.0))
        for t in range(1, snapshots + 1):
            avg.update(model, t, 0.5)
        assert avg.choice() == expected, (mode, snapshots)
        assert avg.describe().startswith(f"{expected} =") and f"train.averaging = {mode}" in avg.describe()


# ----------------------------------------------------------------------------- resume (optimizer + averager level)

def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(_micro_model_config())
    ocfg = replace(OptimConfig(), muon_momentum_style="ema", muon_normuon_beta2=0.95, muon_row_normalize=True,
                   muon_weight_decay=0.02, embed_weight_decay=0.01, muon_momentum_warmup_steps=4)
    tcfg = replace(TrainConfig(), steps=10, averaging="swa_else_ema", ema_decay=0.7, swa_every=1, swa_start_lr=0.9,
                   warmdown="frac", warmdown_frac=0.5)
    return model, build_optimizers(model, ocfg), WeightAverager(model, tcfg), ocfg, tcfg


def _steps(model, opts, avg, ocfg, tcfg, start: int, stop: int) -> None:
    for step in range(start, stop):
        mult = lr_multiplier(step, 0.0, tcfg)
        set_lr_multiplier(opts, mult)
        set_muon_momentum(opts, muon_momentum_at(step, ocfg))
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(1000 + step)
        x = torch.randint(0, 64, (2, 16), generator=gen)
        model(x, torch.roll(x, -1, 1)).backward()
        for o in opts.values():
            o.step()
        avg.update(model, step + 1, mult)


def test_checkpoint_round_trip_restores_optimizer_and_averaging_state(tmp_path):
    """Save after 4 steps, load into fresh objects, continue: bit-identical weights, EMA, SWA and Muon state."""
    model, opts, avg, ocfg, tcfg = _setup()
    _steps(model, opts, avg, ocfg, tcfg, 0, 4)
    save_checkpoint(tmp_path, model=model, optimizers=opts, averaging_tensors=avg.state_tensors(),
                    state={"step": 4, "swa_count": avg.swa_count, "world_size": 1})
    _steps(model, opts, avg, ocfg, tcfg, 4, 10)

    model2, opts2, avg2, _, _ = _setup(seed=1)  # different init: everything must come from the checkpoint
    state, tensors = load_checkpoint(tmp_path, model=model2, optimizers=opts2)
    avg2.load_state_tensors(tensors, state["swa_count"])
    _steps(model2, opts2, avg2, ocfg, tcfg, state["step"], 10)

    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n
    assert avg.swa_count == avg2.swa_count > 1
    for k, v in avg.state_tensors().items():
        assert torch.equal(v, avg2.state_tensors()[k]), k
    muon, muon2 = opts["matrix"], opts2["matrix"]
    for p, p2 in zip(muon.param_groups[0]["params"], muon2.param_groups[0]["params"]):
        for key in ("momentum_buffer", "row_second_moment"):
            assert torch.equal(muon.state[p][key], muon2.state[p2][key])
    assert muon2.param_groups[0]["momentum"] == muon.param_groups[0]["momentum"]


def test_checkpoint_without_ema_is_rejected_for_an_ema_run():
    model, _, avg, _, _ = _setup()
    with pytest.raises(ValueError, match="no EMA"):
        avg.load_state_tensors({}, 0)


# ----------------------------------------------------------------------------- the run says what it exported

def test_run_logs_and_reports_the_exported_weights(micro, tmp_path):
    cfg = micro(train__averaging="swa_else_ema", train__swa_every=1, train__swa_start_lr=0.7, train__ema_decay=0.5)
    result = pgolf.train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["averaging"] == result["averaging"] == "swa" and saved["swa_snapshots"] == 2  # steps 5, 6 of 6
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "averaging" in x]
    assert len(logged) == 1 and logged[0]["averaging"] == "swa" and logged[0]["swa_snapshots"] == 2
    from pgolf.training.report import summary
    assert "weights    swa = uniform mean of 2 SWA snapshots" in summary(saved, tmp_path / "run")


def test_muon_refuses_choices_outside_its_tables_and_accepts_each_listed_one():
    """Muon checks its choices against literals (so a script's constant arguments fold the checks away): the
    literals must be exactly the module's tables."""
    from pgolf.optim import muon
    p = [torch.nn.Parameter(torch.zeros(4, 3))]
    choices = {"ns_grouping": muon.NS_GROUPINGS, "shape_scale": muon.SHAPE_SCALES,
               "ns_coeffs": tuple(muon.NS_COEFFICIENTS), "ns_dtype": ("auto", *muon._DTYPES),
               "momentum_style": ("sum", "ema")}
    for key, values in choices.items():
        for value in values:
            assert muon.Muon(p, lr=0.1, **{key: value}).defaults[key] == value
        with pytest.raises(ValueError, match=f"{key} must be"):
            muon.Muon(p, lr=0.1, **{key: "nope"})
