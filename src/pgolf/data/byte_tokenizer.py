"""The challenge's pure-byte tokenizer (the `byte260` variant): 4 special ids, then one id per byte value.

Id layout, as the challenge's exporter writes it (data/download_hf_docs_and_tokenize.py, `PureByteTokenizer`):
    pad = 0, bos = 1, eos = 2, unk = 3, byte b (0..255) = 4 + b;  vocab size 4 + 256 = 260.
A text is encoded as its UTF-8 bytes (`errors="replace"`: a lone surrogate, the only str that has no UTF-8
form, becomes one b"?"). Byte rule: every byte token is exactly one byte, every special id zero, so a
document's bytes are len(text.encode("utf-8", "replace")) — the UTF-8 length for every valid text.

The tokenizer file is the exporter's JSON (`tokenizers/fineweb_pure_byte_260.json`):
    {"config": {...ids...}, "tokenizer_type": "pure_byte", "vocab_size": 260}
The name "byte260" stands for that default tokenizer wherever pgolf takes a tokenizer path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.optional import BYTE260, names_byte_tokenizer
from .jsonio import read_json

BYTE260_FILENAME = "fineweb_pure_byte_260.json"
TOKENIZER_TYPE = "pure_byte"


class ByteTokenizerError(ValueError):
    """A pure-byte tokenizer file is unreadable or its ids are inconsistent; the message names file and key."""


@dataclass(frozen=True)
class ByteTokenizer:
    """Pure-byte tokenizer with the few SentencePieceProcessor methods pgolf calls (vocab_size(), encode, ...)."""
    pad: int = 0
    bos: int = 1
    eos: int = 2
    unk: int = 3
    byte_offset: int = 4
    byte_count: int = 256

    def vocab_size(self) -> int:
        return self.byte_offset + self.byte_count

    def bos_id(self) -> int:
        return self.bos

    def eos_id(self) -> int:
        return self.eos

    def pad_id(self) -> int:
        return self.pad

    def unk_id(self) -> int:
        return self.unk

    def encode_bytes(self, text: str) -> bytes:
        return text.encode("utf-8", errors="replace")

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of one text as int64 (byte b -> byte_offset + b)."""
        return np.frombuffer(self.encode_bytes(text), dtype=np.uint8).astype(np.int64) + self.byte_offset

    def encode(self, texts: str | list[str], out_type: type = int) -> list[int] | list[list[int]]:
        """Ids of one text or of each text of a list (like SentencePieceProcessor.encode with out_type=int)."""
        if out_type is not int:
            raise ValueError("the pure-byte tokenizer only encodes to ids (out_type=int)")
        if isinstance(texts, str):
            return [b + self.byte_offset for b in self.encode_bytes(texts)]
        return [[b + self.byte_offset for b in self.encode_bytes(t)] for t in texts]

    def decode_bytes(self, ids: list[int] | np.ndarray) -> bytes:
        """The bytes behind `ids`; special ids stand for no bytes."""
        ids = np.asarray(ids, dtype=np.int64)
        byte_ids = ids[(ids >= self.byte_offset) & (ids < self.vocab_size())]
        return (byte_ids - self.byte_offset).astype(np.uint8).tobytes()

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def is_byte(self, token_id: int) -> bool:
        return self.byte_offset <= token_id < self.vocab_size()

    def to_json(self) -> str:
        """The exporter's tokenizer file, byte for byte (sorted keys, 2-space indent, final newline)."""
        config = {"pad_id": self.pad, "bos_id": self.bos, "eos_id": self.eos, "unk_id": self.unk,
                  "byte_offset": self.byte_offset, "byte_count": self.byte_count}
        payload = {"tokenizer_type": TOKENIZER_TYPE, "config": config, "vocab_size": self.vocab_size()}
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


DEFAULT_BYTE_TOKENIZER = ByteTokenizer()


def is_byte_tokenizer_spec(spec: str | Path) -> bool:
    """True for the name "byte260" and for .json files (the exporter's pure-byte tokenizer format)."""
    return names_byte_tokenizer(str(spec))


def load_byte_tokenizer(spec: str | Path) -> ByteTokenizer:
    """The default tokenizer for "byte260", else the one a pure-byte JSON file describes (checked)."""
    if str(spec) == BYTE260:
        return DEFAULT_BYTE_TOKENIZER
    return byte_tokenizer_from_payload(read_json(spec, ByteTokenizerError, "tokenizer file"), str(spec))


def byte_tokenizer_from_payload(payload: Any, where: str) -> ByteTokenizer:
    if not isinstance(payload, dict) or payload.get("tokenizer_type") != TOKENIZER_TYPE:
        kind = payload.get("tokenizer_type") if isinstance(payload, dict) else type(payload).__name__
        raise ByteTokenizerError(f"{where}: tokenizer_type is {kind!r}, expected {TOKENIZER_TYPE!r}")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise ByteTokenizerError(f"{where}: 'config' must be an object of ids")
    defaults = asdict(DEFAULT_BYTE_TOKENIZER)
    names = {"pad": "pad_id", "bos": "bos_id", "eos": "eos_id", "unk": "unk_id",
             "byte_offset": "byte_offset", "byte_count": "byte_count"}
    values = {}
    for field, key in names.items():
        value = config.get(key, defaults[field])
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ByteTokenizerError(f"{where}: config.{key} = {value!r}, expected a non-negative integer")
        values[field] = value
    tok = ByteTokenizer(**values)
    if tok.byte_count != 256:
        raise ByteTokenizerError(f"{where}: config.byte_count = {tok.byte_count}, expected 256 (one id per byte value)")
    specials = [tok.pad, tok.bos, tok.eos, tok.unk]
    if len(set(specials)) != 4 or max(specials) >= tok.byte_offset:
        raise ByteTokenizerError(f"{where}: special ids {specials} must be distinct and below byte_offset "
                                 f"{tok.byte_offset}, so that no id is both a special and a byte")
    declared = payload.get("vocab_size", tok.vocab_size())
    if declared != tok.vocab_size():
        raise ByteTokenizerError(f"{where}: vocab_size = {declared!r}, but byte_offset + byte_count = "
                                 f"{tok.vocab_size()}")
    return tok
