"""Warm-start-A LoRA TTT (#1767) and phased global TTT (#1610 -> #1626): score-first in processing order,
the warm-start chain, alpha / r, the phase schedule, 1 rank = 2 ranks.

Both modes process documents in an order (`eval.ttt_doc_order`) and carry state from earlier documents to
later ones, so "earlier" means earlier in that order, not in the stream. `assert_score_first_in_order` changes
one token at a time — the first tokens and the last token of every document, i.e. at and around every
document boundary and every phase boundary of the processing order — and checks that no target scored before
that token (every target of a document processed earlier; the document's own targets before it) changes.
It compares per-target losses on eight documents and checks where a change must act (phases, slots);
tests/test_score_first.py checks the same modes, in their processing order, on the whole recorded distributions.

`LEAKS` are deliberate breakages, written as patches of pgolf's source; each must fail the check.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pgolf
from pgolf.config import LORA_TARGETS, ConfigError, EvalConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval import modes, ttt_lora, ttt_phased
from pgolf.eval.lora_adapters import BatchedLoRA

from conftest import REPO
from test_eval_modes import one_thread  # noqa: F401  (autouse: these forwards are tiny, one thread is fastest)
from test_model import random_ids, small_model
from test_score_first import leaked_module

BOS = 1
VOCAB = 64
CTX = 32
LENGTHS = [30, 55, 20, 41, 26, 60, 35, 23]  # targets of documents 0..7
# every token 1 byte except BOS: the byte rule is tested elsewhere; here only the predictions matter
TABLES = ByteTables(np.where(np.arange(VOCAB) == BOS, 0, 1).astype(np.int16), np.zeros(VOCAB, dtype=bool),
                    np.arange(VOCAB) == BOS)

LORA = {"ttt": "lora", "ttt_lora_rank": 4, "ttt_lora_chunk": 16, "ttt_lora_lr": 0.05, "ttt_lora_wd": 0.5}
# #1855's order with batches of 3: sorted by length [2 7 4 | 0 6 3 | 1 5], the longest batch first, so the
# short batch [1 5] comes first (as #1855's 16-document batch does). Phases after 2 documents (a batch boundary)
# and after 4 (inside the batch [0 6 3]).
ORDER_DESC = [1, 5, 0, 6, 3, 2, 7, 4]
PHASED = {**LORA, "ttt_batch_docs": 3, "ttt_doc_order": "length_desc", "ttt_global_phase_docs": [2, 4],
          "ttt_global_chunk_tokens": 32, "ttt_global_batch_seqs": 1, "ttt_global_lr": 0.05}
MODES = {
    "warm": ({**LORA, "ttt_batch_docs": 2, "ttt_lora_warm_start_a": True, "ttt_lora_alpha": 8.0}, list(range(8))),
    # chunks of 8: every document takes >= 2 steps, so every slot's A moves (its first step has no gradient)
    "warm_desc": ({**LORA, "ttt_lora_chunk": 8, "ttt_batch_docs": 3, "ttt_doc_order": "length_desc",
                   "ttt_lora_warm_start_a": True}, ORDER_DESC),
    "phased": (PHASED, ORDER_DESC),
    "phased_warm": ({**PHASED, "ttt_lora_warm_start_a": True, "ttt_lora_alpha": 8.0}, ORDER_DESC),
}


@pytest.fixture(scope="module")
def model():
    return small_model({"model.vocab_size": VOCAB})


def document_stream(lengths: list[int] = LENGTHS, seed: int = 3) -> np.ndarray:
    """BOS-separated documents with the given numbers of targets (random ids 2..63), then the last target."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, VOCAB, size=sum(lengths) + 1)
    tokens[np.cumsum([0] + lengths[:-1])] = BOS
    return tokens.astype(np.int64)


def starts_of(lengths: list[int] = LENGTHS) -> np.ndarray:
    return np.cumsum([0] + lengths[:-1])


def run(model, tokens: np.ndarray, settings: dict) -> pgolf.EvalResult:
    return pgolf.evaluate(model, tokens, None, EvalConfig(context_len=CTX, batch_seqs=4, **settings), tables=TABLES)


