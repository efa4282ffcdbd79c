"""Reading the small JSON files of an export (manifest, docs sidecar, pure-byte tokenizer) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """The parsed file; `error` names the file and the problem when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc})") from exc
