"""The entry point of a generated train_gpt.py: the embedded config, the environment's overrides, one run.

The script (pgolf.artifact.bundle builds it) imports pgolf from the sources packed in it and calls `run_bundle`.
It reads the challenge's environment variables (DATA_PATH, TOKENIZER_PATH, SEED), RUN_DIR, PGOLF_SET (`RUNTIME_KEYS` only)
and PGOLF_DEVICE. The script carries only the modules its config uses: an override that would switch on a
technique it does not carry is refused here, before anything runs, naming the setting. Its code is specialised
to the config (pgolf.artifact.specialise: the switches it read as constants that the environment may set are
listed in the payload's "frozen keys" segment): an override that gives one of those keys another value is
refused the same way (the same value is allowed). Its registry questions whose answer no runtime key can
change were answered when it was built (pgolf.artifact.shipping.fold_optional_calls): sound because every
other key is refused here before anything runs.

Nor does it carry pgolf's config validation (pgolf.config.validate): the embedded config was validated when the
script was built, and the environment may change only `RUNTIME_KEYS`, settings that validation never reads
(tests/test_submit.py checks it against validate.py's code) or whose one check is made here. Every override is
still type- and choice-checked (pgolf.config.overrides); any other key is refused, naming it.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..artifact.sizes import running_in_script
from ..config import Config, ConfigError, apply_overrides, config_from_table, parse_override_value
from ..data.dataset import default_tokenizer
from ..config.optional import OPTIONAL_MODULES, enter_script, needed_optional_modules, optional_module
from .loop import train
from .runtime import init_runtime, shutdown_runtime

FROZEN_SEGMENT = "frozen keys"  # pgolf.artifact.bundle.FROZEN_SEGMENT: the keys the carried code was specialised on
# Environment variables the generated script reads (the challenge's names where it has one).
ENV_VARS = {
    "DATA_PATH": "data.path", "TOKENIZER_PATH": "data.tokenizer", "SEED": "seed",
}
# What the environment may set in a script (its config is validated when the script is built): settings that
# pgolf.config.validate never reads, and train.steps, checked here as validate checks it.
RUNTIME_KEYS = ("seed", "data.path", "data.tokenizer", "data.val_tokens_limit", "train.steps", "train.max_wallclock_s",
                "train.log_every", "train.val_every", "train.checkpoint_every", "train.keep_checkpoint")


REBUILD = "; build a script for the new settings (pgolf submit, or pgolf.artifact.bundle.write_bundle)"  # how every refusal below ends


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


def check_runtime_overrides(cfg: Config, keys) -> None:
    """Refuse overrides a script cannot validate (any key outside RUNTIME_KEYS), and a train.steps < 1."""
    other = [k for k in keys if k not in RUNTIME_KEYS]
    if other:
        raise ConfigError(
            f"PGOLF_SET: {', '.join(other)}: a train_gpt.py takes only {', '.join(RUNTIME_KEYS)} from the environment"
            + REBUILD)
    if cfg.train.steps <= 0:
        raise ConfigError(f"'train.steps' must be positive, got {cfg.train.steps}")


def check_carried(cfg: Config, carried: set[str] | None) -> None:
    """Refuse a config that needs an optional module the script does not carry (`carried`: 'pgolf/x/y.py')."""
    if carried is None:
        return
    switches = {m.name: m.switch for m in OPTIONAL_MODULES}
    missing = [name for name in needed_optional_modules(cfg) if name.replace(".", "/") + ".py" not in carried]
    if missing:
        raise ConfigError(
            "this train_gpt.py does not carry " + ", ".join(f"{n} (pulled in by {switches[n]})" for n in missing)
            + REBUILD)


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
            + REBUILD)


def bundle_config(config: str, environ: dict[str, str] | None = None, carried: set[str] | None = None,
                  frozen: list[str] = ()) -> Config:
    """The embedded config (TOML text) with the environment's overrides applied: the keys limited to
    RUNTIME_KEYS, checked against the modules the script carries (`carried`, its source paths; None: no check),
    against the keys its code was specialised on (`frozen`) and, in the package only, against the budget (a
    script's config was checked when the script was built)."""
    environ = dict(os.environ if environ is None else environ)
    where = "train_gpt.py (embedded config)"
    table = tomllib.loads(config)  # read once: config_from_table builds a new Config (new lists) every time
    cfg = config_from_table(table, where)
    overrides = _env_overrides(environ)
    if "data.path" in overrides and "data.tokenizer" not in overrides and not Path(cfg.data.tokenizer).is_file():
        overrides["data.tokenizer"] = ""  # the new data folder's own tokenizer (challenge layout)
    cfg = apply_overrides(cfg, overrides, "environment")
    if not cfg.data.tokenizer:  # the new folder's own (as resolve_dataset finds it): it decides the tokenizer module
        cfg.data.tokenizer = str(default_tokenizer(Path(cfg.data.path), cfg.model.vocab_size))
    check_carried(cfg, carried)
    check_runtime_overrides(cfg, overrides)
    check_frozen(cfg, config_from_table(table, where), list(frozen))
    budget = optional_module("pgolf.artifact.budget", cfg.quant)  # in the package; a script was checked when built
    if budget is not None:
        budget.check_budget(cfg)
    return cfg


def run_bundle(config: str, script: str, sources: dict[str, str]) -> int:
    """Entry point of a generated train_gpt.py: train and evaluate the embedded config; 4 if over the limit."""
    running_in_script(Path(script).stat().st_size)
    enter_script()
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
