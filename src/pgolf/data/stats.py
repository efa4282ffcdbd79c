"""`pgolf data stats`: documents, tokens, targets and exact bytes of a shard, or of a dataset folder checked
against the manifest.json that describes it (the challenge's layout: <root>/manifest.json, <root>/datasets/<name>/).

CaseOps shards (data/caseops.py; the transform comes from --transform or the folder's meta.json) get both byte
counts: `bytes`, the token-id rule (operators 0, the escaped literal 3: what val_bpb divides by by default, the
same count as the plain tokenizer on the same text), and, where the byte sidecar fineweb_val_bytes_*.bin lies
beside the validation shards, `sidecar_bytes` (the original bytes, #1855's denominator) and
`sidecar_minus_bytes`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .jsonio import read_json
from .prepare import SIDECAR_PREFIX, TRANSFORMS, transform_module
from .shards import ShardError, document_starts, find_shards, read_shard
from .tokenizer import ByteTables, Tokenizer, byte_tables, decoded_utf8, load_tokenizer, stream_bytes

SPLITS = ("val", "train")
STATS_CHUNK_TOKENS = 1 << 22
_VAL_SHARD = re.compile(r"fineweb_val_(\d+)\.bin")


def folder_transform(folder: Path) -> str:
    """The text_transform that meta.json (pgolf data prepare) records in the folder; 'none' without one."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return "none"
    payload = read_json(meta, ShardError, "dataset meta")
    transform = payload.get("text_transform", "none") if isinstance(payload, dict) else None
    if transform not in TRANSFORMS:
        raise ShardError(f"{meta}: text_transform = {transform!r}, expected one of {', '.join(TRANSFORMS)}")
    return transform


def sidecar_for(shard: Path) -> Path | None:
    """fineweb_val_bytes_NNNNNN.bin beside fineweb_val_NNNNNN.bin, when it exists."""
    match = _VAL_SHARD.fullmatch(shard.name)
    candidate = shard.with_name(f"{SIDECAR_PREFIX}{match.group(1)}.bin") if match else None
    return candidate if candidate is not None and candidate.is_file() else None


class _Rule:
    """The byte rule and the decoded-byte count of one transform."""

    def __init__(self, sp: Tokenizer, transform: str) -> None:
        self.sp, self.transform, self.caseops = sp, transform, transform_module(transform)
        self.tables: ByteTables = self.caseops.caseops_byte_tables(sp) if self.caseops is not None else byte_tables(sp)
        self.inverse_failures = 0

    def decoded_bytes(self, ids: list[int]) -> int:
        """UTF-8 length of the document's text (CaseOps: of its inverse transform). The inverse is not total on
        SentencePiece output (NFKC can put an ASCII capital right before a marker: '™' -> 'TM'); such a document
        counts its decoded text less its markers, and is counted in inverse_failures."""
        if self.caseops is None:
            return len(decoded_utf8(self.sp, ids))
        text = self.sp.decode(ids)
        try:
            return len(self.caseops.decode(text).encode("utf-8"))
        except self.caseops.CaseOpsError:
            self.inverse_failures += 1
            return int(self.caseops.original_char_bytes(text).sum())


def shard_stats(shard: str | Path, tokenizer: str | Path, bos_id: int = 1, check_decode: bool = False,
                transform: str | None = None, sidecar: str | Path | None = None) -> dict[str, Any]:
    """Byte count under the challenge's rule (CaseOps: the token-id rule) and the sidecar's where there is one;
    with check_decode, also the UTF-8 length of the decoded text."""
    shard = Path(shard)
    rule = _Rule(load_tokenizer(tokenizer), transform or folder_transform(shard.parent))
    stats = {"shard": str(shard), "tokenizer": str(tokenizer), "text_transform": rule.transform,
             **_stream_stats([shard], rule, bos_id, check_decode)}
    sidecar = Path(sidecar) if sidecar else sidecar_for(shard)
    if sidecar is not None:
        stats.update(_sidecar_stats([shard], [sidecar], stats["bytes"]))
    return stats


