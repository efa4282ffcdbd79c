"""Tokenizers (SentencePiece BPE with the challenge's settings, or the pure-byte byte260) and the exact byte rule.

A tokenizer is named by a SentencePiece .model, a pure-byte .json (the challenge's byte260 file) or the name
"byte260" (see byte_tokenizer.py). Bytes of a scored target t whose input (previous) token is p:
    bytes(t, p) = base_bytes[t] + [has_leading_space[t] and not is_boundary[p]]
where base_bytes is the UTF-8 length of the piece without its leading '▁', byte-fallback pieces count 1,
and control/unknown/unused ids count 0 and are boundaries. Summed over a document this equals the UTF-8
length of the decoded text. For the pure-byte tokenizer the same tables hold base_bytes = 1 for every byte id, 0
for the specials, and no leading spaces.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import sentencepiece as spm

from .byte_tokenizer import BYTE260, ByteTokenizer, ByteTokenizerError, is_byte_tokenizer_spec, load_byte_tokenizer

SPACE_PIECE = "\u2581"

# The challenge exporter's trainer settings (data/download_hf_docs_and_tokenize.py).
CHALLENGE_TRAINER_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or unfit for exact byte accounting."""


@functools.lru_cache(maxsize=8)
def _load_processor(path: str, mtime: float) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_file=path)
    except Exception as exc:  # sentencepiece raises OSError/RuntimeError with little context
        raise TokenizerError(f"{path}: not a readable SentencePiece model ({exc})") from exc


Tokenizer = spm.SentencePieceProcessor | ByteTokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece model, or the pure-byte tokenizer for "byte260" / a pure-byte .json file."""
    if is_byte_tokenizer_spec(path):
        try:
            return load_byte_tokenizer(path)
        except ByteTokenizerError as exc:
            raise TokenizerError(str(exc)) from exc
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer model not found")
    sp = _load_processor(str(path.resolve()), path.stat().st_mtime)
    if sp.piece_to_id(SPACE_PIECE) == sp.unk_id():
        # Without a standalone '▁' piece, spaces fall back to 3 byte tokens and bpb comes out ~20% too low.
        raise TokenizerError(f"{path}: has no standalone '{SPACE_PIECE}' piece, so byte counts would be wrong")
    return sp


def tokenizer_exists(spec: str | Path) -> bool:
    return str(spec) == BYTE260 or Path(spec).is_file()


def tokenizer_sha256(spec: str | Path) -> str:
    """SHA-256 of the tokenizer file; for "byte260", of the challenge's byte260 JSON file (the same bytes)."""
    if str(spec) == BYTE260:
        return hashlib.sha256(ByteTokenizer().to_json().encode("utf-8")).hexdigest()
    return file_sha256(spec)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix: str | Path) -> Path:
    """Train a SentencePiece BPE with the challenge's settings; returns the .model path."""
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    cleaned = (t.replace("\x00", " ").strip() for t in texts)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in cleaned if t),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        minloglevel=2,
        **CHALLENGE_TRAINER_SETTINGS,
    )
    return model_prefix.with_suffix(".model")


@dataclass(frozen=True)
class ByteTables:
    """Per-token lookup tables of the byte rule (length >= vocab size)."""
    base_bytes: np.ndarray          # int16
    has_leading_space: np.ndarray   # bool
    is_boundary: np.ndarray         # bool

    def target_bytes(self, targets: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Bytes credited to each target token given the token before it (same shapes)."""
        targets = np.asarray(targets, dtype=np.int64)
        prev = np.asarray(prev, dtype=np.int64)
        space = self.has_leading_space[targets] & ~self.is_boundary[prev]
        return self.base_bytes[targets].astype(np.int64) + space.astype(np.int64)


def byte_tables(sp: Tokenizer, vocab_size: int | None = None) -> ByteTables:
    """The byte rule's tables for ids up to max(tokenizer vocab, vocab_size); ids past the tokenizer count 0."""
    size = max(int(sp.vocab_size()), vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    if isinstance(sp, ByteTokenizer):
        byte_ids = slice(sp.byte_offset, sp.vocab_size())
        base[byte_ids] = 1  # one byte per byte token; specials (pad, bos, eos, unk) 0 and boundaries
        boundary[byte_ids] = False
        return ByteTables(base, space, boundary)
    for tid in range(int(sp.vocab_size())):
        if sp.is_control(tid) or sp.is_unknown(tid) or sp.is_unused(tid):
            continue
        boundary[tid] = False
        if sp.is_byte(tid):
            base[tid] = 1
            continue
        piece = sp.id_to_piece(tid)
        if piece.startswith(SPACE_PIECE):
            space[tid] = True
            piece = piece[1:]
        base[tid] = len(piece.encode("utf-8"))
    return ByteTables(base, space, boundary)


def stream_bytes(tokens: np.ndarray, tables: ByteTables) -> np.ndarray:
    """Bytes of every target of a token stream (targets are tokens[1:])."""
    tokens = np.asarray(tokens)
    return tables.target_bytes(tokens[1:], tokens[:-1])


def decoded_utf8(sp: Tokenizer, ids: list[int]) -> bytes:
    """The bytes a document's ids stand for: the raw bytes for byte260, the decoded text's UTF-8 for SentencePiece."""
    if isinstance(sp, ByteTokenizer):
        return sp.decode_bytes(ids)
    return sp.decode(ids).encode("utf-8")


def encode_documents(sp: Tokenizer, texts: list[str], bos_id: int = 1) -> list[np.ndarray]:
    """[BOS] + encode(text) per document, exactly as the challenge exporter writes them."""
    if isinstance(sp, ByteTokenizer):
        return [np.concatenate(([bos_id], sp.encode_array(t))) for t in texts]
    encoded = sp.encode(texts, out_type=int)
    return [np.asarray([bos_id] + ids, dtype=np.int64) for ids in encoded]
