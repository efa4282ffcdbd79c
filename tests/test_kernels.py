"""Training kernels (train.fused_mlp, train.fused_ce) against their PyTorch references, forward and backward.

Without CUDA the Triton kernels run under Triton's CPU interpreter in fp32 (tests/kernel_env.py says how and
which two interpreter gaps it bridges); bf16 and the compiled kernels are checked by benchmarks/kernels_gpu.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pgolf
from pgolf.model.loss import softcapped_cross_entropy as chunked_ce
from pgolf.model.mlp import MLP
from pgolf.training.fastpath import check_training_kernels
from pgolf.training.kernels import attach_training_kernels, load_training_kernels, training_kernels_for

from kernel_env import DEVICE, import_kernels, interpreter_shims
from test_model import SMALL, random_ids, small_model

mlp_triton, ce_liger = import_kernels()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kernels_gpu  # noqa: E402  (benchmarks/kernels_gpu.py)


@pytest.fixture(autouse=True)
def shims():
    with interpreter_shims():
        yield


def mlp_module(kind: str, d: int = 40, hidden: int = 80, seed: int = 0) -> MLP:
    """A relu2 / leaky_relu2 MLP with sizes that are no multiple of the tiles, every weight non-zero."""
    cfg = pgolf.load_recipe("baseline", overrides={"model.mlp": kind, "model.model_dim": d, "model.mlp_hidden": hidden,
                                                   "model.num_heads": 4, "model.num_kv_heads": 2}).model
    torch.manual_seed(seed)
    mlp = MLP(cfg).to(DEVICE)
    with torch.no_grad():
        mlp.proj.weight.normal_(std=0.1)
    return mlp.train()


def forward_backward(module, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("kind", ["leaky_relu2", "relu2"])
def test_fused_mlp_equals_the_pytorch_mlp_forward_and_backward(kind):
    reference = mlp_module(kind)
    fused = copy.deepcopy(reference)
    fused.kernel = mlp_triton.fused_mlp
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 37, 40, generator=g).to(DEVICE)
    grad_out = torch.randn(2, 37, 40, generator=g).to(DEVICE)
    out, dx, grads = forward_backward(fused, x, grad_out)
    ref_out, ref_dx, ref_grads = forward_backward(reference, x, grad_out)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-5)
    for name in ("fc.weight", "proj.weight"):
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)


def test_fused_mlp_computes_with_the_fake_quantized_weights_under_qat():
    reference = mlp_module("leaky_relu2")
    for linear in (reference.fc, reference.proj):
        linear.fake_quant = lambda w: torch.round(w * 8) / 8  # a stand-in for QAT's export grid
    fused = copy.deepcopy(reference)
    fused.kernel = mlp_triton.fused_mlp
    x = torch.randn(1, 20, 40, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-5, atol=1e-5)


def test_mlp_and_loss_kernels_run_in_training_mode_only():
    def refuse(*args):
        raise AssertionError("a training kernel ran outside training")

    model = small_model({"model.mlp": "leaky_relu2"})
    model.fused_loss = True
    attach_training_kernels(model, {"mlp": refuse, "loss": refuse})
    ids = random_ids(2, 16)
    with torch.no_grad():
        model(ids)
        model(ids[:, :-1], ids[:, 1:])
    model.train()
    with pytest.raises(AssertionError, match="outside training"):
        model(ids)
    swiglu = small_model({"model.mlp": "swiglu"}).train()
    attach_training_kernels(swiglu, {"mlp": refuse})
    swiglu(ids)  # the kernel fuses relu2 / leaky_relu2 only; config validation refuses the pair up front
    attach_training_kernels(model, {})
    assert model.loss_kernel is None and all(b.mlp.kernel is None for b in model.blocks)


@pytest.mark.parametrize("cap", [30.0, 3.0, 0.0])
def test_liger_softcapped_ce_equals_the_reference_forward_and_backward(cap):
    """liger's loss and gradients against F.cross_entropy(c tanh(z / c)) and pgolf's chunked CE (N, V no powers of 2)."""
    g = torch.Generator().manual_seed(3)
    h = (torch.randn(45, 16, generator=g) * 2).to(DEVICE)
    weight = torch.randn(300, 16, generator=g).to(DEVICE)
    targets = torch.randint(0, 300, (45,), generator=g).to(DEVICE)
    results = {}
    for name in ("liger", "reference", "chunked"):
        hh, ww = h.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        if name == "liger":
            loss = ce_liger.softcapped_cross_entropy(hh, ww, targets, cap)
        elif name == "chunked":
            loss = chunked_ce(hh, ww, targets, cap, chunk=16)
        else:
            z = hh @ ww.T
            loss = F.cross_entropy(cap * torch.tanh(z / cap) if cap > 0 else z, targets)
        (3.0 * loss).backward()  # a non-unit incoming gradient
        results[name] = (loss.detach(), hh.grad, ww.grad)
    for name in ("liger", "chunked"):
        for got, want in zip(results[name], results["reference"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_both_kernels_survive_a_fullgraph_compile():
    """Custom ops with fake implementations: dynamo traces one graph without breaking (aot_eager: no codegen)."""
    mlp = mlp_module("leaky_relu2")
    h = torch.randn(12, 40, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 40, (12,), device=DEVICE)
    head = mlp.fc.weight[:40].detach().contiguous()  # a (V = 40, d = 40) head for the loss

    def step(h):
        y = mlp_triton.fused_mlp(h, mlp.fc.weight, mlp.proj.weight, 0.5)
        return ce_liger.softcapped_cross_entropy(y, head, targets, 30.0)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(h)
    loss.backward()
    ref_h = h.detach().clone().requires_grad_(True)
    mlp.zero_grad()
    ref = F.cross_entropy(30 * torch.tanh(F.linear(F.leaky_relu(F.linear(ref_h, mlp.fc.weight), 0.5).square(),
                                                     mlp.proj.weight) @ head.T / 30), targets)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-4, atol=1e-6)


def test_check_training_kernels_reports_agreement_and_catches_a_wrong_kernel():
    model = small_model({"model.mlp": "leaky_relu2"}).to(DEVICE)
    ids = random_ids(2, 24).to(DEVICE)
    kernels = {"mlp": mlp_triton.fused_mlp, "loss": ce_liger.softcapped_cross_entropy}
    report = check_training_kernels(model, ids, kernels, "float32")
    assert report["kernels"] == ["loss", "mlp"]
    assert report["kernel_loss_rel_err"] < 1e-5 and report["kernel_grad_max_rel_err"] < 1e-4, report
    assert all(p.grad is None for p in model.parameters()) and model.loss_kernel is None  # the caller's model untouched

    def off_by_a_little(x, w_fc, w_proj, slope):
        return 1.01 * mlp_triton.fused_mlp(x, w_fc, w_proj, slope)

    bad = check_training_kernels(model, ids, {"mlp": off_by_a_little}, "float32")
    assert bad["kernel_grad_max_rel_err"] > 2e-3  # over the fp32 tolerance of assert_fast_paths


def test_kernels_are_loaded_by_setting_and_only_on_cuda():
    t = pgolf.load_recipe("baseline", overrides={"train.fused_mlp": "triton", "train.fused_ce": "liger"}).train
    kernels = load_training_kernels(t)
    assert kernels == {"mlp": mlp_triton.fused_mlp, "loss": ce_liger.softcapped_cross_entropy}
    assert training_kernels_for(t, torch.device("cpu")) == {}
    assert load_training_kernels(pgolf.load_recipe("baseline").train) == {}
    assert pgolf.load_recipe("baseline", overrides={**SMALL}).train.fused_ce == "chunked"


def test_the_gpu_parity_benchmark_runs_and_agrees_at_small_shapes():
    report = kernels_gpu.kernel_parity(DEVICE, {"tokens": 24, "d": 40, "hidden": 72, "vocab": 96}, dtypes=("float32",))
    for part in ("mlp_float32", "ce_float32", "ce_chunked_float32"):
        assert report[part] and max(report[part].values()) < 1e-5, (part, report[part])


def test_liger_ce_under_bf16_autocast_matches_the_chunked_ce_to_bf16_precision():
    """The training dtype path: fp32 hidden states and weight under autocast; matmuls in bf16, dW accumulated in fp32."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(40, 32, generator=g).to(DEVICE)
    weight = (torch.randn(200, 32, generator=g) * 0.3).to(DEVICE)
    targets = torch.randint(0, 200, (40,), generator=g).to(DEVICE)
    results = []
    for fn in (ce_liger.softcapped_cross_entropy, chunked_ce):
        hh, ww = h.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = fn(hh, ww, targets, 30.0)
        loss.backward()
        assert loss.dtype == torch.float32 and hh.grad.dtype == ww.grad.dtype == torch.float32
        results.append((loss.detach(), hh.grad, ww.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
