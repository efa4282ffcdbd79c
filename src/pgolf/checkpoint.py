"""Resumable full-precision checkpoints: safetensors for tensors, JSON for everything else. No pickle.

<run>/checkpoint/
    model.safetensors            parameters (rank 0)
    averaging.safetensors        EMA shadow / SWA sums (rank 0), when averaging is on
    optim.rank{r}.safetensors    optimizer tensors of rank r (Muon state is sharded by rank)
    optim.rank{r}.json           optimizer scalars and param groups of rank r
    state.json                   step, elapsed time, loader position, RNG, averaging counters
A new checkpoint is written to checkpoint.new/ and swapped in only when complete, so a failed write
(full disk, read-only folder) leaves the previous one intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .runtime import barrier

CHECKPOINT = "checkpoint"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, *, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    averaging_tensors: dict[str, torch.Tensor], state: dict[str, Any], rank: int = 0) -> Path:
    """Every rank calls this; rank 0 writes the shared files, each rank its optimizer shard."""
    final = run_dir / CHECKPOINT
    staging = run_dir / (CHECKPOINT + ".new")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        tensors, meta = _flatten_optimizer(opt)
        opt_tensors.update({f"{name}/{k}": v for k, v in tensors.items()})
        opt_meta[name] = meta
    save_file(opt_tensors, staging / f"optim.rank{rank}.safetensors")
    (staging / f"optim.rank{rank}.json").write_text(json.dumps(opt_meta))
    if rank == 0:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, staging / "model.safetensors")
        if averaging_tensors:
            save_file({k: v.cpu().contiguous() for k, v in averaging_tensors.items()}, staging / "averaging.safetensors")
        (staging / "state.json").write_text(json.dumps(state, indent=1))
    barrier()
    if rank == 0:
        old = run_dir / (CHECKPOINT + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def checkpoint_dir(run_dir: Path) -> Path | None:
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        folder = run_dir / name
        if (folder / "state.json").is_file():
            return folder
    return None


def load_checkpoint(run_dir: Path, *, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    rank: int = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model and optimizers in place; returns (state.json, averaging tensors)."""
    folder = checkpoint_dir(run_dir)
    if folder is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from (it is written on SIGINT/SIGTERM "
                                f"or every train.checkpoint_every steps)")
    state = json.loads((folder / "state.json").read_text())
    if state["world_size"] != (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1):
        raise ValueError(f"{folder}: written by {state['world_size']} processes; resume with the same number")
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in load_file(folder / "model.safetensors").items()})
    opt_tensors = load_file(folder / f"optim.rank{rank}.safetensors")
    opt_meta = json.loads((folder / f"optim.rank{rank}.json").read_text())
    for name, opt in optimizers.items():
        prefix = f"{name}/"
        mine = {k[len(prefix):]: v for k, v in opt_tensors.items() if k.startswith(prefix)}  # load_state_dict places them
        _restore_optimizer(opt, mine, opt_meta[name])
    avg_file = folder / "averaging.safetensors"
    averaging = {k: v.to(device) for k, v in load_file(avg_file).items()} if avg_file.is_file() else {}
    return state, averaging


def remove_checkpoint(run_dir: Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT + ".old", CHECKPOINT + ".new"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
