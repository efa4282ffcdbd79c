"""Every evaluation mode against a plain re-implementation written here from its description (TECHNIQUES.md §4,
§10.2-10.4 and the eval module docstrings): one window, one chunk, one document at a time, in the obvious order.

The score-first tests (test_score_first.py) say what a mode may not depend on; these say that it computes what
it says it computes: the right windows, chunks, learning rates, optimizers, epochs, frozen blocks and clipping.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pgolf
from pgolf.config import EvalConfig
from pgolf.eval.lora_adapters import BatchedLoRA
from pgolf.eval.deadline import Deadline
from pgolf.eval.sliding import sliding_nll
from pgolf.eval.ttt_chunk import chunk_ttt_nll, cosine_lr
from pgolf.eval.ttt_pre import pre_ttt

from test_model import small_model
from test_score_first import BOS, TABLES, VOCAB, three_documents

W = 32


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return small_model({"model.vocab_size": VOCAB})


def pgolf_nll(model, tokens, **settings) -> np.ndarray:
    cfg = EvalConfig(context_len=W, batch_seqs=3, **settings)
    return pgolf.evaluate(model, tokens, None, cfg, tables=TABLES).token_nll


# ----------------------------------------------------------------------------- the reference


def windows(n_targets: int, stride: int) -> list[tuple[int, int, int]]:
    """(first input, end, first scored input) of the exactly-once tiling: starts 0, S, 2S, ... while ws + C < N."""
    stride = stride or W
    context = W - stride
    out, ws = [], 0
    while ws == 0 or ws + context < n_targets:
        out.append((ws, min(ws + W, n_targets), 0 if ws == 0 else ws + context))
        ws += stride
    return out


@torch.no_grad()
def score(model, tokens, window) -> np.ndarray:
    ws, we, ss = window
    x = torch.from_numpy(tokens[ws:we].astype(np.int64))[None]
    logp = torch.log_softmax(model(x)[0].double(), -1)
    y = torch.from_numpy(tokens[ss + 1 : we + 1].astype(np.int64))
    return -logp[torch.arange(ss - ws, we - ws), y].numpy()


def full_sequences(first: int, last: int) -> list[tuple[int, int]]:
    n = last - first
    length = min(W, n)
    return [(first + i * length, first + (i + 1) * length) for i in range(n // length)] if n > 0 else []


def train(model, tokens, spans, batch, optimizer, params, clip) -> None:
    for i in range(0, len(spans), batch):
        x = torch.stack([torch.from_numpy(tokens[a:b].astype(np.int64)) for a, b in spans[i : i + batch]])
        y = torch.stack([torch.from_numpy(tokens[a + 1 : b + 1].astype(np.int64)) for a, b in spans[i : i + batch]])
        optimizer.zero_grad()
        model(x, y).backward()  # mean cross-entropy of the batch
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()


def trainable(model, freeze: int) -> list[torch.nn.Parameter]:
    frozen = {id(p) for block in model.blocks[:freeze] for p in block.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in model.parameters() if id(p) not in frozen]


def reference_chunk_ttt(model, tokens, chunk, lr, epochs, batch, momentum=0.9, stride=0, freeze=0, clip=1.0,
                        tiling=None):
    """§10.3: score chunk c's windows with the current weights, then (but for the last chunk) SGD on its
    sequences at lr * (1 + cos(pi c / (C - 1))) / 2; a window belongs to the chunk of its first scored target.
    `tiling`: the windows (default: the sliding / plain tiling of `stride`). Returns the NLL and the model."""
    model = copy.deepcopy(model)
    n = tokens.size - 1
    n_chunks = math.ceil(n / chunk)
    params = trainable(model, freeze)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    nll = np.full(n, np.nan)
    for c in range(n_chunks):
        for window in windows(n, stride) if tiling is None else tiling:
            if window[2] // chunk == c:
                nll[window[2] : window[1]] = score(model, tokens, window)
        if c < n_chunks - 1:
            optimizer.param_groups[0]["lr"] = lr * (1 + math.cos(math.pi * c / (n_chunks - 1))) / 2
            for _ in range(epochs):
                train(model, tokens, full_sequences(c * chunk, min((c + 1) * chunk, n)), batch, optimizer, params, clip)
    return nll, model


def reference_pre_ttt(model, tokens, lr, epochs, batch, momentum=0.9, stride=0, freeze=0, clip=1.0):
    """§10.2: AdamW(lr, betas (momentum, 0.999), eps 1e-8, no decay) epochs over the whole stream, then scoring.
    Returns the NLL and the trained model."""
    model = copy.deepcopy(model)
    params = trainable(model, freeze)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), eps=1e-8, weight_decay=0.0)
    for _ in range(epochs):
        train(model, tokens, full_sequences(0, tokens.size - 1), batch, optimizer, params, clip)
    return np.concatenate([score(model, tokens, w) for w in windows(tokens.size - 1, stride)]), model


def reference_lora_ttt(model, tokens, s: dict) -> np.ndarray:
    """§10.4, one document at a time: fresh adapters and AdamW per document; chunk c scores targets
    [cK, min((c+1)K, L)) from the inputs [max((c+1)K - W, 0), min((c+1)K, L)) of its document, then (if the
    document goes on) one step on the chunk's mean loss."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    k = s["ttt_lora_chunk"]
    starts = list(np.flatnonzero(tokens[:-1] == BOS)) + [tokens.size - 1]
    nll = []
    for start, end in zip(starts[:-1], starts[1:]):
        doc = tokens[start : end + 1].astype(np.int64)
        length = end - start
        lora = BatchedLoRA(model, s["ttt_lora_targets"], s["ttt_lora_rank"], n_docs=1)
        optimizer = torch.optim.AdamW(lora.parameters(), lr=s["ttt_lora_lr"], betas=(s["ttt_lora_beta1"], 0.999),
                                      eps=1e-10, weight_decay=s["ttt_lora_wd"])
        with lora.attached():
            for c in range(math.ceil(length / k)):
                first, last = max((c + 1) * k - W, 0), min((c + 1) * k, length)
                lora.reset()
                h = model.hidden(torch.from_numpy(doc[first:last])[None])[:, c * k - first :]
                chunk_nll = F.cross_entropy(model.logits(h).float()[0], torch.from_numpy(doc[c * k + 1 : last + 1]),
                                            reduction="none")
                nll.append(chunk_nll.detach().double().numpy())
                if length > (c + 1) * k:
                    optimizer.zero_grad()
                    chunk_nll.mean().backward()
                    optimizer.step()
    return np.concatenate(nll)


