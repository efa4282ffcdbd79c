"""`pgolf eval`: score any artifact on a validation split, with the eval settings it carries or overrides.

A challenge-format file (the baseline train_gpt.py's final_model.int8.ptz) is scored with `recipe` (= --recipe
baseline) on that recipe's model (cli/challenge_format.py), by default over exactly the challenge's targets
(eval.tail = "drop"); `data` is then required.

It scores the whole split unless asked for a prefix (`val_tokens`, = --val-tokens / --set data.val_tokens_limit):
the prefix a run was trained with (its data.val_tokens_limit) is not inherited, and the result says how many
targets it scored out of how many the split has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, apply_overrides, finalize
from ..data.dataset import (Dataset, check_text_transform, check_vocabularies, default_tokenizer, load_validation,
                            validation_bytes, validation_files)
from ..data.shards import read_header
from ..data.tokenizer import load_tokenizer
from ..eval.bpb import evaluate
from ..quant.pack import unpack
from ..training.loop import choose_attention_backend
from ..training.runtime import init_runtime
from .challenge_format import file_kind, load_challenge_model

PREFIX_KEY = "data.val_tokens_limit"


# data keys that change how the split is scored, never the model: which bytes divide the nats
SCORING_DATA_KEYS = ("data.byte_source",)


def evaluate_artifact(artifact: str | Path, data: str | None = None, tokenizer: str | None = None,
                      overrides: dict[str, Any] | None = None, device: str | None = None,
                      val_tokens: int | None = None, recipe: str | None = None) -> dict[str, Any]:
    """Score `artifact`; `val_tokens` = N scores the first N validation tokens (N - 1 targets), None or 0 all;
    `recipe`: the artifact is the challenge's own format, mapped onto that recipe's model."""
    overrides = dict(overrides or {})
    for key in overrides:
        if not key.startswith("eval.") and key != PREFIX_KEY and key not in SCORING_DATA_KEYS:
            raise ConfigError(f"pgolf eval only takes eval.*, {PREFIX_KEY} and {', '.join(SCORING_DATA_KEYS)} "
                              f"overrides; '{key}' would change the model")
    if val_tokens is not None:
        overrides[PREFIX_KEY] = val_tokens
    kind = file_kind(artifact)
    if recipe is not None and kind == "pgolf":
        raise ConfigError(f"{artifact} is a pgolf artifact: it carries its own config; drop --recipe")
    if recipe is None and kind == "zlib":
        raise ConfigError(f"{artifact} is not a pgolf artifact; a challenge-format file (the baseline train_gpt.py's "
                          "final_model.int8.ptz) is scored with --recipe baseline --data DIR")
    if recipe is not None and not data:
        raise ConfigError(f"{artifact}: a challenge-format file names no data folder; give --data DIR")
    rt = init_runtime(device)
    if recipe is None:
        model, cfg = unpack(artifact, rt.device)
    else:
        model, cfg = load_challenge_model(artifact, recipe, rt.device)
        cfg.eval.tail = "drop"  # the challenge's targets: its eval drops the tail past the last full sequence
    trained_limit = cfg.data.val_tokens_limit
    cfg.data.val_tokens_limit = 0  # the whole split unless this call asks for a prefix
    finalize(apply_overrides(cfg, overrides))
    limit = cfg.data.val_tokens_limit
    if limit < 0 or limit == 1:
        raise ConfigError(f"'{PREFIX_KEY}' (--val-tokens) must be 0 (the whole split) or at least 2 tokens, got {limit}")
    folder = Path(data or cfg.data.path)
    val_files, val_bytes_files = validation_files(folder, cfg.data)
    check_text_transform(folder, cfg.data)
    tok_path = Path(tokenizer) if tokenizer else (Path(cfg.data.tokenizer) if not data else default_tokenizer(folder, cfg.model.vocab_size))
    sp = load_tokenizer(tok_path)
    check_vocabularies(Dataset(folder, val_files[:1], val_files, tok_path, int(sp.vocab_size())), cfg.model.vocab_size)
    dataset = Dataset(folder, [], val_files, tok_path, int(sp.vocab_size()), val_bytes_files)
    tokens = load_validation(dataset, cfg.model.vocab_size, limit)
    split_targets = sum(read_header(f) for f in val_files) - 1
    model.attention_backend = choose_attention_backend(cfg.model.attention_backend, rt.device, cfg.model.doc_attention)
    token_bytes = validation_bytes(dataset, cfg.data, tokens, cfg.model.vocab_size)
    ev = evaluate(model, tokens, None, cfg.eval, token_bytes=token_bytes)
    return {"artifact": str(artifact), "format": "pgolf" if recipe is None else "challenge", "recipe": recipe,
            "val_loss": ev.val_loss, "val_bpb": ev.val_bpb, "val_targets": ev.targets,
            "val_bytes": ev.bytes, "byte_source": cfg.data.byte_source, "text_transform": cfg.data.text_transform,
            "val_split_targets": split_targets, "val_prefix": tokens.size - 1 < split_targets,
            "val_tokens_limit": limit, "trained_val_tokens_limit": trained_limit, "eval_tail": ev.tail,
            "eval_tail_dropped": ev.dropped, "eval_seconds": ev.seconds, "eval_mode": ev.mode, "legal": ev.legal,
            "document_independent": ev.document_independent,
            "data": str(folder), "tokenizer": str(tok_path)}


def describe_targets(result: dict[str, Any]) -> str:
    """'all 680,036 targets of the split' / 'the first 4,096 of the split's 680,036 targets (a prefix)', plus the tail."""
    n, total = result["val_targets"], result["val_split_targets"]
    if result["val_prefix"]:
        text = f"the first {n + result['eval_tail_dropped']:,} of the split's {total:,} targets (a prefix: --val-tokens)"
    else:
        text = f"all {total:,} targets of the split"
    if result["eval_tail_dropped"]:
        text += f", {result['eval_tail_dropped']:,} of them dropped by eval.tail = drop, {n:,} scored"
    return text
