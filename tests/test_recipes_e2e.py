"""Every shipped recipe runs end to end from the command line at --scale tiny on the FineWeb sample:
train -> pack -> evaluate the artifact -> result.json, with code_bytes = the size of its bundled train_gpt.py.

A few steps and a 2,048-target validation prefix keep each run short. pr1855 trains on CaseOps shards of the same
documents (conftest.caseops_sample: the record's CaseOps tokenizer, the byte sidecar) and is scored by the sidecar's
original bytes.
"""

from __future__ import annotations

import json

import pytest

import pgolf
from pgolf.artifact.bundle import code_bytes
from pgolf.cli import main
from pgolf.config import load_config, recipe_names
from pgolf.training.runs import RESULT_KEYS

from conftest import need_shared_data, recipe_data

RECIPES = ("tiny", "baseline", "pr103", "pr206", "pr595", "pr1573", "pr1536", "pr1855")


def test_every_shipped_recipe_is_covered():
    assert set(recipe_names()) == set(RECIPES)


# pr1855's tiny run is the slowest (simsort of 8,192 embedding rows, lrzip, LoRA TTT with phases scored twice):
# 2 minutes on a quiet 2-core CPU, 12 under load, so it runs with the slow tests.
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r == "pr1855" else r for r in RECIPES])
def test_recipe_runs_end_to_end_from_the_cli(recipe, tmp_path, capsys):
    cfg = pgolf.load_recipe(recipe, scale="tiny")
    data, tokenizer = recipe_data(recipe)
    need_shared_data(data, tokenizer)
    out = tmp_path / "run"
    code = main(["train", "--recipe", recipe, "--scale", "tiny", "--data", str(data), "--tokenizer", str(tokenizer),
                 "--set", "train.steps=3", "--set", "data.val_tokens_limit=2049", "--out", str(out),
                 "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert set(RESULT_KEYS) <= set(result)
    assert result["recipe"] == recipe and result["steps"] == 3 and result["val_targets"] == 2048
    assert 0 < result["val_bpb"] < 20 and result["under_limit"] is True
    assert result["artifact_bytes"] == result["model_bytes"] + result["code_bytes"]
    assert result["model_bytes"] == (out / "artifact.pgolf").stat().st_size
    assert result["code_bytes"] == code_bytes(load_config(out / "config.toml"))
    assert (result["eval_mode"] == "plain") == (cfg.eval.sliding_stride == 0 and cfg.eval.ttt == "none")
    assert result["legal"] is (cfg.eval.ttt != "pre")  # #595's pre-scoring TTT trains on validation tokens
    # pr1536's per-document LoRA TTT is; windows cross documents, and pr1855's warm start and phases carry state
    assert result["document_independent"] is (recipe == "pr1536")
    caseops = cfg.data.text_transform == "caseops"
    assert (result["text_transform"], result["byte_source"]) == (("caseops", "sidecar") if caseops else ("none", "tokens"))
    for name in ("config.toml", "env.json", "log.jsonl", "loss.png"):
        assert (out / name).is_file(), name
