"""One trial-seed = one ordinary `pgolf train` run folder, trained in a child process.

The child is `python -m pgolf train --recipe R --scale S --seed N --out DIR --quiet --set k=v ...` (or any
`train_command` taking the same arguments: a torchrun line, a wrapper, a test's stand-in), so a crash or kill
of one run cannot take the sweep down. It dies with its worker (Linux: PR_SET_PDEATHSIG), so a killed sweep
leaves no orphan training on. Its output goes to `logs/<run>.log`. With pruning on, the worker reads the
run's `log.jsonl` while it trains and hands each intermediate validation loss to a callback, which may stop it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .spec import set_args

DEFAULT_TRAIN_COMMAND = (sys.executable, "-m", "pgolf", "train")
EXIT_USAGE, EXIT_DIVERGED, EXIT_OVER_LIMIT = 2, 3, 4
RECORD_KEYS = ("seed", "recipe", "val_loss", "val_bpb", "val_bpb_prequant", "artifact_bytes", "limit_bytes",
               "under_limit", "steps", "train_seconds", "eval_seconds", "tokens_per_second", "val_targets",
               "val_bytes", "val_tokens_limited", "eval_mode", "legal")
ENV_KEYS = ("val_sha256", "tokenizer_sha256")

# intermediate (step, val_loss, val_bpb) -> True to stop the run
Monitor = Callable[[int, float, float], bool]


class RunFailed(RuntimeError):
    """A training run ended without a result; `kind` is 'process' (died: retried), 'diverged' or 'config'."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class RunStopped(RuntimeError):
    """The monitor stopped the run (pruning)."""


@dataclass
class RunRequest:
    recipe: str
    scale: str
    seed: int
    overrides: dict[str, Any]
    run_dir: Path
    log_file: Path
    env: dict[str, str]


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: no parent-death signal; a killed sweep may leave its current run training
        return None


_PRCTL = _load_prctl()  # looked up once here: the child, between fork and exec, only calls it


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the thread that started me dies."""
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def command_line(train_command: tuple[str, ...] | list[str], req: RunRequest) -> list[str]:
    args = [*train_command, "--recipe", req.recipe, "--scale", req.scale, "--seed", str(req.seed),
            "--out", str(req.run_dir), "--quiet"]
    for item in set_args(req.overrides):
        args += ["--set", item]
    return args


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class _LogFollower:
    """New complete lines of a growing log.jsonl."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def run_training(train_command: tuple[str, ...] | list[str], req: RunRequest, monitor: Monitor | None = None,
                 poll_s: float = 0.5) -> dict[str, Any]:
    """Train one run in a child process; return its record (result.json figures + data checksums)."""
    req.run_dir.parent.mkdir(parents=True, exist_ok=True)
    req.log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **req.env}
    with open(req.log_file, "ab") as log:
        child = subprocess.Popen(command_line(train_command, req), stdout=log, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if _PRCTL else None)
        try:
            follower = _LogFollower(req.run_dir / "log.jsonl") if monitor else None
            while child.poll() is None:
                try:
                    child.wait(timeout=poll_s)  # returns as soon as the run ends
                except subprocess.TimeoutExpired:
                    pass
                if follower is None:
                    continue
                for rec in follower.records():
                    if "val_loss" in rec and "train_loss" not in rec and "averaging" not in rec and child.poll() is None:
                        if monitor(int(rec["step"]), float(rec["val_loss"]), float(rec["val_bpb"])):
                            _stop(child)
                            if (req.run_dir / "result.json").is_file():
                                # it finished before the stop landed (the log is read up to poll_s late): a
                                # finished run's result is kept, so a stopped trial is always one without a result
                                return record_of(req.run_dir)
                            raise RunStopped(f"stopped at step {rec['step']} (val_bpb {rec['val_bpb']:.4f})")
        except BaseException:
            if child.poll() is None:  # the worker is going down (Ctrl-C, an error): take the run with it
                _stop(child)
            raise
    return read_record(req, child.returncode)


def _stop(child: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (the run writes a checkpoint and exits), then SIGKILL if it does not."""
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def read_record(req: RunRequest, returncode: int) -> dict[str, Any]:
    result_file = req.run_dir / "result.json"
    if returncode in (0, EXIT_OVER_LIMIT) and result_file.is_file():
        return record_of(req.run_dir)
    detail = f"{req.run_dir.name}: exit status {returncode}" + (
        f" (signal {signal.Signals(-returncode).name})" if returncode < 0 else "")
    tail = _tail(req.log_file)
    message = f"{detail}; log {req.log_file}" + (f": {tail}" if tail else "")
    if returncode == EXIT_DIVERGED:
        raise RunFailed("diverged", message)
    if returncode == EXIT_USAGE:
        raise RunFailed("config", message)
    raise RunFailed("process", message)


def record_of(run_dir: Path) -> dict[str, Any]:
    """The figures of a finished run folder a sweep keeps in its study (enough to compare without the folder)."""
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    env_file = run_dir / "env.json"
    env = json.loads(env_file.read_text(encoding="utf-8")) if env_file.is_file() else {}
    record = {k: result.get(k) for k in RECORD_KEYS}
    record.update({k: env.get(k) for k in ENV_KEYS})
    return record
