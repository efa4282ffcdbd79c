"""Resumable full-precision checkpoints: safetensors for tensors, JSON for everything else. No pickle.

<run>/checkpoint/
    model.safetensors            parameters (rank 0)
    averaging.safetensors        EMA shadow / SWA sums (rank 0), when averaging is on
    optim.rank{r}.safetensors    optimizer tensors of rank r (Muon state is sharded by rank)
    optim.rank{r}.json           optimizer scalars and param groups of rank r
    state.json                   step, elapsed time, loader position, RNG, averaging counters, file checksums
A new checkpoint is written to checkpoint.new/ and swapped in only when complete, so a failed write
(full disk, read-only folder) leaves the previous one intact. A resume checks every file's sha256, so a
damaged checkpoint is an error naming the file, never a silently different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .runs import LogWriter
from .runtime import any_rank, barrier

CHECKPOINT = "checkpoint"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from (damaged, incomplete, or written by another world size)."""


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
    try:
        save_file(opt_tensors, staging / f"optim.rank{rank}.safetensors")
        opt_meta["sha256"] = _sha256(staging / f"optim.rank{rank}.safetensors")
        _write_synced(staging / f"optim.rank{rank}.json", json.dumps(opt_meta))
        if rank == 0:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, staging / "model.safetensors")
            if averaging_tensors:
                save_file({k: v.cpu().contiguous() for k, v in averaging_tensors.items()}, staging / "averaging.safetensors")
            # state.json is written last and records the other files' checksums: a resume checks them
            hashes = {p.name: _sha256(p) for p in sorted(staging.glob("*.safetensors")) if not p.name.startswith("optim.")}
            _write_synced(staging / "state.json", json.dumps({**state, "sha256": hashes}, indent=1))
    except OSError as exc:
        raise _write_failed(run_dir, staging, exc) from exc
    barrier()
    if rank == 0:
        try:
            _swap_in(run_dir, staging, final)
        except OSError as exc:
            raise _write_failed(run_dir, staging, exc) from exc
    barrier()
    return final


