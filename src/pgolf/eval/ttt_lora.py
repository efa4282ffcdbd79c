"""Score-first per-document LoRA TTT (TECHNIQUES.md §10.4; PR #77 -> #1530 -> #1536), with #1767's warm-start A.

Documents are the BOS-delimited spans of the stream: document i has inputs [s_i, s_{i+1}) and so its last target
is the next document's BOS (0 bytes, still scored, as in plain evaluation); the stream's first token is never a
target. Each batch of documents gets LoRA adapters (lora_adapters.py) with B = 0 and a fresh AdamW; a document's
targets are cut into chunks of `eval.ttt_lora_chunk` (K). For chunk c the model sees the inputs from
(c + 1) K - `eval.context_len`, clipped to the document's start, to the chunk's end. (#1536 counts the context
back from the chunk's actual end, which is earlier in a document's last chunk: the context of those targets then
depended on where the document ends, i.e. on a later token. Here it never does.) The chunk's per-token losses are
recorded (the score), then, unless it is the document's last chunk, one AdamW step on the mean chunk loss. The
base weights stay frozen.

Order (`document_batches`): batches of `eval.ttt_batch_docs` documents, in `eval.ttt_doc_order`: "stream" =
consecutive documents; "length_desc" = #1855's: documents sorted by length (ascending, stable), cut into groups,
the groups processed longest first (so the short remainder group, which holds the longest documents, is first).
"length_desc" orders the documents by the lengths of all of them — the positions of every BOS of the split,
later ones included — before any is scored (as #1855 does); "stream" uses nothing ahead. In a batch the
documents run longest first, so the ones still running at chunk c are the first rows.

Fresh A (default): every document starts from the same seeded A, so documents are independent and neither the
order nor the split over ranks can change a score: each rank takes a contiguous share of the documents (balanced
by targets) and batches it.

Warm-start A (#1767, `eval.ttt_lora_warm_start_a`): the document in slot j of a full batch — its j-th document
in the batch's own order (stream order; ascending length for "length_desc", #1855's slots) — starts from the A
that slot j of the previous full batch ended with: the A after that document's last training step. B and the
AdamW state start fresh every batch; a short batch starts from the seeded A and carries nothing on. A
document's scores then depend on the earlier documents of its slot: legal (each of them was scored before it
trained), not document-independent. A slot is a document's position in its batch, never its length rank, so
in stream order nothing about a later document (not even where it starts) reaches an earlier score. So that
the result does not depend on the number of ranks, batches are global and rank r runs slots r, r + world, ...
of every batch: a slot's chain never sees another slot (AdamW is per element, and a slot's A is taken when its
own document ends, not after the further steps its batch takes for longer documents — #1855 takes it at the
batch's end, after those steps' weight decay; with lr 1e-4 and wd 0.5 that shrinks A by at most 5e-5 per
further chunk).

Each chunk step is one batched forward over all rows (no per-document Python loop); the scores stay on the
device until the batch ends. Compiled (eval.compile), the step keeps static shapes: always the same number of rows
(finished documents and missing ones are padding rows whose loss is masked out) and a window width rounded up
to chunk * 2^k (at most context_len), so a whole evaluation compiles about log2(context_len / chunk) + 1 graphs.
One set of adapters serves every batch, reset in place (at pr1536's size they hold about 2 GB); a warm start
loads its rows' A into it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

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
from .windows import document_starts


def documents(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input position, number of targets) of every document of the stream."""
    starts = document_starts(tokens, bos_id)
    return starts, np.diff(np.append(starts, tokens.size - 1))


def document_batches(lengths: np.ndarray, order: str, batch_docs: int) -> list[np.ndarray]:
    """The batches of document ids in processing order (eval.ttt_doc_order), each in its own order."""
    n = lengths.size
    if order == "stream":
        ids = np.arange(n)
        return [ids[i : i + batch_docs] for i in range(0, n, batch_docs)]
    if order == "length_desc":
        ascending = np.argsort(lengths, kind="stable")
        groups = [ascending[i : i + batch_docs] for i in range(0, n, batch_docs)]
        longest_first = sorted(range(len(groups)), key=lambda g: -int(lengths[groups[g]].max()))  # stable on ties
        return [groups[g] for g in longest_first]
    raise ValueError(f"eval.ttt_doc_order must be 'stream' or 'length_desc', got {order!r}")


