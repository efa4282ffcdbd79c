"""Tokenizers (SentencePiece BPE with the challenge's settings, or the pure-byte byte260) and the exact byte rule.

A tokenizer is named by a SentencePiece .model, a pure-byte .json (the challenge's byte260 file) or the name
"byte260" (see byte_tokenizer.py). Bytes of a scored target t whose input (previous) token is p:
    bytes(t, p) = base_bytes[t] + [has_leading_space[t] and not is_boundary[p]]
where base_bytes is the UTF-8 length of the piece without its leading '▁', byte-fallback pieces count 1,
and control/unknown/unused ids count 0 and are boundaries. Summed over a document this equals the UTF-8
length of the decoded text, except where decoding cannot give the original bytes, and there the rule (the
challenge's own lookup table) is what counts: an unknown piece decodes to " ⁇ " but counts 0, byte-fallback
pieces that do not form valid UTF-8 decode to U+FFFD (3 bytes each) but count 1 each. User-defined pieces have
no rule: their bytes in the original text are not their piece text (CaseOps operators, issue #22, stand for no
bytes at all), so byte_tables refuses a tokenizer that has them unless the caller says what they count.
For the pure-byte tokenizer the same tables hold base_bytes = 1 for every byte id, 0 for the specials, and no
leading spaces.

An escape rule (EscapeRule, CaseOps' ESC) makes the count depend on more than the previous token: after an
unescaped escape token, an escapable token is a literal and counts its literal bytes. `stream_bytes` applies it
over the whole stream; `ByteTables.target_bytes` alone does not.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import sentencepiece as spm

from ..config import DataConfig
from ..config.optional import BYTE260, optional_module, require_module

SPACE_PIECE = "\u2581"
# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type)
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE = 1, 2, 3, 4, 5, 6
# CaseOps' operators (data/caseops.py: TITLE, ALLCAPS, CAPNEXT, ESC): user-defined pieces that stand for no bytes
CASEOPS_OPERATOR_PIECES = ("\ue001", "\ue002", "\ue003", "\ue004")

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


# a SentencePieceProcessor, or a pgolf.data.byte_tokenizer.ByteTokenizer (the same methods; an optional module,
# reached through byte_tokenizer_module: a train_gpt.py carries it only when its config names a pure-byte tokenizer)
Tokenizer = spm.SentencePieceProcessor


def byte_tokenizer_module(spec: str | Path):
    """pgolf.data.byte_tokenizer when `spec` names the pure-byte tokenizer ("byte260", a .json file), else None."""
    return optional_module("pgolf.data.byte_tokenizer", DataConfig(tokenizer=str(spec)))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece model, or the pure-byte tokenizer for "byte260" / a pure-byte .json file."""
    byte = byte_tokenizer_module(path)
    if byte is not None:
        try:
            return byte.load_byte_tokenizer(path)
        except byte.ByteTokenizerError as exc:
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
        byte = require_module("pgolf.data.byte_tokenizer", DataConfig(tokenizer=BYTE260))
        return hashlib.sha256(byte.ByteTokenizer().to_json().encode("utf-8")).hexdigest()
    return file_sha256(spec)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix: str | Path,
                    user_defined_symbols: tuple[str, ...] = ()) -> Path:
    """Train a SentencePiece BPE with the challenge's settings; returns the .model path.

    `user_defined_symbols`: pieces that are always one token, never merged (CaseOps' operators)."""
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    cleaned = (t.replace("\x00", " ").strip() for t in texts)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in cleaned if t),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        minloglevel=2,
        **({"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}),
        **CHALLENGE_TRAINER_SETTINGS,
    )
    return model_prefix.with_suffix(".model")


@dataclass(frozen=True)
class EscapeRule:
    """After an unescaped `escape_id`, a token of `literal_bytes` is a literal and counts literal_bytes[id]."""
    escape_id: int
    literal_bytes: Mapping[int, int]


@dataclass(frozen=True)
class ByteTables:
    """Per-token lookup tables of the byte rule (length >= vocab size)."""
    base_bytes: np.ndarray          # int16
    has_leading_space: np.ndarray   # bool
    is_boundary: np.ndarray         # bool
    escape: EscapeRule | None = None

    def target_bytes(self, targets: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Bytes credited to each target token given the token before it (same shapes), without the escape
        rule (stream_bytes applies it)."""
        targets = np.asarray(targets, dtype=np.int64)
        prev = np.asarray(prev, dtype=np.int64)
        space = self.has_leading_space[targets] & ~self.is_boundary[prev]
        return self.base_bytes[targets].astype(np.int64) + space.astype(np.int64)


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _proto_fields(buf: memoryview) -> Iterable[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of a serialized protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field_number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):  # fixed 64 / 32 bit
            value, i = buf[i : i + (8 if wire == 1 else 4)], i + (8 if wire == 1 else 4)
        else:
            raise TokenizerError(f"SentencePiece model proto: unsupported wire type {wire} (field {field_number})")
        yield field_number, wire, value


def piece_types(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """The type (PIECE_*) of every piece id, from the model proto (the processor's API has no is_user_defined).

    Read with a 20-line wire-format reader rather than protobuf's generated module: protobuf is not a
    dependency of sentencepiece, and this is the only field pgolf needs.
    """
    proto = memoryview(sp.serialized_model_proto())
    types = []
    for field_number, wire, piece in _proto_fields(proto):
        if field_number == 1 and wire == 2:  # ModelProto.pieces; its field 3 is the type (NORMAL when absent)
            types.append(next((v for f, w, v in _proto_fields(piece) if f == 3 and w == 0), PIECE_NORMAL))
    out = np.asarray(types, dtype=np.int8)
    if out.size != sp.vocab_size():
        raise TokenizerError(f"SentencePiece model proto lists {out.size} pieces, the processor {sp.vocab_size()}")
    return out


def byte_tables(sp: Tokenizer, vocab_size: int | None = None,
                user_defined_bytes: Mapping[int, int] | str | None = None,
                escape: EscapeRule | None = None) -> ByteTables:
    """The byte rule's tables for `sp` (padded to `vocab_size` with 0-byte boundary ids; byte260 has no
    user-defined pieces).

    `user_defined_bytes` says what user-defined pieces count, which the rule cannot know: a mapping
    {piece id: bytes} for every one of them (e.g. 0 for CaseOps operators), or "text" for the UTF-8 length of
    the piece (pieces that stand for themselves in the text). With user-defined pieces and no policy: TokenizerError.
    `escape`: an escape rule (CaseOps: data/caseops.py caseops_byte_tables).
    """
    size = max(int(sp.vocab_size()), vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    if not isinstance(sp, spm.SentencePieceProcessor):  # the pure-byte tokenizer
        byte_ids = slice(sp.byte_offset, sp.vocab_size())
        base[byte_ids] = 1  # one byte per byte token; specials (pad, bos, eos, unk) 0 and boundaries
        boundary[byte_ids] = False
        return ByteTables(base, space, boundary)
    user_defined = _user_defined_bytes(sp, piece_types(sp), user_defined_bytes)
    for tid in range(int(sp.vocab_size())):
        if sp.is_control(tid) or sp.is_unknown(tid) or sp.is_unused(tid):
            continue
        boundary[tid] = False
        if sp.is_byte(tid):
            base[tid] = 1
            continue
        if tid in user_defined:
            base[tid] = user_defined[tid]
            continue
        piece = sp.id_to_piece(tid)
        if piece.startswith(SPACE_PIECE):
            space[tid] = True
            piece = piece[1:]
        base[tid] = len(piece.encode("utf-8"))
    if escape is not None:
        outside = [i for i in [escape.escape_id, *escape.literal_bytes] if not 0 <= i < int(sp.vocab_size())]
        if outside:
            raise TokenizerError(f"escape rule names token id {outside[0]}, outside the tokenizer's {sp.vocab_size()} pieces")
    return ByteTables(base, space, boundary, escape)


def _user_defined_bytes(sp: spm.SentencePieceProcessor, types: np.ndarray,
                        policy: Mapping[int, int] | str | None) -> dict[int, int]:
    """{id: bytes} for the user-defined pieces that do not count as their text; checks the policy covers them."""
    ids = [int(i) for i in np.flatnonzero(types == PIECE_USER_DEFINED)]
    operators = [i for i in ids if sp.id_to_piece(i) in CASEOPS_OPERATOR_PIECES]
    if policy == "text" and operators:
        raise TokenizerError(f"user-defined piece {operators[0]} is a CaseOps operator, which stands for no bytes; "
                             f"counting it as its text (3 bytes) would flatter bpb (use data/caseops.py's tables)")
    if not ids or policy == "text":
        return {}
    shown = ", ".join(f"{i} {sp.id_to_piece(i)!r}" for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
    if policy is None:
        raise TokenizerError(
            f"the tokenizer has {len(ids)} user-defined piece(s) ({shown}) of unknown bytes: pass byte_tables "
            f"user_defined_bytes={{id: bytes}} or 'text' (their UTF-8 length)")
    if isinstance(policy, str):
        raise TokenizerError(f"user_defined_bytes must be a mapping {{id: bytes}} or 'text', got {policy!r}")
    wrong = sorted(set(policy) ^ set(ids))
    if wrong:
        raise TokenizerError(f"user_defined_bytes must give the bytes of exactly the user-defined pieces ({shown}); "
                             f"id {wrong[0]} is {'not user-defined' if wrong[0] in policy else 'missing'}")
    bad = [(i, n) for i, n in policy.items() if not isinstance(n, (int, np.integer)) or n < 0]
    if bad:
        raise TokenizerError(f"user_defined_bytes[{bad[0][0]}] = {bad[0][1]!r}: bytes must be an integer >= 0")
    return {int(i): int(n) for i, n in policy.items()}


def escaped_literals(is_escape: np.ndarray, escapable: np.ndarray) -> np.ndarray:
    """Which symbols of a sequence are escaped literals: an escapable symbol right after an unescaped escape.

    Read left to right, an unescaped escape escapes the next symbol. In a run of consecutive escapes (the symbol
    before a run is no escape, so the run's first one is unescaped) those at even offsets escape and those at odd
    offsets are literals (when escapable, as CaseOps' ESC is); the symbol after an odd-length run is escaped."""
    is_escape = np.asarray(is_escape, dtype=bool)
    idx = np.arange(is_escape.size)
    run_start = np.maximum.accumulate(np.where(is_escape & ~np.r_[False, is_escape[:-1]], idx, 0))
    escaper = is_escape & ((idx - run_start) % 2 == 0)
    return np.asarray(escapable, dtype=bool) & np.r_[False, escaper[:-1]]


def stream_bytes(tokens: np.ndarray, tables: ByteTables) -> np.ndarray:
    """Bytes of every target of a token stream (targets are tokens[1:])."""
    tokens = np.asarray(tokens)
    out = tables.target_bytes(tokens[1:], tokens[:-1])
    rule = tables.escape
    if rule is not None and tokens.size > 1:
        ids = np.asarray(tokens, dtype=np.int64)
        literal_ids = np.fromiter(rule.literal_bytes, dtype=np.int64)
        literal = escaped_literals(ids == rule.escape_id, np.isin(ids, literal_ids))[1:]
        lookup = np.zeros(max(int(ids.max()), int(literal_ids.max())) + 1, dtype=np.int64)
        lookup[literal_ids] = list(rule.literal_bytes.values())
        out[literal] = lookup[ids[1:][literal]]
    return out


def decoded_utf8(sp: Tokenizer, ids: list[int]) -> bytes:
    """The bytes a document's ids stand for: the raw bytes for byte260, the decoded text's UTF-8 for SentencePiece."""
    if not isinstance(sp, spm.SentencePieceProcessor):  # the pure-byte tokenizer
        return sp.decode_bytes(ids)
    return sp.decode(ids).encode("utf-8")


def encode_documents(sp: Tokenizer, texts: list[str], bos_id: int = 1) -> list[np.ndarray]:
    """[BOS] + encode(text) per document, exactly as the challenge exporter writes them."""
    if not isinstance(sp, spm.SentencePieceProcessor):  # the pure-byte tokenizer
        return [np.concatenate(([bos_id], sp.encode_array(t))) for t in texts]
    encoded = sp.encode(texts, out_type=int)
    return [np.asarray([bos_id] + ids, dtype=np.int64) for ids in encoded]
