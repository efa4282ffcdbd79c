"""Evaluation and TTT forwards compiled with static shapes, bounded in memory, the same function (issue #18, item 4).

eval.compile=on pads every batch to one shape and runs the forward through torch.compile. Here the compiler is
replaced by dynamo with a counting backend (fullgraph=True: a graph break is an error) to count compiled graphs,
or by nothing at all to check that the padded batches score exactly what the unpadded eager path scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import pgolf
import pgolf.eval.forward as forward
from pgolf.config import EvalConfig
from pgolf.eval import audit
from pgolf.eval.ttt_lora import window_width

from test_eval_modes import MODES, one_thread, run, stream, tables  # noqa: F401  (fixtures)
from test_model import small_model

CTX = 64


@pytest.fixture
def compiler(monkeypatch):
    """forward.compiled() through dynamo with a counting backend; returns the counter."""
    counter = CompileCounter()
    monkeypatch.setattr(forward, "_COMPILED", {})
    monkeypatch.setattr(forward, "_compile", lambda fn: torch.compile(fn, backend=counter, fullgraph=True, dynamic=False))
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


@pytest.fixture
def padded_eager(monkeypatch):
    """eval.compile=on without a compiler: the static, padded batches run eagerly."""
    monkeypatch.setattr(forward, "_COMPILED", {})
    monkeypatch.setattr(forward, "_compile", lambda fn: fn)


@pytest.fixture
def compiled_calls(monkeypatch):
    """eval.compile=on without a compiler, each call that takes the compiled path logged: (function, ids shape)."""
    calls: list[tuple[str, tuple[int, ...]]] = []

    def logging_compile(fn):
        def run_logged(model, ids, *rest):
            calls.append((fn.__name__, tuple(ids.shape)))
            return fn(model, ids, *rest)
        return run_logged

    monkeypatch.setattr(forward, "_COMPILED", {})
    monkeypatch.setattr(forward, "_compile", logging_compile)
    return calls


@pytest.fixture(scope="module")
def doc_model():
    return small_model({"model.vocab_size": 1024, "model.doc_attention": True})


@pytest.mark.parametrize("mode", ["plain", "sliding", "sliding_docs", "chunk", "lora"])
def test_padded_static_batches_score_what_eager_scores(doc_model, stream, tables, mode, padded_eager):
    eager = run(doc_model, stream[:1500], tables, **MODES[mode], compile="off")
    static = run(doc_model, stream[:1500], tables, **MODES[mode], compile="on")
    assert static.targets == eager.targets
    np.testing.assert_allclose(static.token_nll, eager.token_nll, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["plain", "sliding", "sliding_docs", "chunk", "lora"])
def test_padded_batches_record_every_scored_target_once_and_no_padding(doc_model, stream, tables, mode,
                                                                         padded_eager):
    """eval.audit under static shapes: padding rows (a partial last batch, finished LoRA documents) and padding
    columns (short windows, a short document's last chunk) are never recorded; each target is, once, at its own
    index, with the distribution its score came from."""
    tokens = stream[:1500]
    with audit.recording() as recorded:
        ev = run(doc_model, tokens, tables, **MODES[mode], compile="on")
    assert sorted(recorded) == list(range(tokens.size - 1))
    logp = np.stack([recorded[i] for i in range(tokens.size - 1)])
    np.testing.assert_allclose(-logp[np.arange(tokens.size - 1), tokens[1:]], ev.token_nll, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["plain", "sliding"])
def test_scoring_compiles_one_graph_for_a_whole_evaluation(doc_model, stream, tables, mode, compiler):
    """Partial last batch, short last window, windows of several lengths: all one shape, one graph."""
    ev = run(doc_model, stream[:1500], tables, **MODES[mode], compile="on")
    assert ev.targets == 1499 and compiler.frame_count == 1


@pytest.mark.parametrize("mode, forwards", [("plain", 4), ("sliding", 12)])
def test_compiled_scoring_runs_every_forward_at_one_shape(doc_model, stream, tables, mode, forwards, compiled_calls):
    """Plain: 23 full windows of 64 (batches of 8, 8, 7) and a short 27-target one; sliding (stride 16): 91 windows
    of several lengths. Every forward takes the compiled path, padded to (batch_seqs, context_len) = (8, 64)."""
    ev = run(doc_model, stream[:1500], tables, **MODES[mode], compile="on")
    assert ev.targets == 1499 and compiled_calls == [("_hidden", (8, CTX))] * forwards
    compiled_calls.clear()
    run(doc_model, stream[:1500], tables, **MODES[mode], compile="off")
    assert compiled_calls == []


PRE = {"ttt": "pre", "ttt_epochs": 1, "ttt_batch_seqs": 4, "ttt_lr": 0.01}
COMPILED_TTT = {
    # 1499 targets in chunks of 512: 15, 16 and 15 sliding windows (stride 32) scored in batches of 8 (6 forwards),
    # chunks 0 and 1 trained on (8 sequences of 64 each, 4 a step: 4 steps)
    "chunk": (MODES["chunk"], [("_hidden", (8, CTX))] * 6 + [("_loss", (4, CTX))] * 4),
    # 23 sequences of 64, 4 a step (6 steps, the last of 3), then 24 plain windows in batches of 8 (3 forwards)
    "pre": (PRE, [("_hidden", (8, CTX))] * 3 + [("_loss", (3, CTX))] + [("_loss", (4, CTX))] * 5),
}


@pytest.mark.parametrize("mode", sorted(COMPILED_TTT))
def test_compiled_ttt_scores_and_trains_through_the_compiled_path(stream, tables, compiled_calls, mode):
    """Every scoring forward and every training step of a TTT mode is compiled when eval.compile asks for it."""
    settings, expected = COMPILED_TTT[mode]
    model = small_model({"model.vocab_size": 1024})
    run(model, stream[:1500], tables, **settings, compile="on")
    assert sorted(compiled_calls) == expected, compiled_calls
    compiled_calls.clear()
    run(model, stream[:1500], tables, **settings, compile="off")
    assert compiled_calls == []


def test_lora_ttt_compiles_one_graph_per_window_width(stream, tables, compiler):
    """Two batches of documents (3, then 1 padded to 3 rows): one graph per rounded width (16, 32, 64 here),
    adapter hooks traced, nothing recompiled for the second batch."""
    settings = {**MODES["lora"], "ttt_lora_chunk": 16}
    model = small_model({"model.vocab_size": 1024, "model.doc_attention": True})
    ev = run(model, stream, tables, **settings, compile="on")
    widths = {window_width(c, 16, CTX, True) for c in range(64)}
    assert widths == {16, 32, 64} and ev.targets == stream.size - 1
    assert compiler.frame_count == len(widths)


def test_lora_ttt_window_widths_round_up_to_powers_of_two_of_the_chunk():
    assert [window_width(c, 64, 2048, True) for c in range(6)] == [64, 128, 256, 256, 512, 512]
    assert window_width(40, 64, 2048, True) == 2048 and window_width(2, 64, 2048, False) == 192


def test_compiled_training_steps_of_chunk_ttt_are_traced_whole(stream, tables, compiler):
    model = small_model({"model.vocab_size": 1024})
    run(model, stream[:1500], tables, **MODES["chunk"], compile="on")
    assert compiler.frame_count == 2  # the scoring graph and the training step, each whole (fullgraph)


def test_the_head_never_holds_more_than_head_rows_positions(monkeypatch, stream, tables):
    model = small_model({"model.vocab_size": 1024})
    reference = run(model, stream[:700], tables)
    monkeypatch.setattr(forward, "HEAD_ROWS", 50)
    sizes: list[int] = []
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda h: sizes.append(h.size(0)) or logits(h))
    chunked = run(model, stream[:700], tables)
    assert max(sizes) == 50 and sum(sizes) == 699
    np.testing.assert_allclose(chunked.token_nll, reference.token_nll, rtol=1e-6, atol=1e-6)


def test_eval_compile_key_is_checked():
    with pytest.raises(pgolf.config.ConfigError, match="eval.compile"):
        pgolf.load_recipe("baseline", overrides={"eval.compile": "yes"})
    assert EvalConfig().compile == "auto"
