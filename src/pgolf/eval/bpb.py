"""Exact val_loss and val_bpb: every target of the validation stream scored exactly once.

val_loss = mean next-token cross-entropy (nats) over all scored targets (fp64 sums).
val_bpb  = (sum of nats / ln 2) / (sum of UTF-8 bytes of the scored targets).
Plain evaluation cuts the stream into consecutive windows of `context_len` targets (the last one shorter):
each window starts with an empty context, and no target is dropped. With eval.tail = "drop" every mode scores
exactly the challenge's target set instead: its train_gpt.py cuts the validation stream to the first
floor((N - 1) / T) * T targets (T = its sequence length, here eval.context_len) before scoring.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EvalConfig
from ..config.optional import optional_module
from ..data.tokenizer import ByteTables, byte_tables, load_tokenizer, stream_bytes
from ..model.precision import autocast_for
from .forward import scored_nll, use_compile
from .ranks import gather_concat, model_device, rank_world
from .result import EvalResult, summarize


@torch.no_grad()
def window_nll(model: nn.Module, inputs: Tensor, targets: Tensor, device: torch.device, first: int, rows: int = 0,
               width: int = 0, use_compiled: bool = False) -> Tensor:
    """Per-position next-token NLL (fp32) of a batch of consecutive windows (B, T) whose first target is `first`;
    compiled, run padded to (rows, width)."""
    n, t = inputs.shape
    rows, width = (max(rows, n), max(width, t)) if use_compiled else (n, t)
    index = (torch.arange(n)[:, None] * width + torch.arange(t)).flatten()
    positions = torch.arange(first, first + n * t)  # stream index of each target, row-major like `index`
    with autocast_for(device):
        nll = scored_nll(model, inputs, targets, index, positions, rows, width, device, use_compiled)
    return nll.view(n, t)


def plain_nll(model: nn.Module, tokens: np.ndarray, context_len: int, batch_seqs: int,
              use_compiled: bool = False) -> np.ndarray:
    """NLL of every target tokens[1:], windows of `context_len` targets split contiguously over ranks.

    Compiled, every forward is one shape, (batch_seqs, context_len): the last batch and the short final window
    are padded.
    """
    device = model_device(model)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_targets = stream.numel() - 1
    n_windows = math.ceil(n_targets / context_len)
    rank, world = rank_world()
    first, last = n_windows * rank // world, n_windows * (rank + 1) // world
    out: list[Tensor] = []
    was_training = model.training
    model.eval()
    full_end = min(last, n_targets // context_len)  # windows [first, full_end) are full length
    for w in range(first, full_end, batch_seqs):
        w_end = min(w + batch_seqs, full_end)
        chunk = stream[w * context_len : w_end * context_len + 1]
        x = chunk[:-1].view(-1, context_len)
        y = chunk[1:].view(-1, context_len)
        out.append(window_nll(model, x, y, device, w * context_len, batch_seqs, context_len, use_compiled).flatten().cpu())
    if last > full_end:  # the short final window
        start = full_end * context_len
        chunk = stream[start:]
        out.append(window_nll(model, chunk[None, :-1], chunk[None, 1:], device, start, batch_seqs, context_len,
                              use_compiled).flatten().cpu())
    model.train(was_training)
    local = torch.cat(out) if out else torch.zeros(0)
    counts = [min(n_windows * (r + 1) // world * context_len, n_targets) - min(n_windows * r // world * context_len, n_targets)
              for r in range(world)]
    gathered = gather_concat(local.to(device), counts).cpu()
    return gathered.double().numpy()


def evaluate(model: nn.Module, tokens: np.ndarray, tokenizer_path: str | None, cfg: EvalConfig, *,
             tables: ByteTables | None = None, token_bytes: np.ndarray | None = None) -> EvalResult:
    """Score a validation token stream (BOS-separated documents) with the mode `cfg` asks for.

    The bytes of each target come from `token_bytes` (one per target, e.g. a byte sidecar), else from the byte
    rule's `tables`, else from the tables of the tokenizer at `tokenizer_path`."""
    if cfg.context_len <= 0:
        raise ValueError("eval.context_len must be set (pgolf resolves 0 to train.seq_len when it loads a config)")
    tokens = np.asarray(tokens)
    if tokens.size < 2:
        raise ValueError(f"the validation stream has {tokens.size} tokens; at least 2 are needed to score one target")
    if token_bytes is not None:
        token_bytes = np.asarray(token_bytes, dtype=np.int64)
        if token_bytes.shape != (tokens.size - 1,):
            raise ValueError(f"token_bytes has {token_bytes.size} entries for the {tokens.size - 1} targets of the stream")
    tokens, dropped = cut_tail(tokens, cfg)
    if token_bytes is not None:
        token_bytes = token_bytes[: tokens.size - 1]  # the tail cut keeps a prefix of the targets
    elif tables is None:
        sp = load_tokenizer(tokenizer_path)
        tables = byte_tables(sp, int(tokens.max()) + 1)
    start = time.perf_counter()
    if token_bytes is None:
        token_bytes = stream_bytes(tokens, tables)
    modes = optional_module("pgolf.eval.modes", cfg)  # sliding/document-cut windows, test-time training, the time cap
    if modes is not None:
        result = modes.evaluate_mode(model, tokens, token_bytes, cfg)
        result.seconds = time.perf_counter() - start
        result.tail, result.dropped = cfg.tail, dropped
        return result
    nll = plain_nll(model, tokens, cfg.context_len, cfg.batch_seqs, use_compile(cfg, model_device(model)))
    assert nll.size == token_bytes.size, (nll.size, token_bytes.size)
    loss, bpb = summarize(nll, token_bytes)
    return EvalResult(loss, bpb, nll, token_bytes, time.perf_counter() - start, tail=cfg.tail, dropped=dropped)


def cut_tail(tokens: np.ndarray, cfg: EvalConfig) -> tuple[np.ndarray, int]:
    """(the stream to score, targets left out): all of it for eval.tail = "score"; for "drop", the first
    floor((N - 1) / T) * T targets (N tokens, T = eval.context_len), as the challenge's load_validation_tokens."""
    if cfg.tail == "score":
        return tokens, 0
    if cfg.tail != "drop":
        raise ValueError(f"eval.tail must be 'score' or 'drop', got {cfg.tail!r}")
    kept = (tokens.size - 1) // cfg.context_len * cfg.context_len
    if kept == 0:
        raise ValueError(f"eval.tail = 'drop' leaves nothing to score: the stream has {tokens.size - 1} targets, "
                         f"fewer than one window of eval.context_len = {cfg.context_len}")
    return tokens[: kept + 1], tokens.size - 1 - kept
