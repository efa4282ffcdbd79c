"""Batched per-document LoRA adapters attached to a GPT by forward hooks (no change to the model's code).

Targets: q, k, v (on attn.c_q / c_k / c_v: input = the normed attention input), o (on the attention module:
input = the normed attention input, delta added to the attention output), mlp (on the MLP module: input = the
normed MLP input, delta added to its output) and head (GPT.head_adapter: delta added to the logits before the
softcap). Each virtual-layer slot has its own adapter and each row of the batch (one document) its own A and B:
delta = (x A_slot,row) B_slot,row * s, A (in x r) ~ U(+-1/sqrt(in)), B (r x out) = 0, so a fresh adapter is a no-op;
s = alpha / r (#1767's scaling, eval.ttt_lora_alpha) or 1 when alpha is 0. A is drawn once from a seeded generator
and every document (row) starts from that same draw, so a document's scores depend on its own tokens only — not on
its batch, its row, or the global random state. Warm start (eval.ttt_lora_warm_start_a) instead starts a row from
the A an earlier document of the same batch slot ended with (`a_rows` / `load_a`); B always starts at 0.

A physical block that runs at several virtual positions fires its hooks once per run; a per-module call counter,
reset before every forward (`reset`), says which occurrence — hence which slot — is running.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..config import LORA_TARGETS as TARGETS


def _hooked_module(block: nn.Module, target: str) -> nn.Module:
    return {"q": lambda: block.attn.c_q, "k": lambda: block.attn.c_k, "v": lambda: block.attn.c_v,
            "o": lambda: block.attn, "mlp": lambda: block.mlp}[target]()


def _dims(model: nn.Module, target: str) -> tuple[int, int]:
    """(in, out) features of the adapter on `target`."""
    attn = model.blocks[0].attn
    d = attn.c_q.weight.shape[1]
    if target in ("q", "k", "v"):
        out, inp = getattr(attn, f"c_{target}").weight.shape
        return inp, out
    if target == "head":
        weight = model.tok_emb if model.lm_head is None else model.lm_head.weight
        return d, weight.shape[0]
    return d, d  # o and mlp map the block's (normed) input to its output, both model_dim wide


class BatchedLoRA(nn.Module):
    """Fresh LoRA adapters for `n_docs` documents on every virtual-layer slot of `model`'s active schedule."""

    def __init__(self, model: nn.Module, targets: list[str], rank: int, n_docs: int, seed: int = 0,
                 alpha: float = 0.0):
        super().__init__()
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"eval.ttt_lora_targets: unknown target {unknown[0]!r}; choose from {list(TARGETS)}")
        if rank <= 0:
            raise ValueError(f"eval.ttt_lora_rank must be positive, got {rank}")
        if alpha < 0:
            raise ValueError(f"eval.ttt_lora_alpha must be >= 0, got {alpha}")
        self.model = [model]  # a list, so the base model is not registered as a submodule
        self.n_docs = n_docs
        self.scale = alpha / rank if alpha > 0 else 1.0  # delta = (x A) B * alpha / r
        self.schedule = list(model.active_schedule)
        self.slots_of_block = {b: [pos for pos, p in enumerate(self.schedule) if p == b] for b in set(self.schedule)}
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)  # same A draw for every document; global RNG untouched
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        self._a_draw: dict[str, Tensor] = {}  # the one (slots, 1, in, r) draw every document starts from
        for target in dict.fromkeys(targets):
            inp, out = _dims(model, target)
            slots = () if target == "head" else (len(self.schedule),)
            bound = 1.0 / math.sqrt(inp)
            a = (torch.rand(*slots, 1, inp, rank, generator=generator) * 2 - 1) * bound  # U(-1/sqrt(in), 1/sqrt(in))
            self._a_draw[target] = a.to(device)
            # a copy, never a view: with n_docs = 1 the expand is already contiguous, and A would share the draw's
            # storage (training A would move the draw every later document is reset to)
            self.a[target] = nn.Parameter(self._a_draw[target].expand(*slots, n_docs, inp, rank).clone(
                memory_format=torch.contiguous_format))
            self.b[target] = nn.Parameter(torch.zeros(*slots, n_docs, rank, out, device=device))
        self.calls: dict[int, int] = {}     # hook -> occurrences run in this forward
        self.expected: dict[int, int] = {}  # hook -> occurrences per forward (the block's slots)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh adapters for a new batch of documents: A back to the seeded draw, B = 0 (in place, so a compiled
        forward keeps seeing the same parameters)."""
        for target in self.a:
            self.a[target].copy_(self._a_draw[target].expand_as(self.a[target]))
            self.b[target].zero_()

    def reset(self) -> None:
        """Start a forward: every hooked module is back at its first virtual occurrence."""
        for key in self.calls:
            self.calls[key] = 0

    def _delta(self, target: str, slot: int | None, x: Tensor) -> Tensor:
        n = x.size(0)  # the batch holds the first n documents (the rest have finished)
        a = self.a[target][:n] if slot is None else self.a[target][slot, :n]
        b = self.b[target][:n] if slot is None else self.b[target][slot, :n]
        delta = (x @ a.to(x.dtype)) @ b.to(x.dtype)  # (n, T, in) @ (n, in, r) @ (n, r, out)
        return delta * self.scale if self.scale != 1.0 else delta

    @torch.no_grad()
    def a_rows(self, rows: list[int]) -> dict[str, Tensor]:
        """Copies of A for the given rows (documents), every target and slot: what a warm start carries on."""
        return {t: a[..., rows, :, :].clone() for t, a in self.a.items()}

    @torch.no_grad()
    def load_a(self, a_rows: dict[str, Tensor]) -> None:
        """Set the first rows' A from `a_rows` (as a_rows returns it, one entry per document of this batch; the
        rest, padding rows, keep theirs)."""
        for t, a in self.a.items():
            a[..., : a_rows[t].size(-3), :, :].copy_(a_rows[t])

    def _hook(self, target: str, block_index: int):
        slots = self.slots_of_block[block_index]
        key = len(self.calls)
        self.calls[key] = 0
        self.expected[key] = len(slots)

        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            occurrence = self.calls[key]
            if occurrence >= len(slots):
                raise RuntimeError(f"LoRA TTT: block {block_index} ran more often than the schedule says; "
                                   "call reset() before each forward")
            self.calls[key] = occurrence + 1
            return output + self._delta(target, slots[occurrence], args[0])

        return hook

    @contextmanager
    def attached(self) -> Iterator["BatchedLoRA"]:
        """Hooks on the model's modules (and its head_adapter) for the duration of the block."""
        model = self.model[0]
        handles = []
        try:
            for target in self.a:
                if target == "head":
                    model.head_adapter = lambda h: self._delta("head", None, h)
                    continue
                for b in self.slots_of_block:
                    module = _hooked_module(model.blocks[b], target)
                    handles.append(module.register_forward_hook(self._hook(target, b)))
            self.reset()
            yield self
        finally:
            for handle in handles:
                handle.remove()
            model.head_adapter = None
            self.calls, self.expected = {}, {}

    def check_complete(self) -> None:
        """After a forward: every hooked module ran at every one of its slots."""
        short = [k for k, n in self.calls.items() if n != self.expected[k]]
        if short:
            raise RuntimeError("LoRA TTT: a hooked module ran fewer times than its virtual slots "
                               "(the model bypasses the hooks)")
