"""Helpers shared by the lockstep runners of the parameter-bank records (#1573, #1536).

Both records stack their attention and MLP matrices into four banks (qo, kv, mlp_up, mlp_down): bank[i] is
physical layer i's Q (K, MLP up, MLP down), bank[n + i] its output projection (V). pgolf keeps one Linear per
matrix (BANK_ROWS names which pgolf matrix each bank row holds).

The records' files import FlashAttention-3 at the top; on a CPU `fa3_stub` stands in for `flash_attn_interface`
(SDPA, causal, GQA; varlen per cu_seqlens segment). `load_shimmed` executes a record's file with exact text
shims, each checked to occur the stated number of times, so a shim that no longer matches stops the run.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

BANK_ROWS = {"qo_bank": ("attn.c_q.weight", "attn.proj.weight"), "kv_bank": ("attn.c_k.weight", "attn.c_v.weight"),
             "mlp_up_bank": ("mlp.fc.weight",), "mlp_down_bank": ("mlp.proj.weight",)}


def _sdpa_bthd(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of (B, T, H, hd) tensors, GQA by k/v's head count, returned as (B, T, H, hd)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=q.size(2) != k.size(2))
    return out.transpose(1, 2)


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, **_) -> Tensor:
    if not causal:
        raise NotImplementedError("the FA3 stand-in is causal only")
    return _sdpa_bthd(q, k, v)


def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int,
                           causal: bool = True, **_) -> Tensor:
    """(N, H, hd) packed tensors, causal attention inside each [cu[i], cu[i+1]) segment (SDPA per segment)."""
    if not causal or not torch.equal(cu_q, cu_k):
        raise NotImplementedError("the FA3 varlen stand-in is causal self-attention only")
    out = torch.empty_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            out[a:b] = _sdpa_bthd(q[None, a:b], k[None, a:b], v[None, a:b])[0]
    return out


def fa3_stub() -> types.ModuleType:
    stub = types.ModuleType("flash_attn_interface")
    stub.flash_attn_func = flash_attn_func
    stub.flash_attn_varlen_func = flash_attn_varlen_func
    return stub


def load_shimmed(path: str, shims: list[tuple[str, str, int]], name: str) -> types.ModuleType:
    """The record's file as a fresh module, each (old, new, count) text shim applied after checking that `old`
    occurs exactly `count` times; FlashAttention-3 replaced by `fa3_stub`."""
    source = Path(path).read_text()
    for old, new, count in shims:
        found = source.count(old)
        if found != count:
            raise SystemExit(f"{path}: shim expects {count} x {old.strip()!r}, found {found}")
        source = source.replace(old, new)
    sys.modules["flash_attn_interface"] = fa3_stub()
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


class PairedBatches:
    """The record's loader beside pgolf's over the same shards: `take` returns the record's batch, and `same`
    stays True while every batch equals pgolf's."""

    def __init__(self, record_loader, pgolf_loader):
        self.record, self.pgolf, self.same = record_loader, pgolf_loader, True

    def take(self, tokens: int, seq_len: int) -> tuple[Tensor, Tensor]:
        x, y = self.record.next_batch(tokens, seq_len, 1)
        ours = self.pgolf.next_batch(tokens, seq_len, 1)
        self.same = self.same and torch.equal(x, ours[0]) and torch.equal(y, ours[1])
        return x, y


def fill_banks(ours: dict[str, Tensor], theirs: dict[str, Tensor], corr: dict[str, tuple[str, int | None]],
               recipe: str, unused: tuple[str, ...] = ()) -> None:
    """Copy each pgolf tensor into its place among the record's (`corr`: pgolf name -> (record name, bank row or
    None)), in place, checking shapes and that every record tensor but `unused` is filled exactly once per row."""
    filled = {k: 0 for k in theirs}
    for name, (their, row) in corr.items():
        target = theirs[their] if row is None else theirs[their][row]
        if target.shape != ours[name].shape:
            raise SystemExit(f"{recipe}: {their}[{row}] {tuple(target.shape)} vs pgolf {name} {tuple(ours[name].shape)}")
        target.copy_(ours[name])
        filled[their] += 1
    for their, count in filled.items():
        rows = theirs[their].size(0) if their in BANK_ROWS else 1
        if their not in unused and count != rows:
            raise SystemExit(f"{recipe}: {their} filled {count} times, expected {rows}")
