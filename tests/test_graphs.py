"""The compiled training forward is ONE static graph per phase (issue #18, items 3 and 7), and compiled equals eager.

On CUDA pgolf compiles the model with fullgraph=True, dynamic=False, as the records do: a graph break costs a
host sync and a kernel gap every layer, a recompile costs a full compile (tens of seconds) inside the 600 s. The
FA3 varlen kernel is traced through a stand-in custom op (tests/fa3_standin.py) with the cu_seqlens the loader
builds; flex_attention's CPU backward check is lifted so its training graph traces as on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import pgolf
from pgolf.config import recipe_names
from pgolf.data.segments import cu_seqlens, segment_capacity
from pgolf.quant.qat import attach_qat, refresh_qat

import fa3_standin

BOS = 1
CASES = [(name, "fa3") for name in recipe_names()] + [("pr1536", "flex"), ("baseline", "sdpa")]


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    import torch.nn.attention.flex_attention as flex
    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)


def training_model(name: str, backend: str, vocab: int = 64):
    cfg = pgolf.load_recipe(name, scale="tiny", overrides={"model.vocab_size": vocab})
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model)
    model.set_looping(True)  # the looped phase: every block the schedule reuses
    model.attention_backend = backend
    model.fused_loss = True   # as on CUDA
    attach_qat(model, cfg.quant)  # as the trainer does before compiling (pr206 fake-quantizes)
    refresh_qat(model)
    return model.train()


def batch(seed: int, docs: int, rows: int = 2, length: int = 64, vocab: int = 64):
    """(x, y, cu_seqlens) with `docs` BOS at random positions, cu_seqlens padded as the loader pads it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, length + 1), generator=g)
    ids.view(-1)[torch.randperm(ids.numel(), generator=g)[:docs]] = BOS
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    return x, y, cu_seqlens(x, BOS, segment_capacity(rows, length))


def test_pr1536_varlen_training_forward_is_one_graph_without_breaks():
    """The issue's measurement: torch._dynamo.explain found 21 graphs / 20 breaks (torch.nonzero and host-side
    tensors building cu_seqlens in every layer); with cu_seqlens from the loader it is one graph."""
    model = training_model("pr1536", "fa3")
    with fa3_standin.installed(), torch.autocast("cpu", dtype=torch.bfloat16):
        report = torch._dynamo.explain(model)(*batch(0, docs=3))
    assert (report.graph_count, report.graph_break_count) == (1, 0), [str(b.reason)[:300] for b in report.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("name,backend", CASES)
def test_training_forward_is_one_graph_and_a_second_batch_compiles_nothing_new(name, backend, flex_backward_on_cpu):
    """fullgraph=True raises on any graph break (explain's "1 graph, 0 breaks", enforced); then another batch with
    other documents (another number of segments) runs the same graph: nothing is compiled again."""
    model = training_model(name, backend)
    phases = [True, False] if model.cfg.recurrence_start_frac > 0 else [True]  # looped, then the plain stack
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    with fa3_standin.installed(), torch.autocast("cpu", dtype=torch.bfloat16):
        for phase, looping in enumerate(phases):
            model.set_looping(looping)
            for seed, docs in ((0, 3), (1, 7)):
                compiled(*batch(seed, docs)).backward()
            assert counter.frame_count == phase + 1, f"{counter.frame_count} compiles for {phase + 1} phase(s)"
    if backend == "fa3":  # the kernel ran, over the loader's segments where documents are isolated
        assert fa3_standin.CALLS and all(c["varlen"] == model.cfg.doc_attention for c in fa3_standin.CALLS)


# pr1536's switches (loop, lanes, skip gates, XSA, partial RoPE, document attention) on 3 blocks looped to 4,
# so that Inductor's CPU compile of forward and backward stays within about a minute for both models
INDUCTOR_CASES = {"baseline": {"model.num_layers": 2},
                  "pr1536": {"model.num_layers": 3, "model.layer_schedule": [0, 1, 1, 2], "model.parallel_start_layer": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(INDUCTOR_CASES))
def test_inductor_compiled_loss_and_gradients_equal_eager(name):
    """The trainer's compile (Inductor, fullgraph=True, dynamic=False) computes the eager model's loss and gradients."""
    cfg = pgolf.load_recipe(name, scale="tiny", overrides={"model.vocab_size": 64, **INDUCTOR_CASES[name]})
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model)
    model.set_looping(True)
    model.fused_loss = True
    with torch.no_grad():  # zero-initialised projections would leave most gradients trivially zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y, cu = batch(0, docs=3)
    eager_loss = model(x, y, cu)
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(compile_threads=1):
        compiled_loss = torch.compile(model, fullgraph=True, dynamic=False)(x, y, cu)
        compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
