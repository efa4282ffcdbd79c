"""Process-level setup: torchrun/torch.distributed, device, seeding, and the collectives the trainer uses.

Two timeouts. Collectives of the training steps run in the default process group under
PGOLF_COLLECTIVE_TIMEOUT_S (short: a rank that died or hung is noticed quickly). Waits for work that only rank 0
does (preparing the corpus, packing and compressing the artifact, writing run files) run in a second, gloo
group under PGOLF_RANK0_PHASE_TIMEOUT_S (long), so the other ranks never give up on a rank 0 that is simply busy.
Under NCCL the waiting ranks then have no NCCL work outstanding, so NCCL's watchdog has nothing to abort.
"""

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
# Ranks waiting for a rank-0-only phase (corpus preparation, GPTQ packing + brotli-11 / `auto` compression, run
# files) give up after this long.
RANK0_PHASE_TIMEOUT_S = float(os.environ.get("PGOLF_RANK0_PHASE_TIMEOUT_S", "1800"))
_rank0_phase_group: dist.ProcessGroup | None = None


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
    global _rank0_phase_group
    if world > 1 and _rank0_phase_group is None:  # every rank creates it at the same point (a collective call)
        _rank0_phase_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=RANK0_PHASE_TIMEOUT_S))
    return Runtime(rank, world, local_rank, dev)


def shutdown_runtime() -> None:
    global _rank0_phase_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _rank0_phase_group = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _group(after_rank0_phase: bool):
    return _rank0_phase_group if after_rank0_phase and _rank0_phase_group is not None else None


def barrier(after_rank0_phase: bool = False) -> None:
    """Wait for every rank; `after_rank0_phase`: the others wait up to PGOLF_RANK0_PHASE_TIMEOUT_S for rank 0."""
    if _distributed():
        dist.barrier(group=_group(after_rank0_phase))


def broadcast_object(obj, src: int = 0, after_rank0_phase: bool = False):
    """`obj` of rank `src` on every rank (`after_rank0_phase`: the receivers wait the long timeout)."""
    if not _distributed():
        return obj
    box = [obj]
    group = _group(after_rank0_phase)
    dist.broadcast_object_list(box, src=src, group=group, device=torch.device("cpu") if group is not None else None)
    return box[0]


def gather_objects(obj, after_rank0_phase: bool = True) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a long wait by default: for work split across ranks)."""
    if not _distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_group(after_rank0_phase))
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if not _distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_rank_flags(flags: torch.Tensor) -> list[bool]:
    """Elementwise: flag i is true on every rank if it is true on any rank. One all-reduce of a small device
    tensor and one read to the host: the trainer's only collective per step besides the gradients' and Muon's."""
    if _distributed():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(v) for v in flags.tolist()]


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished the work queued so far (CUDA); on a CPU the work is already done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        torch.cpu.synchronize()


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
            f"failed or waited past PGOLF_COLLECTIVE_TIMEOUT_S = {COLLECTIVE_TIMEOUT_S:g} s (or, waiting for rank 0's "
            f"own work, PGOLF_RANK0_PHASE_TIMEOUT_S = {RANK0_PHASE_TIMEOUT_S:g} s), so another rank probably "
            f"died or hung (see its output); checkpoints already written are intact. ({detail})")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
