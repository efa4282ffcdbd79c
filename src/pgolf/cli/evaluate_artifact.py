"""`pgolf eval`: score any artifact on a validation split, with the eval settings it carries or overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, apply_overrides, finalize
from ..data.dataset import Dataset, check_vocabularies, default_tokenizer, load_validation
from ..data.shards import find_shards
from ..data.tokenizer import byte_tables, load_tokenizer
from ..eval.bpb import evaluate
from ..quant.pack import unpack
from ..training.loop import choose_attention_backend
from ..training.runtime import init_runtime


def evaluate_artifact(artifact: str | Path, data: str | None = None, tokenizer: str | None = None,
                      overrides: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    rt = init_runtime(device)
    for key in overrides or {}:
        if not key.startswith("eval."):
            raise ConfigError(f"pgolf eval only takes eval.* overrides; '{key}' would change the model")
    model, cfg = unpack(artifact, rt.device)
    finalize(apply_overrides(cfg, overrides or {}))
    folder = Path(data or cfg.data.path)
    val_files = find_shards(folder, cfg.data.val_pattern, "validation")
    tok_path = Path(tokenizer) if tokenizer else (Path(cfg.data.tokenizer) if not data else default_tokenizer(folder, cfg.model.vocab_size))
    sp = load_tokenizer(tok_path)
    check_vocabularies(Dataset(folder, val_files[:1], val_files, tok_path, int(sp.vocab_size())), cfg.model.vocab_size)
    dataset = Dataset(folder, [], val_files, tok_path, int(sp.vocab_size()))
    tokens = load_validation(dataset, cfg.model.vocab_size, cfg.data.val_tokens_limit)
    model.attention_backend = choose_attention_backend(cfg.model.attention_backend, rt.device, cfg.model.doc_attention)
    ev = evaluate(model, tokens, None, cfg.eval, tables=byte_tables(sp, cfg.model.vocab_size))
    return {"artifact": str(artifact), "val_loss": ev.val_loss, "val_bpb": ev.val_bpb, "val_targets": ev.targets,
            "val_bytes": ev.bytes, "eval_seconds": ev.seconds, "eval_mode": ev.mode, "legal": ev.legal,
            "data": str(folder), "tokenizer": str(tok_path)}
