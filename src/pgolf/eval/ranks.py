"""How evaluation work is split over torchrun ranks: this process's rank, and gathering every rank's scores."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_concat(local: Tensor, counts: list[int]) -> Tensor:
    """Concatenate each rank's 1-D tensor (of known lengths) on every rank."""
    rank, world = rank_world()
    if world == 1:
        return local
    padded = torch.zeros(max(counts), dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])
