"""Embedding-side techniques: BigramHash, SmearGate (per-dim and content-gated) and value embeddings.

All of them read document boundaries from the BOS token inside input_ids and never pull information from
before a BOS: a document's representation does not depend on the document before it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Linear, scalar_param, tag

# h_t = ((36313 * id_t) XOR (27191 * id_{t-1})) mod (B - 1); bucket B - 1 is reserved for "no previous token".
_HASH_CUR, _HASH_PREV = 36313, 27191


def bigram_buckets(ids: Tensor, buckets: int, bos_id: int) -> Tensor:
    """Hash bucket of each (previous, current) pair; the row start and every BOS get the reserved bucket."""
    ids = ids.long()
    hashed = torch.bitwise_xor(_HASH_CUR * ids[:, 1:], _HASH_PREV * ids[:, :-1]) % (buckets - 1)
    hashed = torch.where(ids[:, 1:] == bos_id, buckets - 1, hashed)
    first = torch.full_like(ids[:, :1], buckets - 1)
    return torch.cat((first, hashed), dim=1)


class BigramHash(nn.Module):
    """scale * P(E_b[h_t]): a hashed embedding of the (previous, current) token pair, added to tok_emb."""

    def __init__(self, buckets: int, dim: int, model_dim: int, scale_init: float, bos_id: int):
        super().__init__()
        self.buckets, self.bos_id = buckets, bos_id
        self.table = tag(nn.Parameter(torch.zeros(buckets, dim)), "embed", "table")
        self.proj = Linear(dim, model_dim, "proj", "other")
        self.scale = scalar_param(torch.tensor(scale_init))

    def forward(self, ids: Tensor, prev_id: Tensor | None = None) -> Tensor:
        """prev_id (B, 1): the token before ids[:, 0] (incremental decoding), None = ids start the row."""
        buckets = (bigram_buckets(ids, self.buckets, self.bos_id) if prev_id is None
                   else bigram_buckets(torch.cat((prev_id, ids), 1), self.buckets, self.bos_id)[:, 1:])
        return self.scale * self.proj(self.table[buckets])


class SmearGate(nn.Module):
    """Blend each position with the previous one through a learned per-dim gate s = sigmoid(g), g init 0.

    pre_norm (#206):  e_t <- s * e_t + (1 - s) * e_{t-1}, applied to tok_emb; no predecessor -> e_t itself.
    post_norm (#162): x_t <- (1 - s) * x_t + s * x_{t-1}, applied after the norm; no predecessor -> 0.
    A position has no predecessor at the row start and at every BOS (never blend across documents).
    """

    def __init__(self, dim: int, variant: str, bos_id: int):
        super().__init__()
        self.variant, self.bos_id = variant, bos_id
        self.gate = scalar_param(torch.zeros(dim))

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        s = torch.sigmoid(self.gate).to(x.dtype)
        no_prev = x if self.variant == "pre_norm" else torch.zeros_like(x)
        prev = torch.cat((no_prev[:, :1], x[:, :-1]), dim=1)
        prev = torch.where((ids == self.bos_id)[..., None], no_prev, prev)
        if self.variant == "pre_norm":
            return s * x + (1 - s) * prev
        return (1 - s) * x + s * prev


class ContentSmearGate(nn.Module):
    """#1855's content-gated, BOS-fixed SmearGate on the raw embedding (before the first norm):

        e_t <- e_t + lam * sigmoid(w . e_t[:W]) * e_{t-1} * [id_t != BOS]   (t >= 1; e_0 is kept)

    The gate reads the current token's first W dims. w (1, W) and lam (1,) start at zero, so a fresh gate is the
    identity (and w learns only once lam != 0). The BOS factor is #1855's fix of #1667, whose unmasked form let a
    document's first token read the previous document's last one.
    """

    variant = "content_gate"

    def __init__(self, window: int, bos_id: int):
        super().__init__()
        self.window, self.bos_id = window, bos_id
        self.weight = scalar_param(torch.zeros(1, window))
        self.lam = scalar_param(torch.zeros(1))

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        gate = self.lam.to(x.dtype) * torch.sigmoid(x[:, 1:, : self.window] @ self.weight.to(x.dtype).T)  # (B, T-1, 1)
        keep_prev = (ids[:, 1:] != self.bos_id).to(x.dtype)[..., None]
        return torch.cat((x[:, :1], x[:, 1:] + gate * x[:, :-1] * keep_prev), dim=1)


class ValueEmbedding(nn.Module):
    """One shared table projected to the KV width: scale * P_ve(E_ve[ids]), added to V on chosen layers."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int):
        super().__init__()
        self.table = tag(nn.Parameter(torch.empty(vocab_size, dim)), "embed", "table")
        self.proj = Linear(dim, kv_dim, "proj", "other")
        self.scale = scalar_param(torch.tensor(0.1))
        nn.init.normal_(self.table, std=0.01)

    def forward(self, ids: Tensor) -> Tensor:
        return self.scale * self.proj(self.table[ids])
