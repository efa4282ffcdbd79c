"""CaseOps (#1729/#1736): a lossless case transform applied to text before SentencePiece, and its byte accounting.

Four operators, private-use code points that the tokenizer holds as user-defined pieces (never merged):
    TITLE U+E001    the next ASCII-letter word is capitalised
    ALLCAPS U+E002  the whole next word is upper case
    CAPNEXT U+E003  the next letter is upper case
    ESC U+E004      the next character is a literal operator character of the input
encode, left to right over maximal runs w of ASCII letters [A-Za-z]+ (every other character unchanged):
    an operator character c in the input  -> ESC c
    w all lower case                      -> w
    len(w) >= 2 and w all upper case      -> ALLCAPS lower(w)
    w[0] upper, w[1:] non-empty and lower -> TITLE lower(w)
    otherwise (mixed, or one capital)     -> [TITLE if w[0] is upper] lower(w[0]), then CAPNEXT before every
                                             later capital, each letter lower-cased
decode inverts it (decode(encode(t)) == t for every string); it raises CaseOpsError on a marker it cannot
place (a mode inside a word, a marker before a non-letter, a marker left at the end).

Bytes. An operator stands for no bytes of the original text, so the byte rule credits it 0, except the literal
that follows an unescaped ESC, which stands for itself (3 bytes). Two ways to count, both here:
- the token rule (`caseops_byte_tables`): pgolf's usual per-token rule with operator pieces at 0 and the escaped
  literal at its UTF-8 length. It needs only token ids, and over a document it equals the byte count of the
  plain tokenizer on the same text (SentencePiece's normalised text, the denominator every other val_bpb uses);
- the sidecar (`encode_with_original_bytes`): per token, the UTF-8 bytes of the ORIGINAL text it covers
  (its SentencePiece surface, before normalisation), as #1855's `fineweb_val_bytes_*.bin` hold them. It
  differs from the token rule where NFKC or whitespace handling changed the text (e.g. '™' -> 'TM').
Crediting an operator piece with its own UTF-8 length (3) would flatter bpb by ~10 %: the byte tables refuse
user-defined pieces unless told what they count, and `caseops_byte_tables` tells them 0.
"""

from __future__ import annotations

import re

import numpy as np
import sentencepiece as spm

from .tokenizer import PIECE_USER_DEFINED, ByteTables, EscapeRule, TokenizerError, byte_tables, escaped_literals, piece_types

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
OPERATOR_BYTES = len(TITLE.encode("utf-8"))  # 3, what an escaped literal stands for
_FIRST_OP, _LAST_OP = ord(TITLE), ord(ESC)
_WORD_OR_OPERATOR = re.compile("[A-Za-z]+|[\ue001-\ue004]")


class CaseOpsError(ValueError):
    """A CaseOps string cannot be decoded: a marker at a place the encoder never puts one."""


def _encode_run(match: re.Match) -> str:
    w = match.group()
    if w in OPERATORS:  # an operator character of the input: escaped, so decode reads it as a literal
        return ESC + w
    if w.islower():
        return w
    if len(w) >= 2 and w.isupper():
        return ALLCAPS + w.lower()
    if w[0].isupper() and w[1:].islower():  # "".islower() is False: a lone capital goes below
        return TITLE + w.lower()
    out = [TITLE] if w[0].isupper() else []
    out.append(w[0].lower())
    for ch in w[1:]:
        if ch.isupper():
            out.append(CAPNEXT)
        out.append(ch.lower())
    return "".join(out)


