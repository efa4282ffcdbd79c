"""Document files: .jsonl / .txt inputs, streamed; the challenge's pool `docs_selected.jsonl` and its sidecar
`docs_selected.source_manifest.json`; `pgolf data prepare` of a file (prepare_file).

The sidecar states what the exporter's shards were cut from: `docs_sha256` (SHA-256 of the .jsonl file's bytes,
exactly as the challenge's first exporter computed it before writing the sidecar), `docs_bytes` (the file's size),
`num_docs` (its lines, one JSON document each) and `docs_val` (the first that many documents are validation).
A file that disagrees on any of them is not the baseline's document list, and shards made from it would not be
the challenge's. prepare_file checks the size before it reads the file, and the SHA-256 and document count as
it encodes it; nothing appears under its output folder unless every figure agrees.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from .jsonio import read_json
from .prepare import DEFAULT_VAL_DOCS, SHARD_TOKENS, InputError, prepare_stream

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


def iter_documents(path: str | Path, text_key: str = "text", digest: DocsDigest | None = None) -> Iterator[str]:
    """.jsonl: one JSON object per line with a `text_key` string (blank lines skipped), streamed; .txt: documents
    separated by blank lines. `digest` sees every byte of the file, in order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if digest is not None:
                    digest.update(raw)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
                if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                    raise InputError(f"{path}:{lineno}: expected an object with a string '{text_key}' field")
                yield obj[text_key]
        return
    if path.suffix == ".txt":
        data = path.read_bytes()
        if digest is not None:
            digest.update(data)
        blocks = (b.strip() for b in data.decode("utf-8").replace("\r\n", "\n").split("\n\n"))
        yield from (b for b in blocks if b)
        return
    raise InputError(f"{path}: expected a .txt or .jsonl file")


def read_documents(path: str | Path, text_key: str = "text") -> list[str]:
    return list(iter_documents(path, text_key))


def prepare_file(path: str | Path, out: str | Path, *, text_key: str = "text", tokenizer: str | Path | None = None,
                 vocab_size: int | None = None, val_docs: int | None = None, check_docs: bool = True,
                 bos_id: int = 1, shard_tokens: int = SHARD_TOKENS, progress: bool = True,
                 tokenizer_train_docs: int | None = None, transform: str = "none") -> dict[str, Any]:
    """prepare_documents for a file, streamed; checked against its docs sidecar when one lies beside it.

    val_docs=None takes the sidecar's docs_val, else the challenge's 50,000.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    side_file = sidecar_path(path)
    sidecar = load_sidecar(side_file) if check_docs and side_file.is_file() else None
    if sidecar is not None:
        check_size(path, sidecar, side_file)
    if val_docs is None:
        val_docs = (sidecar_val_docs(sidecar) if sidecar else None)
        val_docs = DEFAULT_VAL_DOCS if val_docs is None else val_docs
    total = int(sidecar["num_docs"]) if sidecar and sidecar.get("num_docs") is not None else None

    digests: list[DocsDigest] = []

    def open_docs() -> Iterator[str]:
        digests.append(DocsDigest())
        return iter_documents(path, text_key, digests[-1])

    def finish() -> dict[str, Any]:
        digest = digests[-1]  # the encoding pass, which read every byte
        checked = (check_figures(path, sidecar, side_file, digest.hexdigest(), digest.bytes, digest.lines)
                   if sidecar is not None else [])
        return {"path": str(path), "docs_sha256": digest.hexdigest(), "docs_bytes": digest.bytes,
                "lines": digest.lines, "sidecar": str(side_file) if sidecar is not None else None, "checked": checked}

    return prepare_stream(open_docs, out, tokenizer=tokenizer, vocab_size=vocab_size, val_docs=val_docs,
                          bos_id=bos_id, shard_tokens=shard_tokens, progress=progress, total=total,
                          tokenizer_train_docs=tokenizer_train_docs, finish=finish, transform=transform)
