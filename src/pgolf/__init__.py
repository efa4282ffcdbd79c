"""pgolf: parameter golf — the best language model whose code + compressed weights fit in 16,000,000 bytes.

    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={"train.steps": 50})
    model = pgolf.build_model(cfg.model)
    result = pgolf.train(cfg, out_dir="runs/x")
    sizes = pgolf.pack(model, cfg, "a.pgolf"); model, cfg = pgolf.unpack("a.pgolf")
    ev = pgolf.evaluate(model, tokens, tokenizer_path, cfg.eval)

This module is the Python API: it sits above every layer (README: "How the code is laid out") and only gathers
their entry points. A config loaded here is also checked against the byte budget, as the trainer checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import config as _config
from ._version import __version__
from .config.optional import require_module
from .artifact.sizes import pack
from .config import Config, ConfigError
from .eval.bpb import evaluate
from .eval.result import EvalResult
from .model.gpt import build_model, count_parameters
from .quant.pack import unpack
from .training.loop import train


def load_recipe(name_or_path: str = "baseline", scale: str = "full",
                overrides: dict[str, Any] | None = None) -> Config:
    """A shipped recipe or TOML file, resolved (`extends`, `[tiny]`, overrides), validated and budget-checked."""
    cfg = _config.load_recipe(name_or_path, scale, overrides)
    require_module("pgolf.artifact.budget", cfg.quant).check_budget(cfg)  # the registry: a script has none
    return cfg


def load_config(path: str | Path) -> Config:
    """A fully resolved config file (a run folder's config.toml), validated and budget-checked."""
    cfg = _config.load_config(path)
    require_module("pgolf.artifact.budget", cfg.quant).check_budget(cfg)  # the registry: a script has none
    return cfg


__all__ = ["Config", "ConfigError", "EvalResult", "build_model", "count_parameters", "evaluate", "load_config",
           "load_recipe", "pack", "train", "unpack", "__version__"]
