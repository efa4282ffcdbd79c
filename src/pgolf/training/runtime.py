"""Process-level setup: torchrun/torch.distributed, device, seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# A rank that dies leaves its peers waiting in a collective; they give up after this long.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("PGOLF_COLLECTIVE_TIMEOUT_S", "120"))


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str | None = None) -> Runtime:
    """Read torchrun's environment; NCCL on GPUs, gloo on CPU. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return Runtime(rank, world, local_rank, dev)


def shutdown_runtime() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


_LOST_PEER_MARKERS = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "Timed out", "timed out")


def collective_failure(exc: BaseException) -> str | None:
    """A one-line explanation when `exc` means another rank died or hung during a collective, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc).strip()
    if not isinstance(exc, dist.DistError) and not any(m in text for m in _LOST_PEER_MARKERS):
        return None
    detail = text.splitlines()[0] if text else type(exc).__name__
    return (f"rank {dist.get_rank()} of {dist.get_world_size()} lost contact with the other processes: a collective "
            f"failed or waited past PGOLF_COLLECTIVE_TIMEOUT_S = {COLLECTIVE_TIMEOUT_S:g} s, so another rank probably "
            f"died or hung (see its output); checkpoints already written are intact. ({detail})")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
