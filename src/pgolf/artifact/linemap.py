"""Line maps: from a line of a generated train_gpt.py's minified module back to the repository's file and line.

A traceback from a bundle names frames like

    File "/x/train_gpt.py/pgolf/eval/bpb.py", line 41, in evaluate
      modes=optional_module('pgolf.eval.modes',cfg)
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
(the script path, then the carried module), with the minified line and ^ markers under the failing expression;
top-level functions carry short names in a script (pgolf.artifact.minify.function_renames: `in _Ab`).
Columns here count from a line's first non-blank character, as tracebacks print lines stripped.
The line map (`train_gpt.linemap.json`, written by `pgolf submit` next to the script, not counted) records
for every minified line the column and original line of each statement that starts on it. `map_traceback`
adds the original place to every such frame, picking the statement under the ^ markers when a minified line
holds several:

    File "/x/train_gpt.py/pgolf/eval/bpb.py", line 41, in evaluate   [src/pgolf/eval/bpb.py:134]

and puts back each renamed function's own name (the map's `names`: {short: original}).

Command line: `pgolf traceback train_gpt.linemap.json < error.txt` (or give the traceback file as a second
argument). Format (JSON): {"format": 1, "pgolf_version", "script_sha256", "script_bytes",
"modules": {"pgolf/eval/bpb.py": {"source": "src/pgolf/eval/bpb.py", "lines": [[[column, line], ...], ...]}},
"names": {short: original function name}}.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_text
from .minify import function_renames

FORMAT = 1
_FRAME = re.compile(r'^(?P<head>\s*File "(?P<file>[^"]*?)/(?P<module>pgolf/[^"]+\.py)", line (?P<line>\d+)(?:, in [^\n]*)?)$')


class LineMapError(ValueError):
    """A line map file that cannot be read, or that belongs to another script."""


def make_linemap(script: bytes, modules: list[tuple[str, list[list[tuple[int, int]]]]], version: str) -> dict[str, Any]:
    return {
        "format": FORMAT, "pgolf_version": version, "script_sha256": hashlib.sha256(script).hexdigest(),
        "script_bytes": len(script),
        "modules": {path: {"source": f"src/{path}", "lines": [[list(e) for e in entries] for entries in lines]}
                    for path, lines in modules},
        "names": {short: name for name, short in function_renames().items()},
    }


def write_linemap(linemap: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(linemap, separators=(",", ":")) + "\n")


def load_linemap(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineMapError(f"{path}: not a readable line map ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("modules"), dict):
        raise LineMapError(f"{path}: not a pgolf line map of format {FORMAT}")
    return data


def check_script(linemap: dict[str, Any], script: str | Path) -> None:
    """Raise unless `script` is the train_gpt.py the line map was written for."""
    data = Path(script).read_bytes()
    if hashlib.sha256(data).hexdigest() != linemap.get("script_sha256"):
        raise LineMapError(f"{script}: this is not the train_gpt.py the line map was written for "
                           f"(sha256 differs); use the map from the same pgolf submit folder")


def original_line(linemap: dict[str, Any], module: str, line: int, column: int | None = None) -> tuple[str, int] | None:
    """(repository file, line) of the statement at minified `line` (and `column`, when known) of `module`.

    With a column, the statement starting last at or before it; without, the line's first statement. A line
    where no statement starts (a decorator, the inside of a long literal) maps to the nearest one above.
    """
    entry = linemap["modules"].get(module)
    if entry is None or not 1 <= line <= len(entry["lines"]):
        return None
    lines = entry["lines"]
    starts = lines[line - 1]
    if starts:
        if column is None:
            return entry["source"], starts[0][1]
        i = bisect.bisect_right([c for c, _ in starts], column) - 1
        return entry["source"], starts[max(i, 0)][1]
    for above in range(line - 2, -1, -1):
        if lines[above]:
            return entry["source"], lines[above][-1][1]
    return None


def _caret_column(source_line: str, marker_line: str) -> int | None:
    """Column (in the stripped source line's terms) of the first ^ under it, or None."""
    if not marker_line.strip() or set(marker_line.strip()) - set("^~"):
        return None
    indent = len(source_line) - len(source_line.lstrip())
    return marker_line.index(marker_line.strip()[0]) - indent


def map_traceback(text: str, linemap: dict[str, Any]) -> str:
    """`text` with the repository place appended to each frame of a carried module, as `[src/...:N]`."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            out.append(line)
            continue
        column = None
        if i + 2 < len(lines) and lines[i + 1].strip():
            column = _caret_column(lines[i + 1], lines[i + 2])  # both count from the line's first character
        place = original_line(linemap, match["module"], int(match["line"]), column)
        names = linemap.get("names", {})
        line = re.sub(r", in (\w+)$", lambda m: f", in {names.get(m[1], m[1])}", line)
        out.append(line + (f"   [{place[0]}:{place[1]}]" if place else "   [not in the line map]"))
    return "\n".join(out)