# ----------------------------------------------------------------------------- the comparisons

CHUNK_CASES = {
    "plain windows": dict(chunk=96, lr=0.1, epochs=2, batch=2),
    "sliding, stride 10": dict(chunk=96, lr=0.1, epochs=1, batch=2, stride=10),
    "chunks shorter than a window": dict(chunk=20, lr=0.05, epochs=1, batch=1, stride=16),
    "momentum 0.5, no clipping": dict(chunk=96, lr=0.02, epochs=1, batch=3, momentum=0.5, clip=0.0),
    "first 2 blocks frozen": dict(chunk=80, lr=0.1, epochs=1, batch=2, freeze=2),
    "windows cut at documents": dict(chunk=96, lr=0.1, epochs=1, batch=2, stride=10, cut=True),
    "document pieces": dict(chunk=96, lr=0.1, epochs=1, batch=2, pieces=True),
    # 225 targets = 7 chunks of 32 + a last chunk of one target, scored by the plain window at 224 alone
    "a last chunk of one target": dict(chunk=32, lr=0.1, epochs=1, batch=2, targets=225),
    "chunks of one target": dict(chunk=1, lr=0.05, epochs=1, batch=1, targets=40),
}


def document_pieces(tokens) -> list[tuple[int, int, int]]:
    """#1536's plain pieces: from every document start, consecutive pieces of at most W inputs that end at the
    next document start, each scored whole with no context before it."""
    n = tokens.size - 1
    starts = [0] + [int(b) for b in np.flatnonzero(tokens[:-1] == BOS) if b > 0] + [n]
    return [(a, min(a + W, end), a) for start, end in zip(starts[:-1], starts[1:]) for a in range(start, end, W)]


