"""Score-first on whole distributions, at and around every chunk and document boundary (TECHNIQUES.md §10.1).

A target's prediction may depend only on the tokens before it. So changing token q (target q - 1) must leave
unchanged the predicted distribution, the full log-probability vector, of every target up to and including
q - 1, and the loss of every target before q - 1. A document-independent mode (LoRA TTT) must also leave every
later document's distributions unchanged. `assert_score_first` changes each token at b - 1, b and b + 1 for
every boundary b of the mode (the first target of every chunk, every BOS) and compares the distributions that
`pgolf.eval.audit` records from the scoring path itself.

Modes that carry state from document to document in an order of their own (warm-start A, phased global TTT,
#1855's length_desc order) are checked in that processing order: changing token q, in document d, must leave
unchanged every target of a document processed before d, and d's targets up to q - 1 (their losses: up to q - 2).
In stream order that is the rule above. length_desc reads every document's length, i.e. every BOS of the split,
before it scores any (as #1855 does; legal by the spec, pr1855.md §8): a changed BOS reorders the documents, so
in those modes only tokens that are not a BOS are changed (still b - 1 and b + 1 of every BOS).

`TTT_MODES` lists the modes under the test; a new TTT mode joins by adding its settings and the boundaries of its
units (test_every_legal_ttt_mode_is_under_the_test fails until it does). `LEAKS` are deliberate leaks, written as
patches of pgolf's source: each one must fail the check, so the check is seen to catch what it guards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

import pgolf
from pgolf.config import EvalConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval import audit, modes

from test_model import small_model

BOS = 1
VOCAB = 64
CTX = 32
# every token 1 byte except BOS: the byte rule is tested elsewhere; here only the predictions matter
TABLES = ByteTables(np.where(np.arange(VOCAB) == BOS, 0, 1).astype(np.int16), np.zeros(VOCAB, dtype=bool),
                    np.arange(VOCAB) == BOS)


def three_documents() -> np.ndarray:
    """BOS-separated documents of 70, 95 and 75 tokens (240 tokens, 239 targets), random ids 2..63."""
    tokens = np.random.default_rng(5).integers(2, VOCAB, size=240)
    tokens[[0, 70, 165]] = BOS
    return tokens.astype(np.int64)


def document_starts(tokens: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(tokens == BOS)]


def chunk_boundaries(tokens: np.ndarray, settings: dict) -> list[int]:
    """Token positions of the first target of every chunk after the first (target i is token i + 1), and BOS."""
    k = settings["ttt_chunk_tokens"]
    return sorted(set(range(k + 1, tokens.size, k)) | set(document_starts(tokens)))


def lora_boundaries(tokens: np.ndarray, settings: dict) -> list[int]:
    """Every BOS, and the first target of every LoRA chunk inside each document."""
    k = settings["ttt_lora_chunk"]
    starts = document_starts(tokens) + [tokens.size - 1]
    inner = {s + c + 1 for s, e in zip(starts[:-1], starts[1:]) for c in range(k, e - s, k)}
    return sorted(inner | set(starts[:-1]))


@dataclass(frozen=True)
class ModeUnderTest:
    name: str
    settings: dict
    boundaries: Callable[[np.ndarray, dict], list[int]]
    documents_independent: bool = False
    # the documents (by stream index) in the order the mode processes them; None: stream order
    order: list[int] | None = None
    # the order reads every BOS ahead (length_desc): a BOS is never changed
    order_reads_bos: bool = False


# three_documents() has 70, 95 and 74 targets. #1855's length_desc with batches of 2: ascending [0 2 | 1], the
# group with the longest document first: document 1, then 0 and 2. Phases after 1 document (a batch boundary) and
# after 2 (inside the batch [0 2]).
DESC_ORDER = [1, 0, 2]
DESC_ORDER_1 = [1, 2, 0]  # batches of 1: [0] [2] [1] by length, the longest first
LORA = {"ttt": "lora", "ttt_lora_rank": 4, "ttt_lora_chunk": 24, "ttt_batch_docs": 2, "ttt_lora_lr": 0.05}
PHASED = {**LORA, "ttt_doc_order": "length_desc", "ttt_global_phase_docs": [1, 2], "ttt_global_chunk_tokens": 32,
          "ttt_global_batch_seqs": 1, "ttt_global_lr": 0.05}


# Chunks of 96 = 3 full training sequences of 32, so training covers every target of a chunk; with stride 10 the
# window scoring targets 92..101 crosses the first chunk boundary.
TTT_MODES = [
    ModeUnderTest("chunk", {"ttt": "chunk", "ttt_chunk_tokens": 96, "ttt_epochs": 2, "ttt_batch_seqs": 2, "ttt_lr": 0.1},
            chunk_boundaries),
    ModeUnderTest("chunk_sliding", {"ttt": "chunk", "sliding_stride": 10, "ttt_chunk_tokens": 96, "ttt_epochs": 1,
                              "ttt_batch_seqs": 2, "ttt_lr": 0.1}, chunk_boundaries),
    ModeUnderTest("lora", LORA, lora_boundaries, documents_independent=True),
    ModeUnderTest("lora_desc", {**LORA, "ttt_doc_order": "length_desc"}, lora_boundaries, documents_independent=True,
                  order=DESC_ORDER, order_reads_bos=True),
    # batches of 1: slot 0 chains document 0 -> 1 -> 2 (alpha / r scaling on)
    ModeUnderTest("lora_warm", {**LORA, "ttt_batch_docs": 1, "ttt_lora_warm_start_a": True, "ttt_lora_alpha": 8.0},
                  lora_boundaries),
    ModeUnderTest("lora_warm_desc", {**LORA, "ttt_batch_docs": 1, "ttt_doc_order": "length_desc",
                                     "ttt_lora_warm_start_a": True}, lora_boundaries, order=DESC_ORDER_1,
                  order_reads_bos=True),
    ModeUnderTest("phased", PHASED, lora_boundaries, order=DESC_ORDER, order_reads_bos=True),
    # one phase after document 1; the second segment's slot chains document 2 -> 0
    ModeUnderTest("phased_warm", {**PHASED, "ttt_batch_docs": 1, "ttt_lora_warm_start_a": True,
                                  "ttt_global_phase_docs": [1]}, lora_boundaries, order=DESC_ORDER_1,
                  order_reads_bos=True),
    ModeUnderTest("phased_stream", {**PHASED, "ttt_doc_order": "stream"}, lora_boundaries),
]
# Not TTT, but cut at documents: the same check, at every BOS.
OTHER_MODES = [ModeUnderTest("sliding_docs", {"sliding_stride": 10, "doc_boundaries": True},
                             lambda tokens, s: document_starts(tokens))]
MODE = {m.name: m for m in TTT_MODES + OTHER_MODES}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return small_model({"model.vocab_size": VOCAB})


def scored_distributions(model, tokens: np.ndarray, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(per-target NLL, per-target log-probability vectors) as the mode scored them."""
    cfg = EvalConfig(context_len=CTX, batch_seqs=4, **settings)
    with audit.recording() as recorded:
        ev = pgolf.evaluate(model, tokens, None, cfg, tables=TABLES)
    assert sorted(recorded) == list(range(tokens.size - 1)), "not every target's distribution was recorded once"
    logp = np.stack([recorded[i] for i in range(tokens.size - 1)])
    np.testing.assert_allclose(-logp[np.arange(tokens.size - 1), tokens[1:]], ev.token_nll, rtol=0, atol=1e-5)
    return ev.token_nll, logp


