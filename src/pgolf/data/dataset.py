"""Resolve and check a run's data before any training starts: shard folders, tokenizer, vocabulary agreement;
and the bytes behind val_bpb (data.byte_source: the token-id rule, or the per-token sidecar of original bytes).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config, DataConfig
from ..config.optional import optional_module, require_module
from .shards import ShardError, find_shards, load_tokens, read_header, read_shard
from .tokenizer import (ByteTables, TokenizerError, byte_tables, file_sha256, load_tokenizer, stream_bytes,
                        tokenizer_exists, tokenizer_sha256)

# the challenge layout's pure-byte tokenizer (pgolf.data.byte_tokenizer, an optional module; tests/test_byte_tokenizer.py
# checks these agree with it)
BYTE260_VOCAB, BYTE260_TOKENIZER = 260, "tokenizers/fineweb_pure_byte_260.json"


class DataMismatchError(ValueError):
    """Tokenizer, data and model disagree about the vocabulary."""


@dataclass
class Dataset:
    folder: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    tokenizer_vocab: int
    val_bytes_files: list[Path] = field(default_factory=list)  # the byte sidecar, when the folder has one

    def checksums(self) -> dict[str, object]:
        """Tokenizer and validation files fully hashed; training shards by name and size (they can be 100s of GB)."""
        return {
            "data_folder": str(self.folder),
            "tokenizer": str(self.tokenizer_path),
            "tokenizer_sha256": tokenizer_sha256(self.tokenizer_path),
            "val_sha256": {p.name: file_sha256(p) for p in self.val_files + self.val_bytes_files},
            "train_shards": {p.name: p.stat().st_size for p in self.train_files},
        }


def challenge_paths(vocab_size: int) -> tuple[str, str]:
    """(dataset folder, tokenizer file) of a vocabulary in the challenge's layout, relative to its root (data/)."""
    if vocab_size == BYTE260_VOCAB:
        return "datasets/fineweb10B_byte260", BYTE260_TOKENIZER
    return f"datasets/fineweb10B_sp{vocab_size}", f"tokenizers/fineweb_{vocab_size}_bpe.model"


def validation_files(folder: Path, data: DataConfig) -> tuple[list[Path], list[Path]]:
    """(token shards, byte-sidecar shards) of the validation split. data.val_pattern's default also matches the
    sidecar's fineweb_val_bytes_*.bin, so files matching data.val_bytes_pattern are never token shards."""
    matched = find_shards(folder, data.val_pattern, "validation")
    sidecar = sorted(folder.glob(data.val_bytes_pattern))
    tokens = [f for f in matched if not fnmatch.fnmatch(f.name, data.val_bytes_pattern)]
    if not tokens:
        raise ShardError(f"{folder}: '{data.val_pattern}' matches only byte-sidecar files "
                         f"('{data.val_bytes_pattern}'), no validation token shards")
    return tokens, sidecar


