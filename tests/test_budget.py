"""The byte budget: `pgolf recipes` and `pgolf pack` price code with the config's own train_gpt.py and count the
header exactly; the estimate is code + header (exact) + an estimated payload."""

from __future__ import annotations

import json

import pgolf
from pgolf.artifact.budget import estimate_breakdown
from pgolf.artifact.sizes import LIMIT_BYTES
from pgolf.artifact.sizes import runtime_code_bytes
from pgolf.cli import main
from pgolf.config import Config, recipe_names
from pgolf.quant.pack import header_bytes

from conftest import write_run_folder
from test_model import SMALL, small_model


def test_pgolf_recipes_prices_each_recipes_own_code_and_header(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(recipe_names())
    for name, row in rows.items():
        cfg = pgolf.load_recipe(name, "full", {"quant.allow_over_budget": True})
        assert row["code_bytes"] == runtime_code_bytes(cfg), name
        assert row["header_bytes"] == header_bytes(cfg) + 84, name
        assert row["artifact_estimate"] == row["code_bytes"] + row["header_bytes"] + row["payload_estimate"]
        assert row["fits"] == (row["artifact_estimate"] <= LIMIT_BYTES)
    default = runtime_code_bytes(Config())
    assert sum(row["code_bytes"] != default for row in rows.values()) >= 5  # the default config's code would be wrong


def test_pgolf_pack_prices_the_code_of_the_runs_config(tmp_path, capsys):
    cfg = pgolf.load_recipe("baseline", overrides={**SMALL, "quant.passthrough_max_numel": 256, "seed": 7,
                                                  "data.path": "/somewhere/with/a/long/name/fineweb10B_sp1024"})
    folder = write_run_folder(tmp_path / "run", cfg, small_model({}))
    assert main(["pack", str(folder), "--out", str(tmp_path / "a.pgolf"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run_cfg = pgolf.load_config(folder / "config.toml")
    assert result["code_bytes"] == runtime_code_bytes(run_cfg) != runtime_code_bytes(Config())
    assert result["breakdown"]["code_bytes"] == result["code_bytes"]
    assert result["artifact_bytes"] == result["model_bytes"] + result["code_bytes"]
    assert result["header_bytes"] == header_bytes(run_cfg) == result["breakdown"]["header_bytes"]


def test_the_estimate_is_exact_code_and_header_plus_the_payload_estimate():
    cfg = pgolf.load_recipe("pr1536", "full")
    b = estimate_breakdown(cfg)
    assert b["code_bytes"] == runtime_code_bytes(cfg) and b["header_bytes"] == header_bytes(cfg)
    assert b["artifact_bytes_estimate"] == b["code_bytes"] + b["framing_bytes"] + b["header_bytes"] + b["payload_bytes_estimate"]
    assert b["margin_bytes"] == LIMIT_BYTES - b["artifact_bytes_estimate"]
