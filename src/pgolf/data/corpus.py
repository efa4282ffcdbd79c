"""The embedded default corpus: English documentation text that every CPython install carries offline.

Documents are the pydoc topic pages (`pydoc_data.topics`) and, per standard-library module, the
module/class/function docstrings read with `ast` (nothing is imported or executed). About 2 MB of text,
prepared once into a cache folder: tokenizer trained on the train split only, train/val shards by document.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sys
import sysconfig
from pathlib import Path

from .prepare import prepare_documents

CORPUS_NAME = "python-docs"
VAL_DOCS = 48
VOCAB_SIZE = 1024
_SKIP_TOP = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "tkinter", "ensurepip", "__pycache__"}
_MIN_DOCSTRING_CHARS = 40


def cache_root() -> Path:
    """$PGOLF_CACHE, else ~/.cache/pgolf."""
    return Path(os.environ.get("PGOLF_CACHE", Path.home() / ".cache" / "pgolf"))


def _module_docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= _MIN_DOCSTRING_CHARS:
                parts.append(doc)
    return "\n\n".join(parts)


def python_docs() -> list[str]:
    """All documents of the corpus in a fixed, shuffled order (seed 0)."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        top = path.relative_to(stdlib).parts[0]
        if top in _SKIP_TOP or top.startswith("test"):
            continue
        text = _module_docstrings(path)
        if text:
            docs.append(text)
    random.Random(0).shuffle(docs)
    return docs


def corpus_dir() -> Path:
    """Cache folder of the prepared corpus for this Python version."""
    tag = f"{CORPUS_NAME}-py{sys.version_info.major}.{sys.version_info.minor}-v{VOCAB_SIZE}"
    return cache_root() / tag


def ensure_corpus(progress: bool = True) -> Path:
    """Prepare the embedded corpus on first use; returns the folder with shards and tokenizer.model."""
    out = corpus_dir()
    if (out / "meta.json").is_file():
        return out
    docs = python_docs()
    digest = hashlib.sha256("\x00".join(docs).encode("utf-8")).hexdigest()
    prepare_documents(docs, out, vocab_size=VOCAB_SIZE, val_docs=VAL_DOCS, progress=progress,
                      extra_meta={"corpus": CORPUS_NAME, "corpus_sha256": digest})
    return out
