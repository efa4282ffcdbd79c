"""Evaluation windows: which inputs each forward pass sees and which of its targets it scores.

A window is three input positions of the token stream: `start` (first input), `end` (one past the last input)
and `score` (first scored input). It feeds tokens[start:end] and scores the targets tokens[score+1 : end+1],
i.e. the next-token predictions at input positions [score, end). Every tiling built here scores each target
of the stream exactly once, in stream order: the scored ranges of consecutive windows abut.

Sliding tiling (window W, stride S, C = W - S, N targets): starts ws in {0, S, 2S, ...} with ws + C < N;
window ws scores [0, wlen) if ws = 0 and [C, wlen) otherwise. S = W is plain evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..model.precision import autocast_for
from .deadline import Deadline
from .forward import scored_nll
from .ranks import gather_concat, model_device, rank_world


@dataclass
class Windows:
    start: np.ndarray   # first input position of each window
    end: np.ndarray     # one past its last input position
    score: np.ndarray   # first scored input position (scored: [score, end))

    def __len__(self) -> int:
        return int(self.start.size)

    def __getitem__(self, index) -> "Windows":
        return Windows(self.start[index], self.end[index], self.score[index])

    @property
    def scored(self) -> np.ndarray:
        """Targets scored by each window."""
        return self.end - self.score


def sliding_windows(n_targets: int, window: int, stride: int) -> Windows:
    """The exactly-once sliding tiling of n_targets targets (stride == window gives plain windows)."""
    if not 0 < stride <= window:
        raise ValueError(f"eval.sliding_stride must be in 1..eval.context_len ({window}), got {stride}")
    context = window - stride
    later = np.arange(stride, max(n_targets - context, 0), stride, dtype=np.int64)  # ws + C < N, ws > 0
    start = np.concatenate(([0], later)).astype(np.int64)
    end = np.minimum(start + window, n_targets)
    score = np.where(start == 0, 0, start + context)
    return Windows(start, end, score)


def document_starts(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """Input positions where a document starts: 0 and every BOS that is an input (not the final token)."""
    n_targets = tokens.size - 1
    bos = np.flatnonzero(tokens[:n_targets] == bos_id)
    return np.union1d([0], bos).astype(np.int64)


def clip_to_documents(windows: Windows, tokens: np.ndarray, bos_id: int) -> Windows:
    """Cut every window at the start of the document of the targets it scores.

    A window whose scored range crosses a BOS is split there; each piece keeps the window's own start unless its
    document starts later, so no scored target sees a token before its document's BOS (the BOS itself included
    as the first input). Pieces still abut: every target stays scored exactly once.
    """
    starts = document_starts(tokens, bos_id)
    out_start, out_end, out_score = [], [], []
    for ws, we, ss in zip(windows.start.tolist(), windows.end.tolist(), windows.score.tolist()):
        lo, hi = np.searchsorted(starts, ss, "right"), np.searchsorted(starts, we, "left")
        cuts = [ss, *starts[lo:hi].tolist(), we]
        doc_start = int(starts[lo - 1])
        for a, b in zip(cuts[:-1], cuts[1:]):
            doc_start = a if a != ss else doc_start
            out_start.append(max(ws, doc_start))
            out_end.append(b)
            out_score.append(a)
    as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return Windows(as_array(out_start), as_array(out_end), as_array(out_score))


def document_pieces(tokens: np.ndarray, piece_len: int, bos_id: int) -> Windows:
    """#1536's plain eval_val tiling: every document from its BOS in consecutive pieces of at most piece_len
    inputs (a piece starts at each document start and every piece_len positions after it, and ends at the next
    start), each scored whole with no context before it."""
    if piece_len <= 0:
        raise ValueError(f"eval.context_len must be > 0 for document pieces, got {piece_len}")
    n_targets = tokens.size - 1
    doc_starts = document_starts(tokens, bos_id)
    doc_ends = np.append(doc_starts[1:], n_targets)
    counts = -(-(doc_ends - doc_starts) // piece_len)  # ceil: pieces per document
    start = np.repeat(doc_starts, counts) + piece_len * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    end = np.minimum(start + piece_len, np.repeat(doc_ends, counts))
    return Windows(start.astype(np.int64), end.astype(np.int64), start.astype(np.int64))


def eval_windows(tokens: np.ndarray, context_len: int, stride: int, doc_boundaries: bool, bos_id: int,
                 plain_windows: str = "fixed") -> Windows:
    """The windows `eval.*` asks for: sliding (stride > 0) or plain (stride 0), optionally cut at documents;
    plain with eval.plain_windows = "doc_pieces": #1536's pieces of each document (already cut at documents)."""
    if stride <= 0 and plain_windows == "doc_pieces":
        return document_pieces(tokens, context_len, bos_id)
    if plain_windows not in ("fixed", "doc_pieces"):
        raise ValueError(f"eval.plain_windows must be 'fixed' or 'doc_pieces', got {plain_windows!r}")
    windows = sliding_windows(tokens.size - 1, context_len, stride if stride > 0 else context_len)
    return clip_to_documents(windows, tokens, bos_id) if doc_boundaries else windows


