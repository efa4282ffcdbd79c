"""Phased global TTT (#1610 -> #1626, as #1855 runs it): LoRA TTT with full-model SGD passes on the scored prefix.

Documents are processed in `eval.ttt_doc_order` (ttt_lora.document_batches). `eval.ttt_global_phase_docs`
= [B_1 < B_2 < ...] cuts that order into segments: documents [0, B_1), [B_1, B_2), ..., [B_N, D) of it (a batch
that straddles a cut is split there). Segment k is scored by LoRA TTT (ttt_lora.score_documents: fresh or
warm-start A, base weights frozen) with the weights the phases before it left; then phase k trains ALL weights
on exactly the documents of segments 0..k — the B_k documents scored so far, every one of their targets — and
only then is segment k+1 scored. Every target is scored exactly once; nothing is rescored. Warm-start chains
restart in every segment (#1855 builds new adapters after each phase).

One SGD pass (#1855's train_val_ttt_global_sgd_distributed): the documents' own (input, target) pairs
concatenated in processing order, N targets, C = ceil(N / ttt_global_chunk_tokens) chunks; chunks 0..C-2 are
trained (the last, usually partial, one is not), each cut into sequences of eval.context_len,
ttt_global_batch_seqs sequences per step over all ranks, ttt_global_epochs passes per chunk, at
lr_c = ttt_global_lr * (1 + cos(pi c / (C - 1))) / 2; SGD with momentum ttt_global_momentum, new every phase (so
the momentum is reset); global grad-norm clip. A phase that would take no step (N <= one chunk, e.g. B = 0) or
that comes after the last document (nothing left to score) is dropped with a note: it would change nothing.

Which documents train, and how that differs from #1855. #1855's 8 ranks claim batches dynamically and pause once
the shared count reaches B_k, by which time ~B_k + 460 documents are scored; it then trains on the B_k of them
from the lowest-numbered (shortest) batches, so ~460 scored documents — the longest, scored first — never enter
any pass. pgolf trains on every scored document and on no other: the set is the list of documents whose scoring
has finished, in one fixed order that does not depend on the number of ranks (each rank scores its part of a
segment, then all ranks take the same SGD steps, their gradients summed). So it is score-first by construction:
phase k reads only documents of segments 0..k, all scored before it. The evaluation is legal but not
document-independent: a document's scores depend on the documents of earlier segments.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EvalConfig
from ..config.optional import require_module
from .deadline import Deadline
from .forward import use_compile
from .ranks import model_device
from .ttt_train import cosine_lr, train_on_sequences, trainable_parameters
from .windows import n_chunks, sequences


def phase_cuts(phase_docs: list[int], ordered_lengths: np.ndarray, chunk_tokens: int) -> tuple[list[int], list[str]]:
    """The phases that run (document counts) and a note for each one dropped because it would change nothing."""
    targets_before = np.concatenate(([0], np.cumsum(ordered_lengths)))  # targets of the first B documents
    kept, dropped = [], []
    for b in phase_docs:
        if b >= ordered_lengths.size:
            dropped.append(f"phase at {b} documents dropped: the split has {ordered_lengths.size}, none left to score")
        elif targets_before[b] <= chunk_tokens:
            dropped.append(f"phase at {b} documents dropped: their {int(targets_before[b]):,} targets make fewer than "
                           f"2 chunks of {chunk_tokens} (the last chunk is never trained), so it takes no step")
        else:
            kept.append(int(b))
    return kept, dropped


def split_at(batches: list[np.ndarray], cuts: list[int]) -> list[list[np.ndarray]]:
    """The batches cut into len(cuts) + 1 segments at the given document counts of the processing order."""
    segments: list[list[np.ndarray]] = [[]]
    position = 0
    bounds = iter(cuts)
    cut = next(bounds, None)
    for batch in batches:
        while len(batch):
            if cut is not None and position == cut:
                segments.append([])
                cut = next(bounds, None)
                continue
            take = len(batch) if cut is None else min(len(batch), cut - position)
            segments[-1].append(batch[:take])
            batch, position = batch[take:], position + take
    while cut is not None:  # cuts at the very end of the order (phase_cuts keeps none there)
        segments.append([])
        cut = next(bounds, None)
    return segments


def global_sgd(model: nn.Module, stream: Tensor, starts: np.ndarray, lengths: np.ndarray, docs: np.ndarray,
               cfg: EvalConfig, deadline: Deadline, where: str) -> tuple[int, int, list[float]]:
    """One phase: SGD on every weight over the (input, target) pairs of `docs`; (targets, steps, chunk losses)."""
    inputs = torch.cat([stream[s : s + n] for s, n in zip(starts[docs].tolist(), lengths[docs].tolist())])
    targets = torch.cat([stream[s + 1 : s + n + 1] for s, n in zip(starts[docs].tolist(), lengths[docs].tolist())])
    total = n_chunks(inputs.numel(), cfg.ttt_global_chunk_tokens)
    params = trainable_parameters(model, 0)
    optimizer = torch.optim.SGD(params, lr=cfg.ttt_global_lr, momentum=cfg.ttt_global_momentum)
    steps, losses = 0, []
    use_compiled = use_compile(cfg, model_device(model))
    for c in range(total - 1):  # the last chunk is not trained (#1855)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.ttt_global_lr, c, total)
        spans = sequences(c * cfg.ttt_global_chunk_tokens, (c + 1) * cfg.ttt_global_chunk_tokens, cfg.context_len)
        for _ in range(cfg.ttt_global_epochs):
            losses.append(train_on_sequences(model, inputs, spans, cfg.ttt_global_batch_seqs, params, optimizer,
                                             cfg.ttt_global_grad_clip, deadline, f"{where} (chunk {c + 1}/{total})",
                                             use_compiled, targets=targets))
            steps += -(-len(spans) // cfg.ttt_global_batch_seqs)
    for p in model.parameters():
        p.requires_grad_(False)
    return int(inputs.numel()), steps, losses


def phased_ttt_nll(model: nn.Module, tokens: np.ndarray, cfg: EvalConfig, deadline: Deadline,
                   bos_id: int = 1) -> tuple[np.ndarray, list[str]]:
    """Phased global TTT on `model` (which the phases train: pass a copy). Returns per-target NLL and notes."""
    lora = require_module("pgolf.eval.ttt_lora", cfg)  # the segments are scored by LoRA TTT (eval.ttt = 'lora')
    check_lora_settings, documents, document_batches = lora.check_lora_settings, lora.documents, lora.document_batches
    check_lora_settings(cfg)
    starts, lengths = documents(tokens, bos_id)
    batches = document_batches(lengths, cfg.ttt_doc_order, cfg.ttt_batch_docs)
    order = np.concatenate(batches)
    cuts, notes = phase_cuts(cfg.ttt_global_phase_docs, lengths[order], cfg.ttt_global_chunk_tokens)
    stream = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    nll = torch.zeros(tokens.size - 1)
    scored: list[np.ndarray] = []
    with lora.frozen(model):
        for k, segment in enumerate(split_at(batches, cuts)):
            lora.score_documents(model, stream, starts, lengths, segment, cfg, deadline, nll)
            scored += segment
            if k == len(cuts):
                break
            done = np.concatenate(scored)  # every document scored so far: the only ones this phase may read
            began = time.perf_counter()
            n, steps, losses = global_sgd(model, stream, starts, lengths, done, cfg, deadline,
                                          f"phased global TTT (phase {k + 1}/{len(cuts)})")
            trend = f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-"
            notes.append(f"phase {k + 1}/{len(cuts)} after {done.size:,} documents: SGD on their {n:,} targets, "
                         f"{steps} steps, chunk loss {trend}, {time.perf_counter() - began:.1f} s")
    head = (f"phased global TTT: phases after {'/'.join(map(str, cuts)) or 'none'} documents; SGD lr "
            f"{cfg.ttt_global_lr:g} (cosine over chunks of {cfg.ttt_global_chunk_tokens}, last not trained) momentum "
            f"{cfg.ttt_global_momentum:g}, {cfg.ttt_global_epochs} epochs, {cfg.ttt_global_batch_seqs} seqs/step, "
            f"clip {cfg.ttt_global_grad_clip:g}; trains on every scored document (not document-independent)")
    return nll.double().numpy(), [lora.lora_notes(model, cfg, len(starts)), head, *notes]
