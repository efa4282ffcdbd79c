"""Sliding windows and test-time training: every target scored once, score-first, documents independent, budgets."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pgolf
from pgolf.config import ConfigError, EvalConfig
from pgolf.data.shards import read_shard
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.eval import deadline as deadline_module
from pgolf.eval.deadline import EvalTimeExceeded
from pgolf.eval.lora_adapters import BatchedLoRA
from pgolf.eval.windows import clip_to_documents, document_pieces, document_starts, sliding_windows

from byte_rule import RuleTokenizer
from conftest import REPO, SP1024_MODEL, VAL_SHARD
from test_model import random_ids, small_model

BOS = 1
CTX = 64
MODES = {
    "plain": {},
    "sliding": {"sliding_stride": 16},
    "sliding_docs": {"sliding_stride": 16, "doc_boundaries": True},
    "doc_pieces": {"plain_windows": "doc_pieces"},  # #1536's plain eval_val: pieces of <= CTX from each BOS
    "chunk": {"ttt": "chunk", "sliding_stride": 32, "ttt_chunk_tokens": 512, "ttt_epochs": 1, "ttt_batch_seqs": 4,
              "ttt_lr": 0.05},
    "lora": {"ttt": "lora", "ttt_lora_rank": 4, "ttt_lora_chunk": 32, "ttt_batch_docs": 3, "ttt_lora_lr": 0.01},
    # warm-start A (#1767), one document per batch: each document starts from the A the one before it ended with
    "lora_warm": {"ttt": "lora", "ttt_lora_rank": 4, "ttt_lora_chunk": 64, "ttt_batch_docs": 1, "ttt_lora_lr": 0.01,
                  "ttt_lora_warm_start_a": True, "ttt_lora_alpha": 8.0},
    # phased global TTT: SGD on all weights after documents 0 and 0-1 are scored (tests/test_ttt_phased.py has more)
    "phased": {"ttt": "lora", "ttt_lora_rank": 4, "ttt_lora_chunk": 64, "ttt_batch_docs": 3, "ttt_lora_lr": 0.01,
               "ttt_global_phase_docs": [1, 2], "ttt_global_chunk_tokens": 128, "ttt_global_batch_seqs": 2,
               "ttt_global_lr": 0.01},
}
LORA_MODES = {name for name, settings in MODES.items() if settings.get("ttt") == "lora"}  # BOS-delimited documents


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These forwards are tiny: one thread is fastest, and steady when the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stream(shared_data) -> np.ndarray:
    return np.asarray(read_shard(VAL_SHARD))[:2200].astype(np.int64)  # 4 documents, the last one cut


@pytest.fixture(scope="module")
def tables(stream):
    return byte_tables(load_tokenizer(SP1024_MODEL), 1024)


@pytest.fixture(scope="module")
def model():
    return small_model({"model.vocab_size": 1024})


def run(model, tokens, tables, **settings) -> pgolf.EvalResult:
    cfg = EvalConfig(context_len=CTX, batch_seqs=8, **settings)
    return pgolf.evaluate(model, tokens, None, cfg, tables=tables)


def later_tokens_changed(tokens: np.ndarray, p: int, keep_bos: bool, seed: int = 0) -> np.ndarray:
    """tokens with every token from position p on replaced (BOS positions kept if asked)."""
    rng = np.random.default_rng(seed)
    out = tokens.copy()
    tail = rng.integers(2, 1024, size=tokens.size - p)
    out[p:] = np.where(keep_bos & (tokens[p:] == BOS), BOS, tail)
    return out


# ----------------------------------------------------------------------------- tilings


@pytest.mark.parametrize("n, window, stride", [(1, 8, 2), (7, 8, 2), (8, 8, 2), (9, 8, 2), (100, 8, 3), (100, 8, 8),
                                                (33, 16, 5), (1000, 64, 64), (1000, 64, 1)])
def test_sliding_tiling_scores_every_target_once_with_the_longest_context(n, window, stride):
    w = sliding_windows(n, window, stride)
    assert w.score[0] == 0 and w.end[-1] == n
    assert np.array_equal(w.score[1:], w.end[:-1])       # scored ranges abut: each target exactly once
    assert np.all(w.end - w.start <= window) and np.all(w.scored > 0)
    for ws, we, ss in zip(w.start, w.end, w.score):
        positions = np.arange(ss, we)
        assert np.all(positions - ws >= np.minimum(positions, window - stride))  # >= C tokens of context


def test_document_cut_windows_never_reach_before_the_targets_document(stream):
    sliding = sliding_windows(stream.size - 1, 48, 16)
    w = clip_to_documents(sliding, stream, BOS)
    assert w.score[0] == 0 and w.end[-1] == stream.size - 1 and np.array_equal(w.score[1:], w.end[:-1])
    starts = document_starts(stream, BOS)
    assert len(w) == len(sliding) + int(np.sum(np.isin(starts[1:], sliding.score, invert=True)))
    for ws, we, ss in zip(w.start, w.end, w.score):
        doc = starts[np.searchsorted(starts, np.arange(ss, we), "right") - 1]
        assert np.all(doc == doc[0])                       # one document per piece
        original = sliding.start[np.searchsorted(sliding.score, ss, "right") - 1]
        assert ws == max(doc[0], original)                 # the window's context, cut at the document start


def test_document_pieces_start_at_every_bos_and_every_piece_length_after_it():
    #                0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16
    tokens = np.array([5, 6, 1, 7, 8, 9, 3, 4, 2, 1, 5, 1, 6, 7, 8, 9, 4])  # BOS at 2, 9, 11; 16 targets
    w = document_pieces(tokens, 3, BOS)
    assert w.start.tolist() == [0, 2, 5, 8, 9, 11, 14]   # doc [0,2); doc [2,9) in 3s; [9,11); [11,16) in 3s
    assert w.end.tolist() == [2, 5, 8, 9, 11, 14, 16]
    assert np.array_equal(w.score, w.start)             # a piece is scored whole, with no context before it
    fixed = clip_to_documents(sliding_windows(16, 3, 3), tokens, BOS)  # fixed windows cut at documents differ
    assert fixed.start.tolist() != w.start.tolist()
    ones = document_pieces(tokens, 1, BOS)                # pieces of one input: every target alone
    assert ones.start.tolist() == ones.score.tolist() == list(range(16)) and ones.end.tolist() == list(range(1, 17))
    with pytest.raises(ValueError, match="eval.context_len must be > 0 for document pieces, got 0"):
        document_pieces(tokens, 0, BOS)


def test_document_pieces_score_each_piece_as_a_forward_from_its_documents_bos(model, stream, tables):
    tokens = stream[:700]
    ev = run(model, tokens, tables, plain_windows="doc_pieces")
    fixed = run(model, tokens, tables, doc_boundaries=True)
    starts = document_starts(tokens, BOS)
    assert starts.size > 1 and np.any(starts[1:] % CTX)          # a document starts off the fixed grid
    for t in range(tokens.size - 1):                               # target t is tokens[t + 1]
        doc = int(starts[np.searchsorted(starts, t, "right") - 1])
        if (t - doc) % CTX not in (0, 5, CTX - 1) and t != tokens.size - 2:
            continue
        piece = doc + (t - doc) // CTX * CTX
        x = torch.from_numpy(tokens[piece : t + 1])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0, -1].double(), -1)
        assert ev.token_nll[t] == pytest.approx(-logp[tokens[t + 1]].item(), abs=1e-4), t
    assert not np.allclose(ev.token_nll, fixed.token_nll, atol=1e-4)  # not the fixed grid cut at documents


# ----------------------------------------------------------------------------- exactly once, exact bytes


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_target_is_scored_once_with_the_byte_rule(model, stream, tables, mode):
    ev = run(model, stream, tables, **MODES[mode])
    assert ev.targets == stream.size - 1 and np.all(np.isfinite(ev.token_nll))
    rule = RuleTokenizer(SP1024_MODEL).stream_bytes(stream)  # the independent byte rule
    np.testing.assert_array_equal(ev.token_bytes, rule)
    assert ev.bytes == int(rule.sum())
    assert ev.val_bpb == pytest.approx(ev.token_nll.sum() / np.log(2) / rule.sum(), rel=1e-12)
    assert ev.legal
    assert ev.mode == {"sliding_docs": "sliding", "doc_pieces": "plain", "chunk": "ttt_chunk", "lora": "ttt_lora", "lora_warm": "ttt_lora+warm_a",
                       "phased": "ttt_lora+phased"}.get(mode, mode)
    assert ev.document_independent is (mode == "lora")  # windows cross documents; the other TTTs carry state


def test_sliding_with_stride_equal_to_the_context_is_plain(model, stream, tables):
    plain = run(model, stream, tables)
    same = run(model, stream, tables, sliding_stride=CTX)
    capped = run(model, stream, tables, max_seconds=1e6)  # plain windows through the budgeted path
    np.testing.assert_allclose(same.token_nll, plain.token_nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(capped.token_nll, plain.token_nll, rtol=1e-5, atol=1e-5)
    assert capped.mode == "plain"


def test_sliding_scores_equal_a_forward_on_exactly_their_context(model, stream, tables):
    tokens = stream[:300]
    ev = run(model, tokens, tables, sliding_stride=16)
    for t in (0, 5, 63, 64, 70, 79, 80, 150, 298):  # target t is tokens[t + 1]
        start = (t - (CTX - 16)) // 16 * 16 if t >= CTX else 0  # window k >= 1 starts at 16k, scores [16k+48, 16k+64)
        x = torch.from_numpy(tokens[start : t + 1])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0, -1].double(), -1)
        assert ev.token_nll[t] == pytest.approx(-logp[tokens[t + 1]].item(), abs=1e-4)


def test_cutting_windows_at_documents_equals_document_masked_attention(stream, tables):
    """On a model that never attends across BOS, cutting the window there changes nothing; on one that does, it does."""
    masked = small_model({"model.vocab_size": 1024, "model.doc_attention": True})
    cut = run(masked, stream, tables, sliding_stride=16, doc_boundaries=True)
    np.testing.assert_allclose(cut.token_nll, run(masked, stream, tables, sliding_stride=16).token_nll,
                               rtol=1e-4, atol=1e-4)
    plain = small_model({"model.vocab_size": 1024})
    a = run(plain, stream, tables, sliding_stride=16, doc_boundaries=True)
    b = run(plain, stream, tables, sliding_stride=16)
    assert not np.allclose(a.token_nll, b.token_nll) and a.val_bpb != b.val_bpb


# ----------------------------------------------------------------------------- score-first / causality


@pytest.mark.parametrize("mode", sorted(MODES))
def test_changing_later_tokens_never_changes_earlier_scores(model, stream, tables, mode):
    p = 1300
    changed = later_tokens_changed(stream, p, keep_bos=mode in LORA_MODES)
    a, b = run(model, stream, tables, **MODES[mode]), run(model, changed, tables, **MODES[mode])
    np.testing.assert_allclose(b.token_nll[: p - 1], a.token_nll[: p - 1], rtol=0, atol=1e-6)
    assert not np.allclose(b.token_nll[p:], a.token_nll[p:])


def test_chunk_ttt_with_one_chunk_is_sliding_and_with_more_it_learns(model, stream, tables):
    sliding = run(model, stream, tables, sliding_stride=32)
    one = run(model, stream, tables, **{**MODES["chunk"], "ttt_chunk_tokens": 10_000})
    np.testing.assert_allclose(one.token_nll, sliding.token_nll, rtol=1e-5, atol=1e-5)
    ttt = run(model, stream, tables, **MODES["chunk"])
    np.testing.assert_allclose(ttt.token_nll[:512], sliding.token_nll[:512], rtol=1e-5, atol=1e-5)  # chunk 0
    assert not np.allclose(ttt.token_nll[600:], sliding.token_nll[600:])  # updated weights score later chunks


def test_ttt_never_changes_the_callers_model(stream, tables):
    model = small_model({"model.vocab_size": 1024})
    before = copy.deepcopy(model.state_dict())
    for mode in ("chunk", "lora", "phased"):  # phased trains every weight of its copy
        run(model, stream[:700], tables, **MODES[mode])
    run(model, stream[:700], tables, ttt="pre", ttt_epochs=1, ttt_batch_seqs=2, ttt_lr=0.01)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.head_adapter is None and all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- LoRA TTT


@pytest.mark.parametrize("mode", ["lora", "lora_warm"])
def test_lora_ttt_of_a_document_ignores_every_other_document_unless_warm_started(model, stream, tables, mode):
    """Fresh adapters: document 1 scores the same whatever documents 0 and 2 hold, and alone. Warm start: it
    starts from the A document 0 ended with, so rewriting document 0 changes it, past its first chunk (B = 0
    there) — the result says document_independent = false, and it is still legal."""
    starts = document_starts(stream, BOS)  # documents [0, 523), [523, 1782), [1782, 2113), [2113, ...)
    a = run(model, stream, tables, **MODES[mode])
    other = stream.copy()
    rng = np.random.default_rng(1)
    other[2:523] = rng.integers(2, 1024, size=521)            # document 0 rewritten, same length
    other[1783:2113] = rng.integers(2, 1024, size=330)        # document 2 rewritten, same length
    b = run(model, other, tables, **MODES[mode])
    doc1 = slice(starts[1], starts[2])                         # targets of document 1 (its last is the next BOS)
    assert a.document_independent is (mode == "lora") and a.legal
    if mode == "lora_warm":
        chunk = MODES[mode]["ttt_lora_chunk"]
        np.testing.assert_array_equal(b.token_nll[starts[1] : starts[1] + chunk], a.token_nll[starts[1] : starts[1] + chunk])
        assert not np.allclose(b.token_nll[doc1], a.token_nll[doc1], rtol=0, atol=1e-6)
        return
    np.testing.assert_allclose(b.token_nll[doc1], a.token_nll[doc1], rtol=0, atol=1e-6)
    alone = stream[starts[1] : starts[2] + 1]                  # document 1 as the whole stream
    c = run(model, alone, tables, **MODES["lora"])
    np.testing.assert_allclose(c.token_nll, a.token_nll[doc1], rtol=1e-4, atol=1e-4)


def test_lora_first_chunk_is_the_base_model_on_the_document_alone(model, stream, tables):
    ev = run(model, stream, tables, **MODES["lora"])
    for s in document_starts(stream, BOS):
        x = torch.from_numpy(stream[s : s + 32])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].double(), -1)
        ref = -logp[torch.arange(32), torch.from_numpy(stream[s + 1 : s + 33])].numpy()
        np.testing.assert_allclose(ev.token_nll[s : s + 32], ref, rtol=1e-4, atol=1e-4)
    plain_docs = run(model, stream, tables, sliding_stride=32, doc_boundaries=True)
    assert ev.val_bpb < plain_docs.val_bpb  # lr 0.01 on a random model: adapting to each document helps


def test_lora_hooks_put_each_virtual_slot_in_its_place():
    """The hooked adapters reproduce the model's own per-virtual-layer LoRA on a looped schedule."""
    model = small_model({"model.layer_schedule": [0, 1, 2, 1, 2, 3], "model.lora_rank": 2})
    ids = random_ids(2, 24)
    with torch.no_grad():
        ref = model(ids)
        bare = copy.deepcopy(model)
        bare.lora_b_q.zero_()
        bare.lora_b_v.zero_()
        lora = BatchedLoRA(bare, ["q", "v"], 2, n_docs=2)
        for t in ("q", "v"):
            lora.a[t].copy_(getattr(model, f"lora_a_{t}")[:, None].expand_as(lora.a[t]))
            lora.b[t].copy_(getattr(model, f"lora_b_{t}")[:, None].expand_as(lora.b[t]))
        with lora.attached():
            lora.reset()
            out = bare(ids)
            lora.check_complete()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert bare.head_adapter is None and not any(m._forward_hooks for m in bare.modules())


