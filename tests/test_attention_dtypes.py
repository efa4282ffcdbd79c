"""Attention receives q, k, v in one dtype whatever autocast does to q and k (issue #18, item 1).

CUDA autocast runs rms_norm in fp32 from torch 2.12, so after the QK norm q and k come out fp32 next to a bf16 v;
FlashAttention-3 accepts only one fp16/bf16 dtype and flex_attention's backward raises on mixed dtypes. CPU
autocast has no rms_norm rule, so these tests install CUDA's: an AutocastCPU kernel for aten::rms_norm that runs
in fp32, exactly what the CUDA autocast policy does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pgolf.model.attention as attention

import fa3_standin
from test_model import random_ids, small_model

BACKENDS = ("math", "sdpa", "flex", "fa3")
KERNELS = {"math": "attention_math", "sdpa": "attention_sdpa", "flex": "attention_flex", "fa3": "attention_flash3"}


def _rms_norm_in_fp32(x, normalized_shape, weight=None, eps=None):
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    with torch._C._ExcludeDispatchKeyGuard(keys):
        return torch.ops.aten.rms_norm(x.float(), normalized_shape, None if weight is None else weight.float(), eps)


@pytest.fixture
def cuda_autocast_policy():
    """CPU autocast with CUDA's rms_norm rule (fp32 output)."""
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("rms_norm", _rms_norm_in_fp32, "AutocastCPU")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the emulation is on: without it this test is vacuous
            assert F.rms_norm(torch.ones(2, 4, dtype=torch.bfloat16), (4,)).dtype == torch.float32
        yield
    finally:
        lib._destroy()


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """flex_attention refuses backward on CPU up front; its eager (dense) backward runs fine, dtype checks included."""
    import torch.nn.attention.flex_attention as flex
    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)


@pytest.fixture
def spy(monkeypatch):
    """Records the dtypes each attention kernel receives."""
    seen: list[tuple[str, tuple[torch.dtype, ...]]] = []
    for backend, name in KERNELS.items():
        kernel = getattr(attention, name)

        def wrapped(q, k, v, *rest, _kernel=kernel, _backend=backend):
            seen.append((_backend, (q.dtype, k.dtype, v.dtype)))
            return _kernel(q, k, v, *rest)

        monkeypatch.setattr(attention, name, wrapped)
    return seen


def test_mixed_dtypes_break_flex_backward_as_on_cuda(flex_backward_on_cpu):
    """The failure mode itself: fp32 q/k (from fp32 rms_norm) with a bf16 v."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    mask = create_block_mask(lambda b, h, q, k: q >= k, 1, None, 128, 128, device="cpu")
    q, k = (torch.randn(1, 2, 128, 16, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, 128, 16, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="mixed query, key, and value dtype"):
        flex_attention(q, k, v, block_mask=mask).float().sum().backward()


@pytest.mark.parametrize("doc", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_receives_one_dtype_under_cuda_autocast(backend, doc, cuda_autocast_policy, flex_backward_on_cpu, spy):
    """Forward and backward of a model with every v-changing switch (value embeddings, value residual), with
    the fp32 rms_norm of CUDA autocast: every kernel call gets q, k, v in bf16, and the backward runs."""
    model = small_model({"model.doc_attention": doc, "model.value_residual": True, "model.value_embed_dim": 8,
                         "model.value_embed_layers": [1, 2], "model.xsa_last_n": -1}).train()
    model.attention_backend = backend
    ids = random_ids(2, 64)
    with fa3_standin.installed(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    assert {b for b, _ in spy} == {backend} and len(spy) == len(model.blocks)
    assert all(dtypes == (torch.bfloat16,) * 3 for _, dtypes in spy), spy
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_without_autocast_attention_stays_fp32(spy):
    model = small_model({"model.doc_attention": True})
    model.attention_backend = "math"
    model(random_ids(1, 32))
    assert spy and all(dtypes == (torch.float32,) * 3 for _, dtypes in spy)
