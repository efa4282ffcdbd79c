"""The entry point of a generated train_gpt.py: the embedded config, the environment's overrides, one run.

The script (pgolf.artifact.bundle builds it) imports pgolf from the sources packed in it and calls `run_bundle`.
It reads the challenge's environment variables (DATA_PATH, TOKENIZER_PATH, SEED), RUN_DIR, PGOLF_SET (any key)
and PGOLF_DEVICE. The script carries only the modules its config uses: an override that would switch on a
technique it does not carry is refused here, before anything runs, naming the setting. Its code is specialised
to the config (pgolf.artifact.specialise: the switches it read as constants are listed in the payload's
"frozen keys" segment): an override that gives one of those keys another value is refused the same way (the
same value is allowed).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..artifact.budget import check_budget
from ..artifact.sizes import running_in_script
from ..config import Config, ConfigError, apply_overrides, config_from_dict, finalize, parse_override_value
from ..config.optional import OPTIONAL_MODULES, needed_optional_modules
from .loop import train
from .runtime import init_runtime, shutdown_runtime

FROZEN_SEGMENT = "frozen keys"  # pgolf.artifact.bundle.FROZEN_SEGMENT: the keys the carried code was specialised on
# Environment variables the generated script reads (the challenge's names where it has one).
ENV_VARS = {
    "DATA_PATH": "data.path", "TOKENIZER_PATH": "data.tokenizer", "SEED": "seed",
}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for var, key in ENV_VARS.items():
        if environ.get(var):
            overrides[key] = environ[var] if key.startswith("data.") else parse_override_value(environ[var])
    for item in environ.get("PGOLF_SET", "").split():
        if "=" not in item:
            raise ConfigError(f"PGOLF_SET: expected key=value items separated by spaces, got '{item}'")
        key, text = item.split("=", 1)
        overrides[key] = parse_override_value(text)
    return overrides


def check_carried(cfg: Config, carried: set[str] | None) -> None:
    """Refuse a config that needs an optional module the script does not carry (`carried`: 'pgolf/x/y.py')."""
    if carried is None:
        return
    switches = {m.name: m.switch for m in OPTIONAL_MODULES}
    missing = [name for name in needed_optional_modules(cfg) if name.replace(".", "/") + ".py" not in carried]
    if missing:
        raise ConfigError(
            "this train_gpt.py does not carry " + ", ".join(f"{n} (pulled in by {switches[n]})" for n in missing)
            + ": it ships only what its embedded config uses; build a script for the new settings "
              "(pgolf submit, or pgolf.artifact.bundle.write_bundle)")


def _get(cfg: Config, key: str) -> Any:
    *section, name = key.split(".")
    return getattr(getattr(cfg, section[0]) if section else cfg, name)


def check_frozen(cfg: Config, embedded: Config, frozen: list[str]) -> None:
    """Refuse a config that changes a key the script's code was specialised on (`frozen`) from its value in
    the embedded config."""
    changed = [(k, _get(embedded, k), _get(cfg, k)) for k in frozen if _get(cfg, k) != _get(embedded, k)]
    if changed:
        raise ConfigError(
            "this train_gpt.py was specialised on " + ", ".join(f"{k} = {a!r} (asked: {b!r})" for k, a, b in changed)
            + ": its code reads these keys as constants; build a script for the new settings "
              "(pgolf submit with --set, or pgolf.artifact.bundle.write_bundle)")


def bundle_config(config: str, environ: dict[str, str] | None = None, carried: set[str] | None = None,
                  frozen: list[str] = ()) -> Config:
    """The embedded config (TOML text) with the environment's overrides applied, checked against the budget,
    against the modules the script carries (`carried`, its source paths; None: no check) and against the keys
    its code was specialised on (`frozen`)."""
    environ = dict(os.environ if environ is None else environ)
    where = "train_gpt.py (embedded config)"
    cfg = config_from_dict(tomllib.loads(config), where)
    overrides = _env_overrides(environ)
    if "data.path" in overrides and "data.tokenizer" not in overrides and not Path(cfg.data.tokenizer).is_file():
        overrides["data.tokenizer"] = ""  # the new data folder's own tokenizer (challenge layout)
    cfg = apply_overrides(cfg, overrides, "environment")
    check_carried(cfg, carried)  # before validating: the validation code is specialised too
    check_frozen(cfg, config_from_dict(tomllib.loads(config), where), list(frozen))
    cfg = finalize(cfg)
    check_budget(cfg)
    return cfg


def run_bundle(config: str, script: str, sources: dict[str, str]) -> int:
    """Entry point of a generated train_gpt.py: train and evaluate the embedded config; 4 if over the limit."""
    running_in_script(Path(script).stat().st_size)
    try:
        cfg = bundle_config(config, carried=set(sources), frozen=sources.get(FROZEN_SEGMENT, "").split())
    except ConfigError as exc:
        print(f"train_gpt.py: error: {exc}", file=sys.stderr)
        return 2
    device = os.environ.get("PGOLF_DEVICE") or None
    result = train(cfg, os.environ.get("RUN_DIR") or None, device=device)
    if init_runtime(device).is_main:
        print(f"final val_loss:{result['val_loss']:.8f} val_bpb:{result['val_bpb']:.8f} "
              f"artifact_bytes:{result['artifact_bytes']} code_bytes:{result['code_bytes']} "
              f"model_bytes:{result['model_bytes']} eval_mode:{result['eval_mode']}", flush=True)
    shutdown_runtime()
    return 0 if result["under_limit"] else 4