@pytest.mark.parametrize("case", sorted(CHUNK_CASES))
def test_chunk_ttt_is_the_reference(model, case):
    c = dict(CHUNK_CASES[case])
    cut, pieces, targets = c.pop("cut", False), c.pop("pieces", False), c.pop("targets", None)
    tokens = three_documents()[: None if targets is None else targets + 1]
    stride = c.get("stride", 0)
    tiling = document_windows(tokens, stride) if cut else document_pieces(tokens) if pieces else None
    ours = pgolf_nll(model, tokens, ttt="chunk", ttt_chunk_tokens=c["chunk"], ttt_lr=c["lr"], ttt_epochs=c["epochs"],
                     ttt_batch_seqs=c["batch"], ttt_momentum=c.get("momentum", 0.9), sliding_stride=stride,
                     ttt_freeze_blocks=c.get("freeze", 0), ttt_grad_clip=c.get("clip", 1.0), doc_boundaries=cut,
                     plain_windows="doc_pieces" if pieces else "fixed")
    np.testing.assert_allclose(ours, reference_chunk_ttt(model, tokens, **c, tiling=tiling)[0], rtol=1e-4, atol=1e-4)


class RecordingDeadline(Deadline):
    """No time cap; records where each unit of work began (scoring and training of each chunk), in order."""

    def __init__(self):
        super().__init__(0)
        self.where: list[str] = []

    def check(self, where: str) -> None:
        self.where.append(where)
        super().check(where)


def test_chunk_ttt_called_alone_scores_first_trains_every_chunk_but_the_last_and_freezes_the_model(model):
    """chunk_ttt_nll on its own (bos_id left at its default, the BOS of sp tokenizers): the reference's scores;
    chunk c is scored, then trained on, before chunk c + 1 is scored, and the last chunk is never trained on;
    the model it trained is left with no trainable parameter; a chunk size of 0 is refused by name."""
    tokens = three_documents()
    cfg = EvalConfig(context_len=W, batch_seqs=3, ttt="chunk", ttt_chunk_tokens=96, ttt_lr=0.1, ttt_epochs=2,
                     ttt_batch_seqs=2, sliding_stride=10, doc_boundaries=True)
    work, deadline = copy.deepcopy(model), RecordingDeadline()
    nll, _ = chunk_ttt_nll(work, tokens, cfg, deadline)
    ref, _ = reference_chunk_ttt(model, tokens, chunk=96, lr=0.1, epochs=2, batch=2, stride=10,
                                 tiling=document_windows(tokens, 10))
    np.testing.assert_allclose(nll, ref, rtol=1e-4, atol=1e-4)
    units = [w for i, w in enumerate(deadline.where) if i == 0 or w != deadline.where[i - 1]]
    assert units == ["chunk TTT scoring (chunk 1/3)", "chunk TTT training (chunk 1/3)",
                     "chunk TTT scoring (chunk 2/3)", "chunk TTT training (chunk 2/3)",
                     "chunk TTT scoring (chunk 3/3)"], units
    assert not any(p.requires_grad for p in work.parameters())
    with pytest.raises(ValueError, match="eval.ttt_chunk_tokens must be positive, got 0"):
        chunk_ttt_nll(copy.deepcopy(model), tokens, dataclasses.replace(cfg, ttt_chunk_tokens=0), Deadline(0))


