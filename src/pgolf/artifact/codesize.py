"""Bytes of code counted in the artifact size.

The challenge counts the bytes of the submitted train_gpt.py. pgolf counts exactly that file: the
self-contained script `pgolf submit` writes for the config (pgolf.artifact.bundle: every runtime module, slimmed, lzma +
base85 packed, plus the config), so result.json, `pgolf recipes` and the budget check all use one number.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

PACKAGE = Path(__file__).parent


def runtime_code_bytes(cfg: Config | None = None) -> int:
    """Bytes of the bundled train_gpt.py for `cfg` (pgolf's defaults when None); cached per process."""
    from .bundle import code_bytes
    from ..config import Config

    return code_bytes(cfg if cfg is not None else Config())