def check_text_transform(folder: Path, data: DataConfig) -> None:
    """The folder's meta.json (pgolf data prepare) must name the transform the config declares."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return
    try:
        written = json.loads(meta_path.read_text()).get("text_transform", "none")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ShardError(f"{meta_path}: not a JSON object ({exc})") from exc
    if written != data.text_transform:
        raise DataMismatchError(f"{meta_path} says the shards hold text_transform = {written!r}, but "
                                f"data.text_transform = {data.text_transform!r}; set --set data.text_transform={written}")


def default_tokenizer(folder: Path, vocab_size: int) -> Path:
    """tokenizer.model / tokenizer.json inside the data folder (pgolf data prepare), else the challenge layout's
    tokenizer of that vocabulary (tokenizers/fineweb_<vocab>_bpe.model, or the byte260 .json for 260)."""
    candidates = [folder / "tokenizer.model", folder / "tokenizer.json",
                  folder.parent.parent / challenge_paths(vocab_size)[1]]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def resolve_dataset(cfg: Config, progress: bool = True, check_ids: bool = True) -> Dataset:
    """Locate shards and tokenizer (preparing the embedded corpus on first use) and check they agree.

    Every shard's header and size is checked, and (with `check_ids`) every token id of every shard, so bad data
    is an error before training starts rather than when the loader reaches it hours later.
    """
    corpus = optional_module("pgolf.data.corpus", cfg.data)
    folder = Path(cfg.data.path) if corpus is None else corpus.ensure_corpus(progress)
    train_files = find_shards(folder, cfg.data.train_pattern, "training")
    val_files, val_bytes_files = validation_files(folder, cfg.data)
    check_text_transform(folder, cfg.data)
    counts = {f: read_header(f) for f in train_files + val_files}
    if not sum(counts[f] for f in train_files):
        raise ShardError(f"{folder}: the training shards hold no tokens ({', '.join(f.name for f in train_files)})")
    val_total = sum(counts[f] for f in val_files)
    if val_total < 2:
        raise ShardError(f"{folder}: the validation shards hold {val_total} tokens; nothing to score "
                         f"({', '.join(f.name for f in val_files)})")
    tokenizer_path = Path(cfg.data.tokenizer) if cfg.data.tokenizer else default_tokenizer(folder, cfg.model.vocab_size)
    if not tokenizer_exists(tokenizer_path):
        raise TokenizerError(f"{tokenizer_path}: tokenizer model not found (set data.tokenizer / --tokenizer)")
    sp = load_tokenizer(tokenizer_path)
    try:  # a tokenizer the byte rule cannot count (user-defined pieces, no transform declaring them) fails here
        tokenizer_byte_tables(sp, cfg.data)
    except TokenizerError as exc:
        raise TokenizerError(f"{tokenizer_path}: {exc}") from exc
    dataset = Dataset(folder, train_files, val_files, tokenizer_path, int(sp.vocab_size()), val_bytes_files)
    if cfg.data.byte_source == "sidecar":
        check_sidecar(dataset)
    if check_ids:
        check_vocabularies(dataset, cfg.model.vocab_size)
    return dataset


def max_token_id(files: list[Path]) -> tuple[int, Path | None]:
    """(largest token id in `files`, the first file holding it); (-1, None) for no tokens."""
    max_id, where = -1, None
    for f in files:
        toks = read_shard(f)
        if toks.size and int(toks.max()) > max_id:
            max_id, where = int(toks.max()), f
    return max_id, where


def check_vocabularies(dataset: Dataset, model_vocab: int, scanned: tuple[int, Path | None] | None = None) -> None:
    """Tokenizer vocab == model.vocab_size, and no token id in the data (every shard) reaches either.

    `scanned`: the (max id, file) of every shard when the caller has already scanned them (split across ranks)."""
    max_id, where = scanned if scanned is not None else max_token_id(list(dict.fromkeys(dataset.train_files + dataset.val_files)))
    where = where or dataset.train_files[0]
    if dataset.tokenizer_vocab != model_vocab or max_id >= min(model_vocab, dataset.tokenizer_vocab):
        raise DataMismatchError(
            f"vocabulary mismatch: tokenizer {dataset.tokenizer_path} has {dataset.tokenizer_vocab} pieces, "
            f"model.vocab_size = {model_vocab}, and the data ({where}) holds token ids up to {max_id}; "
            f"all three must agree (ids < vocab size)")


def load_validation(dataset: Dataset, vocab_size: int, limit: int = 0) -> np.ndarray:
    tokens = load_tokens(dataset.val_files, vocab_size, limit)
    if tokens.size < 2:
        raise ShardError(f"{dataset.val_files[0]}: validation split has {tokens.size} tokens; nothing to score")
    return tokens


# ----------------------------------------------------------------------------- bytes behind val_bpb

def tokenizer_byte_tables(sp, data: DataConfig, vocab_size: int | None = None) -> ByteTables:
    """The token-id byte rule for the tokenizer of this data: CaseOps operators 0 bytes (the escaped literal 3)
    with data.text_transform = caseops; without a transform, a tokenizer with user-defined pieces is refused."""
    if data.text_transform == "caseops":
        return require_module("pgolf.data.caseops", data).caseops_byte_tables(sp, vocab_size)
    return byte_tables(sp, vocab_size)


def check_sidecar(dataset: Dataset) -> None:
    """data.byte_source = sidecar: one sidecar shard per token shard, each the same length."""
    if not dataset.val_bytes_files:
        raise ShardError(f"{dataset.folder}: data.byte_source = 'sidecar' but the folder has no byte sidecar shards "
                         f"(pgolf data prepare --transform caseops writes fineweb_val_bytes_*.bin)")
    if len(dataset.val_bytes_files) != len(dataset.val_files):
        raise ShardError(f"{dataset.folder}: {len(dataset.val_bytes_files)} byte sidecar shards for "
                         f"{len(dataset.val_files)} validation token shards")
    for tokens, counts in zip(dataset.val_files, dataset.val_bytes_files):
        if read_header(tokens) != read_header(counts):
            raise ShardError(f"{counts}: {read_header(counts):,} byte counts for the {read_header(tokens):,} tokens of "
                             f"{tokens.name}")


def validation_bytes(dataset: Dataset, data: DataConfig, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Bytes credited to each target of `tokens` (the validation stream as loaded: a prefix of the split) under
    data.byte_source: the token-id rule, or sidecar[p] for the target at stream position p."""
    tokens = np.asarray(tokens)
    if data.byte_source == "sidecar":
        check_sidecar(dataset)
        counts = load_tokens(dataset.val_bytes_files, limit=tokens.size).astype(np.int64)
        bos = np.flatnonzero(tokens == data.bos_id)
        if counts.size != tokens.size or (bos.size and counts[bos].any()):
            raise ShardError(f"{dataset.val_bytes_files[0]}: the byte sidecar does not belong to these tokens (it "
                             f"must have one count per token and 0 at every BOS)")
        return counts[1:]
    return stream_bytes(tokens, tokenizer_byte_tables(load_tokenizer(dataset.tokenizer_path), data, vocab_size))
