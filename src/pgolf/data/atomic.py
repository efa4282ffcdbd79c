"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A failed write (full disk, read-only folder, a crash half-way) leaves the previous file intact and removes the
temporary one; the error names the file that was not written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def temporary_path(path: Path) -> Path:
    """Hidden, per-process name beside `path` (never matched by shard globs such as fineweb_val_*.bin)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file; it is fsynced and renamed onto `path` only when complete."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        message = f"could not write {path}: {exc.strerror or exc}; the previous file (if any) is untouched"
        raise (OSError(exc.errno, message) if exc.errno is not None else OSError(message)) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
