"""The run configuration (the bottom layer): schema, recipes, type-checked overrides, validation."""

from .schema import (SECTIONS, Config, ConfigError, DataConfig, EvalConfig, ModelConfig, OptimConfig, QuantConfig,
                     TrainConfig, apply_overrides, config_from_dict, config_to_dict, describe_keys, finalize,
                     layer_schedule, load_config, load_recipe, mlp_hidden_dim, parse_override_value, parse_set_args,
                     recipe_names, recipe_path, save_config, validate, virtual_layout)

__all__ = ["SECTIONS", "Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig",
           "QuantConfig", "TrainConfig", "apply_overrides", "config_from_dict", "config_to_dict", "describe_keys",
           "finalize", "layer_schedule", "load_config", "load_recipe", "mlp_hidden_dim", "parse_override_value",
           "parse_set_args", "recipe_names", "recipe_path", "save_config", "validate", "virtual_layout"]