def changed_token(value: int) -> int:
    """A different id that is not BOS (so a BOS is removed, never added)."""
    return 2 + (int(value) + 5) % (VOCAB - 2)


def assert_score_first(model, tokens: np.ndarray, mode: ModeUnderTest, atol: float = 1e-5) -> int:
    """Raise AssertionError naming the token and target if a change reaches a prediction it must not reach.

    Returns the number of perturbations checked.
    """
    nll, logp = scored_distributions(model, tokens, mode.settings)
    bos = np.flatnonzero(tokens == BOS)
    positions = sorted({q for b in mode.boundaries(tokens, mode.settings) for q in (b - 1, b, b + 1)
                        if 1 <= q < tokens.size and not (mode.order_reads_bos and tokens[q] == BOS)})
    target = np.arange(tokens.size - 1)
    doc = np.searchsorted(bos, target, side="right") - 1         # document of each target (of its input)
    processed = np.argsort(mode.order if mode.order is not None else np.arange(bos.size))  # document -> its turn
    for q in positions:
        changed = tokens.copy()
        changed[q] = changed_token(tokens[q])
        nll2, logp2 = scored_distributions(model, changed, mode.settings)
        d = doc[min(q, tokens.size - 2)]                         # the document token q is an input of
        # targets 0 .. q-1 of q's document (their inputs end before q), and every document processed before it
        fixed = (processed[doc] < processed[d]) | ((doc == d) & (target < q))
        if mode.documents_independent:
            fixed |= doc != d                                    # every other document (a changed BOS: the later ones)
        moved = np.flatnonzero(np.abs(logp2 - logp).max(axis=1) > atol)
        leaked = moved[fixed[moved]]
        if leaked.size:
            raise AssertionError(f"{mode.name}: changing token {q} (target {q - 1}) changed the predicted distribution "
                                 f"of target {leaked[0]} (and {leaked.size - 1} more it must not reach)")
        lossy = np.flatnonzero(fixed & (target != q - 1) & (np.abs(nll2 - nll) > atol))  # q-1's label is token q
        if lossy.size:
            raise AssertionError(f"{mode.name}: changing token {q} changed the loss of target {lossy[0]}")
        if q < tokens.size - 1:  # the change must be visible where it may act, or the check sees nothing
            assert q in moved, f"{mode.name}: changing token {q} did not change the prediction of target {q}"
    return len(positions)