def encode(text: str) -> str:
    """The CaseOps form of `text`: every ASCII capital replaced by lower case plus an operator."""
    return _WORD_OR_OPERATOR.sub(_encode_run, text)


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def decode(text: str) -> str:
    """The text `encode` made `text` from; CaseOpsError (naming the position) on a misplaced marker."""
    out: list[str] = []
    escape = capnext = in_word = allcaps_word = False
    mode: str | None = None  # TITLE or ALLCAPS, waiting for the next word
    for i, ch in enumerate(text):
        if escape:
            out.append(ch)
            escape = False
            in_word = _is_ascii_letter(ch)
            allcaps_word = allcaps_word and in_word
        elif ch == ESC:
            escape = True
        elif ch in (TITLE, ALLCAPS):
            if mode is not None or in_word or capnext:
                raise CaseOpsError(f"position {i}: {'title' if ch == TITLE else 'allcaps'} marker inside a word "
                                   f"or after another marker")
            mode = ch
        elif ch == CAPNEXT:
            if capnext:
                raise CaseOpsError(f"position {i}: two capnext markers in a row")
            capnext = True
        elif _is_ascii_letter(ch):
            if not in_word:  # a word starts: the pending mode decides
                upper = mode is not None or capnext
                allcaps_word = mode == ALLCAPS
                mode, in_word = None, True
            else:
                upper = allcaps_word or capnext
            capnext = False
            out.append(ch.upper() if upper else ch)
        else:
            if mode is not None or capnext:
                raise CaseOpsError(f"position {i}: a case marker before {ch!r}, which is not an ASCII letter")
            out.append(ch)
            in_word = allcaps_word = False
    if escape or mode is not None or capnext:
        raise CaseOpsError("a marker at the end of the text with nothing to apply to")
    return "".join(out)


# ----------------------------------------------------------------------------- bytes

def operator_ids(sp: spm.SentencePieceProcessor) -> dict[str, int]:
    """{operator: piece id}; an error unless all four are user-defined pieces (always standalone tokens)."""
    types = piece_types(sp)
    ids = {}
    for op in OPERATORS:
        tid = sp.piece_to_id(op)
        if tid == sp.unk_id() or types[tid] != PIECE_USER_DEFINED:
            raise TokenizerError(f"the tokenizer has no user-defined piece U+{ord(op):04X}: it was not trained for "
                                 f"CaseOps text (pgolf data prepare --transform caseops trains one)")
        ids[op] = int(tid)
    return ids


def caseops_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> ByteTables:
    """The token rule: operator pieces 0 bytes, the literal after an unescaped ESC its UTF-8 length (3)."""
    ids = operator_ids(sp)
    return byte_tables(sp, vocab_size, user_defined_bytes={tid: 0 for tid in ids.values()},
                       escape=EscapeRule(ids[ESC], {tid: OPERATOR_BYTES for tid in ids.values()}))


def original_char_bytes(transformed: str) -> np.ndarray:
    """Per character of CaseOps text: the UTF-8 bytes it stands for in the original (unescaped operators 0)."""
    try:
        cps = np.frombuffer(transformed.encode("utf-32-le"), dtype="<u4")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 bytes to count
        raise ValueError(f"text holds {transformed[exc.start:exc.end]!r} at {exc.start}, which has no UTF-8 form") from exc
    utf8 = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    is_op = (cps >= _FIRST_OP) & (cps <= _LAST_OP)
    literal = escaped_literals(cps == _LAST_OP, is_op)
    return np.where(is_op & ~literal, 0, utf8)


def encode_with_original_bytes(sp: spm.SentencePieceProcessor, transformed: list[str],
                               bos_id: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """([BOS] + ids, [0] + sidecar) per CaseOps document: sidecar[i] = original UTF-8 bytes of token i's surface.

    A token's surface is the span of the input SentencePiece aligned it to (sentencepiece's offset mapping);
    spans are disjoint, so over a document the sidecar sums to the original UTF-8 length, less any whitespace
    SentencePiece drops at the start or end of the document."""
    try:
        encoded = sp.encode(transformed, return_type="offset_mapping")
    except (TypeError, ValueError) as exc:  # older versions have no return_type / no offset mappings
        raise TokenizerError(f"the byte sidecar needs sentencepiece >= 0.2.3 (offset mappings); this is "
                             f"{spm.__version__} ({exc})") from exc
    out = []
    for text, enc in zip(transformed, encoded):
        spans = np.asarray(enc["offsets"], dtype=np.int64).reshape(-1, 2)
        if spans.size and (np.any(spans[1:, 0] < spans[:-1, 1]) or np.any(spans[:, 1] < spans[:, 0])):
            raise TokenizerError("sentencepiece returned overlapping token surfaces; the sidecar would count "
                                 "some bytes twice")
        prefix = np.concatenate([[0], np.cumsum(original_char_bytes(text))])
        counts = prefix[spans[:, 1]] - prefix[spans[:, 0]]
        out.append((np.asarray([bos_id] + list(enc["ids"]), dtype=np.int64),
                    np.concatenate([[0], counts]).astype(np.int64)))
    return out
