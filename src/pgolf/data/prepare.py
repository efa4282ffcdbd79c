"""`pgolf data prepare`: documents -> tokenizer + challenge-format train/val shards, cut as the challenge's exporter
cuts them (data/download_hf_docs_and_tokenize.py).

Export rule: documents in input order; the first `val_docs` are validation (the challenge: 50,000), the rest
training; each document is [BOS] + encode(text), no EOS, packed into shards of `shard_tokens` tokens that
documents cross freely; training starts a new shard. With the challenge's tokenizer and documents this gives the
challenge's shards byte for byte.

Tokenizer: an existing SentencePiece model or pure-byte tokenizer ("byte260" or its .json), or a SentencePiece
BPE trained with the challenge's settings — by default on the training documents only, so no validation text
shapes it; with `tokenizer_train_docs=N` on the first N documents in input order, validation included, as the
challenge's exporter does (`tokenizer_train_docs: 5000000` for its sp1024). Reading document files and checking
docs_selected.jsonl against its sidecar is docs.py's job (prepare_file).

`transform="caseops"` (#1729/#1736, data/caseops.py) rewrites every document into its CaseOps form before the
tokenizer sees it (tokenizer training included): a trained tokenizer gets the four operators as user-defined
pieces, a given one must have them. Validation then also gets the byte sidecar fineweb_val_bytes_NNNNNN.bin
(the shard format, cut at the same positions as the token shards; entry p = the original UTF-8 bytes token p
stands for, 0 for BOS), and meta.json records `text_transform`, which training checks against
data.text_transform.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from ..config import DataConfig
from ..config.optional import optional_module
from .shards import write_shard
from .tokenizer import Tokenizer, encode_documents, load_tokenizer, tokenizer_sha256, train_tokenizer

SHARD_TOKENS = 100_000_000
DEFAULT_VAL_DOCS = 50_000  # the challenge's NUM_VAL_DOCS
ENCODE_BATCH = 1024
TRANSFORMS = ("none", "caseops")
SIDECAR_PREFIX = "fineweb_val_bytes_"  # + NNNNNN.bin, beside fineweb_val_NNNNNN.bin


class InputError(ValueError):
    """An input text/JSONL file cannot be read as documents; the message names file and line."""


def transform_module(transform: str) -> ModuleType | None:
    """data/caseops.py for transform 'caseops' (reached through the optional-module registry, as data.text_transform
    reaches it), None for 'none'."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
    return optional_module("pgolf.data.caseops", DataConfig(text_transform=transform))