@pytest.mark.parametrize("mode", TTT_MODES + OTHER_MODES, ids=lambda m: m.name)
def test_no_prediction_depends_on_its_own_or_a_later_token(model, mode):
    tokens = three_documents()
    checked = assert_score_first(model, tokens, mode)
    kept_bos = 0 if mode.order_reads_bos else 2  # the two BOS after the first, when the mode may change them
    assert checked >= 3 * len(mode.boundaries(tokens, mode.settings)) - 4 + kept_bos  # b-1, b, b+1 of every boundary


def test_every_legal_ttt_mode_is_under_the_test():
    choices = next(f for f in dataclasses.fields(EvalConfig) if f.name == "ttt").metadata["choices"]
    assert set(choices) - {"none", "pre"} == {m.settings["ttt"] for m in TTT_MODES}
    # LoRA TTT's variants: every document order, with and without warm-start A, with and without phases
    orders = next(f for f in dataclasses.fields(EvalConfig) if f.name == "ttt_doc_order").metadata["choices"]
    lora = [m.settings for m in TTT_MODES if m.settings["ttt"] == "lora"]
    variants = {(s.get("ttt_doc_order", "stream"), s.get("ttt_lora_warm_start_a", False),
                 bool(s.get("ttt_global_phase_docs"))) for s in lora}
    assert variants >= {(o, w, p) for o in orders for w in (False, True) for p in (False, True)} - {("stream", True, True)}


def test_pre_scoring_ttt_fails_the_check(model):
    """#595's TTT trains on every target before scoring it: the check must say so."""
    pre = ModeUnderTest("pre", {"ttt": "pre", "ttt_epochs": 1, "ttt_batch_seqs": 2, "ttt_lr": 0.01},
                  lambda tokens, s: [120])
    with pytest.raises(AssertionError, match="changed the predicted distribution"):
        assert_score_first(model, three_documents(), pre)


# ----------------------------------------------------------------------------- deliberate leaks

