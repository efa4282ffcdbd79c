"""Type-checked setting of config keys: `--set` overrides, recipe tables and environment values all go through here.

Unknown keys, wrong types and values outside a field's choices are errors that name the key (and the nearest
valid key).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from typing import Any

from .schema import SECTIONS, TYPE_HINTS, Config, ConfigError, all_keys


def _field_info(cls: type, name: str) -> tuple[Any, dataclasses.Field]:
    fld = next(f for f in dataclasses.fields(cls) if f.name == name)
    return TYPE_HINTS[cls][name], fld


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, typ: Any, choices: tuple | None, where: str) -> Any:
    """Check `value` against the field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list of {item_type.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type, None, where) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def set_value(cfg: Config, key: str, value: Any, where: str) -> None:
    """cfg.<key> = value after checking the key, the type and the field's choices; errors name `where`."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] not in SECTIONS and hasattr(cfg, parts[0]):
        typ, fld = _field_info(Config, parts[0])
        setattr(cfg, parts[0], _coerce(key, value, typ, fld.metadata.get("choices"), where))
        return
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise _unknown_key(key, where)
    section, name = parts
    cls = SECTIONS[section]
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise _unknown_key(key, where)
    typ, fld = _field_info(cls, name)
    setattr(getattr(cfg, section), name, _coerce(key, value, typ, fld.metadata.get("choices"), where))


def flatten(table: dict[str, Any], where: str) -> dict[str, Any]:
    """{'model': {'num_layers': 4}} -> {'model.num_layers': 4}; top-level scalars stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        elif isinstance(value, dict):
            raise _unknown_key(key, where)
        else:
            flat[key] = value
    return flat


def config_from_table(table: dict[str, Any], where: str = "config") -> Config:
    """A Config from a TOML table, each key type- and choice-checked, not yet validated as a whole: loaders
    finalize it (pgolf.config.load.config_from_dict), a generated train_gpt.py checks its overrides itself."""
    cfg = Config()
    for key, value in flatten(table, where).items():
        set_value(cfg, key, value, where)
    return cfg


def parse_override_value(text: str) -> Any:
    """'11' -> 11, '0.5' -> 0.5, 'true' -> True, '[3,4]' -> [3, 4]; anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: dict[str, Any], where: str = "--set") -> Config:
    for key, value in overrides.items():
        if isinstance(value, str):
            value = parse_override_value(value)
        set_value(cfg, key, value, where)
    return cfg


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """['model.num_layers=11', ...] -> {'model.num_layers': 11}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_override_value(text.strip())
    return out
