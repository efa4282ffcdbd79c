"""The challenge's document pool, `docs_selected.jsonl`, and its sidecar `docs_selected.source_manifest.json`.

The sidecar states what the exporter's shards were cut from: `docs_sha256` (SHA-256 of the .jsonl file's bytes,
exactly as the challenge's first exporter computed it before writing the sidecar), `docs_bytes` (the file's size),
`num_docs` (its lines, one JSON document each) and `docs_val` (the first that many documents are validation).
A file that disagrees on any of them is not the baseline's document list, and shards made from it would not be
the challenge's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .jsonio import read_json

DOCS_FILENAME = "docs_selected.jsonl"
SIDECAR_SUFFIX = ".source_manifest.json"
HASH_BLOCK = 1 << 24


class DocsError(ValueError):
    """A documents file disagrees with its sidecar (or the sidecar is malformed); the message names both."""


def sidecar_path(docs: str | Path) -> Path:
    """docs_selected.jsonl -> docs_selected.source_manifest.json (the exporter's naming: stem + suffix)."""
    docs = Path(docs)
    return docs.with_name(docs.stem + SIDECAR_SUFFIX)


def load_sidecar(path: str | Path) -> dict[str, Any]:
    payload = read_json(path, DocsError, "documents sidecar")
    if not isinstance(payload, dict):
        raise DocsError(f"{path}: the documents sidecar must be a JSON object, got {type(payload).__name__}")
    for key in ("docs_bytes", "num_docs", "docs_val", "num_val_docs"):
        if key in payload and payload[key] is not None and (not isinstance(payload[key], int) or payload[key] < 0):
            raise DocsError(f"{path}: {key} = {payload[key]!r}, expected a non-negative integer")
    sha = payload.get("docs_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise DocsError(f"{path}: docs_sha256 = {sha!r}, expected 64 hex digits")
    return payload


def sidecar_val_docs(sidecar: dict[str, Any]) -> int | None:
    """How many leading documents are validation, as the sidecar says (docs_val, else num_val_docs)."""
    for key in ("docs_val", "num_val_docs"):
        if sidecar.get(key) is not None:
            return int(sidecar[key])
    return None


class DocsDigest:
    """SHA-256, bytes and lines (one document each) of a file, fed in order, line by line or block by block."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.bytes = 0
        self._newlines = 0
        self._open_line = False  # the bytes so far end inside a line (no final newline yet)

    def update(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.bytes += len(data)
            self._newlines += data.count(b"\n")
            self._open_line = not data.endswith(b"\n")

    @property
    def lines(self) -> int:
        """Lines, counting a last line without a newline, as Python's `for line in file` does."""
        return self._newlines + int(self._open_line)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def check_size(docs: Path, sidecar: dict[str, Any], sidecar_file: Path) -> None:
    """The cheap check first: a truncated or different file is found before anything reads it."""
    expected = sidecar.get("docs_bytes")
    size = docs.stat().st_size
    if expected is not None and size != int(expected):
        raise DocsError(f"{docs}: {size:,} bytes, but {sidecar_file} says docs_bytes = {int(expected):,}; "
                        f"not the file the sidecar describes (a partial or different download?)")


def check_figures(docs: Path, sidecar: dict[str, Any], sidecar_file: Path, sha256: str, n_bytes: int,
                  n_docs: int | None) -> list[str]:
    """Raise DocsError naming every figure that disagrees; return the keys that were checked."""
    checked, wrong = [], []
    for key, ours in (("docs_sha256", sha256), ("docs_bytes", n_bytes), ("num_docs", n_docs)):
        theirs = sidecar.get(key)
        if theirs is None or ours is None:
            continue
        checked.append(key)
        if ours != theirs:
            wrong.append(f"{key} is {ours} here but {theirs} in the sidecar")
    if wrong:
        raise DocsError(f"{docs} does not match {sidecar_file}: " + "; ".join(wrong))
    return checked


def verify_docs(docs: str | Path, sidecar_file: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Hash the whole file and check it against its sidecar (docs_sha256, docs_bytes, num_docs)."""
    from tqdm import tqdm

    docs = Path(docs)
    sidecar_file = Path(sidecar_file) if sidecar_file else sidecar_path(docs)
    sidecar = load_sidecar(sidecar_file)
    check_size(docs, sidecar, sidecar_file)
    digest = DocsDigest()
    with open(docs, "rb") as f, tqdm(total=docs.stat().st_size, unit="B", unit_scale=True, disable=not progress,
                                      desc=f"sha256 {docs.name}", leave=False) as bar:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
            bar.update(len(block))
    checked = check_figures(docs, sidecar, sidecar_file, digest.hexdigest(), digest.bytes, digest.lines)
    return {"docs_sha256": digest.hexdigest(), "docs_bytes": digest.bytes, "num_docs": digest.lines,
            "checked": checked, "sidecar": str(sidecar_file)}
