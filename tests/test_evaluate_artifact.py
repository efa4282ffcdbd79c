"""`pgolf eval` scores the whole validation split unless asked for a prefix, and says which; eval.tail = "drop"
scores exactly the challenge's target set (its train_gpt.py cuts the stream to a multiple of the sequence length)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pgolf
from pgolf.cli import main
from pgolf.cli.evaluate_artifact import evaluate_artifact
from pgolf.config import ConfigError, EvalConfig, finalize
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.tokenizer import byte_tables, load_tokenizer

from byte_rule import RuleTokenizer
from conftest import SP1024_MODEL, VAL_SHARD, micro_config
from test_model import small_model

SPLIT_TOKENS = 5000  # the validation split of the test folder: 4,999 targets


@pytest.fixture(scope="module")
def artifact(shared_data, tmp_path_factory):
    """A micro artifact whose run scored a 4,097-token prefix (data.val_tokens_limit), and a 5,000-token split."""
    cfg = micro_config()
    assert cfg.data.val_tokens_limit == 4097
    folder = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    pgolf.pack(pgolf.build_model(cfg.model), cfg, folder / "a.pgolf")
    write_shard(folder / "data" / "fineweb_val_000000.bin", np.asarray(read_shard(VAL_SHARD))[:SPLIT_TOKENS])
    return folder / "a.pgolf", folder / "data"


def score(artifact, **kwargs):
    path, data = artifact
    return evaluate_artifact(path, str(data), str(SP1024_MODEL), device="cpu", **kwargs)


def direct(artifact, n_tokens: int, **eval_settings) -> pgolf.EvalResult:
    """The artifact's model on the first n_tokens of the split, through pgolf.evaluate."""
    path, data = artifact
    model, cfg = pgolf.unpack(path)
    tokens = np.asarray(read_shard(data / "fineweb_val_000000.bin"))[:n_tokens]
    settings = dataclasses.replace(finalize(cfg).eval, **eval_settings)
    return pgolf.evaluate(model, tokens, None, settings, tables=byte_tables(load_tokenizer(SP1024_MODEL), 1024))


def test_the_whole_split_is_scored_by_default_not_the_runs_prefix(artifact):
    result = score(artifact)
    assert result["val_targets"] == result["val_split_targets"] == SPLIT_TOKENS - 1
    assert result["val_prefix"] is False and result["trained_val_tokens_limit"] == 4097
    assert result["val_bpb"] == pytest.approx(direct(artifact, SPLIT_TOKENS).val_bpb, abs=1e-9)
    assert result["val_bpb"] != pytest.approx(direct(artifact, 4097).val_bpb, abs=1e-6)


@pytest.mark.parametrize("how", ["val_tokens", "override"])
def test_a_prefix_is_scored_when_asked_for_and_said_to_be_one(artifact, how):
    kwargs = {"val_tokens": 1001} if how == "val_tokens" else {"overrides": {"data.val_tokens_limit": 1001}}
    result = score(artifact, **kwargs)
    assert result["val_targets"] == 1000 and result["val_split_targets"] == SPLIT_TOKENS - 1
    assert result["val_prefix"] is True and result["val_tokens_limit"] == 1001
    assert result["val_bpb"] == pytest.approx(direct(artifact, 1001).val_bpb, abs=1e-9)


def test_cli_says_how_many_targets_it_scored(artifact, capsys):
    path, data = artifact
    common = ["eval", str(path), "--data", str(data), "--tokenizer", str(SP1024_MODEL), "--device", "cpu"]
    assert main(common) == 0
    assert "scored all 4,999 targets of the split" in capsys.readouterr().out
    assert main(common + ["--val-tokens", "2001"]) == 0
    assert "scored the first 2,000 of the split's 4,999 targets (a prefix" in capsys.readouterr().out
    assert main(common + ["--tail", "drop", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["eval_tail"], result["val_targets"], result["eval_tail_dropped"]) == ("drop", 4992, 7)  # 78 x 64


def test_only_eval_settings_and_the_prefix_can_be_changed(artifact):
    with pytest.raises(ConfigError, match="'model.num_layers' would change the model"):
        score(artifact, overrides={"model.num_layers": 3})
    with pytest.raises(ConfigError, match="--val-tokens"):
        score(artifact, val_tokens=1)


# ----------------------------------------------------------------------------- eval.tail


def official_score(model, tokens: np.ndarray, seq_len: int) -> tuple[int, float, float]:
    """(targets, val_loss, val_bpb) as the challenge's train_gpt.py computes them, written out here:
    load_validation_tokens keeps tokens[: usable + 1] with usable = ((N - 1) // T) * T; eval_val cuts that into
    rows of T, scores every row from an empty context and sums nats and rule bytes."""
    usable = ((tokens.size - 1) // seq_len) * seq_len
    kept = torch.from_numpy(tokens[: usable + 1].astype(np.int64))
    x, y = kept[:-1].view(-1, seq_len), kept[1:].view(-1, seq_len)
    with torch.no_grad():
        nats = F.cross_entropy(model(x).double().flatten(0, 1), y.flatten(), reduction="sum").item()
    n_bytes = int(RuleTokenizer(SP1024_MODEL).stream_bytes(kept.numpy()).sum())
    return usable, nats / usable, nats / math.log(2) / n_bytes


@pytest.mark.parametrize("mode", [{}, {"sliding_stride": 64}])
def test_tail_drop_scores_exactly_the_challenges_targets(shared_data, mode):
    tokens = np.asarray(read_shard(VAL_SHARD))[:1001]
    model = small_model({"model.vocab_size": 1024})
    targets, loss, bpb = official_score(model, tokens, 64)
    assert targets == 960  # 15 rows of 64; the last 40 targets are not scored
    ev = pgolf.evaluate(model, tokens, str(SP1024_MODEL), EvalConfig(context_len=64, tail="drop", **mode))
    assert (ev.targets, ev.dropped, ev.tail) == (960, 40, "drop")
    assert ev.val_loss == pytest.approx(loss, rel=1e-5) and ev.val_bpb == pytest.approx(bpb, rel=1e-5)
    every = pgolf.evaluate(model, tokens, str(SP1024_MODEL), EvalConfig(context_len=64, **mode))
    assert (every.targets, every.dropped, every.tail) == (1000, 0, "score")


def test_tail_settings_are_checked():
    with pytest.raises(ConfigError, match="eval.tail"):
        pgolf.load_recipe("tiny", overrides={"eval.tail": "cut"})
    with pytest.raises(ValueError, match="eval.tail = 'drop' leaves nothing to score"):
        pgolf.evaluate(torch.nn.Identity(), np.arange(40), None, EvalConfig(context_len=64, tail="drop"))