def changed(tokens: np.ndarray, q: int) -> np.ndarray:
    out = tokens.copy()
    out[q] = 2 + (int(tokens[q]) + 5) % (VOCAB - 2)  # another id, never BOS
    return out


def perturbed_positions(lengths: list[int] = LENGTHS) -> list[int]:
    """The first two tokens after every BOS and the last input of every document, and the stream's last token."""
    out = set()
    for s, n in zip(starts_of(lengths), lengths):
        out |= {int(s) + 1, int(s) + 2, int(s) + n - 1}
    return sorted(out | {sum(lengths)})


def scored_before(lengths: list[int], order: list[int], q: int) -> np.ndarray:
    """Targets whose scores may not depend on token q (q not a BOS): every target of a document processed before
    q's document, and q's document's targets before target q - 1 (target t is token t + 1)."""
    doc = np.repeat(np.arange(len(lengths)), lengths)  # document of each target
    rank = np.argsort(order)                            # processing index of each document
    d = int(doc[q - 1])
    return (rank[doc] < rank[d]) | ((doc == d) & (np.arange(doc.size) < q - 1))


def assert_score_first_in_order(model, tokens: np.ndarray, settings: dict, order: list[int],
                                lengths: list[int] = LENGTHS) -> dict[int, np.ndarray]:
    """Raise AssertionError naming the token and target if changing a token reaches a score it must not reach.

    Returns, per changed token, the targets whose loss moved (for the callers' positive checks)."""
    base = run(model, tokens, settings).token_nll
    moved_by = {}
    for q in perturbed_positions(lengths):
        nll = run(model, changed(tokens, q), settings).token_nll
        moved = np.flatnonzero(np.abs(nll - base) > 1e-6)
        leaked = moved[scored_before(lengths, order, q)[moved]]
        if leaked.size:
            raise AssertionError(f"changing token {q} changed the score of target {leaked[0]}, scored before it "
                                 f"(and {leaked.size - 1} more)")
        if q < tokens.size - 1:  # the change must be seen where it may act, or the check sees nothing
            assert q in moved, f"changing token {q} did not change the score of target {q}"
        moved_by[q] = moved
    return moved_by


# ----------------------------------------------------------------------------- order, segments, schedule


def test_length_desc_is_1855s_batches_longest_first():
    batches = ttt_lora.document_batches(np.array(LENGTHS), "length_desc", 3)
    assert [b.tolist() for b in batches] == [[1, 5], [0, 6, 3], [2, 7, 4]]
    assert [b.tolist() for b in ttt_lora.document_batches(np.array(LENGTHS), "stream", 3)] == [[0, 1, 2], [3, 4, 5],
                                                                                               [6, 7]]


def test_segments_cut_the_order_at_exactly_the_configured_document_counts():
    batches = [np.array(b) for b in ([1, 5], [0, 6, 3], [2, 7, 4])]
    segments = ttt_phased.split_at(batches, [2, 4])
    assert [[b.tolist() for b in s] for s in segments] == [[[1, 5]], [[0, 6]], [[3], [2, 7, 4]]]
    assert [[b.tolist() for b in s] for s in ttt_phased.split_at(batches, [])] == [[[1, 5], [0, 6, 3], [2, 7, 4]]]
    assert [[b.tolist() for b in s] for s in ttt_phased.split_at(batches, [1, 8])] == [[[1]], [[5], [0, 6, 3], [2, 7, 4]], []]


def test_phases_fire_after_exactly_the_configured_documents_and_train_on_exactly_those(model, monkeypatch):
    """The event log of a phased run: each SGD pass comes after its segment is scored and reads exactly the
    documents scored so far, B_k of them, in processing order."""
    events = []
    score, sgd = ttt_lora.score_documents, ttt_phased.global_sgd

    def spy_score(model, stream, starts, lengths, batches, *args):
        events.append(("score", [d for b in batches for d in b.tolist()]))
        return score(model, stream, starts, lengths, batches, *args)

    def spy_sgd(model, stream, starts, lengths, docs, *args):
        events.append(("sgd", docs.tolist()))
        return sgd(model, stream, starts, lengths, docs, *args)

    monkeypatch.setattr(ttt_lora, "score_documents", spy_score)  # ttt_phased reaches it through the registry
    monkeypatch.setattr(ttt_phased, "global_sgd", spy_sgd)
    ev = run(model, document_stream(), PHASED)
    assert events == [("score", [1, 5]), ("sgd", [1, 5]), ("score", [0, 6]), ("sgd", [1, 5, 0, 6]),
                      ("score", [3, 2, 7, 4])]
    assert ev.mode == "ttt_lora+phased" and ev.legal and ev.document_independent is False
    assert sum("SGD on their" in n for n in ev.notes) == 2


