"""Document-independent score-first LoRA TTT (TECHNIQUES.md §10.4; PR #77 -> #1530 -> #1536).

Documents are the BOS-delimited spans of the stream: document i has inputs [s_i, s_{i+1}) and so its last target
is the next document's BOS (0 bytes, still scored, as in plain evaluation); the stream's first token is never a
target. Each document gets fresh LoRA adapters (lora_adapters.py) and a fresh AdamW; its targets are cut into
chunks of `eval.ttt_lora_chunk`. For chunk c the model sees the last `eval.context_len` inputs ending at the
chunk's end, clipped to the document's start; the chunk's per-token losses are recorded (the score), then,
unless it is the document's last chunk, one AdamW step on the mean chunk loss. The base weights stay frozen.

Documents are independent, so the order in which they are processed cannot change a score: each rank takes a
contiguous share of the documents, batches `eval.ttt_batch_docs` of them longest first (so the documents still
running at chunk c are always the first rows of the batch), and the per-target losses go back to stream order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EvalConfig
from ..model.precision import autocast_for
from .deadline import Deadline
from .lora_adapters import BatchedLoRA
from .ranks import gather_concat, model_device, rank_world
from .windows import batches, document_starts


def _document_batch(model: nn.Module, stream: Tensor, starts: np.ndarray, lengths: np.ndarray, cfg: EvalConfig,
                    deadline: Deadline) -> list[Tensor]:
    """Per-target NLL of a batch of documents sorted by length, longest first (one tensor per document)."""
    device = model_device(model)
    K, W = cfg.ttt_lora_chunk, cfg.context_len
    lora = BatchedLoRA(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, len(starts))
    params = list(lora.parameters())
    optimizer = (torch.optim.AdamW(params, lr=cfg.ttt_lora_lr, betas=(cfg.ttt_lora_beta1, cfg.ttt_lora_beta2),
                                   eps=cfg.ttt_lora_eps, weight_decay=cfg.ttt_lora_wd) if params else None)
    out: list[list[Tensor]] = [[] for _ in starts]
    n_chunks = int(-(-lengths[0] // K))
    with lora.attached():
        for c in range(n_chunks):
            deadline.check(f"LoRA TTT (chunk {c + 1}/{n_chunks} of a batch of {len(starts)} documents)")
            active = int(np.sum(lengths > c * K))  # a prefix: documents are sorted longest first
            end = np.minimum((c + 1) * K, lengths[:active])     # chunk end, in document input positions
            first = np.maximum(end - W, 0)                      # window start, clipped to the document
            width = int((end - first).max())
            inputs = torch.zeros(active, width, dtype=torch.int64)
            targets = torch.zeros(active, width, dtype=torch.int64)
            for row in range(active):
                a, b = int(starts[row] + first[row]), int(starts[row] + end[row])
                inputs[row, : b - a] = stream[a:b]
                targets[row, : b - a] = stream[a + 1 : b + 1]
            cols = torch.from_numpy(c * K - first)[:, None] + torch.arange(K)  # scored window positions
            valid = torch.arange(K)[None, :] < torch.from_numpy(end - c * K)[:, None]
            cols = cols.clamp(max=width - 1)
            train = torch.from_numpy(lengths[:active] > (c + 1) * K)  # documents with a later chunk
            inputs, targets, cols, valid, train = (t.to(device) for t in (inputs, targets, cols, valid, train))
            with torch.set_grad_enabled(bool(train.any()) and optimizer is not None):
                lora.reset()
                with autocast_for(device):
                    h = model.hidden(inputs)
                    h = h.gather(1, cols[:, :, None].expand(-1, -1, h.size(-1)))
                    logits = model.logits(h)
                lora.check_complete()
                nll = F.cross_entropy(logits.float().flatten(0, 1), targets.gather(1, cols).flatten(),
                                      reduction="none").view(active, K)
                kept = nll.detach().cpu()
                for row in range(active):  # the score: recorded before any update on this chunk
                    out[row].append(kept[row, : int(end[row] - c * K)])
                if torch.is_grad_enabled():
                    # sum over training documents of each one's mean chunk loss
                    per_doc = (nll * valid).sum(1) / valid.sum(1)
                    loss = per_doc[train].sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    return [torch.cat(parts) for parts in out]


def lora_ttt_nll(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline,
                 bos_id: int = 1) -> tuple[np.ndarray, list[str]]:
    """Per-document LoRA TTT on `model` (base weights frozen, not changed). Returns per-target NLL and notes."""
    if not 0 < cfg.ttt_lora_chunk <= cfg.context_len:
        raise ValueError(f"eval.ttt_lora_chunk must be in 1..eval.context_len ({cfg.context_len}), got {cfg.ttt_lora_chunk}")
    if cfg.ttt_batch_docs <= 0:
        raise ValueError(f"eval.ttt_batch_docs must be positive, got {cfg.ttt_batch_docs}")
    n_targets = tokens.size - 1
    starts = document_starts(tokens, bos_id)
    lengths = np.diff(np.append(starts, n_targets))  # targets (= inputs) per document
    rank, world = rank_world()
    # contiguous share of documents per rank, balanced by targets
    cum = np.concatenate(([0], np.cumsum(lengths)))
    cuts = [int(np.searchsorted(cum, n_targets * r / world)) for r in range(world)] + [len(starts)]
    d0, d1 = cuts[rank], cuts[rank + 1]
    counts = [int(cum[cuts[r + 1]] - cum[cuts[r]]) for r in range(world)]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    local = torch.zeros(counts[rank])
    order = d0 + np.argsort(-lengths[d0:d1], kind="stable")
    for docs in batches(order.tolist(), cfg.ttt_batch_docs):
        docs = np.asarray(docs)
        for d, nll in zip(docs.tolist(), _document_batch(model, stream, starts[docs], lengths[docs], cfg, deadline)):
            offset = int(starts[d] - cum[d0])
            local[offset : offset + nll.numel()] = nll
    model.train(was_training)
    nll = gather_concat(local.to(model_device(model)), counts).cpu() if world > 1 else local
    sample = BatchedLoRA(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, 1)
    per_doc = sum(p.numel() for p in sample.parameters())
    notes = [f"LoRA TTT: {len(starts):,} documents, rank {cfg.ttt_lora_rank} on {'/'.join(cfg.ttt_lora_targets) or 'nothing'} "
             f"x {len(model.active_schedule)} virtual slots ({per_doc:,} parameters per document), chunks of "
             f"{cfg.ttt_lora_chunk}, context {cfg.context_len}, AdamW lr {cfg.ttt_lora_lr:g}, "
             f"{cfg.ttt_batch_docs} documents per batch"]
    return nll.double().numpy(), notes
