"""Document-independent score-first LoRA TTT (TECHNIQUES.md §10.4; PR #77 -> #1530 -> #1536).

Documents are the BOS-delimited spans of the stream: document i has inputs [s_i, s_{i+1}) and so its last target
is the next document's BOS (0 bytes, still scored, as in plain evaluation); the stream's first token is never a
target. Each document gets fresh LoRA adapters (lora_adapters.py) and a fresh AdamW; its targets are cut into
chunks of `eval.ttt_lora_chunk` (K). For chunk c the model sees the inputs from (c + 1) K - `eval.context_len`,
clipped to the document's start, to the chunk's end. (#1536 counts the context back from the chunk's actual end,
which is earlier in a document's last chunk: the context of those targets then depended on where the document
ends, i.e. on a later token. Here it never does.) The chunk's per-token losses are recorded (the score), then,
unless it is the document's last chunk, one AdamW step on the mean chunk loss. The base weights stay frozen.

Documents are independent, so the order in which they are processed cannot change a score: each rank takes a
contiguous share of the documents, batches `eval.ttt_batch_docs` of them longest first (so the documents still
running at chunk c are always the first rows of the batch), and the per-target losses go back to stream order.

Each chunk step is one batched forward over all rows (no per-document Python loop); the scores stay on the
device until the batch ends. Compiled (eval.compile), the step keeps static shapes: always ttt_batch_docs rows
(finished documents and missing ones are padding rows whose loss is masked out) and a window width rounded up
to chunk * 2^k (at most context_len), so a whole evaluation compiles about log2(context_len / chunk) + 1 graphs.
One set of adapters serves every batch, reset in place (at pr1536's size they hold about 2 GB).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EvalConfig
from ..model.precision import autocast_for
from .audit import target_nll
from .deadline import Deadline
from .forward import batch_segments, compiled, use_compile
from .lora_adapters import BatchedLoRA
from .ranks import gather_concat, model_device, rank_world
from .windows import batches, document_starts


def _chunk_nll(model: nn.Module, inputs: Tensor, targets: Tensor, cols: Tensor, positions: Tensor,
               cu: Tensor | None) -> Tensor:
    """(rows, K) NLL of the targets at window columns `cols` of a (rows, width) batch; `positions` (rows, K) are
    their stream indices for eval.audit, -1 where a column is not scored (past a document's end, padding rows)."""
    h = model.hidden(inputs, cu)
    h = h.gather(1, cols[:, :, None].expand(-1, -1, h.size(-1)))
    logits = model.logits(h)
    return target_nll(logits.flatten(0, 1), targets.gather(1, cols).flatten(), positions.flatten()).view(cols.shape)


def window_width(chunk_index: int, chunk: int, context: int, static: bool) -> int:
    """Columns of chunk c's batch: the longest window, (c + 1) * chunk clipped to the context; static shapes round
    it up to chunk * 2^k (still at most the context)."""
    width = min((chunk_index + 1) * chunk, context)
    if not static:
        return width
    return min(chunk * (1 << chunk_index.bit_length()), context)  # 2^k >= c + 1


def _document_batch(model: nn.Module, lora: BatchedLoRA, stream: Tensor, starts: np.ndarray, lengths: np.ndarray,
                    cfg: EvalConfig, deadline: Deadline, use_compiled: bool) -> list[Tensor]:
    """Per-target NLL of a batch of documents sorted by length, longest first (one tensor per document)."""
    device = model_device(model)
    K, W = cfg.ttt_lora_chunk, cfg.context_len
    n_docs = len(starts)
    rows = lora.n_docs if use_compiled else n_docs  # static shapes: always the full batch of rows
    lora.reset_parameters()
    params = list(lora.parameters())
    optimizer = (torch.optim.AdamW(params, lr=cfg.ttt_lora_lr, betas=(cfg.ttt_lora_beta1, cfg.ttt_lora_beta2),
                                   eps=cfg.ttt_lora_eps, weight_decay=cfg.ttt_lora_wd) if params else None)
    length = torch.zeros(rows, dtype=torch.int64)
    length[:n_docs] = torch.from_numpy(lengths)
    start = torch.zeros(rows, dtype=torch.int64)
    start[:n_docs] = torch.from_numpy(starts)
    n_chunks = int(-(-lengths[0] // K))
    scores = torch.zeros(rows, n_chunks * K, device=device)
    step = compiled(_chunk_nll) if use_compiled else _chunk_nll
    last_input = stream.numel() - 2
    k = torch.arange(K)
    with lora.attached():
        for c in range(n_chunks):
            deadline.check(f"LoRA TTT (chunk {c + 1}/{n_chunks} of a batch of {n_docs} documents)")
            active = int(np.sum(lengths > c * K))               # a prefix: documents are sorted longest first
            batch_rows = rows if use_compiled else active
            end = torch.minimum(torch.tensor((c + 1) * K), length[:batch_rows])  # chunk end (document inputs)
            # window start: W inputs back from the chunk's nominal end, clipped to the document. Not from `end`: that
            # would move with the document's last token, a token after the targets it scores (#1536 does that)
            first = torch.full((batch_rows,), max((c + 1) * K - W, 0), dtype=torch.int64)
            width = window_width(c, K, W, use_compiled)
            col = torch.arange(width)[None, :]
            inside = col < (end - first)[:, None]               # padding rows: nothing inside
            position = (start[:batch_rows, None] + first[:, None] + col).clamp(max=last_input)
            inputs = torch.where(inside, stream[position], 0)
            targets = torch.where(inside, stream[position + 1], 0)
            cols = ((c * K - first)[:, None] + k).clamp(min=0, max=width - 1)  # scored window columns
            scored = k[None, :] < (end - c * K)[:, None]        # the chunk's targets in each row's document
            valid = scored.float()
            # stream index of each scored target (-1: a column past a short document's end, or a padding row)
            positions = torch.where(scored, start[:batch_rows, None] + c * K + k, -1)
            train = (length[:batch_rows] > (c + 1) * K).float()  # documents with a later chunk
            cu = batch_segments(model, inputs)
            inputs, targets, cols, positions, valid, train = (t.to(device, non_blocking=True)
                                                              for t in (inputs, targets, cols, positions, valid, train))
            cu = cu.to(device, non_blocking=True) if cu is not None else None
            learn = optimizer is not None and bool(np.any(lengths > (c + 1) * K))
            with torch.set_grad_enabled(learn or use_compiled):  # compiled: one grad-mode graph per width
                lora.reset()
                with autocast_for(device):
                    nll = step(model, inputs, targets, cols, positions, cu)
                lora.check_complete()
                scores[:batch_rows, c * K : (c + 1) * K] = nll.detach()  # the score, before any update on it
                if learn:
                    # sum over training documents of each one's mean chunk loss
                    per_doc = (nll * valid).sum(1) / valid.sum(1).clamp(min=1)
                    optimizer.zero_grad(set_to_none=True)
                    (per_doc * train).sum().backward()
                    optimizer.step()
    kept = scores[:n_docs].cpu()
    return [kept[row, : int(lengths[row])] for row in range(n_docs)]


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
    use_compiled = use_compile(cfg, model_device(model))
    lora = BatchedLoRA(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, min(cfg.ttt_batch_docs, max(d1 - d0, 1)))
    for docs in batches(order.tolist(), cfg.ttt_batch_docs):
        docs = np.asarray(docs)
        for d, nll in zip(docs.tolist(), _document_batch(model, lora, stream, starts[docs], lengths[docs], cfg,
                                                         deadline, use_compiled)):
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