def pack_batch(stream: Tensor, windows: Windows, width: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(inputs, targets, flat index of the scored positions, their stream indices) of windows padded with token 0
    to `width` columns (0: the longest window). Padding follows a window's last input, so causality keeps it out
    of every score; padding is never among the scored positions."""
    length = max(int((windows.end - windows.start).max()), width)
    start, size = torch.from_numpy(windows.start)[:, None], torch.from_numpy(windows.end - windows.start)[:, None]
    col = torch.arange(length)[None, :]
    inside = col < size
    position = (start + col).clamp(max=stream.numel() - 2)   # clamped positions are padding, replaced by 0
    inputs = torch.where(inside, stream[position], 0)
    targets = torch.where(inside, stream[position + 1], 0)
    scored = inside & (col >= torch.from_numpy(windows.score)[:, None] - start)
    index = torch.nonzero(scored.flatten()).flatten()
    return inputs, targets, index, (start + col).flatten()[index]  # target i is predicted at input position i


@torch.no_grad()
def score_windows(model: nn.Module, stream: Tensor, windows: Windows, batch_seqs: int, deadline: Deadline,
                  where: str = "scoring", use_compiled: bool = False) -> Tensor:
    """NLL of every target the windows score, in window order (fp32, on the CPU).

    Windows are batched longest first (equal lengths keep their order), so padding stays small. Compiled,
    every batch is padded to one shape: batch_seqs rows of the longest window.
    """
    if len(windows) == 0:
        return torch.zeros(0)
    device = model_device(model)
    order = np.argsort(-(windows.end - windows.start), kind="stable")
    width = int((windows.end - windows.start).max()) if use_compiled else 0
    pieces: list[Tensor | None] = [None] * len(windows)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(order), batch_seqs):
            deadline.check(where)
            rows = order[i : i + batch_seqs]
            batch = windows[rows]
            inputs, targets, index, positions = pack_batch(stream, batch, width)
            shape = (batch_seqs, inputs.size(1)) if use_compiled else tuple(inputs.shape)
            with autocast_for(device):
                nll = scored_nll(model, inputs, targets, index, positions, *shape, device, use_compiled).cpu()
            for row, part in zip(rows.tolist(), torch.split(nll, batch.scored.tolist())):
                pieces[row] = part
    finally:
        model.train(was_training)
    return torch.cat(pieces)  # type: ignore[arg-type]


def rank_range(n: int) -> tuple[int, int]:
    """This rank's contiguous share [first, last) of n items."""
    rank, world = rank_world()
    return n * rank // world, n * (rank + 1) // world


def score_distributed(model: nn.Module, stream: Tensor, windows: Windows, batch_seqs: int, deadline: Deadline,
                      where: str = "scoring", use_compiled: bool = False) -> Tensor:
    """score_windows with the windows split contiguously over ranks; every rank gets all NLLs in window order."""
    _, world = rank_world()
    first, last = rank_range(len(windows))
    local = score_windows(model, stream, windows[first:last], batch_seqs, deadline, where, use_compiled)
    if world == 1:
        return local
    scored = windows.scored
    counts = [int(scored[len(windows) * r // world : len(windows) * (r + 1) // world].sum()) for r in range(world)]
    return gather_concat(local.to(model_device(model)), counts).cpu()


def sequences(first: int, last: int, length: int) -> list[tuple[int, int]]:
    """Non-overlapping training sequences over targets [first, last): input spans (a, a + length), full only.

    When the range is shorter than `length`, one sequence covers all of it.
    """
    n = last - first
    if n <= 0:
        return []
    length = min(length, n)
    return [(first + i * length, first + (i + 1) * length) for i in range(n // length)]


def batches(items: list, size: int) -> list[list]:
    """Consecutive groups of `size` items (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []


def n_chunks(n_targets: int, chunk: int) -> int:
    return max(1, math.ceil(n_targets / chunk))
