"""The run configuration (the bottom layer: it imports nothing else of pgolf).

schema     the dataclasses (one per section), their keys, dict and TOML forms, quantities derived from them
overrides  type-checked setting of keys (`--set`, recipe tables, environment values)
load       shipped recipes and TOML files (`extends`, `[tiny]`), config.toml of a run folder
validate   value checks; every loader ends in `finalize`
"""

from .load import RECIPES_DIR, config_from_dict, load_config, load_recipe, recipe_names, recipe_path
from .overrides import apply_overrides, config_from_table, parse_override_value, parse_set_args
from .schema import (LORA_TARGETS, SCALES, SECTIONS, Config, ConfigError, DataConfig, EvalConfig, ModelConfig,
                     OptimConfig, QuantConfig, TrainConfig, all_keys, config_delta, config_to_dict, config_to_toml,
                     describe_keys, layer_schedule, mlp_hidden_dim, virtual_layout)
from .validate import check_eval_config, finalize, validate

__all__ = ["LORA_TARGETS", "RECIPES_DIR", "SCALES", "SECTIONS", "Config", "ConfigError", "DataConfig", "EvalConfig",
           "ModelConfig", "OptimConfig", "QuantConfig", "TrainConfig", "all_keys", "apply_overrides",
           "config_from_table",
           "check_eval_config", "config_delta", "config_from_dict", "config_to_dict", "config_to_toml", "describe_keys",
           "finalize", "layer_schedule", "load_config", "load_recipe", "mlp_hidden_dim", "parse_override_value",
           "parse_set_args", "recipe_names", "recipe_path", "validate", "virtual_layout"]