def folder_stats(folder: str | Path, tokenizer: str | Path, bos_id: int = 1, check_decode: bool = False,
                 manifest: str | Path | None = None, transform: str | None = None) -> dict[str, Any]:
    """Per split: shard files, documents (BOS tokens), tokens, targets and bytes of the split's whole stream.

    The shards of a split are one stream in file order (a document may cross a shard boundary), read a chunk at
    a time. The manifest (default <folder>/../../manifest.json, when present) must agree on every figure it
    states for the split; a prefix of the training shards is checked for its file count only.
    """
    folder = Path(folder)
    rule = _Rule(load_tokenizer(tokenizer), transform or folder_transform(folder))
    out: dict[str, Any] = {"folder": str(folder), "tokenizer": str(tokenizer), "text_transform": rule.transform}
    for split in SPLITS:
        pattern = f"fineweb_{split}_*.bin"
        files = find_shards(folder, pattern, "validation") if split == "val" else sorted(folder.glob(pattern))
        files = [f for f in files if not f.name.startswith(SIDECAR_PREFIX)]  # the val glob matches the sidecar too
        out[split] = {"files": len(files), **_stream_stats(files, rule, bos_id, check_decode)}
        if split == "val" and (sidecars := sorted(folder.glob(f"{SIDECAR_PREFIX}*.bin"))):
            out[split].update(_sidecar_stats(files, sidecars, out[split]["bytes"]))
    manifest_path = Path(manifest) if manifest else folder.parent.parent / "manifest.json"
    if manifest or manifest_path.is_file():
        out["manifest"] = check_against_manifest(out, folder.name, manifest_path)
    return out


def _sidecar_stats(token_files: list[Path], sidecar_files: list[Path], token_rule_bytes: int) -> dict[str, Any]:
    """Σ of the byte sidecar over the targets (its entry for the split's first token, a BOS, is 0 and no target),
    checked shard by shard against the token shards' lengths."""
    if len(sidecar_files) != len(token_files):
        raise ShardError(f"{len(sidecar_files)} byte sidecar shards ({sidecar_files[0].name}, ...) for "
                         f"{len(token_files)} token shards")
    total = 0
    for tokens, counts_file in zip(token_files, sidecar_files):
        counts = read_shard(counts_file)
        if counts.size != read_shard(tokens).size:
            raise ShardError(f"{counts_file}: {counts.size:,} byte counts for the {read_shard(tokens).size:,} tokens "
                             f"of {tokens}")
        total += int(counts.sum(dtype=np.int64))
    first = read_shard(sidecar_files[0])
    total -= int(first[0]) if first.size else 0
    return {"sidecar_files": len(sidecar_files), "sidecar_bytes": total, "sidecar_minus_bytes": total - token_rule_bytes}


def _carry(part: np.ndarray, tables: ByteTables) -> np.ndarray:
    """The tail of a chunk the next chunk's byte rule needs: its last token, and with an escape rule every
    token from the last non-escape one on (whether a trailing escape is itself escaped depends on its run)."""
    if tables.escape is None:
        return part[-1:]
    plain = np.flatnonzero(part != tables.escape.escape_id)
    return part[plain[-1]:] if plain.size else part


def _stream_stats(files: list[Path], rule: _Rule, bos_id: int, check_decode: bool,
                  chunk: int = STATS_CHUNK_TOKENS) -> dict[str, Any]:
    """_tokens_stats of the files' tokens concatenated, without holding more than `chunk` tokens at once."""
    tables = rule.tables
    vocab = int(rule.sp.vocab_size())
    docs = tokens = n_bytes = decoded = 0
    carry = np.zeros(0, dtype=np.int64)  # tail of the previous chunk: the byte rule's context for the next targets
    pending: list[int] | None = None  # ids of the document still open at the end of the previous chunk
    for path in files:
        shard = read_shard(path, vocab)
        for start in range(0, shard.size, chunk):
            part = np.asarray(shard[start : start + chunk], dtype=np.int64)
            stream = np.concatenate([carry, part])
            if stream.size > 1:  # the targets of this chunk are the last part.size of the stream (less a first one)
                n_bytes += int(stream_bytes(stream, tables)[-part.size :].sum())
            starts = document_starts(part, bos_id)
            docs += starts.size
            tokens += part.size
            carry = _carry(stream, tables)
            if check_decode:
                if pending is None and (not starts.size or starts[0] != 0):
                    raise ValueError(f"{path}: decoded-byte check needs a split that starts with BOS")
                bounds = list(starts) + [part.size]
                if pending is not None:
                    pending.extend(part[: bounds[0]].tolist())
                    if starts.size:
                        decoded += rule.decoded_bytes(pending)
                if starts.size:
                    for a, b in zip(bounds[:-2], bounds[1:-1]):
                        decoded += rule.decoded_bytes(part[a + 1 : b].tolist())
                    pending = part[bounds[-2] + 1 :].tolist()
    if check_decode and pending is not None:
        decoded += rule.decoded_bytes(pending)
    targets = max(tokens - 1, 0)
    stats: dict[str, Any] = {"documents": docs, "tokens": tokens, "targets": targets, "bytes": n_bytes,
                             "tokens_per_byte": (targets / n_bytes) if n_bytes else None}
    if check_decode:
        stats["decoded_utf8_bytes"] = decoded
        if rule.transform == "caseops":
            stats["caseops_inverse_failures"] = rule.inverse_failures
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
