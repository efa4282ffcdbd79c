"""The GPU fast paths compute the same function as the CPU reference: fused CE, kernels, compile, prefetching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgolf.data.loader import DistributedTokenLoader, PrefetchingLoader
from pgolf.data.segments import cu_seqlens, segment_capacity
from pgolf.data.shards import write_shard
from pgolf.training.fastpath import FastPathMismatch, assert_fast_paths, check_fast_paths
from pgolf.model.attention import attention_flash3, attention_math, document_mask, flash3_available, segment_offsets
from pgolf.model.loss import softcapped_cross_entropy

from conftest import random_stream
from test_model import random_ids, small_model


@pytest.mark.parametrize("cap", [30.0, 0.0])
def test_fused_softcapped_ce_equals_plain_in_value_and_gradient(cap):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1000, 48, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(300, 48, generator=g)).requires_grad_()
    t = torch.randint(0, 300, (1000,), generator=g)
    fused = softcapped_cross_entropy(h, w, t, cap, chunk=130)
    fused.backward()
    fused_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    z = h @ w.T
    plain = F.cross_entropy(cap * torch.tanh(z / cap) if cap else z, t)
    plain.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_grads[0], h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_grads[1], w.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tied", [True, False])
def test_model_loss_is_the_same_through_the_fused_path(tied):
    model = small_model({"model.tie_embeddings": tied})
    ids = random_ids(2, 33)
    x, y = ids[:, :-1], ids[:, 1:]
    model.fused_loss = False
    plain = model(x, y)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.fused_loss = True
    fused = model(x, y)
    fused.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for a, p in zip(plain_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("where", ["in_graph", "loader"])
def test_varlen_segments_reproduce_the_document_mask(where):
    """Both cu_seqlens builders (in-graph fallback, host-side in the loader) list the same segments, padding apart."""
    ids = random_ids(3, 40)
    ids[1, 7] = ids[2, 39] = 1  # a BOS mid-row and one on a row's last position
    ids[1, 0] = 5                # a row that starts inside a document
    doc_ids = torch.cumsum((ids == 1).int(), dim=1)
    cu = segment_offsets(doc_ids) if where == "in_graph" else cu_seqlens(ids, 1, segment_capacity(3, 40))
    n = ids.numel()
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == n and bool((cu[1:] >= cu[:-1]).all())
    assert where == "in_graph" and cu.numel() == n + 1 or cu.numel() == segment_capacity(3, 40)
    seg = torch.zeros(n, dtype=torch.long)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        seg[a:b] = i  # padded entries are empty segments
    seg = seg.view(3, 40)
    assert torch.equal(document_mask(doc_ids), document_mask(seg))
    assert int((cu[1:] > cu[:-1]).sum()) == 3 + int((ids[:, 1:] == 1).sum())  # one per row start and per BOS
    assert 40 in cu.tolist() and 47 in cu.tolist()


def test_loader_segments_grow_past_the_capacity_instead_of_dropping_documents():
    ids = torch.full((2, 64), 5)
    ids[:, ::2] = 1  # 64 documents, more than one 64-entry capacity holds
    cu = cu_seqlens(ids, 1, 64)
    assert cu.numel() == 128 and int((cu[1:] > cu[:-1]).sum()) == 64


def test_fast_path_check_reports_agreement_on_cpu():
    model = small_model({"model.doc_attention": True})
    model.attention_backend = "flex"
    report = check_fast_paths(model, random_ids(2, 32), "float32")
    assert report["logits_max_rel_err"] < 1e-5 and report["loss_abs_err"] < 1e-5
    assert_fast_paths(report, "float32")
    for key in ("logits_max_rel_err", "loss_abs_err"):  # a NaN or a large error anywhere fails the check
        for bad in (float("nan"), float("inf"), 1.0):
            with pytest.raises(FastPathMismatch):
                assert_fast_paths({**report, key: bad}, "float32")


@pytest.mark.slow
def test_compiled_model_matches_eager_on_cpu():
    model = small_model({"model.xsa_last_n": -1, "model.attn_gate": True})
    ids = random_ids(2, 32)
    out = torch.compile(model)(ids)  # Inductor needs a C++ compiler: .ci/run installs g++
    with torch.no_grad():
        torch.testing.assert_close(out, model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_newton_schulz_step_matches_eager_on_cpu():
    from pgolf.optim.muon import Muon
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(48, 32)), torch.nn.Parameter(torch.randn(32, 64))]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    for w, t in zip(weights, twins):
        w.grad = torch.randn_like(w)
        t.grad = w.grad.clone()
    eager, compiled = Muon(weights, lr=0.05), Muon(twins, lr=0.05)
    compiled.compile_newton_schulz()
    eager.step()
    compiled.step()
    for w, t in zip(weights, twins):
        torch.testing.assert_close(t, w, rtol=1e-5, atol=1e-5)


def test_prefetching_loader_gives_the_same_batches_and_resumes(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", random_stream(5000, 512))
    files = [tmp_path / "fineweb_train_000000.bin"]
    plain = DistributedTokenLoader(files)
    pre = PrefetchingLoader(DistributedTokenLoader(files), 256, 64, 1, depth=3)
    for _ in range(5):
        assert all(torch.equal(a, b) for a, b in zip(pre.next_batch(256, 64, 1), plain.next_batch(256, 64, 1)))
    state = pre.state_dict()
    assert state == plain.state_dict()  # the position after the batches handed out, not the prefetched ones
    expected = [plain.next_batch(256, 64, 1)[0] for _ in range(4)]
    pre.load_state_dict(state)
    assert all(torch.equal(pre.next_batch(256, 64, 1)[0], e) for e in expected)
    pre.close()


def test_loader_builds_each_batch_segments_on_its_thread(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", random_stream(5000, 512, bos_every=37))
    files = [tmp_path / "fineweb_train_000000.bin"]
    plain = DistributedTokenLoader(files, bos_id=1)
    pre = PrefetchingLoader(DistributedTokenLoader(files, bos_id=1), 256, 64, 1)
    for _ in range(3):
        got, want = pre.next_packed(256, 64, 1), plain.next_packed(256, 64, 1)
        assert torch.equal(got.x, want.x) and torch.equal(got.cu_seqlens, want.cu_seqlens)
        assert torch.equal(got.cu_seqlens, cu_seqlens(got.x, 1, segment_capacity(4, 64)))
        assert got.cu_seqlens.numel() == segment_capacity(4, 64)  # one fixed shape for the compiled graph
    pre.close()
    assert DistributedTokenLoader(files).next_packed(256, 64, 1).cu_seqlens is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("doc", [False, True])
def test_gpu_kernels_match_the_reference_in_bf16(doc):
    device = torch.device("cuda")
    model = small_model({"model.doc_attention": doc, "model.num_layers": 2, "model.model_dim": 128, "model.num_heads": 2,
                         "model.num_kv_heads": 1}).to(device)
    ids = random_ids(4, 256).to(device)
    backends = ["sdpa", "flex"] + (["fa3"] if flash3_available() else [])
    for backend in backends:
        model.attention_backend = backend
        model.fused_loss = True
        report = check_fast_paths(model, ids, "bfloat16", torch.compile(model))
        assert_fast_paths(report, "bfloat16")
    if flash3_available():
        q = torch.randn(2, 4, 64, 32, device=device, dtype=torch.bfloat16)
        k = torch.randn(2, 2, 64, 32, device=device, dtype=torch.bfloat16)
        v = torch.randn(2, 2, 64, 32, device=device, dtype=torch.bfloat16)
        doc_ids = torch.cumsum((random_ids(2, 64) == 1).int(), 1).to(device) if doc else None
        torch.testing.assert_close(attention_flash3(q, k, v, doc_ids).float(), attention_math(q, k, v, doc_ids).float(),
                                   rtol=2e-2, atol=2e-2)
