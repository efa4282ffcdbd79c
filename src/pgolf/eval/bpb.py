"""Exact val_loss and val_bpb: every target of the validation stream scored exactly once.

val_loss = mean next-token cross-entropy (nats) over all scored targets (fp64 sums).
val_bpb  = (sum of nats / ln 2) / (sum of UTF-8 bytes of the scored targets).
Plain evaluation cuts the stream into consecutive windows of `context_len` targets (the last one shorter):
each window starts with an empty context, and no target is dropped.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EvalConfig
from ..data.tokenizer import ByteTables, byte_tables, load_tokenizer, stream_bytes


@dataclass
class EvalResult:
    val_loss: float
    val_bpb: float
    token_nll: np.ndarray          # one value per scored target, in stream order (nats)
    token_bytes: np.ndarray        # bytes credited to each scored target (same length)
    seconds: float
    legal: bool = True             # False only for evaluations that train on validation tokens before scoring them
    mode: str = "plain"
    notes: list[str] = field(default_factory=list)

    @property
    def targets(self) -> int:
        return int(self.token_nll.size)

    @property
    def bytes(self) -> int:
        return int(self.token_bytes.sum())


def summarize(token_nll: np.ndarray, token_bytes: np.ndarray) -> tuple[float, float]:
    """(val_loss, val_bpb) from per-target nats and bytes, accumulated in fp64."""
    nats = float(np.sum(token_nll, dtype=np.float64))
    n_bytes = int(np.sum(token_bytes, dtype=np.int64))
    if token_nll.size == 0 or n_bytes == 0:
        raise ValueError("nothing to score: the validation stream has no targets with bytes")
    return nats / token_nll.size, nats / math.log(2.0) / n_bytes


def autocast_for(device: torch.device, dtype: str = "auto"):
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nll(model: nn.Module, inputs: Tensor, targets: Tensor, device: torch.device) -> Tensor:
    """Per-position next-token NLL (fp32) of a batch of windows (B, T)."""
    with autocast_for(device):
        logits = model(inputs.to(device))
    return F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="none").view(targets.shape)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_concat(local: Tensor, counts: list[int]) -> Tensor:
    """Concatenate each rank's 1-D tensor (of known lengths) on every rank."""
    rank, world = _rank_world()
    if world == 1:
        return local
    padded = torch.zeros(max(counts), dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def plain_nll(model: nn.Module, tokens: np.ndarray, context_len: int, batch_seqs: int) -> np.ndarray:
    """NLL of every target tokens[1:], windows of `context_len` targets split contiguously over ranks."""
    device = model_device(model)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_targets = stream.numel() - 1
    n_windows = math.ceil(n_targets / context_len)
    rank, world = _rank_world()
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
        out.append(window_nll(model, x, y, device).flatten().cpu())
    if last > full_end:  # the short final window
        start = full_end * context_len
        chunk = stream[start:]
        out.append(window_nll(model, chunk[None, :-1], chunk[None, 1:], device).flatten().cpu())
    model.train(was_training)
    local = torch.cat(out) if out else torch.zeros(0)
    counts = [min(n_windows * (r + 1) // world * context_len, n_targets) - min(n_windows * r // world * context_len, n_targets)
              for r in range(world)]
    gathered = gather_concat(local.to(device), counts).cpu()
    return gathered.double().numpy()


def evaluate(model: nn.Module, tokens: np.ndarray, tokenizer_path: str | None, cfg: EvalConfig, *,
             tables: ByteTables | None = None) -> EvalResult:
    """Score a validation token stream (BOS-separated documents) with the mode `cfg` asks for."""
    if cfg.context_len <= 0:
        raise ValueError("eval.context_len must be set (pgolf resolves 0 to train.seq_len when it loads a config)")
    tokens = np.asarray(tokens)
    if tokens.size < 2:
        raise ValueError(f"the validation stream has {tokens.size} tokens; at least 2 are needed to score one target")
    if tables is None:
        sp = load_tokenizer(tokenizer_path)
        tables = byte_tables(sp, int(tokens.max()) + 1)
    start = time.perf_counter()
    token_bytes = stream_bytes(tokens, tables)
    if cfg.ttt != "none" or cfg.sliding_stride > 0 or cfg.doc_boundaries or cfg.max_seconds > 0:
        from .modes import evaluate_mode  # sliding/document-cut windows, test-time training, the time cap
        result = evaluate_mode(model, tokens, token_bytes, cfg)
        result.seconds = time.perf_counter() - start
        return result
    nll = plain_nll(model, tokens, cfg.context_len, cfg.batch_seqs)
    assert nll.size == token_bytes.size, (nll.size, token_bytes.size)
    loss, bpb = summarize(nll, token_bytes)
    return EvalResult(loss, bpb, nll, token_bytes, time.perf_counter() - start)
