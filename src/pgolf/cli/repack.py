"""`pgolf pack`: re-pack a finished run's full-precision weights with another export policy.

A run folder holds config.toml and model.safetensors (the full-precision final weights, after averaging).
Only quant.* settings may change: the model must stay the one that was trained. GPTQ calibrates on the
run's training shards (or `data`), never on validation data.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..artifact.sizes import fit_cost, pack_artifact
from ..config import Config, ConfigError, apply_overrides, finalize, load_config
from ..data.dataset import load_validation, resolve_dataset
from ..data.loader import DistributedTokenLoader
from ..data.tokenizer import byte_tables, load_tokenizer
from ..eval.bpb import evaluate
from ..model.gpt import build_model
from ..quant.breakdown import artifact_breakdown
from ..quant.gptq import collect_hessians
from ..quant.pack import unpack
from ..training.loop import plain_eval_config


def load_run(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Config]:
    """(model with the run's full-precision weights, its config with quant.* overrides applied)."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.toml", run_dir / "model.safetensors"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: not found; is {run_dir} a pgolf run folder?")
    if not weights_path.is_file():
        raise ConfigError(f"{weights_path}: not found (a run writes it when training finishes)")
    for key in overrides or {}:
        if not key.startswith("quant."):
            raise ConfigError(f"pgolf pack only takes quant.* overrides; '{key}' would change the trained model")
    cfg = finalize(apply_overrides(load_config(config_path), overrides or {}))
    model = build_model(cfg.model, cfg.data.bos_id)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{weights_path}: cannot be read as safetensors ({exc})") from exc
    expected = set(model.state_dict())
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)[:5]
        raise ConfigError(f"{weights_path}: tensors do not match {config_path} (e.g. {diff})")
    model.load_state_dict(state, strict=True)
    model.set_looping(True)
    return model.eval(), cfg


def run_dataset(cfg: Config, data: str | None = None, check_ids: bool = True):
    """The run's data folder (or `data`, with its own tokenizer), checked."""
    lookup = copy.deepcopy(cfg)
    if data:
        lookup.data.path, lookup.data.tokenizer = str(data), ""
    return resolve_dataset(lookup, progress=False, check_ids=check_ids)


def calibration_loader(cfg: Config, data: str | None = None):
    """A training-token loader over the run's (or `data`'s) training shards, for GPTQ."""
    return DistributedTokenLoader(run_dataset(cfg, data).train_files, 0, 1, cfg.model.vocab_size)


def repack_run(run_dir: str | Path, out: str | Path, overrides: dict[str, Any] | None = None,
               data: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Quantize + pack a run's weights under the (overridden) policy; sizes (code priced with the run's own
    config), a per-class breakdown and, when quant.fit pruned, what that cost on the run's validation split."""
    model, cfg = load_run(run_dir, overrides)
    dev = torch.device(device or "cpu")
    model.to(dev)
    start = time.perf_counter()
    hessians = None
    if "gptq" in (cfg.quant.method, cfg.quant.embed_method):
        hessians = collect_hessians(model, calibration_loader(cfg, data), cfg, dev)
    model.cpu()
    sizes, fit = pack_artifact(model, cfg, out, hessians)
    seconds = time.perf_counter() - start
    if fit is not None and fit.pruned:
        score = validation_scorer(cfg, data, dev)
        scored, _ = unpack(out, dev)
        sizes["fit"].update(fit_cost(scored, fit, score, score(scored)))
    breakdown = artifact_breakdown(out, sizes["code_bytes"], sizes["limit_bytes"])
    return {**sizes, "pack_seconds": seconds, "breakdown": breakdown, "artifact": str(out),
            "quant": {k: v for k, v in vars(cfg.quant).items()}}


def validation_scorer(cfg: Config, data: str | None, device: torch.device):
    """model -> plain val_bpb on the run's validation split (its data.val_tokens_limit prefix)."""
    dataset = run_dataset(cfg, data, check_ids=False)
    tokens = load_validation(dataset, cfg.model.vocab_size, cfg.data.val_tokens_limit)
    tables = byte_tables(load_tokenizer(dataset.tokenizer_path), cfg.model.vocab_size)
    plain = plain_eval_config(cfg)
    return lambda model: evaluate(model.to(device), tokens, None, plain, tables=tables).val_bpb
