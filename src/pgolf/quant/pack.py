"""Model <-> artifact file: quantize each tensor by its class policy, pack, compress, and load back.

What is stored where follows from the config alone (`artifact_layout`: the config's model built on the meta
device, each parameter's export plan): the file holds the config and the packed bytes, never a tensor table.
Loading derives the layout, checks what the config asks for (`check_model_request`) and only then decompresses
— at most the bytes the layout needs — and allocates.

The scored model is always the one decompressed from the artifact (`unpack`), never the live weights.
Byte counts against the 16,000,000-byte limit (code included) are `pgolf.artifact.sizes.pack`'s job.
"""

from __future__ import annotations

import json
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._version import __version__
from ..config import Config, ConfigError, config_delta, config_from_dict, config_from_table, config_to_dict
from ..model.gpt import GPT, build_model
from ..config.optional import require_module
from .container import FRAMING_BYTES, HeaderProblem, PartSpec, header_size, read_container, write_container
from .layout import (TensorLayout, artifact_layout, check_lqer_request, check_model_request, check_param_count,
                     dequantized_state, encode_tensors, layout_parts, lqer_picks, quantize_model, serialize)


@lru_cache(maxsize=1)
def _defaults() -> tuple[dict[str, Any], int]:
    """pgolf's default config as a dict, and its fingerprint (crc32 of its canonical JSON)."""
    table = config_to_dict(Config())
    return table, zlib.crc32(json.dumps(table, sort_keys=True).encode())


def header_of(cfg: Config, lqer: list[int] | None = None) -> dict[str, Any]:
    """The artifact's JSON header: everything the layout cannot tell. The config is stored as its differences
    from pgolf's defaults (a few hundred bytes instead of every key) with the defaults' fingerprint, so a pgolf
    whose defaults differ refuses the file instead of reading it as another config. With LQER on, the header
    also lists which tensors it corrects (the choice depends on the weights)."""
    header = {"pgolf_version": __version__, "defaults": _defaults()[1], "config": config_delta(cfg)}
    if cfg.quant.lqer_rank:
        header["lqer"] = list(lqer or [])
    return header


def check_defaults(header: dict[str, Any], path: str | Path) -> None:
    """HeaderProblem unless the artifact's config was written against this pgolf's defaults."""
    if header.get("defaults") != _defaults()[1]:
        raise HeaderProblem(f"{path}: written by pgolf {header.get('pgolf_version', '?')}, whose config defaults differ "
                            f"from this pgolf {__version__}'s (the header stores only the changed settings); read it "
                            f"with that version, or with the train_gpt.py submitted beside it")


def header_bytes(cfg: Config) -> int:
    """Header length of an artifact of `cfg` (compressed config, part checks, fixed fields); the file is
    header + FRAMING_BYTES + the compressed payload. Exact, except with LQER, whose picks depend on the
    weights: counted as the first quant.lqer_top_k integer-coded tensors (a few bytes either way)."""
    picks = None
    if cfg.quant.lqer_rank:
        picks = [i for i, t in enumerate(artifact_layout(cfg)) if t.plan.encoding == "int"][: cfg.quant.lqer_top_k]
    return header_size(header_of(cfg, picks), len(layout_parts(artifact_layout(cfg, picks or ()))))


# ----------------------------------------------------------------------------- write and read

def write_artifact(model: nn.Module, cfg: Config, path: str | Path, hessians: dict[str, Tensor] | None = None,
                   max_model_bytes: int | None = None, fit_seconds: float | None = None) -> dict[str, Any]:
    """Quantize, (with quant.fit and `max_model_bytes`) fit, compress and write; returns the file's byte counts
    and, when the fit ran, its report under 'fit' (a FitReport)."""
    tensors = quantize_model(model, cfg, hessians)
    parts = serialize(tensors)
    payload, used = encode_tensors(tensors, cfg)
    header = header_of(cfg, lqer_picks(tensors))
    overhead = FRAMING_BYTES + header_size(header, len(parts))
    report = None
    if cfg.quant.fit and max_model_bytes is not None:
        limit = cfg.quant.fit_reserve_s if fit_seconds is None else fit_seconds
        fit = require_module("pgolf.quant.fit", cfg.quant)
        tensors, payload, report = fit.fit_to_budget(tensors, dict(model.named_parameters()), payload, used, cfg,
                                                 max_model_bytes - overhead, time.perf_counter() + limit)
        parts = serialize(tensors)
    written = write_container(path, header, parts, payload, used, cfg.quant.byte_shuffle)
    assert written["model_bytes"] == overhead + len(payload), "header_bytes(cfg) disagrees with the file"
    return {**written, "fit": report}