class _ShardWriter:
    """Packs one split's documents into <prefix>NNNNNN.bin shards of exactly `shard_tokens` (the last less)."""

    def __init__(self, folder: Path, prefix: str, shard_tokens: int) -> None:
        self.folder, self.prefix = folder, prefix
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = self.files = 0

    def add(self, toks: np.ndarray) -> None:
        pos = 0
        while pos < toks.size:
            take = min(self.buf.size - self.fill, toks.size - pos)
            self.buf[self.fill : self.fill + take] = toks[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.buf.size:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            write_shard(self.folder / f"{self.prefix}{self.files:06d}.bin", self.buf[: self.fill])
            self.files += 1
            self.fill = 0


def _encoded(sp: Tokenizer, batch: list[str], bos_id: int,
             sidecar: ModuleType | None) -> Iterable[tuple[np.ndarray, np.ndarray | None]]:
    """(tokens, original bytes per token or None) per document of the batch, [BOS] first; `sidecar`: caseops."""
    if sidecar is not None:
        return sidecar.encode_with_original_bytes(sp, batch, bos_id)
    return ((toks, None) for toks in encode_documents(sp, batch, bos_id))


def _export(sp: Tokenizer, docs: Iterable[str], out: Path, val_docs: int, bos_id: int, shard_tokens: int,
            progress: bool, total: int | None, sidecar: ModuleType | None = None) -> dict[str, int]:
    """Encode and write every document (with `sidecar`, data/caseops.py, also the validation byte sidecar in lockstep: sidecar
    shard k holds the counts of token shard k); returns the challenge manifest's `stats` figures."""
    vocab = int(sp.vocab_size())
    if vocab > 2**16:
        raise InputError(f"vocab size {vocab} does not fit the shards' uint16 tokens")
    writers = {split: _ShardWriter(out, f"fineweb_{split}_", shard_tokens) for split in ("val", "train")}
    counts = _ShardWriter(out, SIDECAR_PREFIX, shard_tokens) if sidecar is not None else None
    stats = {f"{what}_{split}": 0 for what in ("docs", "tokens") for split in ("val", "train")}
    sidecar_bytes = done = 0
    docs = iter(docs)
    with tqdm(total=total, desc="encode", unit="doc", disable=not progress, leave=False) as bar:
        while batch := list(itertools.islice(docs, ENCODE_BATCH)):
            for toks, original in _encoded(sp, batch, bos_id, sidecar if done < val_docs else None):
                split = "val" if done < val_docs else "train"
                if toks.size and int(toks.max()) >= vocab:
                    raise InputError(f"document {done}: token id {int(toks.max())} outside vocab size {vocab}")
                writers[split].add(toks)
                if counts is not None and split == "val":
                    if original.size and int(original.max()) >= 2**16:
                        raise InputError(f"document {done}: a token stands for {int(original.max())} bytes, more "
                                         f"than the uint16 byte sidecar holds")
                    counts.add(original)
                    sidecar_bytes += int(original.sum())
                stats[f"docs_{split}"] += 1
                stats[f"tokens_{split}"] += int(toks.size)
                done += 1
            bar.update(len(batch))
    for writer in writers.values():
        writer.flush()
    stats.update(files_val=writers["val"].files, files_train=writers["train"].files)
    if counts is not None:
        counts.flush()
        stats.update(files_val_bytes=counts.files, sidecar_bytes_val=sidecar_bytes)
    for what in ("docs", "files", "tokens"):
        stats[f"{what}_total"] = stats[f"{what}_val"] + stats[f"{what}_train"]
    return {key: stats[key] for key in sorted(stats)}


def _training_texts(open_docs: Callable[[], Iterator[str]], val_docs: int, first_n: int | None,
                    counter: list[int]) -> Iterator[str]:
    """The tokenizer's training documents: the training split, or (first_n) the first N documents in order."""
    docs = open_docs()
    chosen = itertools.islice(docs, first_n) if first_n is not None else itertools.islice(docs, val_docs, None)
    for text in chosen:
        counter[0] += 1
        yield text


def _pure_byte(sp: Tokenizer) -> bool:
    return not isinstance(sp, spm.SentencePieceProcessor)  # the other kind: pgolf.data.byte_tokenizer.ByteTokenizer


def _make_tokenizer(staging: Path, tokenizer: str | Path | None, vocab_size: int | None,
                    open_docs: Callable[[], Iterator[str]], val_docs: int,
                    tokenizer_train_docs: int | None, caseops: ModuleType | None = None) -> tuple[Tokenizer, Path, str]:
    """Load or train the tokenizer and put its file into `staging`; returns (tokenizer, file, source).
    `caseops` (data/caseops.py, for CaseOps text): a given tokenizer must have the operators, a trained one gets them."""
    if tokenizer is not None:
        sp = load_tokenizer(tokenizer)
        if caseops is not None:
            if _pure_byte(sp):
                raise InputError(f"{tokenizer}: a pure-byte tokenizer has no CaseOps operator pieces; give a "
                                 f"SentencePiece model trained for CaseOps text, or --vocab-size to train one")
            caseops.operator_ids(sp)  # a given tokenizer must hold the operators as user-defined pieces
        if _pure_byte(sp):
            path = staging / "tokenizer.json"
            path.write_text(sp.to_json(), encoding="utf-8")
        else:
            path = staging / "tokenizer.model"
            shutil.copyfile(tokenizer, path)
            vocab_file = Path(tokenizer).with_suffix(".vocab")
            if vocab_file.is_file():
                shutil.copyfile(vocab_file, staging / "tokenizer.vocab")
        return sp, path, str(tokenizer)
    used = [0]
    texts = _training_texts(open_docs, val_docs, tokenizer_train_docs, used)
    try:
        model = train_tokenizer(texts, vocab_size, staging / "tokenizer",
                                user_defined_symbols=caseops.OPERATORS if caseops is not None else ())
    except RuntimeError as exc:
        if used[0] == 0:
            raise InputError(f"no documents to train a tokenizer on: the input's first {val_docs:,} documents are "
                             f"validation and none is left (lower --val-docs)") from exc
        raise
    source = (f"trained on the first {used[0]:,} documents (validation included, as the challenge's exporter)"
              if tokenizer_train_docs is not None else f"trained on the {used[0]:,} training documents")
    return load_tokenizer(model), model, source


def prepare_stream(open_docs: Callable[[], Iterator[str]], out: str | Path, *, tokenizer: str | Path | None = None,
                   vocab_size: int | None = None, val_docs: int = DEFAULT_VAL_DOCS, bos_id: int = 1,
                   shard_tokens: int = SHARD_TOKENS, progress: bool = True, total: int | None = None,
                   tokenizer_train_docs: int | None = None, finish: Callable[[], dict[str, Any]] | None = None,
                   extra_meta: dict[str, Any] | None = None, transform: str = "none") -> dict[str, Any]:
    """prepare_documents over `open_docs()`, a fresh iterator of the documents each time it is called (once to
    train a tokenizer, once to encode); `finish()` runs after the encoding pass, before anything is moved into
    `out`, and its dict (or its exception) decides meta["docs"]."""
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of tokenizer= (an existing model) or vocab_size= (train one)")
    if val_docs < 0:
        raise ValueError(f"val_docs must be >= 0, got {val_docs}")
    caseops = transform_module(transform)
    if caseops is not None:
        raw_docs = open_docs

        def open_docs() -> Iterator[str]:  # the same fresh-iterator contract, over the CaseOps form
            return map(caseops.encode, raw_docs())

    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sp, model_path, source = _make_tokenizer(staging, tokenizer, vocab_size, open_docs, val_docs,
                                                 tokenizer_train_docs, caseops)
        stats = _export(sp, open_docs(), staging, val_docs, bos_id, shard_tokens, progress, total, sidecar=caseops)
        if stats["docs_total"] < val_docs:
            raise InputError(f"the input has {stats['docs_total']:,} documents, fewer than the {val_docs:,} "
                             f"validation documents asked for (--val-docs)")
        meta: dict[str, Any] = {
            "vocab_size": int(sp.vocab_size()),
            "bos_id": bos_id,
            "tokenizer": model_path.name,
            "tokenizer_kind": "pure_byte" if _pure_byte(sp) else "sentencepiece_bpe",
            "tokenizer_sha256": tokenizer_sha256(model_path),
            "tokenizer_source": source,
            "text_transform": transform,
            "val": {"docs": stats["docs_val"], "tokens": stats["tokens_val"], "shards": stats["files_val"],
                    **({"sidecar_shards": stats["files_val_bytes"], "sidecar_bytes": stats["sidecar_bytes_val"]}
                       if transform == "caseops" else {})},
            "train": {"docs": stats["docs_train"], "tokens": stats["tokens_train"], "shards": stats["files_train"]},
            "stats": stats,
        }
        if finish is not None:
            meta["docs"] = finish()
        meta.update(extra_meta or {})
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def prepare_documents(docs: list[str], out: str | Path, *, tokenizer: str | Path | None = None,
                      vocab_size: int | None = None, val_docs: int = DEFAULT_VAL_DOCS, bos_id: int = 1,
                      shard_tokens: int = SHARD_TOKENS, progress: bool = True, tokenizer_train_docs: int | None = None,
                      extra_meta: dict[str, Any] | None = None, transform: str = "none") -> dict[str, Any]:
    """Write the tokenizer file (trained, copied or byte260's JSON), fineweb_{val,train}_NNNNNN.bin and meta.json
    (with transform="caseops" also fineweb_val_bytes_NNNNNN.bin)."""
    if not 0 <= val_docs <= len(docs):
        raise ValueError(f"val_docs={val_docs} but the input has {len(docs)} documents")
    return prepare_stream(lambda: iter(docs), out, tokenizer=tokenizer, vocab_size=vocab_size, val_docs=val_docs,
                          bos_id=bos_id, shard_tokens=shard_tokens, progress=progress, total=len(docs),
                          tokenizer_train_docs=tokenizer_train_docs, extra_meta=extra_meta, transform=transform)