@dataclass
class RankBatch:
    docs: np.ndarray  # document ids, longest first (the rows of the batch's forward)
    full: bool        # this rank's slots of a batch of eval.ttt_batch_docs documents (warm start carries A on)
    slot: np.ndarray  # warm start: the index, among this rank's slots, of each row's document


def rank_batches(batches: list[np.ndarray], lengths: np.ndarray, batch_docs: int, warm: bool, rank: int,
                 world: int) -> list[RankBatch]:
    """The batches `rank` of `world` runs: slots rank, rank + world, ... of every batch (warm start; the ranks'
    loads alike) or a contiguous share of the documents, balanced by targets."""
    if warm:
        out = []
        for batch in batches:
            slots = batch[rank::world]
            longest_first = np.argsort(-lengths[slots], kind="stable")
            if slots.size:
                out.append(RankBatch(slots[longest_first], batch.size == batch_docs, longest_first))
        return out
    docs = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(lengths[docs])))
    cuts = [int(np.searchsorted(cum, cum[-1] * r / world)) for r in range(world)] + [len(docs)]
    mine = docs[cuts[rank] : cuts[rank + 1]]
    mine = mine[np.argsort(-lengths[mine], kind="stable")]
    return [RankBatch(mine[i : i + batch_docs], False, np.zeros(0, dtype=np.int64))
            for i in range(0, len(mine), batch_docs)]


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
                    cfg: EvalConfig, deadline: Deadline, use_compiled: bool, a_start: dict[str, Tensor] | None = None,
                    keep_a: bool = False) -> tuple[list[Tensor], dict[str, Tensor] | None]:
    """Per-target NLL of a batch of documents sorted by length, longest first (one tensor per document), and
    with `keep_a` each row's A as its document's last training step left it (what warm start carries on).

    `a_start`: every row's starting A (warm start); None = the seeded draw.
    """
    device = model_device(model)
    K, W = cfg.ttt_lora_chunk, cfg.context_len
    n_docs = len(starts)
    rows = lora.n_docs if use_compiled else n_docs  # static shapes: always the full batch of rows
    lora.reset_parameters()
    if a_start is not None:
        lora.load_a(a_start)
    params = list(lora.parameters())
    optimizer = (torch.optim.AdamW(params, lr=cfg.ttt_lora_lr, betas=(cfg.ttt_lora_beta1, cfg.ttt_lora_beta2),
                                   eps=cfg.ttt_lora_eps, weight_decay=cfg.ttt_lora_wd) if params else None)
    length = torch.zeros(rows, dtype=torch.int64)
    length[:n_docs] = torch.from_numpy(lengths)
    start = torch.zeros(rows, dtype=torch.int64)
    start[:n_docs] = torch.from_numpy(starts)
    doc_chunks = -(-lengths // K)
    a_end = lora.a_rows(list(range(n_docs))) if keep_a else None
    n_chunks = int(doc_chunks[0])
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
                ending = np.flatnonzero(doc_chunks[:active] == c + 1).tolist()  # documents on their last chunk
                if a_end is not None and ending:  # their A is final: no later step trains it for them
                    for t, a in lora.a_rows(ending).items():
                        a_end[t][..., ending, :, :] = a
                if learn:
                    # sum over training documents of each one's mean chunk loss
                    per_doc = (nll * valid).sum(1) / valid.sum(1).clamp(min=1)
                    optimizer.zero_grad(set_to_none=True)
                    (per_doc * train).sum().backward()
                    optimizer.step()
    kept = scores[:n_docs].cpu()
    return [kept[row, : int(lengths[row])] for row in range(n_docs)], a_end


def score_documents(model: nn.Module, stream: Tensor, starts: np.ndarray, lengths: np.ndarray,
                    batches: list[np.ndarray], cfg: EvalConfig, deadline: Deadline, nll: Tensor) -> None:
    """LoRA TTT over `batches` (this rank's part of them), every document's per-target NLL written into `nll`
    (one value per target of the stream) on every rank. A warm start's chain starts here, from the seeded A."""
    rank, world = rank_world()
    warm = cfg.ttt_lora_warm_start_a
    plan = rank_batches(batches, lengths, cfg.ttt_batch_docs, warm, rank, world)
    use_compiled = use_compile(cfg, model_device(model))
    lora = BatchedLoRA(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, max((p.docs.size for p in plan), default=1),
                       alpha=cfg.ttt_lora_alpha)
    carried: dict[str, Tensor] | None = None  # per slot of this rank, the A the last full batch ended with
    ids: list[int] = []
    parts: list[Tensor] = []
    for part in plan:
        chained = warm and part.full
        a_start = {t: a[..., part.slot, :, :] for t, a in carried.items()} if chained and carried else None
        scores, a_end = _document_batch(model, lora, stream, starts[part.docs], lengths[part.docs], cfg, deadline,
                                        use_compiled, a_start, keep_a=chained)
        if chained:  # rows (longest first) back to slots
            carried = {t: torch.empty_like(a) for t, a in a_end.items()}
            for t, a in a_end.items():
                carried[t][..., part.slot, :, :] = a
        ids += part.docs.tolist()
        parts += scores
    if world > 1:
        plans = [[d for p in rank_batches(batches, lengths, cfg.ttt_batch_docs, warm, r, world) for d in p.docs.tolist()]
                 for r in range(world)]
        local = torch.cat(parts) if parts else torch.zeros(0)
        flat = gather_concat(local.to(model_device(model)), [int(lengths[p].sum()) for p in plans]).cpu()
        ids = [d for p in plans for d in p]
        parts = list(torch.split(flat, lengths[ids].tolist()))
    for d, scores in zip(ids, parts):
        nll[starts[d] : starts[d] + scores.numel()] = scores


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The base weights frozen and in eval mode for the block (pass a copy: requires_grad stays off after it)."""
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_lora_settings(cfg: EvalConfig) -> None:
    if not 0 < cfg.ttt_lora_chunk <= cfg.context_len:
        raise ValueError(f"eval.ttt_lora_chunk must be in 1..eval.context_len ({cfg.context_len}), got {cfg.ttt_lora_chunk}")
    if cfg.ttt_batch_docs <= 0:
        raise ValueError(f"eval.ttt_batch_docs must be positive, got {cfg.ttt_batch_docs}")


def lora_notes(model: nn.Module, cfg: EvalConfig, n_docs: int) -> str:
    sample = BatchedLoRA(model, cfg.ttt_lora_targets, cfg.ttt_lora_rank, 1)
    per_doc = sum(p.numel() for p in sample.parameters())
    scale = f", scale alpha/r = {cfg.ttt_lora_alpha:g}/{cfg.ttt_lora_rank}" if cfg.ttt_lora_alpha > 0 else ""
    start = ("warm-start A (each batch row keeps A across documents: not document-independent)"
             if cfg.ttt_lora_warm_start_a else "fresh adapters per document")
    return (f"LoRA TTT: {n_docs:,} documents, rank {cfg.ttt_lora_rank} on {'/'.join(cfg.ttt_lora_targets) or 'nothing'} "
            f"x {len(model.active_schedule)} virtual slots ({per_doc:,} parameters per document{scale}), {start}, "
            f"chunks of {cfg.ttt_lora_chunk}, context {cfg.context_len}, AdamW lr {cfg.ttt_lora_lr:g}, "
            f"{cfg.ttt_batch_docs} documents per batch in {cfg.ttt_doc_order} order")


def lora_ttt_nll(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline,
                 bos_id: int = 1) -> tuple[np.ndarray, list[str]]:
    """Per-document LoRA TTT on `model` (base weights frozen, not changed). Returns per-target NLL and notes."""
    check_lora_settings(cfg)
    starts, lengths = documents(tokens, bos_id)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    nll = torch.zeros(tokens.size - 1)
    with frozen(model):
        score_documents(model, stream, starts, lengths, document_batches(lengths, cfg.ttt_doc_order, cfg.ttt_batch_docs),
                        cfg, deadline, nll)
    return nll.double().numpy(), [lora_notes(model, cfg, len(starts))]