@pytest.mark.parametrize("phase_docs", [[0], [8], [9], [1]], ids=["empty", "after_the_last", "past_the_end", "too_short"])
def test_a_phase_that_would_change_nothing_is_a_no_op(model, phase_docs):
    """An empty prefix, a phase after every document, or a prefix shorter than two SGD chunks (document 0 has 30
    targets, chunks are 32: the only chunk is the last, never trained): scores equal plain LoRA TTT's."""
    tokens = document_stream()
    settings = {**LORA, "ttt_batch_docs": 3, "ttt_lora_warm_start_a": True}
    plain = run(model, tokens, settings)
    phased = run(model, tokens, {**settings, "ttt_global_phase_docs": phase_docs, "ttt_global_chunk_tokens": 32})
    np.testing.assert_array_equal(phased.token_nll, plain.token_nll)
    assert any("dropped" in n for n in phased.notes)


def test_a_phase_changes_the_scores_after_it_and_only_those(model):
    tokens = document_stream()
    lora = run(model, tokens, {**PHASED, "ttt_global_phase_docs": []})
    phased = run(model, tokens, PHASED)
    first = np.concatenate([np.arange(starts_of()[d], starts_of()[d] + LENGTHS[d]) for d in (1, 5)])
    np.testing.assert_allclose(phased.token_nll[first], lora.token_nll[first], rtol=0, atol=1e-6)  # before any phase
    rest = np.setdiff1d(np.arange(tokens.size - 1), first)
    assert np.all(phased.token_nll[rest] != lora.token_nll[rest])  # every later target: the weights moved


def test_the_time_cap_is_checked_inside_every_sgd_phase(model, monkeypatch):
    checked = []
    check = modes.Deadline.check
    monkeypatch.setattr(modes.Deadline, "check", lambda self, where: (checked.append(where), check(self, where))[1])
    run(model, document_stream(), {**PHASED, "max_seconds": 1e6})
    for phase in (1, 2):
        assert any(w.startswith(f"phased global TTT (phase {phase}/2) (chunk") for w in checked), phase


@pytest.mark.parametrize("key, value", [("eval.ttt_global_phase_docs", [4, 2]), ("eval.ttt_global_phase_docs", [2, 2]),
                                        ("eval.ttt_global_phase_docs", [-1]), ("eval.ttt_global_chunk_tokens", 0),
                                        ("eval.ttt_global_momentum", 1.0), ("eval.ttt_lora_alpha", -1.0),
                                        ("eval.ttt_doc_order", "random")])
def test_bad_phase_settings_name_the_key(key, value):
    phases = {} if key == "eval.ttt_global_phase_docs" else {"eval.ttt_global_phase_docs": [2]}
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        pgolf.load_recipe("tiny", overrides={"eval.ttt": "lora", **phases, key: value})


# ----------------------------------------------------------------------------- score-first in processing order


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_score_depends_on_a_token_processed_after_it(model, mode):
    settings, order = MODES[mode]
    moved = assert_score_first_in_order(model, document_stream(), settings, order)
    if settings.get("ttt_global_phase_docs"):
        # a document in phase 1's set (document 1, processed first) reaches every later segment through the SGD
        later = np.concatenate([np.arange(starts_of()[d], starts_of()[d] + LENGTHS[d]) for d in (0, 6, 3, 2, 7, 4)])
        assert np.all(np.isin(later, moved[starts_of()[1] + 2]))
        # a document of the last segment reaches nothing but itself and, with warm start, its slot's successors
        own = np.arange(starts_of()[4] + 1, starts_of()[4] + LENGTHS[4])
        assert set(moved[starts_of()[4] + 2]) <= set(own)  # document 4 is processed last


