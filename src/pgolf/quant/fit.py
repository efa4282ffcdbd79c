"""`quant.fit`: bring an artifact that comes out over the byte limit under it, at the least reconstruction cost.

Selective ±1 pruning (#609, used by the #1019 stack): every integer code q = ±1 is a candidate; zeroing it
raises its tensor's squared reconstruction error by
    cost = w^2 - (w - q s)^2          (w the full-precision weight, s its row scale)
Candidates are zeroed cheapest first. How many is decided with the real compressor, never a model of it: the
payload with the n cheapest pruned is compressed and compared with the budget. n is searched between 0 (over
the budget) and a first count that fits (n = candidates/64, x4 until it fits; if even every candidate pruned
does not fit, the fit fails), by interpolating the measured sizes (regula falsi, kept 1/16 of the bracket away
from its ends), until the smallest fitting n is known within 1 % or the time given runs out; the smallest
fitting n measured is used. Off by default; the time it takes counts against the training cap
(quant.fit_reserve_s).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from .container import encode_payload
from .layout import QuantizedTensor, encode_tensors, serialize


@dataclass
class FitReport:
    """What the fit did. `restore(model)` puts the pruned codes back, to measure what the fit cost."""
    needed: bool
    ok: bool
    message: str
    pruned: int = 0
    pruned_over: int = 0  # the largest count measured still over the budget: the least fitting count is above it
    candidates: int = 0
    payload_bytes_before: int = 0
    payload_bytes_after: int = 0
    max_payload_bytes: int = 0
    compressions: int = 0
    seconds: float = 0.0
    added_squared_error: float = 0.0
    undo: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "undo"}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> nn.Module:
        """Set every pruned weight of `model` (the one loaded from the fitted artifact) back to q * s."""
        params = dict(model.named_parameters())
        for name, flat, values in self.undo:
            p = params[name]
            p.view(-1)[torch.from_numpy(flat).to(p.device)] = torch.from_numpy(values).to(p.device, p.dtype)
        return model


class _Candidates:
    """Every ±1 code of the int tensors, sorted by the cost of zeroing it."""

    def __init__(self, tensors: list[QuantizedTensor], weights: dict[str, Tensor]):
        tensor_ids, flats, costs, values = [], [], [], []
        for i, t in enumerate(tensors):
            if t.codes is None:
                continue
            codes = t.codes.reshape(-1)
            flat = np.flatnonzero(np.abs(codes) == 1)
            if flat.size == 0:
                continue
            q = codes[flat].astype(np.float32)
            s = t.scales.astype(np.float32)[flat // t.codes.shape[1]]
            w = weights[t.layout.name].detach().float().reshape(-1).cpu().numpy()[flat]
            tensor_ids.append(np.full(flat.size, i, dtype=np.int32))
            flats.append(flat)
            costs.append(w * w - (w - q * s) ** 2)
            values.append(q * s)
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        cost = cat(costs, np.float32)
        order = np.argsort(cost, kind="stable")
        self.tensor_ids = cat(tensor_ids, np.int32)[order]
        self.flats = cat(flats, np.int64)[order]
        self.values = cat(values, np.float32)[order]
        self.cumulative_cost = np.cumsum(cost[order], dtype=np.float64)
        self.count = int(order.size)

    def _by_tensor(self, n: int) -> list[tuple[int, np.ndarray]]:
        """(tensor index, positions of the n cheapest candidates in it) for every tensor they touch."""
        ids = self.tensor_ids[:n]
        perm = np.argsort(ids, kind="stable")
        sorted_ids = ids[perm]
        present, starts = np.unique(sorted_ids, return_index=True)
        ends = np.append(starts[1:], n)
        return [(int(i), perm[a:b]) for i, a, b in zip(present, starts, ends)]

    def pruned(self, tensors: list[QuantizedTensor], n: int) -> list[QuantizedTensor]:
        """Copies of the tensors with the n cheapest candidates zeroed (untouched tensors are shared)."""
        out = list(tensors)
        for i, picks in self._by_tensor(n):
            t = tensors[i]
            codes = t.codes.copy()
            codes.reshape(-1)[self.flats[picks]] = 0
            out[i] = replace(t, codes=codes)  # scales and any LQER factors unchanged
        return out

    def undo(self, tensors: list[QuantizedTensor], n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
        return [(tensors[i].layout.name, self.flats[picks], self.values[picks]) for i, picks in self._by_tensor(n)]


def fit_to_budget(tensors: list[QuantizedTensor], weights: dict[str, Tensor], payload: bytes, compressor: str,
                  cfg: Config, max_payload: int, deadline: float) -> tuple[list[QuantizedTensor], bytes, FitReport]:
    """(tensors, payload, report): the least pruning whose compressed payload is at most `max_payload` bytes,
    searched until time.perf_counter() passes `deadline`. A fit that cannot succeed returns the tensors and
    payload unchanged with report.ok False and the reason in report.message."""
    start = time.perf_counter()
    before = len(payload)
    if before <= max_payload:
        return tensors, payload, FitReport(False, True, f"already fits: payload {before:,} <= {max_payload:,} bytes",
                                           payload_bytes_before=before, payload_bytes_after=before,
                                           max_payload_bytes=max_payload)
    cands = _Candidates(tensors, weights)
    sizes = {0: before}

    def encode(trial: list[QuantizedTensor]) -> bytes:  # with the compressor the payload used ('auto' chose it)
        if cfg.quant.compressor == "pergroup":
            return encode_tensors(trial, cfg)[0]
        return encode_payload(serialize(trial), compressor, cfg.quant.byte_shuffle)[0]
    best: dict[str, Any] = {}  # the smallest fitting count measured and its payload

    def size(n: int) -> int:
        if n not in sizes:
            trial = encode(cands.pruned(tensors, n))
            sizes[n] = len(trial)
            if sizes[n] <= max_payload and n < best.get("n", cands.count + 1):
                best.update(n=n, payload=trial)
        return sizes[n]

    def report(ok: bool, message: str, n: int = 0) -> FitReport:
        over = max((m for m, size_m in sizes.items() if size_m > max_payload and (not ok or m < n)), default=0)
        return FitReport(True, ok, message, pruned=n, pruned_over=over, candidates=cands.count, payload_bytes_before=before,
                         payload_bytes_after=size(n) if ok else before, max_payload_bytes=max_payload,
                         compressions=len(sizes) - 1, seconds=time.perf_counter() - start,
                         added_squared_error=float(cands.cumulative_cost[n - 1]) if n else 0.0,
                         undo=cands.undo(tensors, n) if ok else [])

    if cands.count == 0:
        return tensors, payload, report(False, f"payload {before - max_payload:,} bytes over and no ±1 codes to prune")
    lo, hi = 0, max(1, cands.count // 64)
    while size(hi) > max_payload:  # grow until a count fits
        if hi == cands.count:
            return tensors, payload, report(False, f"even pruning all {cands.count:,} ±1 codes leaves the payload "
                                                   f"{size(hi) - max_payload:,} bytes over its {max_payload:,}-byte budget")
        if time.perf_counter() > deadline:
            return tensors, payload, report(False, f"time ran out (quant.fit_reserve_s) before a fitting count was "
                                                   f"found; pruning {hi:,} of {cands.count:,} still leaves "
                                                   f"{size(hi) - max_payload:,} bytes over")
        lo, hi = hi, min(cands.count, 4 * hi)
    while hi - lo > max(1, hi // 100) and time.perf_counter() < deadline:
        # where the line through the measured (lo, size) and (hi, size) meets the budget, not too near an end
        s_lo, s_hi = size(lo), size(hi)
        guess = lo + (s_lo - max_payload) * (hi - lo) / max(s_lo - s_hi, 1)
        margin = max(1, (hi - lo) // 16)
        n = int(min(max(round(guess), lo + margin), hi - margin))
        if size(n) <= max_payload:
            hi = n
        else:
            lo = n
    n = best["n"]  # == hi unless the sizes were not monotonic in n
    done = report(True, f"pruned {n:,} of {cands.count:,} ±1 codes: payload {before:,} -> {size(n):,} bytes "
                        f"(budget {max_payload:,})", n)
    return cands.pruned(tensors, n), best["payload"], done
