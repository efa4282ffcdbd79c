"""`pgolf data stats`: documents, tokens, targets and exact bytes of a shard, or of a dataset folder checked
against the manifest.json that describes it (the challenge's layout: <root>/manifest.json, <root>/datasets/<name>/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .jsonio import read_json
from .shards import ShardError, document_starts, find_shards, read_shard
from .tokenizer import Tokenizer, byte_tables, decoded_utf8, load_tokenizer, stream_bytes

SPLITS = ("val", "train")
STATS_CHUNK_TOKENS = 1 << 22


def shard_stats(shard: str | Path, tokenizer: str | Path, bos_id: int = 1, check_decode: bool = False) -> dict[str, Any]:
    """Byte count under the challenge's rule; with check_decode, also the UTF-8 length of the decoded text."""
    sp = load_tokenizer(tokenizer)
    return {"shard": str(shard), "tokenizer": str(tokenizer), **_stream_stats([Path(shard)], sp, bos_id, check_decode)}


def folder_stats(folder: str | Path, tokenizer: str | Path, bos_id: int = 1, check_decode: bool = False,
                 manifest: str | Path | None = None) -> dict[str, Any]:
    """Per split: shard files, documents (BOS tokens), tokens, targets and bytes of the split's whole stream.

    The shards of a split are one stream in file order (a document may cross a shard boundary), read a chunk at
    a time. The manifest (default <folder>/../../manifest.json, when present) must agree on every figure it
    states for the split; a prefix of the training shards is checked for its file count only.
    """
    folder = Path(folder)
    sp = load_tokenizer(tokenizer)
    out: dict[str, Any] = {"folder": str(folder), "tokenizer": str(tokenizer)}
    for split in SPLITS:
        pattern = f"fineweb_{split}_*.bin"
        files = find_shards(folder, pattern, "validation") if split == "val" else sorted(folder.glob(pattern))
        out[split] = {"files": len(files), **_stream_stats(files, sp, bos_id, check_decode)}
    manifest_path = Path(manifest) if manifest else folder.parent.parent / "manifest.json"
    if manifest or manifest_path.is_file():
        out["manifest"] = check_against_manifest(out, folder.name, manifest_path)
    return out


def _stream_stats(files: list[Path], sp: Tokenizer, bos_id: int, check_decode: bool,
                  chunk: int = STATS_CHUNK_TOKENS) -> dict[str, Any]:
    """_tokens_stats of the files' tokens concatenated, without holding more than `chunk` tokens at once."""
    tables = byte_tables(sp)
    vocab = int(sp.vocab_size())
    docs = tokens = n_bytes = decoded = 0
    prev: int | None = None          # last token of the previous chunk: the byte rule's p for the next target
    pending: list[int] | None = None  # ids of the document still open at the end of the previous chunk
    for path in files:
        shard = read_shard(path, vocab)
        for start in range(0, shard.size, chunk):
            part = np.asarray(shard[start : start + chunk], dtype=np.int64)
            stream = part if prev is None else np.concatenate([[prev], part])
            n_bytes += int(stream_bytes(stream, tables).sum()) if stream.size > 1 else 0
            starts = document_starts(part, bos_id)
            docs += starts.size
            tokens += part.size
            prev = int(part[-1])
            if check_decode:
                if pending is None and (not starts.size or starts[0] != 0):
                    raise ValueError(f"{path}: decoded-byte check needs a split that starts with BOS")
                bounds = list(starts) + [part.size]
                if pending is not None:
                    pending.extend(part[: bounds[0]].tolist())
                    if starts.size:
                        decoded += len(decoded_utf8(sp, pending))
                if starts.size:
                    for a, b in zip(bounds[:-2], bounds[1:-1]):
                        decoded += len(decoded_utf8(sp, part[a + 1 : b].tolist()))
                    pending = part[bounds[-2] + 1 :].tolist()
    if check_decode and pending is not None:
        decoded += len(decoded_utf8(sp, pending))
    targets = max(tokens - 1, 0)
    stats: dict[str, Any] = {"documents": docs, "tokens": tokens, "targets": targets, "bytes": n_bytes,
                             "tokens_per_byte": (targets / n_bytes) if n_bytes else None}
    if check_decode:
        stats["decoded_utf8_bytes"] = decoded
    return stats


def check_against_manifest(stats: dict[str, Any], dataset: str, manifest_path: Path) -> dict[str, Any]:
    """Compare folder_stats with the manifest's `datasets[name == dataset].stats`; a ShardError lists every mismatch."""
    manifest = read_json(manifest_path, ShardError, "manifest")
    datasets = manifest.get("datasets") if isinstance(manifest, dict) else None
    entry = next((d for d in datasets or [] if isinstance(d, dict) and d.get("name") == dataset), None)
    if entry is None or not isinstance(entry.get("stats"), dict):
        raise ShardError(f"{manifest_path}: no datasets entry named {dataset} with stats")
    figures = entry["stats"]
    checked, mismatches = [], []

    def compare(key: str, ours: int) -> None:
        if key in figures:
            checked.append(key)
            if int(figures[key]) != ours:
                mismatches.append(f"{key} {ours:,} here vs {int(figures[key]):,} in the manifest")

    compare("files_val", stats["val"]["files"])
    compare("docs_val", stats["val"]["documents"])
    compare("tokens_val", stats["val"]["tokens"])
    if stats["train"]["files"] == int(figures.get("files_train", -1)):
        compare("files_train", stats["train"]["files"])
        compare("docs_train", stats["train"]["documents"])
        compare("tokens_train", stats["train"]["tokens"])
    elif "files_train" in figures and stats["train"]["files"] > int(figures["files_train"]):
        mismatches.append(f"{stats['train']['files']} training shards here but the manifest lists "
                          f"{int(figures['files_train'])}")
    if mismatches:
        raise ShardError(f"{stats['folder']} disagrees with {manifest_path}: " + "; ".join(mismatches))
    return {"path": str(manifest_path), "dataset": dataset, "checked": checked,
            "train_prefix": stats["train"]["files"] < int(figures.get("files_train", 0))}