def test_every_target_is_scored_once_in_every_mode(model):
    tokens = document_stream()
    for settings, _ in MODES.values():
        ev = run(model, tokens, settings)
        assert ev.targets == tokens.size - 1 and np.all(np.isfinite(ev.token_nll)) and np.all(ev.token_nll > 0)
        assert ev.legal and ev.document_independent is False


# ----------------------------------------------------------------------------- warm-start A


class AdapterLog:
    """What every LoRA batch started from, its A at every chunk's forward, and its A at the end."""

    def __init__(self, monkeypatch):
        self.batches: list[dict] = []
        attached, reset = BatchedLoRA.attached, BatchedLoRA.reset
        log = self

        @contextmanager
        def spy_attached(lora):
            entry = {"a": copies(lora.a), "b": copies(lora.b)}
            log.batches.append(entry)
            with attached(lora) as out:
                entry["forwards"] = []  # from here on every reset() starts a chunk's forward
                yield out
            entry["end"] = copies(lora.a)

        def spy_reset(lora):
            entry = log.batches[-1] if log.batches else {}
            if "forwards" in entry and "end" not in entry:
                entry["forwards"].append(copies(lora.a))
            reset(lora)

        monkeypatch.setattr(BatchedLoRA, "attached", spy_attached)
        monkeypatch.setattr(BatchedLoRA, "reset", spy_reset)


def copies(params) -> dict[str, torch.Tensor]:
    return {t: p.detach().clone() for t, p in params.items()}


def rows_of(batch: list[int]) -> list[int]:
    """The batch's documents in the order its forward runs them: longest first, ties in batch order."""
    return [batch[i] for i in np.argsort([-LENGTHS[d] for d in batch], kind="stable")]