def test_the_learning_rate_follows_the_cosine_over_chunks():
    assert [cosine_lr(0.4, c, 5) for c in range(5)] == pytest.approx([0.4, 0.4 * (1 + math.cos(math.pi / 4)) / 2,
                                                                        0.2, 0.4 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert cosine_lr(0.4, 0, 1) == 0.4


# targets: 239 (7 sequences of 32 and 15 left over), 223 (the last full sequence ends one before the stream's end)
# and 224 (sequences cover every target)
@pytest.mark.parametrize("stride, freeze, clip, targets", [(0, 0, 1.0, 239), (8, 1, 0.0, 239), (0, 0, 1.0, 223),
                                                           (0, 0, 1.0, 224)])
def test_pre_ttt_is_the_reference(model, stride, freeze, clip, targets):
    tokens = three_documents()[: targets + 1]
    ours = pgolf_nll(model, tokens, ttt="pre", ttt_lr=0.003, ttt_epochs=2, ttt_batch_seqs=3, ttt_momentum=0.8,
                     sliding_stride=stride, ttt_freeze_blocks=freeze, ttt_grad_clip=clip)
    ref, _ = reference_pre_ttt(model, tokens, lr=0.003, epochs=2, batch=3, momentum=0.8, stride=stride, freeze=freeze,
                               clip=clip)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_pre_ttt_called_alone_trains_the_weights_the_reference_trains_and_freezes_them(model):
    """pre_ttt's AdamW has no weight decay (torch's default is 0.01) and eps 1e-8: after 3 epochs at lr 0.05 every
    weight equals the reference's (a decay of lr * 0.01 per step would move them by ~1e-4 relative); the model is
    left with no trainable parameter."""
    tokens = three_documents()
    cfg = EvalConfig(context_len=W, batch_seqs=3, ttt="pre", ttt_lr=0.05, ttt_epochs=3, ttt_batch_seqs=3)
    work = copy.deepcopy(model)
    pre_ttt(work, tokens, cfg, Deadline(0))
    _, ref = reference_pre_ttt(model, tokens, lr=0.05, epochs=3, batch=3)
    for (name, p), q in zip(work.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not any(p.requires_grad for p in work.parameters())


@pytest.mark.parametrize("settings", [
    {"ttt_lora_targets": ["q", "v", "head"], "ttt_lora_rank": 4, "ttt_lora_chunk": 24, "ttt_batch_docs": 2},
    {"ttt_lora_targets": ["k", "o", "mlp"], "ttt_lora_rank": 2, "ttt_lora_chunk": 20, "ttt_batch_docs": 3,
     "ttt_lora_wd": 0.0, "ttt_lora_beta1": 0.9},
], ids=["q-v-head", "k-o-mlp"])
def test_lora_ttt_is_the_reference(model, settings):
    s = {"ttt_lora_lr": 0.01, "ttt_lora_wd": 0.5, "ttt_lora_beta1": 0.0, **settings}
    tokens = three_documents()
    ours = pgolf_nll(model, tokens, ttt="lora", **s)
    np.testing.assert_allclose(ours, reference_lora_ttt(model, tokens, s), rtol=1e-4, atol=1e-4)


def document_windows(tokens, stride: int) -> list[tuple[int, int, int]]:
    """The tiling's windows cut at every BOS inside their scored range; each piece starts no earlier than the
    document of its targets (a BOS is its document's first input)."""
    starts = [0] + [int(b) for b in np.flatnonzero(tokens[:-1] == BOS) if b > 0]
    out = []
    for ws, we, ss in windows(tokens.size - 1, stride):
        cuts = [ss] + [b for b in starts if ss < b < we] + [we]
        for a, b in zip(cuts[:-1], cuts[1:]):
            out.append((max(ws, max(d for d in starts if d <= a)), b, a))
    return out


@pytest.mark.parametrize("stride, cut", [(0, False), (1, False), (7, False), (0, True), (7, True)])
def test_sliding_windows_are_the_reference(model, stride, cut):
    tokens = three_documents()[:150]
    tiling = document_windows(tokens, stride) if cut else windows(tokens.size - 1, stride)
    ref = np.concatenate([score(model, tokens, w) for w in tiling])
    ours = pgolf_nll(model, tokens, sliding_stride=stride, doc_boundaries=cut)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_sliding_nll_called_alone_cuts_at_the_default_bos(model):
    """sliding_nll with bos_id left at its default, the BOS of sp tokenizers (1, as here)."""
    tokens = three_documents()[:150]
    ref = np.concatenate([score(model, tokens, w) for w in document_windows(tokens, 7)])
    nll, _ = sliding_nll(model, tokens, EvalConfig(context_len=W, batch_seqs=3, sliding_stride=7, doc_boundaries=True),
                         Deadline(0))
    np.testing.assert_allclose(nll, ref, rtol=1e-4, atol=1e-5)


class LogitsOnly(torch.nn.Module):
    """A model that only has forward(ids) -> logits (no hidden()/logits() split)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return self.inner(ids)


@pytest.mark.parametrize("settings", [{}, {"sliding_stride": 8}, {"sliding_stride": 8, "doc_boundaries": True}])
def test_a_model_without_hidden_and_logits_scores_the_same(model, settings):
    tokens = three_documents()
    np.testing.assert_allclose(pgolf_nll(LogitsOnly(model), tokens, **settings), pgolf_nll(model, tokens, **settings),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings", [{}, {"sliding_stride": 8}, {"ttt": "chunk", "ttt_chunk_tokens": 96},
                                      {"ttt": "lora", "ttt_lora_rank": 2, "ttt_lora_chunk": 24},
                                      {"ttt": "pre", "ttt_epochs": 1}], ids=["plain", "sliding", "chunk", "lora", "pre"])
def test_a_uint16_stream_as_read_from_a_shard_scores_like_int64(model, settings):
    tokens = three_documents()
    np.testing.assert_allclose(pgolf_nll(model, tokens.astype(np.uint16), **settings), pgolf_nll(model, tokens, **settings),
                               rtol=0, atol=1e-6)
