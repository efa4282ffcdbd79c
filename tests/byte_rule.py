"""An independent implementation of the challenge's byte rule, for tests (TECHNIQUES.md §3), written from the
rule and not from pgolf's tables:

    bytes(t, p) = base(t) + [t's piece starts with '▁' and p is not a boundary]
    base: control / unknown / unused pieces 0 (and they are boundaries, as are ids past the vocabulary),
          byte-fallback pieces <0xNN> 1, any other piece the UTF-8 length of its text without the leading '▁'.

Piece types come from the model proto through protobuf's generated sentencepiece_model_pb2 (pgolf reads them
with its own wire-format reader); each piece's bytes after a boundary and after a text piece come from
`target_bytes`, a plain-Python reading of the rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sentencepiece import sentencepiece_model_pb2

SPACE = "\u2581"
Type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
ZERO_BYTE_TYPES = (Type.CONTROL, Type.UNKNOWN, Type.UNUSED)
BOUNDARY = -1  # stands for any boundary predecessor


class RuleTokenizer:
    """The pieces and types of a SentencePiece model file."""

    def __init__(self, model_file: str | Path, user_defined_bytes: dict[int, int] | None = None):
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        self.pieces = [(p.piece, p.type) for p in proto.pieces]
        self.user_defined_bytes = user_defined_bytes  # None: user-defined pieces count as their text
        self.text_piece = next(i for i, (_, kind) in enumerate(self.pieces) if kind == Type.NORMAL)

    def is_boundary(self, token: int) -> bool:
        return not 0 <= token < len(self.pieces) or self.pieces[token][1] in ZERO_BYTE_TYPES

    def target_bytes(self, token: int, previous: int) -> int:
        if token >= len(self.pieces):
            return 0
        text, kind = self.pieces[token]
        if kind in ZERO_BYTE_TYPES:
            return 0
        if kind == Type.BYTE:
            return 1
        if kind == Type.USER_DEFINED and self.user_defined_bytes is not None:
            return self.user_defined_bytes[token]
        if text.startswith(SPACE):
            return len(text[1:].encode("utf-8")) + (0 if self.is_boundary(previous) else 1)
        return len(text.encode("utf-8"))

    def stream_bytes(self, tokens) -> np.ndarray:
        """Bytes of every target tokens[1:] of a stream (target_bytes for each, looked up per kind of predecessor)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        ids = range(int(tokens.max()) + 1)
        after_boundary = np.array([self.target_bytes(t, previous=BOUNDARY) for t in ids], dtype=np.int64)
        after_text = np.array([self.target_bytes(t, previous=self.text_piece) for t in ids], dtype=np.int64)
        boundary = np.array([self.is_boundary(t) for t in ids])
        prev, targets = tokens[:-1], tokens[1:]
        return np.where(boundary[prev], after_boundary[targets], after_text[targets])
