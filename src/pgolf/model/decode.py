"""Incremental decoding with a KV cache: the GPT's next-token logits in O(T) work per token instead of a forward
over the whole prefix (#1019's self-generated GPTQ calibration, 64 x 2048 tokens, in seconds).

    cache = KVCache(model, batch=B, max_len=T)
    logits = decode(model, ids[:, :1], cache)        # any chunk length; later calls continue the sequence
    logits = decode(model, ids[:, 1:2], cache)

decode(model, chunk, cache) returns the logits the full forward gives at those positions of the whole sequence
(tests/test_decode.py checks it for every switch). What crosses tokens lives in the cache: the keys and values of
each virtual layer (a looped block has one slot per use, as its inputs differ), the RoPE offset, the last token
(BigramHash's previous id, SmearGate's previous embedding) and, with doc_attention, each key's document index.
Everything else of the model (XSA, value residual, value embeddings, gates, skips, lanes, LoRA) is per token.

Refused (ValueError naming the setting): model.rope_ntk_train_len > 0 with max_len above it (the full forward
rescales RoPE's base by the whole sequence length, so an earlier position's logits depend on later tokens), and a
layer schedule that changed (model.set_looping) after the cache was made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import compute_dtype


class KVCache:
    """Per-virtual-layer keys and values (B, Hkv, max_len, hd), preallocated, of the tokens decoded so far."""

    def __init__(self, model, batch: int, max_len: int):
        cfg = model.cfg
        if cfg.rope_ntk_train_len and max_len > cfg.rope_ntk_train_len:
            raise ValueError(f"KV-cache decoding of {max_len} tokens with model.rope_ntk_train_len = "
                             f"{cfg.rope_ntk_train_len}: beyond that length the full forward rescales RoPE by the "
                             f"whole sequence's length, which a cache cannot follow; decode at most "
                             f"{cfg.rope_ntk_train_len} tokens")
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch > 0 and max_len > 0, got {batch} and {max_len}")
        self.batch, self.max_len = batch, max_len
        self.schedule = list(model.active_schedule)
        self.length = 0
        self.keys: list[Tensor | None] = [None] * len(self.schedule)
        self.values: list[Tensor | None] = [None] * len(self.schedule)
        self.doc_ids: Tensor | None = None   # (B, max_len) document index of each cached position (doc_attention)
        self.prev_id: Tensor | None = None   # (B, 1) the last cached token
        self.smear_input: Tensor | None = None       # (B, 1, d) SmearGate's input at the last cached token
        self.next_smear_input: Tensor | None = None  # written by GPT.embed for the chunk being decoded
        self._n = 0

    def begin(self, model, ids: Tensor, doc_ids: Tensor | None) -> Tensor | None:
        """Start a chunk of ids (B, n): check it fits; returns its doc ids continued from the cache (or None)."""
        B, n = ids.shape
        if B != self.batch:
            raise ValueError(f"KVCache was made for batch {self.batch}, got ids of batch {B}")
        if self.length + n > self.max_len:
            raise ValueError(f"KVCache holds at most max_len = {self.max_len} tokens: {self.length} cached + {n} new")
        if list(model.active_schedule) != self.schedule:
            raise ValueError("the model's layer schedule changed (model.set_looping / model.recurrence_start_frac) "
                             "after the KVCache was made; make a new cache")
        self._n = n
        if doc_ids is None:
            return None
        if self.doc_ids is None:
            self.doc_ids = torch.zeros(B, self.max_len, dtype=doc_ids.dtype, device=ids.device)
        if self.length:
            doc_ids = doc_ids + self.doc_ids[:, self.length - 1 : self.length]
        self.doc_ids[:, self.length : self.length + n] = doc_ids
        return doc_ids

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention of the chunk's q (B, H, n, hd) over the cached keys and its own k, v (B, Hkv, n, hd)."""
        dtype = compute_dtype(v)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        start, n = self.length, q.size(2)
        end = start + n
        if self.keys[layer] is None:
            shape = (k.size(0), k.size(1), self.max_len, k.size(3))
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        keys, values = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        mask = None
        if n > 1 or self.doc_ids is not None:  # one new token without documents sees every cached key
            pos = torch.arange(end, device=q.device)
            mask = (pos[None, :] <= pos[start:, None])[None, None]                      # (1, 1, n, end) causal
            if self.doc_ids is not None:
                docs = self.doc_ids[:, :end]
                mask = mask & (docs[:, None, start:, None] == docs[:, None, None, :])  # (B, 1, n, end)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.size(1) != k.size(1))

    def commit(self, ids: Tensor) -> None:
        """The chunk is done: it becomes part of the cache."""
        self.length += self._n
        self.prev_id = ids[:, -1:]
        self.smear_input, self.next_smear_input = self.next_smear_input, None


@torch.no_grad()
def decode(model, ids: Tensor, cache: KVCache) -> Tensor:
    """float32 logits (B, n, vocab) of ids (B, n), the n tokens after the cached ones; extends the cache."""
    return model.logits(model.hidden(ids, cache=cache)).float()