@pytest.mark.parametrize("variant", [{}, {"model.layer_schedule": [0, 1, 2, 1, 2, 3]}, {"model.tie_embeddings": False},
                                     {"model.parallel_residual": "separate_lanes", "model.parallel_start_layer": 2},
                                     {"model.parallel_residual": "cross_lanes", "model.parallel_start_layer": 2},
                                     {"model.sparse_attn_gate": True, "model.gate_window": 4},
                                     {"model.smear": "content_gate"},
                                     {"model.doc_attention": True}])
def test_fresh_lora_adapters_are_a_no_op_on_every_target(variant):
    model = small_model(variant)
    ids = random_ids(3, 20)
    lora = BatchedLoRA(model, ["q", "k", "v", "o", "mlp", "head"], 4, n_docs=3)
    with torch.no_grad():
        ref = model(ids)
        with lora.attached():
            lora.reset()
            out = model(ids)
            lora.check_complete()
            with torch.no_grad():
                for b in lora.b.values():
                    b.normal_()
            lora.reset()
            moved = model(ids)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(moved, ref)


# ----------------------------------------------------------------------------- legality, budget, config


def test_pre_ttt_is_reported_not_legal(model, stream, tables):
    ev = run(model, stream[:800], tables, ttt="pre", ttt_epochs=2, ttt_batch_seqs=4, ttt_lr=0.01, sliding_stride=32)
    assert ev.legal is False and ev.mode == "ttt_pre+sliding" and ev.targets == 799
    assert any("NOT LEGAL" in n for n in ev.notes)
    plain = run(model, stream[:800], tables, ttt="pre", ttt_epochs=1, ttt_batch_seqs=4, ttt_lr=0.01)
    assert plain.legal is False and plain.mode == "ttt_pre+plain"
    assert ev.val_bpb < run(model, stream[:800], tables, sliding_stride=32).val_bpb  # it trained on what it scores


