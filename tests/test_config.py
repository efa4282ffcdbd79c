"""Config: recipes resolve in order, overrides are typed, bad keys and impossible combinations name the key."""

from __future__ import annotations

import dataclasses

import pytest

import pgolf
from pgolf.config import (ConfigError, apply_overrides, config_from_dict, config_to_dict, describe_keys, load_config,
                          parse_override_value, parse_set_args, recipe_names)
from pgolf.config.schema import SECTIONS, all_keys
from pgolf.training.runs import save_config


def test_every_shipped_recipe_loads_at_both_scales_and_resolves_its_eval_context():
    for name in recipe_names():
        for scale in ("full", "tiny"):
            cfg = pgolf.load_recipe(name, scale=scale)
            assert cfg.recipe == name and cfg.scale == scale
            seq = cfg.train.seq_len  # eval.context_len 0 means train.seq_len; an explicit value stays as it is
            assert pgolf.load_recipe(name, scale=scale, overrides={"eval.context_len": 0}).eval.context_len == seq
            assert pgolf.load_recipe(name, scale=scale, overrides={"eval.context_len": 2 * seq}).eval.context_len == 2 * seq
    assert pgolf.load_recipe("pr103").eval.context_len == 4096 != pgolf.load_recipe("pr103").train.seq_len


def test_tiny_tables_apply_after_full_tables_unless_a_child_sets_the_key(tmp_path):
    parent = tmp_path / "parent.toml"
    parent.write_text('[model]\nmodel_dim = 512\nnum_heads = 8\n[tiny.model]\nmodel_dim = 128\nnum_layers = 2\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "parent.toml"\n[model]\nnum_layers = 12\nnum_heads = 4\n[tiny.model]\nnum_heads = 2\nnum_kv_heads = 1\n')
    assert pgolf.load_recipe(str(child)).model.model_dim == 512
    tiny = pgolf.load_recipe(str(child), scale="tiny")
    assert tiny.model.model_dim == 128      # the parent's tiny size applies: the child did not set it
    assert tiny.model.num_layers == 12      # the child's own value beats its parent's tiny size
    assert tiny.model.num_heads == 2        # the child's tiny table applies last


def test_overrides_are_typed():
    assert parse_override_value("11") == 11
    assert parse_override_value("0.5") == 0.5
    assert parse_override_value("true") is True
    assert parse_override_value("[3, 4]") == [3, 4]
    assert parse_override_value("zstd") == "zstd"
    cfg = pgolf.load_recipe("baseline", overrides=parse_set_args(["model.num_layers=11", "quant.compressor=zstd"]))
    assert cfg.model.num_layers == 11 and cfg.quant.compressor == "zstd"
    assert pgolf.load_recipe("baseline", overrides={"optim.matrix_lr": 1}).optim.matrix_lr == 1.0


@pytest.mark.parametrize("key, suggestion", [("model.num_layer", "model.num_layers"),
                                             ("optim.matrx_lr", "optim.matrix_lr"),
                                             ("train.stesp", "train.steps")])
def test_unknown_key_names_the_nearest_valid_key(key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'.*did you mean '{suggestion}'"):
        pgolf.load_recipe("baseline", overrides={key: 1})


def test_unknown_key_in_a_recipe_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "baseline"\n[model]\nnum_layerz = 3\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*'model.num_layerz'.*'model.num_layers'"):
        pgolf.load_recipe(str(bad))


@pytest.mark.parametrize("key, value, message", [
    ("model.num_layers", "many", "'model.num_layers' must be an integer"),
    ("model.tie_embeddings", 1, "'model.tie_embeddings' must be true or false"),
    ("model.mlp", "gelu", "'model.mlp' must be one of relu2, leaky_relu2, swiglu"),
    ("model.layer_schedule", 3, "'model.layer_schedule' must be a list"),
])
def test_wrong_types_and_choices_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        pgolf.load_recipe("baseline", overrides={key: value})


@pytest.mark.parametrize("overrides, message", [
    ({"model.num_heads": 7}, "'model.num_heads' \\(7\\) must divide 'model.model_dim' \\(512\\)"),
    ({"model.num_kv_heads": 3}, "'model.num_kv_heads' \\(3\\) must divide 'model.num_heads' \\(8\\)"),
    ({"model.layer_schedule": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, "'model.layer_schedule' names block 9"),
    ({"model.layer_schedule": [0, 1, 2]}, "never runs block"),
    ({"train.batch_tokens": 1000}, "'train.batch_tokens' \\(1000\\) must be a multiple of 'train.seq_len'"),
    ({"model.rope_dims": 3}, "'model.rope_dims'"),
    ({"quant.matrix_bits": 9}, "'quant.matrix_bits'"),
    ({"model.value_embed_layers": [3]}, "'model.value_embed_dim' is 0"),
    ({"model.num_layers": 40, "model.model_dim": 1024, "model.num_heads": 16}, "far over the 16,000,000-byte limit"),
])
def test_impossible_combinations_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        pgolf.load_recipe("baseline", overrides=overrides)


def test_over_budget_can_be_allowed_explicitly():
    cfg = pgolf.load_recipe("baseline", overrides={"model.num_layers": 40, "quant.allow_over_budget": True})
    assert cfg.model.num_layers == 40


def test_config_round_trips_through_toml(tmp_path):
    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={"model.layer_schedule": [0, 1, 2, 3, 1, 2]})
    save_config(cfg, tmp_path / "c.toml")
    assert config_to_dict(load_config(tmp_path / "c.toml")) == config_to_dict(cfg)
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)


def test_every_key_is_documented_once_with_its_choices():
    rows = describe_keys()
    keys = [key for key, _, _, _ in rows]
    assert sorted(keys) == sorted(all_keys()) and len(set(keys)) == len(keys) > 80
    for key, _, _, help_text in rows:
        assert len(help_text.split()) >= 2 and key.split(".")[-1] != help_text, key  # a description, not a name
    choices = {key: f.metadata["choices"] for key, f in
               ((f"{section}.{f.name}", f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls))
               if f.metadata.get("choices")}
    assert "eval.ttt" in choices and "eval.tail" in choices
    described = dict((key, text) for key, _, _, text in rows)
    for key, options in choices.items():
        assert all(str(option) in described[key] for option in options), key


def test_unknown_recipe_suggests_a_shipped_one():
    with pytest.raises(ConfigError, match="did you mean 'baseline'"):
        pgolf.load_recipe("baselin")


def test_apply_overrides_rejects_section_as_value():
    cfg = pgolf.load_recipe("baseline")
    with pytest.raises(ConfigError, match="unknown config key 'model'"):
        apply_overrides(cfg, {"model": 3})
