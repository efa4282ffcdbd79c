"""Plain evaluation: every target scored exactly once, bytes by the exact rule, bpb from fp64 sums.

The byte rule itself, on every kind of piece and per document of real data, is tested in test_byte_rule.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pgolf
from pgolf.config import EvalConfig
from pgolf.data.shards import read_shard
from pgolf.eval.result import summarize

from byte_rule import RuleTokenizer
from conftest import SP1024_MODEL, VAL_SHARD
from test_model import small_model


@pytest.fixture(scope="module")
def val_stream(shared_data):
    return np.asarray(read_shard(VAL_SHARD))[:3001]  # a short prefix keeps this fast


def _reference_nll(model, tokens):
    """Score each target with one full-length causal pass per 64-token window, the slow obvious way."""
    nll = []
    for start in range(0, tokens.size - 1, 64):
        x = torch.from_numpy(tokens[start : start + 64].astype(np.int64))[None]
        y = torch.from_numpy(tokens[start + 1 : start + 65].astype(np.int64))
        x = x[:, : y.numel()]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].double(), -1)
        nll.append(-logp[torch.arange(y.numel()), y].numpy())
    return np.concatenate(nll)


@pytest.mark.parametrize("length", [3001, 2049, 65, 2])
def test_every_target_is_scored_exactly_once(val_stream, length):
    model = small_model({"model.vocab_size": 1024})
    tokens = val_stream[:length]
    ev = pgolf.evaluate(model, tokens, str(SP1024_MODEL), EvalConfig(context_len=64, batch_seqs=7))
    assert ev.targets == length - 1
    np.testing.assert_array_equal(ev.token_bytes, RuleTokenizer(SP1024_MODEL).stream_bytes(tokens))
    np.testing.assert_allclose(ev.token_nll, _reference_nll(model, tokens), rtol=1e-4, atol=1e-4)
    nats = ev.token_nll.astype(np.float64).sum()
    assert ev.val_loss == pytest.approx(nats / (length - 1), rel=1e-12)
    assert ev.val_bpb == pytest.approx(nats / math.log(2) / ev.token_bytes.sum(), rel=1e-12)
    assert ev.legal and ev.mode == "plain"


def test_summaries_are_accumulated_in_fp64_whatever_the_input_dtype():
    """2**24 + 1 is not a float32: a float32 sum of these nats would lose the 1."""
    loss, bpb = summarize(np.array([2.0**24, 1.0], dtype=np.float32), np.array([3, 1], dtype=np.int16))
    assert loss == (2**24 + 1) / 2 and bpb == (2**24 + 1) / math.log(2.0) / 4
    with pytest.raises(ValueError, match="nothing to score"):
        summarize(np.array([1.0]), np.array([0]))


def test_batching_does_not_change_scores(val_stream):
    model = small_model({"model.vocab_size": 1024})
    a = pgolf.evaluate(model, val_stream, str(SP1024_MODEL), EvalConfig(context_len=128, batch_seqs=1))
    b = pgolf.evaluate(model, val_stream, str(SP1024_MODEL), EvalConfig(context_len=128, batch_seqs=16))
    np.testing.assert_allclose(a.token_nll, b.token_nll, rtol=1e-5, atol=1e-5)


def test_evaluate_requires_a_context_length(val_stream):
    with pytest.raises(ValueError, match="context_len"):
        pgolf.evaluate(small_model({"model.vocab_size": 1024}), val_stream, str(SP1024_MODEL), EvalConfig())