@pytest.mark.parametrize("mode", ["plain", "sliding", "chunk", "lora", "lora_warm", "phased", "pre"])
def test_max_seconds_stops_the_work_where_the_budget_runs_out(model, stream, tables, mode, monkeypatch):
    """On a clock that moves 1 s per forward pass, a 2.5 s budget stops every mode after its third forward, with
    an error and no score, where the whole evaluation takes many more."""
    settings = {"pre": {"ttt": "pre", "ttt_epochs": 1}}.get(mode, MODES.get(mode, {}))
    forwards: list[int] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: forwards.append(1))  # copies share it
    monkeypatch.setattr(deadline_module, "time", SimpleNamespace(perf_counter=lambda: float(len(forwards))))
    cfg = dict(context_len=CTX, batch_seqs=2, **settings)
    try:
        pgolf.evaluate(model, stream[:1200], None, EvalConfig(**cfg), tables=tables)
        whole = len(forwards)
        forwards.clear()
        with pytest.raises(EvalTimeExceeded, match="eval.max_seconds = 2.5"):
            pgolf.evaluate(model, stream[:1200], None, EvalConfig(**cfg, max_seconds=2.5), tables=tables)
    finally:
        handle.remove()
    assert len(forwards) == 3 and whole >= 10


def test_the_time_cap_counts_from_its_start_and_stops_only_past_the_budget(monkeypatch):
    """On a clock set by hand: a deadline that began earlier (start) counts from then; at exactly max_seconds the
    work goes on, past it it stops, for a budget under a second too; max_seconds 0 never stops."""
    clock = [100.0]
    monkeypatch.setattr(deadline_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    late = deadline_module.Deadline(0.5, start=99.0)
    assert late.elapsed == 1.0
    with pytest.raises(EvalTimeExceeded, match="after 1.0 s during scoring: over eval.max_seconds = 0.5"):
        late.check("scoring")
    budget = deadline_module.Deadline(0.5)
    clock[0] = 100.5
    budget.check("scoring")                                   # 0.5 s of 0.5: not past the budget
    clock[0] = 100.625
    with pytest.raises(EvalTimeExceeded, match="over eval.max_seconds = 0.5"):
        budget.check("scoring")
    clock[0] = 1e9
    deadline_module.Deadline(0).check("scoring")              # no cap


@pytest.mark.parametrize("key, value, match", [("eval.ttt_lora_targets", ["q", "x"], "ttt_lora_targets"),
                                               ("eval.ttt_lora_chunk", 10_000, "ttt_lora_chunk"),
                                               ("eval.ttt_freeze_blocks", 99, "ttt_freeze_blocks"),
                                               ("eval.max_seconds", -1.0, "max_seconds")])
def test_bad_eval_settings_name_the_key(key, value, match):
    ttt = {"eval.ttt": "chunk"} if "freeze" in key else {"eval.ttt": "lora"}
    with pytest.raises(ConfigError, match=match):
        pgolf.load_recipe("tiny", overrides={**ttt, key: value})


@pytest.mark.parametrize("recipe, stride, ttt, context, cap", [
    ("pr103", 64, "none", 4096, 0), ("pr206", 64, "none", 2048, 0), ("pr1573", 64, "none", 2048, 0),
    ("pr595", 64, "pre", 2048, 0), ("pr1536", 0, "lora", 2048, 600), ("baseline", 0, "none", 1024, 0)])
def test_recipes_evaluate_as_their_submissions_did(recipe, stride, ttt, context, cap):
    """pr1536 runs under the challenge's 600 s evaluation limit, as its record did (TTT 252 s, eval <= 560 s)."""
    e = pgolf.load_recipe(recipe).eval
    assert (e.sliding_stride, e.ttt, e.context_len, e.max_seconds) == (stride, ttt, context, cap)
    assert e.plain_windows == ("doc_pieces" if recipe == "pr1536" else "fixed")  # #1536's plain eval_val
    assert pgolf.load_recipe(recipe, scale="tiny").eval.max_seconds == 0  # no cap on a CPU


# ----------------------------------------------------------------------------- CLI and ranks


def test_cli_eval_flags(micro, tmp_path, capsys):
    from pgolf.cli import main
    cfg = micro()
    torch.manual_seed(0)
    pgolf.pack(pgolf.build_model(cfg.model), cfg, tmp_path / "a.pgolf")
    results = {}
    for name, flags in {"sliding": ["--sliding-stride", "16"], "pre": ["--ttt", "pre", "--sliding-stride", "64"]}.items():
        assert main(["eval", str(tmp_path / "a.pgolf"), "--device", "cpu", "--json", "--set", "eval.ttt_epochs=1",
                     "--val-tokens", "4097", *flags]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["sliding"]["eval_mode"] == "sliding" and results["sliding"]["legal"] is True
    assert results["pre"]["eval_mode"] == "ttt_pre+sliding" and results["pre"]["legal"] is False
    assert results["sliding"]["val_targets"] == results["pre"]["val_targets"] == 4096
    assert main(["eval", str(tmp_path / "a.pgolf"), "--device", "cpu", "--ttt", "lora", "--val-tokens", "4097",
                 "--set", "eval.ttt_lora_chunk=4096"]) != 0
    assert "eval.ttt_lora_chunk" in capsys.readouterr().err


RANKS_SCRIPT = """
import json, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import pgolf
from pgolf.config import EvalConfig
from test_model import small_model
torch.set_num_threads(1)
dist.init_process_group("gloo")
tokens = np.load({tokens!r})
model = small_model({{"model.vocab_size": 1024}})
out = {{}}
for name, settings in json.loads({modes!r}).items():
    cfg = EvalConfig(context_len={ctx}, batch_seqs=8, **settings)
    ev = pgolf.evaluate(model, tokens, {sp!r}, cfg)
    out[name] = [ev.val_bpb, ev.token_nll.tolist()]
if dist.get_rank() == 0:
    json.dump(out, open({result!r}, "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_ranks_score_as_one(model, stream, tables, tmp_path):
    tokens = stream[:1500]
    modes = {**{k: MODES[k] for k in ("sliding_docs", "chunk", "lora")},
             "pre": {"ttt": "pre", "ttt_epochs": 1, "ttt_batch_seqs": 4, "ttt_lr": 0.01, "sliding_stride": 32}}
    modes["chunk"] = {**modes["chunk"], "ttt_batch_seqs": 3}  # steps that do not split evenly over the ranks
    np.save(tmp_path / "tokens.npy", tokens)
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT.format(tests=str(REPO / "tests"), tokens=str(tmp_path / "tokens.npy"),
                                          modes=json.dumps(modes), ctx=CTX, sp=str(SP1024_MODEL),
                                          result=str(tmp_path / "out.json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    for name, settings in modes.items():
        one = run(model, tokens, tables, **settings)
        assert len(two[name][1]) == one.targets == tokens.size - 1
        np.testing.assert_allclose(two[name][1], one.token_nll, rtol=0, atol=2e-3, err_msg=name)
        assert two[name][0] == pytest.approx(one.val_bpb, abs=1e-4), name
