"""Loading configs: shipped recipes and user TOML files (with `extends` and a `[tiny]` scale), run folders' config.toml.

Every loader ends in `finalize`, so what it returns is resolved and validated.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from .overrides import apply_overrides, config_from_table, flatten, set_value
from .schema import SCALES, Config, ConfigError
from .validate import finalize

RECIPES_DIR = Path(__file__).parent / "recipes"
_RECIPE_ONLY_KEYS = ("extends", "tiny")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe name ('pr1536') or a path to a user's TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    close = difflib.get_close_matches(name_or_path, recipe_names(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown recipe '{name_or_path}' (shipped: {', '.join(recipe_names())}; or give a .toml path){hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _recipe_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """[(root_path, root_table), ..., (path, table)] following `extends`."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    table = _read_toml(path)
    parent = table.get("extends")
    if parent is None:
        return [(path, table)]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a recipe name or path")
    parent_path = (path.parent / parent) if parent.endswith(".toml") else recipe_path(parent)
    return _recipe_chain(parent_path, seen + (path.resolve(),)) + [(path, table)]


def load_recipe(name_or_path: str = "baseline", scale: str = "full",
                overrides: dict[str, Any] | None = None) -> Config:
    """Resolve a recipe: parents first, then (for scale='tiny') every `[tiny]` table, then overrides."""
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    path = recipe_path(name_or_path)
    chain = _recipe_chain(path)
    cfg = Config()
    for p, table in chain:
        body = {k: v for k, v in table.items() if k not in _RECIPE_ONLY_KEYS}
        for key, value in flatten(body, str(p)).items():
            set_value(cfg, key, value, str(p))
    if scale == "tiny":
        # A recipe's [tiny] values apply after every full table, except where a recipe further down the
        # chain sets the key itself: a child stating num_layers = 12 is not shrunk by its parent's tiny size.
        for i, (p, table) in enumerate(chain):
            tiny = table.get("tiny", {})
            if not isinstance(tiny, dict):
                raise ConfigError(f"{p}: [tiny] must be a table")
            set_later = {k for _, t in chain[i + 1:] for k in flatten({k: v for k, v in t.items() if k not in _RECIPE_ONLY_KEYS}, str(p))}
            for key, value in flatten(tiny, f"{p} [tiny]").items():
                if key not in set_later:
                    set_value(cfg, key, value, f"{p} [tiny]")
    cfg.recipe = path.stem if path.parent == RECIPES_DIR else str(path)
    cfg.scale = scale
    apply_overrides(cfg, overrides or {})
    return finalize(cfg)


def config_from_dict(table: dict[str, Any], where: str = "config") -> Config:
    return finalize(config_from_table(table, where))


def load_config(path: str | Path) -> Config:
    return config_from_dict(_read_toml(Path(path)), str(path))
