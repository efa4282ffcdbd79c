"""Resolve and check a run's data before any training starts: shard folders, tokenizer, vocabulary agreement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..config.optional import optional_module
from .byte_tokenizer import BYTE260_FILENAME, DEFAULT_BYTE_TOKENIZER
from .shards import ShardError, find_shards, load_tokens, read_header, read_shard
from .tokenizer import TokenizerError, byte_tables, file_sha256, load_tokenizer, tokenizer_exists, tokenizer_sha256

BYTE260_VOCAB = DEFAULT_BYTE_TOKENIZER.vocab_size()


class DataMismatchError(ValueError):
    """Tokenizer, data and model disagree about the vocabulary."""


@dataclass
class Dataset:
    folder: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    tokenizer_vocab: int

    def checksums(self) -> dict[str, object]:
        """Tokenizer and validation files fully hashed; training shards by name and size (they can be 100s of GB)."""
        return {
            "data_folder": str(self.folder),
            "tokenizer": str(self.tokenizer_path),
            "tokenizer_sha256": tokenizer_sha256(self.tokenizer_path),
            "val_sha256": {p.name: file_sha256(p) for p in self.val_files},
            "train_shards": {p.name: p.stat().st_size for p in self.train_files},
        }


def challenge_paths(vocab_size: int) -> tuple[str, str]:
    """(dataset folder, tokenizer file) of a vocabulary in the challenge's layout, relative to its root (data/)."""
    if vocab_size == BYTE260_VOCAB:
        return "datasets/fineweb10B_byte260", f"tokenizers/{BYTE260_FILENAME}"
    return f"datasets/fineweb10B_sp{vocab_size}", f"tokenizers/fineweb_{vocab_size}_bpe.model"


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
    val_files = find_shards(folder, cfg.data.val_pattern, "validation")
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
    try:  # a tokenizer the byte rule cannot count (user-defined pieces) fails here, not after training
        byte_tables(sp)
    except TokenizerError as exc:
        raise TokenizerError(f"{tokenizer_path}: {exc}") from exc
    dataset = Dataset(folder, train_files, val_files, tokenizer_path, int(sp.vocab_size()))
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
