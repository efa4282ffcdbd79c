"""The run folder: config.toml, env.json, log.jsonl, result.json, loss.png, and the end-of-run summary."""

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


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png: train loss per logged step and validation points, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir / "log.jsonl")
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1.2, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=4, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


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


def summary(result: dict[str, Any], run_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    limit = result.get("limit_bytes", 16_000_000)
    margin = limit - result["artifact_bytes"]
    status = "UNDER the limit" if result["under_limit"] else "OVER THE LIMIT"
    lines = [
        "",
        f"  run        {run_dir}",
        f"  recipe     {result['recipe']} (scale {result.get('scale')}, seed {result['seed']}, {result['world_size']} x {result['device']})",
        f"  trained    {result['steps']} steps, {result['train_tokens']:,} tokens in {format_duration(result['train_seconds'])} "
        f"({result['tokens_per_second']:,.0f} tokens/s)",
        f"  val_bpb    {result['val_bpb']:.4f}  (val_loss {result['val_loss']:.4f} nats; eval {result.get('eval_mode', 'plain')}"
        f"{'' if result.get('legal', True) else ', NOT LEGAL'}; scored on the artifact)",
    ]
    if result.get("averaging_detail"):
        lines.append(f"  weights    {result['averaging_detail']}")
    if result.get("val_bpb_prequant") is not None:
        gap = result.get("val_bpb_plain", result["val_bpb"]) - result["val_bpb_prequant"]
        lines.append(f"  prequant   {result['val_bpb_prequant']:.4f}  (quantization cost {gap:+.4f} bpb, "
                     f"weights: {result.get('averaging', 'live')})")
    lines += [
        f"  artifact   {result['artifact_bytes']:,} bytes = {result['model_bytes']:,} model + {result['code_bytes']:,} code "
        f"-> {status} ({margin:+,} bytes of {limit:,})",
    ]
    if result.get("calibration_seconds"):
        sampled = (f" (sampling {result['calibration_generated_tokens']:,} tokens "
                   f"in {result['calibration_generate_seconds']:.1f} s)"
                   if "calibration_generate_seconds" in result else "")
        over = ", OVER quant.gptq_reserve_s" if result.get("calibration_over_reserve") else ""
        lines.append(f"  gptq calib {result['calibration_seconds']:.1f} s{sampled} on the training clock "
                     f"(reserve {result.get('calibration_reserve_s', 0):g} s{over}; within the cap: "
                     f"{result.get('within_cap', True)})")
    fit = result.get("fit")
    if fit and fit.get("needed"):
        cost = f"; {fit['val_bpb_cost']:+.5f} bpb after the round trip" if "val_bpb_cost" in fit else ""
        lines.append(f"  quant.fit  {fit['message']}{cost}")
    lines += [
        "  files      config.toml, log.jsonl, result.json, artifact.pgolf, loss.png",
        "",
    ]
    return "\n".join(lines)