def test_warm_start_zeroes_b_and_carries_each_slots_a_from_its_documents_end(model, monkeypatch):
    """Stream order, batches of 3: [0 1 2] [3 4 5] full, [6 7] short. B is 0 at every batch start; the first
    batch and the short one start from the seeded draw; the document in slot j of [3 4 5] (its j-th) starts from
    the A that slot j's document of [0 1 2] had at its own last chunk — not at the batch's end, which weight
    decay has moved on since."""
    log = AdapterLog(monkeypatch)
    settings = {**LORA, "ttt_batch_docs": 3, "ttt_lora_warm_start_a": True}
    run(model, document_stream(), settings)
    assert len(log.batches) == 3
    seeded = BatchedLoRA(model, list(LORA_TARGETS), 4, 3).a  # the default targets, in their order
    chunks = {d: -(-LENGTHS[d] // 16) for d in range(8)}
    first, second, short = log.batches
    for batch in log.batches:
        assert all(torch.count_nonzero(b) == 0 for b in batch["b"].values())  # B starts at 0
    for t, a in seeded.items():
        torch.testing.assert_close(first["a"][t], a, rtol=0, atol=0)
        # the short batch's two documents (one adapter set of 3 rows serves every batch, reset in place)
        torch.testing.assert_close(short["a"][t][..., :2, :, :], a[..., :2, :, :], rtol=0, atol=0)
    before, after = rows_of([0, 1, 2]), rows_of([3, 4, 5])  # [1 0 2], [5 3 4]
    for prev, nxt in zip([0, 1, 2], [3, 4, 5]):  # slot j: the j-th document of each batch
        at_end_of_doc = first["forwards"][chunks[prev] - 1]  # the forward of its last chunk: after its last step
        for t in seeded:
            torch.testing.assert_close(second["a"][t][..., after.index(nxt), :, :],
                                       at_end_of_doc[t][..., before.index(prev), :, :], rtol=0, atol=0)
    # A's first step has no gradient (B = 0): A trains from the second step on, so document 1 (4 chunks) moved it
    assert not torch.allclose(second["a"]["q"][..., after.index(4), :, :], seeded["q"][..., 0, :, :] * (1 - 0.05 * 0.5) ** 3)
    assert chunks[0] < chunks[1]  # document 0 ends 2 chunks before its batch does; document 3 inherits from it
    assert not torch.equal(first["end"]["q"][..., before.index(0), :, :], second["a"]["q"][..., after.index(3), :, :])


@pytest.mark.parametrize("warm", [False, True])
def test_warm_start_makes_a_document_depend_on_the_earlier_documents_of_its_slot_only(model, warm):
    """Batches of 2 in stream order: [0 1] [2 3] [4 5] [6 7], slot 1 holding documents 1, 3, 5, 7. Rewriting
    document 1 changes 3, 5, 7 under warm start only, never their first chunk (B starts at 0, so A cannot act
    before the first step), and never a document of slot 0 — although 6 runs in the first row of its batch
    (longest first), as 1 does."""
    tokens = document_stream()
    settings = {**LORA, "ttt_batch_docs": 2, "ttt_lora_warm_start_a": warm}
    other = tokens.copy()
    s1 = starts_of()[1]
    other[s1 + 1 : s1 + LENGTHS[1]] = np.random.default_rng(9).integers(2, VOCAB, LENGTHS[1] - 1)
    a, b = run(model, tokens, settings), run(model, other, settings)
    assert a.document_independent is (not warm) and a.legal
    for d in (0, 2, 3, 4, 5, 6, 7):
        s = starts_of()[d]
        doc = slice(s, s + LENGTHS[d])
        np.testing.assert_array_equal(a.token_nll[s : s + 16], b.token_nll[s : s + 16])
        if warm and d in (3, 5, 7):
            assert not np.allclose(a.token_nll[doc], b.token_nll[doc], rtol=0, atol=1e-6), d
        else:
            np.testing.assert_array_equal(a.token_nll[doc], b.token_nll[doc], err_msg=str(d))


def test_warm_start_off_is_the_per_document_mode(model):
    tokens = document_stream()
    fresh = run(model, tokens, {**LORA, "ttt_batch_docs": 3})
    for order in ("stream", "length_desc"):
        ev = run(model, tokens, {**LORA, "ttt_batch_docs": 2, "ttt_doc_order": order})
        np.testing.assert_allclose(ev.token_nll, fresh.token_nll, rtol=0, atol=1e-5)
        assert ev.document_independent and ev.mode == "ttt_lora"


def test_one_document_batches_score_as_the_per_document_mode(model):
    """ttt_batch_docs = 1 (or a rank with one slot per batch): the one-row adapter set must go back to the seeded
    A before every document. (With one row, A once shared its storage with the seeded draw, so every later
    document started from the A the previous one trained.)"""
    tokens = document_stream()
    fresh = run(model, tokens, {**LORA, "ttt_batch_docs": 3})
    one = run(model, tokens, {**LORA, "ttt_batch_docs": 1})
    np.testing.assert_allclose(one.token_nll, fresh.token_nll, rtol=0, atol=1e-5)
    seeded = BatchedLoRA(model, ["q"], 4, 1)
    draw = seeded.a["q"].detach().clone()
    with torch.no_grad():
        seeded.a["q"].add_(1.0)  # what training does to A
    seeded.reset_parameters()
    torch.testing.assert_close(seeded.a["q"], draw, rtol=0, atol=0)


# ----------------------------------------------------------------------------- alpha / r


def test_alpha_scales_the_head_adapter_as_an_independent_computation_does():
    """head: logits = c tanh((h W^T + (h A) B alpha / r) / c), computed here from the model's weights."""
    model = small_model({})
    ids = random_ids(2, 12)
    lora = BatchedLoRA(model, ["head"], 4, n_docs=2, alpha=12.0)
    with torch.no_grad():
        lora.b["head"].normal_()
        with lora.attached():
            lora.reset()
            out = model(ids)
        h = model.hidden(ids)
        z = h @ model.tok_emb.T + torch.einsum("nti,nir,nro->nto", h, lora.a["head"], lora.b["head"]) * (12.0 / 4)
        c = model.cfg.logit_softcap
        torch.testing.assert_close(out, c * torch.tanh(z / c), rtol=1e-5, atol=1e-5)


def test_alpha_scales_every_slot_like_the_models_own_lora_with_b_times_alpha_over_r():
    """q and v adapters with alpha 6, rank 2 equal the model's built-in per-virtual-layer LoRA with B * 3."""
    model = small_model({"model.layer_schedule": [0, 1, 2, 1, 2, 3], "model.lora_rank": 2})
    ids = random_ids(2, 24)
    with torch.no_grad():
        bare = copy.deepcopy(model)
        bare.lora_b_q.zero_()
        bare.lora_b_v.zero_()
        lora = BatchedLoRA(bare, ["q", "v"], 2, n_docs=2, alpha=6.0)
        for t in ("q", "v"):
            lora.a[t].copy_(getattr(model, f"lora_a_{t}")[:, None].expand_as(lora.a[t]))
            lora.b[t].copy_(getattr(model, f"lora_b_{t}")[:, None].expand_as(lora.b[t]))
            getattr(model, f"lora_b_{t}").mul_(3.0)
        ref = model(ids)
        with lora.attached():
            lora.reset()
            out = bare(ids)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        unscaled = BatchedLoRA(bare, ["q", "v"], 2, n_docs=2, alpha=2.0)  # alpha = r: no scaling
        assert unscaled.scale == 1.0 and BatchedLoRA(bare, ["q"], 2, n_docs=1).scale == 1.0


# ----------------------------------------------------------------------------- deliberate leaks

# (mode, module, [(exact source text, leaked replacement)]); every text must occur exactly once.
LEAKS = {
    # the leak: the phase's SGD also reads the next document, not yet scored
    "phased: SGD sees the next unscored document": ("phased", "pgolf.eval.ttt_phased", [(
        "done = np.concatenate(scored)",
        "done = np.concatenate(scored + [order[sum(map(len, scored)) :][:1]])")]),
    # the phase runs before its own segment is scored
    "phased: SGD before scoring its segment": ("phased", "pgolf.eval.ttt_phased", [(
        "            lora.score_documents(model, stream, starts, lengths, segment, cfg, deadline, nll)\n"
        "            scored += segment\n",
        "            scored += segment\n"
        "            if k < len(cuts):\n"
        "                global_sgd(model, stream, starts, lengths, np.concatenate(scored), cfg, deadline, '')\n"
        "            lora.score_documents(model, stream, starts, lengths, segment, cfg, deadline, nll)\n")]),
    # the SGD stream takes each document's inputs with the NEXT document's first target appended
    "phased: targets shifted into the next document": ("phased", "pgolf.eval.ttt_phased", [(
        "targets = torch.cat([stream[s + 1 : s + n + 1]", "targets = torch.cat([stream[s + 2 : s + n + 2]")]),
    # warm start carries A from a batch that is processed later: slot chains run backwards
    "warm: a slot inherits from a later batch": ("warm_desc", "pgolf.eval.ttt_lora", [(
        "    for part in plan:\n", "    for part in plan[::-1]:\n")]),
}


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_every_deliberate_leak_fails_the_check(model, monkeypatch, leak):
    mode, name, replacements = LEAKS[leak]
    module = leaked_module(name, replacements)
    # modes.py and ttt_phased reach both modules through pgolf.config.optional, i.e. through sys.modules
    monkeypatch.setitem(sys.modules, name, module)
    settings, order = MODES[mode]
    with pytest.raises(AssertionError, match="scored before it"):
        assert_score_first_in_order(model, document_stream(), settings, order)


# ----------------------------------------------------------------------------- ranks

RANKS_SCRIPT = """
import json, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import pgolf
from pgolf.config import EvalConfig
from test_model import small_model
from test_ttt_phased import MODES, TABLES, document_stream
torch.set_num_threads(1)
dist.init_process_group("gloo")
model = small_model({{"model.vocab_size": 64}})
out = {{}}
for name, (settings, _) in MODES.items():
    ev = pgolf.evaluate(model, document_stream(), None, EvalConfig(context_len={ctx}, batch_seqs=4, **settings), tables=TABLES)
    out[name] = ev.token_nll.tolist()
if dist.get_rank() == 0:
    json.dump(out, open({result!r}, "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_ranks_score_as_one(model, tmp_path):
    """Warm start deals every batch's slots out to the ranks (slots 0 / 1 of batches of 2, chains carried); phases
    split each segment's documents and each SGD step's sequences: the same scores as one process."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT.format(tests=str(REPO / "tests"), ctx=CTX, result=str(tmp_path / "out.json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    tokens = document_stream()
    for name, (settings, _) in MODES.items():
        one = run(model, tokens, settings)
        np.testing.assert_allclose(two[name], one.token_nll, rtol=0, atol=1e-4, err_msg=name)
