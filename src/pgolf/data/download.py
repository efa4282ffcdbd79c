"""`pgolf data download`: the challenge's published FineWeb export from the Hugging Face Hub.

Manifest-driven like the challenge's data/cached_challenge_fineweb.py: the manifest names the dataset folder,
its shard counts and its tokenizer; only the first N training shards are fetched (the same prefix of the frozen
shuffled export, so data order matches the records). Files already present are skipped, interrupted
downloads resume from the Hub cache, and a file only appears under its final name once complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

VARIANT_REPOS = {
    "sp1024": "willdepueoai/parameter-golf",
    "sp4096": "kevclark/parameter-golf",
    "sp8192": "kevclark/parameter-golf",
}
REMOTE_ROOT = "datasets"


class DownloadError(RuntimeError):
    """The Hub could not be reached or does not hold what was asked for."""


def _fetch(repo_id: str, remote_path: str, destination: Path) -> Path:
    if destination.is_file():
        return destination
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DownloadError("huggingface_hub is not installed: pip install huggingface_hub") from exc
    remote = Path(remote_path)
    try:
        cached = hf_hub_download(repo_id=repo_id, filename=remote.name,
                                 subfolder=remote.parent.as_posix() if remote.parent != Path(".") else None,
                                 repo_type="dataset", etag_timeout=10)
    except LocalEntryNotFoundError as exc:
        raise DownloadError(f"cannot reach the Hugging Face Hub for {repo_id}/{remote_path} (offline, or "
                            f"HF_HUB_OFFLINE=1 with nothing cached): {exc.__class__.__name__}") from exc
    except EntryNotFoundError as exc:
        raise DownloadError(f"{repo_id} has no file {remote_path}") from exc
    except OSError as exc:  # connection errors surface as OSError subclasses
        raise DownloadError(f"download of {repo_id}/{remote_path} failed: {exc}") from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + ".partial")
    shutil.copyfile(Path(cached).resolve(strict=True), tmp)
    os.replace(tmp, destination)
    return destination


def download(variant: str, train_shards: int, out_root: str | Path = "data",
             repo_id: str | None = None) -> dict[str, Any]:
    """Fetch the manifest, all validation shards, the first `train_shards` training shards and the tokenizer."""
    if variant not in VARIANT_REPOS:
        raise DownloadError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANT_REPOS)}")
    if train_shards < 0:
        raise DownloadError(f"--train-shards must be >= 0, got {train_shards}")
    repo = repo_id or VARIANT_REPOS[variant]
    root = Path(out_root)
    manifest_path = _fetch(repo, f"{REMOTE_ROOT}/manifest.json", root / "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    name = f"fineweb10B_{variant}"
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        raise DownloadError(f"{manifest_path}: no dataset named {name}")
    stats = entry.get("stats") or {}
    max_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    if train_shards > max_train:
        raise DownloadError(f"{variant} has only {max_train} training shards on {repo}; asked for {train_shards}")
    tokenizer = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tokenizer is None:
        raise DownloadError(f"{manifest_path}: tokenizer {entry.get('tokenizer_name')} not listed")
    files = [f"datasets/{name}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    files += [f"datasets/{name}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    files += [tokenizer[k] for k in ("model_path", "vocab_path") if tokenizer.get(k)]
    from tqdm import tqdm
    for rel in tqdm(files, desc=f"download {variant}", unit="file"):
        _fetch(repo, f"{REMOTE_ROOT}/{rel}", root / rel)
    return {"data": str(root / "datasets" / name), "tokenizer": str(root / tokenizer["model_path"]),
            "files": len(files), "repo": repo}