def _swap_in(run_dir: Path, staging: Path, final: Path) -> None:
    """checkpoint -> checkpoint.old, checkpoint.new -> checkpoint; at every instant one complete checkpoint exists."""
    old = run_dir / (CHECKPOINT + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    try:
        staging.rename(final)
    except OSError:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_failed(run_dir: Path, staging: Path, exc: OSError) -> OSError:
    """Remove the incomplete checkpoint.new; the error says which checkpoint is still there."""
    shutil.rmtree(staging, ignore_errors=True)
    kept = checkpoint_dir(run_dir)
    what = f"the previous checkpoint {kept} (step {checkpoint_step(kept)}) is intact" if kept else "there is no earlier checkpoint"
    message = f"could not write a checkpoint in {run_dir}: {exc.strerror or exc}; {what}"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_dir(run_dir: Path) -> Path | None:
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        folder = run_dir / name
        if (folder / "state.json").is_file():
            return folder
    return None


def checkpoint_step(folder: Path) -> int | str:
    """The step a checkpoint folder holds, for messages ('?' when its state.json is unreadable)."""
    try:
        return int(json.loads((folder / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def load_checkpoint(run_dir: Path, *, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    rank: int = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model and optimizers in place; returns (state.json, averaging tensors)."""
    folder = checkpoint_dir(run_dir)
    if folder is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from (it is written on SIGINT/SIGTERM "
                                f"or every train.checkpoint_every steps)")
    try:
        state = json.loads((folder / "state.json").read_text())
        opt_meta = json.loads((folder / f"optim.rank{rank}.json").read_text())
        expected = {**state.get("sha256", {}), f"optim.rank{rank}.safetensors": opt_meta.pop("sha256", None)}
        for name, digest in expected.items():
            if digest is not None and _sha256(folder / name) != digest:
                raise CheckpointError(f"{folder / name}: checksum mismatch; this checkpoint file is damaged")
        if state["world_size"] != (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1):
            raise CheckpointError(f"{folder}: written by {state['world_size']} processes; resume with the same number")
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in load_file(folder / "model.safetensors").items()})
        opt_tensors = load_file(folder / f"optim.rank{rank}.safetensors")
        for name, opt in optimizers.items():
            prefix = f"{name}/"
            mine = {k[len(prefix):]: v for k, v in opt_tensors.items() if k.startswith(prefix)}  # load_state_dict places them
            _restore_optimizer(opt, mine, opt_meta[name])
        avg_file = folder / "averaging.safetensors"
        averaging = {k: v.to(device) for k, v in load_file(avg_file).items()} if avg_file.is_file() else {}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{folder}: checkpoint is incomplete or damaged ({type(exc).__name__}: {exc})") from exc
    return state, averaging


def remove_checkpoint(run_dir: Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT + ".old", CHECKPOINT + ".new"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


# ----------------------------------------------------------------------------- the training loop's use of them
# (here, not in loop.py: a train_gpt.py never resumes, and carries this module only when its config writes
# checkpoints)

def resume_dir(out_dir: str | Path | None) -> Path:
    """The run folder `pgolf train --resume` continues."""
    if out_dir is None or not Path(out_dir).is_dir():
        raise FileNotFoundError(f"{out_dir}: run folder to resume not found")
    return Path(out_dir)


def resume(run_dir: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], loader: Any,
           averager: Any, clock: Any, rank: int, is_main: bool) -> int:
    """Restore model, optimizers, loader, averaging, looping, RNG and the clock from the run's checkpoint, and
    (on the main rank) drop the log.jsonl lines past its step; returns the step to continue from."""
    state, avg_tensors = load_checkpoint(run_dir, model=model, optimizers=optimizers, rank=rank)
    clock.counted_s = state["elapsed_s"]
    loader.load_state_dict(state["loader"])
    averager.load_state_tensors(avg_tensors, state["swa_count"])
    model.set_looping(state["looping"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    if is_main:
        LogWriter(run_dir / "log.jsonl", resume_step=state["step"])
    return state["step"]


def save_run(run_dir: Path, step: int, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
             averager: Any, loader: Any, clock: Any, world_size: int, rank: int,
             at_step_start: dict[str, Any] | None = None) -> None:
    """Checkpoint the run after `step` steps. `at_step_start`: the loader and RNG as the step in flight found
    them (it is not applied)."""
    now = at_step_start or {"loader": loader.state_dict(), "torch_rng": torch.get_rng_state()}
    state = {"step": step, "elapsed_s": clock.read(), "loader": now["loader"], "looping": model.looping,
             "swa_count": averager.swa_count, "world_size": world_size, "torch_rng": now["torch_rng"].tolist()}
    save_checkpoint(run_dir, model=model, optimizers=optimizers, averaging_tensors=averager.state_tensors(),
                    state=state, rank=rank)


def keep_last_good(run_dir: Path, model: torch.nn.Module, write_checkpoint: Any, head: str, step: int,
                   device: torch.device) -> str:
    """On a non-finite loss (`head` says so): checkpoint the weights if they are still finite (the bad update was
    not applied); if an earlier update already made them non-finite, keep the previous checkpoint rather than
    overwrite it. Returns the message."""
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not any_rank(not finite, device):
        try:
            write_checkpoint()
        except OSError as exc:
            return f"{head} The last good weights could not be saved: {exc}"
        return f"{head} The last good weights are in {run_dir / CHECKPOINT} (step {step})."
    kept = checkpoint_dir(run_dir)
    where = (f"the last good checkpoint, {kept} (step {checkpoint_step(kept)}), was kept" if kept
             else "there is no earlier checkpoint (train.checkpoint_every writes them)")
    return f"{head} The weights were already non-finite (an earlier update produced them), so they were not saved; {where}."
