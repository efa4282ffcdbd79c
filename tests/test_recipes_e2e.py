"""Every shipped recipe runs end to end from the command line at --scale tiny on the FineWeb sample:
train -> pack -> evaluate the artifact -> result.json, with code_bytes = the size of its bundled train_gpt.py.

A few steps and a 2,048-target validation prefix keep each run short. A recipe whose stage (QAT, GPTQ, sliding
windows, a TTT mode) is owned by a module that is not in the tree yet is skipped, naming that module.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

import pgolf
from pgolf.artifact.bundle import code_bytes
from pgolf.cli import main
from pgolf.config import load_config, recipe_names
from pgolf.training.runs import RESULT_KEYS

from conftest import SHARED

RECIPES = ("tiny", "baseline", "pr103", "pr206", "pr595", "pr1573", "pr1536")


def stage_modules(cfg: pgolf.Config) -> list[str]:
    """The modules that carry the stages this config switches on (beyond plain training and evaluation)."""
    needed = []
    if cfg.quant.qat != "none":
        needed.append("pgolf.quant.qat")
    if "gptq" in (cfg.quant.method, cfg.quant.embed_method):
        needed.append("pgolf.quant.gptq")
    if cfg.eval.sliding_stride > 0 or cfg.eval.ttt != "none":
        needed.append("pgolf.eval.modes")
    if cfg.eval.sliding_stride > 0:
        needed.append("pgolf.eval.sliding")
    if cfg.eval.ttt != "none":
        needed.append(f"pgolf.eval.ttt_{cfg.eval.ttt}")
    return needed


def test_every_shipped_recipe_is_covered():
    assert set(recipe_names()) == set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_end_to_end_from_the_cli(recipe, tmp_path, capsys):
    cfg = pgolf.load_recipe(recipe, scale="tiny")
    for module in stage_modules(cfg):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{recipe} needs {module}, which another engineer is still building")
    vocab = cfg.model.vocab_size
    data = SHARED / "datasets" / f"fineweb10B_sp{vocab}_sample"
    tokenizer = SHARED / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    if not data.is_dir() or not tokenizer.is_file():
        pytest.skip(f"needs the sp{vocab} FineWeb sample and tokenizer in {SHARED}")
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
    for name in ("config.toml", "env.json", "log.jsonl", "loss.png"):
        assert (out / name).is_file(), name
