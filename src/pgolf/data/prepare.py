"""`pgolf data prepare`: text or JSONL documents -> tokenizer + challenge-format train/val shards.

The first `val_docs` documents go to validation, the rest to training (as the challenge exporter does
with its first 50,000 documents). A new tokenizer is trained on the training documents only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from .shards import write_shard
from .tokenizer import encode_documents, file_sha256, load_tokenizer, train_tokenizer

SHARD_TOKENS = 100_000_000
ENCODE_BATCH = 256


class InputError(ValueError):
    """An input text/JSONL file cannot be read as documents; the message names file and line."""


def read_documents(path: str | Path, text_key: str = "text") -> list[str]:
    """.jsonl: one JSON object per line with a `text_key` string. .txt: documents separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    if path.suffix == ".jsonl":
        docs = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                    raise InputError(f"{path}:{lineno}: expected an object with a string '{text_key}' field")
                docs.append(obj[text_key])
        return docs
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
        return [b for b in blocks if b]
    raise InputError(f"{path}: expected a .txt or .jsonl file")


def _encoded_stream(sp, docs: list[str], bos_id: int, progress: bool, desc: str) -> Iterator[np.ndarray]:
    bar = tqdm(total=len(docs), desc=desc, unit="doc", disable=not progress, leave=False)
    for i in range(0, len(docs), ENCODE_BATCH):
        batch = docs[i : i + ENCODE_BATCH]
        yield from encode_documents(sp, batch, bos_id)
        bar.update(len(batch))
    bar.close()


def _write_split(sp, docs: list[str], out: Path, split: str, bos_id: int, shard_tokens: int,
                 progress: bool) -> dict[str, int]:
    vocab = int(sp.vocab_size())
    buf: list[np.ndarray] = []
    filled = shard_index = total = 0

    def flush() -> None:
        nonlocal buf, filled, shard_index
        if filled:
            write_shard(out / f"fineweb_{split}_{shard_index:06d}.bin", np.concatenate(buf))
            shard_index += 1
        buf, filled = [], 0

    for toks in _encoded_stream(sp, docs, bos_id, progress, f"encode {split}"):
        if toks.size and int(toks.max()) >= vocab:
            raise InputError(f"token id {int(toks.max())} outside vocab size {vocab}")
        total += toks.size
        pos = 0
        while pos < toks.size:  # documents cross shard boundaries freely, like the challenge export
            take = min(shard_tokens - filled, toks.size - pos)
            buf.append(toks[pos : pos + take])
            filled += take
            pos += take
            if filled == shard_tokens:
                flush()
    flush()
    return {"docs": len(docs), "tokens": total, "shards": shard_index}


def prepare_documents(docs: list[str], out: str | Path, *, tokenizer: str | Path | None = None,
                      vocab_size: int | None = None, val_docs: int = 50_000, bos_id: int = 1,
                      shard_tokens: int = SHARD_TOKENS, progress: bool = True,
                      extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write tokenizer.model (trained or copied), fineweb_{val,train}_NNNNNN.bin and meta.json into `out`."""
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of tokenizer= (an existing model) or vocab_size= (train one)")
    if not 0 <= val_docs <= len(docs):
        raise ValueError(f"val_docs={val_docs} but the input has {len(docs)} documents")
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    val, train = docs[:val_docs], docs[val_docs:]
    model_path = staging / "tokenizer.model"
    if tokenizer is not None:
        shutil.copyfile(tokenizer, model_path)
    else:
        if not train:
            raise ValueError("no training documents left to train a tokenizer on (lower val_docs)")
        train_tokenizer(train, vocab_size, staging / "tokenizer")
    sp = load_tokenizer(model_path)
    meta: dict[str, Any] = {
        "vocab_size": int(sp.vocab_size()),
        "bos_id": bos_id,
        "tokenizer_sha256": file_sha256(model_path),
        "tokenizer_source": str(tokenizer) if tokenizer else "trained on the train split",
        "val": _write_split(sp, val, staging, "val", bos_id, shard_tokens, progress),
        "train": _write_split(sp, train, staging, "train", bos_id, shard_tokens, progress),
        **(extra_meta or {}),
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return meta
