"""The run folder: config.toml, env.json, log.jsonl, result.json (loss.png and the end-of-run summary:
pgolf.training.report, which a generated train_gpt.py does not carry)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..config import Config, config_to_toml
from ..data.atomic import atomic_write_text

RESULT_KEYS = (
    "recipe", "seed", "val_loss", "val_bpb", "val_bpb_prequant", "artifact_bytes", "code_bytes", "model_bytes",
    "under_limit", "steps", "train_tokens", "train_seconds", "eval_seconds", "tokens_per_second", "world_size",
    "device", "torch_version",
)


def new_run_dir(root: str | Path, recipe: str, seed: int) -> Path:
    """runs/<recipe>-<YYYYmmdd-HHMMSS>-s<seed>[-N], created empty."""
    root = Path(root)
    stem = f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}-s{seed}"
    for n in range(1000):
        path = root / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device, world_size: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "pgolf_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "world_size": world_size,
        "hostname": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **data,
    }


def save_config(cfg: Config, path: str | Path) -> None:
    """config.toml of a run folder: the fully resolved config, written atomically."""
    atomic_write_text(path, config_to_toml(cfg))


def device_memory(device: torch.device, prefix: str = "") -> dict[str, int]:
    """Peak bytes the caching allocator handed out (allocated) and held from the driver (reserved) since the last
    reset; {} off CUDA. Reserved is what an out-of-memory error is about."""
    if device.type != "cuda":
        return {}
    return {f"{prefix}peak_memory_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            f"{prefix}peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a failed write (full disk, read-only folder) leaves the previous file intact."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


class LogWriter:
    """Appends one JSON object per line to log.jsonl; on resume, drops lines past the checkpoint step."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.is_file():
            kept = [json.dumps(r, default=_json_default) for r in read_log(path) if r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:  # a line torn by a killed process
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One live line (step, loss, tokens/s, ETA) on a terminal; plain lines every log_every steps otherwise."""

    def __init__(self, total_steps: int, enabled: bool, log_every: int):
        self.total = total_steps
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.log_every = max(log_every, 1)

    def update(self, step: int, loss: float, tokens_per_s: float, elapsed: float, cap_s: float) -> None:
        if not self.enabled:
            return
        remaining = (self.total - step) * elapsed / max(step, 1)
        if cap_s > 0:
            remaining = min(remaining, max(cap_s - elapsed, 0.0))
        line = (f"step {step:>6}/{self.total} | loss {loss:7.4f} | {tokens_per_s / 1000:7.1f}k tok/s | "
                f"elapsed {format_duration(elapsed)} | ETA {format_duration(remaining)}")
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        elif step % self.log_every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