def read_artifact(path: str | Path) -> tuple[Config, list[TensorLayout], dict[str, Any], dict[tuple[str, str], np.ndarray]]:
    """(config, layout, header, arrays) of an artifact after every check; nothing allocated but the payload."""
    return _read_artifact(path, config_from_dict)


def _written_config(cfg: Config) -> Callable[[dict[str, Any], str], Config]:
    """The config reader for an artifact this process just wrote for `cfg` (already validated): the embedded
    config must be `cfg`'s own, so it needs no validating again (a generated train_gpt.py carries no validation)."""
    def read(table: dict[str, Any], where: str) -> Config:
        embedded = config_from_table(table, where)
        if config_to_dict(embedded) != config_to_dict(cfg):
            raise ConfigError(f"{where}: not the config this run wrote it for")
        return embedded
    return read


def _read_artifact(path: str | Path, read_config: Callable[[dict[str, Any], str], Config]):
    found: dict[str, Any] = {}

    def layout_of(header: dict[str, Any]) -> list[PartSpec]:
        check_defaults(header, path)
        check_model_request(header["config"])
        try:
            cfg = read_config(header["config"], f"{path} (embedded config)")
            layout = artifact_layout(cfg)
        except ConfigError as exc:
            raise HeaderProblem(f"the embedded config is invalid ({exc})") from exc
        except (ValueError, TypeError, AssertionError, RuntimeError, OverflowError) as exc:  # valid, yet no model builds
            raise HeaderProblem(f"the embedded config does not describe a model pgolf can build ({exc})") from exc
        check_param_count(layout)
        picks = check_lqer_request(header.get("lqer", []), layout, cfg)
        if picks:
            layout = artifact_layout(cfg, picks)
        found.update(cfg=cfg, layout=layout)
        return layout_parts(layout)

    def pergroup(payload: bytes, compressor: str, specs: list[PartSpec], shuffle: bool) -> bytes:
        quant = found["cfg"].quant
        if quant.compressor != "pergroup":
            raise HeaderProblem(f"payload compressor {compressor} is not what the embedded config asks for "
                                f"(quant.compressor = {quant.compressor!r})")
        return require_module("pgolf.quant.pergroup", quant).decode(payload, compressor, specs, shuffle)

    header, arrays = read_container(path, layout_of, pergroup)
    return found["cfg"], found["layout"], header, arrays


def unpack(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """Rebuild (model, config) from an artifact. Only JSON and numpy buffers are read; nothing is executed."""
    return _rebuild(read_artifact(path), device)


def unpack_written(path: str | Path, cfg: Config, device: str | torch.device = "cpu") -> GPT:
    """The model of the artifact this process just wrote for `cfg` (the trainer's round trip): every check of
    `unpack`, the embedded config compared with `cfg` instead of validated again."""
    return _rebuild(_read_artifact(path, _written_config(cfg)), device)[0]


def _rebuild(read, device) -> tuple[GPT, Config]:
    cfg, layout, _, arrays = read
    state = dequantized_state(layout, arrays, cfg)
    del arrays
    model = build_model(cfg.model, cfg.data.bos_id)
    model.load_state_dict(state, strict=True)  # same config, same layout: names and shapes agree by construction
    model.set_looping(True)  # an artifact is the final model: looped schedule, as the trainer packs and scores it
    return model.to(device), cfg
