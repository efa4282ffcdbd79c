"""The artifact's byte counts: code bytes plus model bytes, against the 16,000,000-byte limit (`pgolf.pack`).

The challenge counts the bytes of the submitted train_gpt.py. pgolf counts exactly that file: the
self-contained script `pgolf submit` writes for the config (pgolf.artifact.bundle: the modules the config uses,
minified and bz2-packed, plus the config), so result.json, `pgolf recipes` and the budget check all use one
number; a caller may pass the number it expects, and a different one is refused. Inside a generated
train_gpt.py the number is the script's own size: the builder does not ship there. The model bytes are
measured on the file written. With quant.fit the artifact's byte budget is the limit minus that code, and
`fit_cost` measures what the fit cost after the round trip.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from ..config import Config
from ..quant.pack import write_artifact
from .bundle import code_bytes as bundle_code_bytes  # the builder: a script carries none of it (shipping.BUILD_ONLY)

LIMIT_BYTES = 16_000_000
_SCRIPT_BYTES: int | None = None  # set by the entry point of a generated train_gpt.py


def running_in_script(script_bytes: int) -> None:
    """Called first by a generated train_gpt.py: from now on the code size is the script's own."""
    global _SCRIPT_BYTES
    _SCRIPT_BYTES = int(script_bytes)


def runtime_code_bytes(cfg: Config | None = None) -> int:
    """Bytes of the train_gpt.py for `cfg` (pgolf's defaults when None): the script's own size inside one."""
    if _SCRIPT_BYTES is not None:
        return _SCRIPT_BYTES
    return bundle_code_bytes(cfg if cfg is not None else Config())


def pack_artifact(model: nn.Module, cfg: Config, path: str | Path, hessians: dict[str, Tensor] | None = None,
                  code_bytes: int | None = None, fit_seconds: float | None = None) -> tuple[dict[str, Any], Any]:
    """(byte counts, the fit's report when quant.fit is on: a pgolf.quant.fit.FitReport, an optional module) of
    the artifact written to `path`."""
    code = runtime_code_bytes(cfg)
    if code_bytes is not None and code_bytes != code:
        raise ValueError(f"pack: code_bytes={code_bytes:,} is not the size of this config's train_gpt.py "
                         f"({code:,} bytes); leave it out and pgolf counts it")
    limit = LIMIT_BYTES  # read at call time, so a test can lower it
    written = write_artifact(model, cfg, path, hessians, max_model_bytes=limit - code, fit_seconds=fit_seconds)
    report = written["fit"]
    total = written["model_bytes"] + code
    sizes = {
        "model_bytes": written["model_bytes"], "header_bytes": written["header_bytes"], "code_bytes": code,
        "artifact_bytes": total, "under_limit": total <= limit, "limit_bytes": limit,
        "compressor": written["compressor"], "raw_bytes": written["raw_bytes"],
        "fit": None if report is None else report.as_dict(),
    }
    return sizes, report


def pack(model: nn.Module, cfg: Config, path: str | Path, hessians: dict[str, Tensor] | None = None,
         code_bytes: int | None = None) -> dict[str, Any]:
    """Write the artifact; returns byte counts against the 16,000,000-byte limit (code: cfg's own train_gpt.py)."""
    return pack_artifact(model, cfg, path, hessians, code_bytes)[0]


def fit_cost(scored: nn.Module, report: Any, score: Callable[[nn.Module], float], scored_bpb: float) -> dict[str, float]:
    """What the fit cost, after the round trip: `score` (val_bpb) of the loaded model with its pruned codes put
    back, against `scored_bpb`, the score of the fitted artifact as loaded."""
    unfitted = score(report.restore(copy.deepcopy(scored)))
    return {"val_bpb_unfitted": unfitted, "val_bpb_cost": scored_bpb - unfitted}