# (mode, module, [(exact source text, leaked replacement), ...]); every text must occur exactly once.
LEAKS = {
    # the issue's leak: the last training sequence of chunk c also trains on chunk c+1's first target
    "chunk: trains on the next chunk's first target": ("chunk", "pgolf.eval.ttt_chunk", [(
        "        spans = sequences(first, last, cfg.context_len)\n",
        "        spans = sequences(first, last, cfg.context_len)\n"
        "        spans[-1] = (spans[-1][0] + 1, spans[-1][1] + 1)\n")]),
    # a window that crosses a chunk boundary is scored after training on the chunk it starts in
    "chunk: windows assigned by their last target": ("chunk_sliding", "pgolf.eval.ttt_chunk", [(
        "chunk_of = windows.score // cfg.ttt_chunk_tokens", "chunk_of = (windows.end - 1) // cfg.ttt_chunk_tokens")]),
    # trains on chunk c+1 before scoring it
    "chunk: trains one chunk ahead": ("chunk_sliding", "pgolf.eval.ttt_chunk", [(
        "first, last = c * cfg.ttt_chunk_tokens, min((c + 1) * cfg.ttt_chunk_tokens, n_targets)",
        "first, last = (c + 1) * cfg.ttt_chunk_tokens, min((c + 2) * cfg.ttt_chunk_tokens, n_targets)")]),
    # each step also trains on the first target of the document's next chunk (one more window column, not scored)
    "lora: trains on the next chunk's first target": ("lora", "pgolf.eval.ttt_lora", [
        ("end = torch.minimum(torch.tensor((c + 1) * K), length[:batch_rows])",
         "end = torch.minimum(torch.tensor((c + 1) * K + 1), length[:batch_rows])"),
        ("width = window_width(c, K, W, use_compiled)", "width = window_width(c, K, W, use_compiled) + 1"),
        ("k = torch.arange(K)", "k = torch.arange(K + 1)"),
        ("positions = torch.where(scored, ", "positions = torch.where(scored & (k < K), "),
        ("scores[:batch_rows, c * K : (c + 1) * K] = nll.detach()", "scores[:batch_rows, c * K : (c + 1) * K] = nll.detach()[:, :K]"),
    ]),
    # documents 0 and 1 share adapters (an independent document learns from another one)
    "lora: two documents share adapters": ("lora", "pgolf.eval.ttt_lora", [(
        "starts = document_starts(tokens, bos_id)", "starts = np.delete(document_starts(tokens, bos_id), 1)")]),
    # warm start runs the batches backwards: a slot's chain carries A from a batch processed later
    "lora_warm: a slot inherits from a later batch": ("lora_warm", "pgolf.eval.ttt_lora", [(
        "    for part in plan:\n", "    for part in plan[::-1]:\n")]),
    "lora_warm_desc: a slot inherits from a later batch": ("lora_warm_desc", "pgolf.eval.ttt_lora", [(
        "    for part in plan:\n", "    for part in plan[::-1]:\n")]),
    # a phase's SGD also reads the next document of the processing order, not yet scored
    "phased: SGD sees the next unscored document": ("phased", "pgolf.eval.ttt_phased", [(
        "done = np.concatenate(scored)", "done = np.concatenate(scored + [order[sum(map(len, scored)) :][:1]])")]),
    "phased_stream: SGD sees the next unscored document": ("phased_stream", "pgolf.eval.ttt_phased", [(
        "done = np.concatenate(scored)", "done = np.concatenate(scored + [order[sum(map(len, scored)) :][:1]])")]),
}


def leaked_module(name: str, replacements: list[tuple[str, str]]):
    """pgolf module `name` built from its source with the replacements applied."""
    spec = importlib.util.find_spec(name)
    source = open(spec.origin, encoding="utf-8").read()
    for old, new in replacements:
        assert source.count(old) == 1, f"the leak no longer applies: {old!r} is not in {spec.origin} exactly once"
        source = source.replace(old, new)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None, origin=spec.origin))
    module.__package__ = name.rpartition(".")[0]
    previous = sys.modules.get(name)
    sys.modules[name] = module  # while it runs: a dataclass looks its module up there
    try:
        exec(compile(source, spec.origin, "exec"), module.__dict__)
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
    return module


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_every_deliberate_leak_fails_the_check(model, monkeypatch, leak):
    mode, name, replacements = LEAKS[leak]
    module = leaked_module(name, replacements)
    monkeypatch.setitem(sys.modules, name, module)       # modes.py imports the TTT modules when it needs them
    for attr in ("chunk_ttt_nll", "lora_ttt_nll", "phased_ttt_nll"):  # ... or at import time
        if hasattr(modes, attr) and hasattr(module, attr):
            monkeypatch.setattr(modes, attr, getattr(module, attr))
    with pytest.raises(AssertionError, match="changed the predicted distribution|changed the loss"):
        assert_score_first(model, three_documents(), MODE[mode])
