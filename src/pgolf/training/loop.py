"""The training loop: it orchestrates the parts (data, model, optimizers, schedule, averaging, export, eval);
it does not know how any technique works.

Single process or torchrun (NCCL on GPU, gloo on CPU). Gradient accumulation keeps the global batch the same
for any world size. SIGINT/SIGTERM finish the current step, write a checkpoint and stop; `resume=True`
continues from it with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..artifact.budget import check_budget
from ..artifact.sizes import pack
from ..config import Config, ConfigError
from ..data.atomic import atomic_write
from ..data.dataset import Dataset, load_validation, resolve_dataset
from ..data.loader import DistributedTokenLoader, PrefetchingLoader
from ..data.tokenizer import byte_tables, load_tokenizer
from ..eval.bpb import evaluate
from ..model.attention import flash3_available
from ..model.gpt import GPT, build_model, count_parameters
from ..model.precision import autocast_for
from ..optim.averaging import WeightAverager
from ..optim.groups import build_optimizers, muon_momentum_at, set_lr_multiplier, set_muon_momentum
from ..optim.muon import Muon
from ..optim.schedule import lr_multiplier, training_fraction
from ..quant.gptq import collect_hessians
from ..quant.pack import unpack
from ..quant.qat import attach_qat, late_qat_due, qat_enabled, refresh_qat, set_qat_enabled
from .checkpoint import checkpoint_dir, checkpoint_step, load_checkpoint, remove_checkpoint, save_checkpoint
from .fastpath import assert_fast_paths, check_fast_paths
from .runs import (LogWriter, Progress, device_name, environment, is_finite, new_run_dir, plot_losses, save_config,
                   summary, write_json)
from .runtime import Runtime, any_rank, barrier, broadcast_object, init_runtime, seed_everything

StepCallback = Callable[[int, dict[str, Any]], None]


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; checkpoint written. "
                         f"Continue with: pgolf train --resume {run_dir}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good weights were kept in a checkpoint."""


class _StopSignal:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    t = cfg.train
    accum = t.grad_accum_steps or max(1, math.ceil(t.batch_tokens / (world_size * t.micro_batch_tokens)))
    if t.batch_tokens % (world_size * accum * t.seq_len):
        raise ConfigError(f"'train.batch_tokens' ({t.batch_tokens}) must split into {world_size} ranks x {accum} "
                          f"micro-steps of whole sequences of 'train.seq_len' ({t.seq_len})")
    return accum


def choose_attention_backend(requested: str, device: torch.device, doc_attention: bool = False) -> str:
    """auto: FlashAttention-3 where installed on CUDA, else flex_attention (document masks) or SDPA."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "sdpa"
    if flash3_available():
        return "fa3"
    return "flex" if doc_attention else "sdpa"


def _use_compile(cfg: Config, device: torch.device) -> bool:
    return cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda")


def _prepare_run_dir(rt: Runtime, cfg: Config, out_dir: str | Path | None, resume: bool, runs_root: str | Path) -> Path:
    path = None
    if rt.is_main:
        if resume:
            if out_dir is None or not Path(out_dir).is_dir():
                raise FileNotFoundError(f"{out_dir}: run folder to resume not found")
            path = Path(out_dir)
        elif out_dir is not None:
            path = Path(out_dir)
            if path.exists() and any(path.iterdir()):
                raise FileExistsError(f"{path}: run folder exists and is not empty (resume it with --resume, or pick another --out)")
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = new_run_dir(runs_root, cfg.recipe, cfg.seed)
    return Path(broadcast_object(str(path) if path else None))


def _resolve_data(rt: Runtime, cfg: Config, progress: bool) -> Dataset:
    dataset = resolve_dataset(cfg, progress and rt.is_main) if rt.is_main else None
    barrier()  # rank 0 prepares the embedded corpus once; the others then find it ready
    # rank 0 has scanned every token id; the others only resolve the same files
    return dataset if dataset is not None else resolve_dataset(cfg, False, check_ids=False)


def _keep_last_good(run_dir: Path, model: nn.Module, write_checkpoint: Callable[[], None], train_loss: float,
                    step: int, device: torch.device) -> str:
    """On a non-finite loss: checkpoint the weights if they are still finite (the bad update was not applied);
    if an earlier update already made them non-finite, keep the previous checkpoint rather than overwrite it."""
    head = f"non-finite training loss ({train_loss}) at step {step}; stopped before applying it."
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not any_rank(not finite, device):
        try:
            write_checkpoint()
        except OSError as exc:
            return f"{head} The last good weights could not be saved: {exc}"
        return f"{head} The last good weights are in {run_dir / 'checkpoint'} (step {step})."
    kept = checkpoint_dir(run_dir)
    where = (f"the last good checkpoint, {kept} (step {checkpoint_step(kept)}), was kept" if kept
             else "there is no earlier checkpoint (train.checkpoint_every writes them)")
    return f"{head} The weights were already non-finite (an earlier update produced them), so they were not saved; {where}."


def plain_eval_config(cfg: Config):
    """The run's eval settings without sliding windows or test-time training."""
    plain = copy.copy(cfg.eval)
    plain.sliding_stride, plain.ttt = 0, "none"
    return plain


def train(cfg: Config, out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
          runs_root: str | Path = "runs", step_callback: StepCallback | None = None,
          device: str | None = None) -> dict[str, Any]:
    """Train `cfg`, write the run folder, and return the result.json dict."""
    check_budget(cfg)  # a config estimated far over the byte limit is refused before anything starts
    rt = init_runtime(device)
    run_dir = _prepare_run_dir(rt, cfg, out_dir, resume, runs_root)
    dataset = _resolve_data(rt, cfg, progress)
    cfg.data.path, cfg.data.tokenizer = str(dataset.folder), str(dataset.tokenizer_path)
    if rt.is_main and not resume:
        save_config(cfg, run_dir / "config.toml")
        write_json(run_dir / "env.json", environment(rt.device, rt.world_size, dataset.checksums()))
    show = progress and rt.is_main
    t = cfg.train
    accum = grad_accum_steps(cfg, rt.world_size)

    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.data.bos_id).to(rt.device)
    model.attention_backend = choose_attention_backend(cfg.model.attention_backend, rt.device, cfg.model.doc_attention)
    model.fused_loss = rt.device.type == "cuda"
    attach_qat(model, cfg.quant)  # quant.qat: fake-quantize attn/mlp matrices on the export grid (before compile)
    optimizers = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    averager = WeightAverager(model, t)
    loader = DistributedTokenLoader(dataset.train_files, rt.rank, rt.world_size, cfg.model.vocab_size)
    if rt.device.type == "cuda":  # next batches are read and pinned on a thread while the GPU works
        loader = PrefetchingLoader(loader, t.batch_tokens, t.seq_len, accum, pin_memory=True)
    forward: nn.Module = model
    if _use_compile(cfg, rt.device):
        forward = torch.compile(model)
        if isinstance(optimizers.get("matrix"), Muon):
            optimizers["matrix"].compile_newton_schulz()
    if rt.distributed:
        forward = DDP(forward, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    if t.check_fast_paths:
        _check_fast_paths(model, forward, dataset, cfg, rt)
    step, elapsed = 0, 0.0
    if resume:
        state, avg_tensors = load_checkpoint(run_dir, model=model, optimizers=optimizers, rank=rt.rank)
        step, elapsed = state["step"], state["elapsed_s"]
        loader.load_state_dict(state["loader"])
        averager.load_state_tensors(avg_tensors, state["swa_count"])
        model.set_looping(state["looping"])
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    elif t.compile_priming_steps > 0:
        _prime(forward, model, optimizers, loader, cfg, accum, rt)
        averager = WeightAverager(model, t)

    log = LogWriter(run_dir / "log.jsonl", resume_step=step if resume else None) if rt.is_main else None
    bar = Progress(t.steps, show, t.log_every)
    if show:
        bar.message(f"pgolf: {cfg.recipe} ({cfg.scale}) | {count_parameters(cfg.model):,} params | "
                    f"{rt.world_size} x {device_name(rt.device)} | {t.batch_tokens:,} tokens/step "
                    f"({accum} micro-step{'s' if accum > 1 else ''}) | run {run_dir}")
    val_tokens = tables = None

    def checkpoint_state() -> dict[str, Any]:
        return {"step": step, "elapsed_s": elapsed, "loader": loader.state_dict(), "looping": model.looping,
                "swa_count": averager.swa_count, "world_size": rt.world_size,
                "torch_rng": torch.get_rng_state().tolist()}

    def write_checkpoint() -> None:
        save_checkpoint(run_dir, model=model, optimizers=optimizers, averaging_tensors=averager.state_tensors(),
                        state=checkpoint_state(), rank=rt.rank)

    reserve = cfg.quant.gptq_reserve_s
    global_tokens_per_step = t.batch_tokens
    with _StopSignal() as stop:
        while step < t.steps:
            step_start = time.perf_counter()
            mult = lr_multiplier(step, elapsed, t, reserve)
            set_lr_multiplier(optimizers, mult)
            if late_qat_due(step, mult, cfg.quant, t.warmup_steps) and not qat_enabled(model):
                set_qat_enabled(model, True)
                bar.message(f"late QAT on at step {step} (lr multiplier {mult:.3f} < {cfg.quant.qat_start_lr})")
            if cfg.quant.qat != "none":
                refresh_qat(model)  # W_hat of this step's weights, computed eagerly on the export grid
            set_muon_momentum(optimizers, muon_momentum_at(step, cfg.optim))
            if not model.looping and training_fraction(step, elapsed, t, reserve) >= cfg.model.recurrence_start_frac:
                model.set_looping(True)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=rt.device)
            for micro in range(accum):
                x, y = loader.next_batch(t.batch_tokens, t.seq_len, accum)
                sync = nullcontext() if (not rt.distributed or micro == accum - 1) else forward.no_sync()
                with sync:
                    with autocast_for(rt.device, t.dtype):
                        loss = forward(x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True))
                    (loss / accum).backward()
                loss_sum += loss.detach()
            train_loss = float(loss_sum.item()) / accum
            diverged = any_rank(not is_finite(train_loss), rt.device)
            if diverged:
                raise TrainingDiverged(_keep_last_good(run_dir, model, write_checkpoint, train_loss, step, rt.device))
            if cfg.optim.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            for opt in optimizers.values():
                opt.step()
            step += 1
            averager.update(model, step, mult)
            elapsed += time.perf_counter() - step_start
            tokens_per_s = global_tokens_per_step * step / max(elapsed, 1e-9)
            bar.update(step, train_loss, tokens_per_s, elapsed, t.max_wallclock_s)
            if log is not None and (step % t.log_every == 0 or step == 1 or step == t.steps):
                log.write({"step": step, "train_loss": train_loss, "lr_mult": mult, "tokens_per_s": tokens_per_s,
                           "ms_per_step": 1000 * elapsed / step, "elapsed_s": elapsed})
            if t.val_every > 0 and step % t.val_every == 0 and step < t.steps:
                if val_tokens is None:
                    val_tokens, tables = _load_val(dataset, cfg)
                ev = evaluate(model, val_tokens, None, plain_eval_config(cfg), tables=tables)
                if log is not None:
                    log.write({"step": step, "val_loss": ev.val_loss, "val_bpb": ev.val_bpb})
                bar.message(f"step {step}: val_loss {ev.val_loss:.4f} val_bpb {ev.val_bpb:.4f}")
            if step_callback is not None:
                step_callback(step, {"train_loss": train_loss, "elapsed_s": elapsed})
            capped = t.max_wallclock_s > 0 and elapsed >= t.max_wallclock_s - reserve
            if t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and step < t.steps:
                write_checkpoint()
            if any_rank(stop.signum is not None, rt.device):
                write_checkpoint()
                bar.close()
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, step, run_dir)
            if any_rank(capped, rt.device):
                bar.message(f"wall-clock cap reached after {elapsed:.1f} s at step {step}")
                break
    bar.close()
    if isinstance(loader, PrefetchingLoader):
        loader.close()
        loader = loader.loader
    if val_tokens is None:
        val_tokens, tables = _load_val(dataset, cfg)
    return _finish(cfg, rt, run_dir, model, averager, val_tokens, tables, step, elapsed, show, loader)


def _check_fast_paths(model: GPT, forward: nn.Module, dataset: Dataset, cfg: Config, rt: Runtime) -> None:
    """Debug mode: the chosen kernels against the plain reference on one real batch, before training."""
    probe = DistributedTokenLoader(dataset.train_files[:1], 0, 1)
    x, _ = probe.next_batch(min(cfg.train.batch_tokens, 4 * cfg.train.seq_len), cfg.train.seq_len, 1)
    compiled = forward if forward is not model and not hasattr(forward, "module") else None
    report = check_fast_paths(model, x.to(rt.device), cfg.train.dtype, compiled)
    dtype = "bfloat16" if (cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and rt.device.type == "cuda")) else "float32"
    if rt.is_main:
        print(f"fast paths vs reference: {report}", flush=True)
    assert_fast_paths(report, dtype)


def _load_val(dataset: Dataset, cfg: Config):
    tokens = load_validation(dataset, cfg.model.vocab_size, cfg.data.val_tokens_limit)
    tables = byte_tables(load_tokenizer(dataset.tokenizer_path), cfg.model.vocab_size)
    return tokens, tables


def _prime(forward: nn.Module, model: GPT, optimizers: dict, loader: DistributedTokenLoader, cfg: Config,
           accum: int, rt: Runtime) -> None:
    """Run train.compile_priming_steps real steps (compiling every graph, looped too), then undo them."""
    t = cfg.train
    model_state = copy.deepcopy(model.state_dict())
    opt_states = {k: copy.deepcopy(o.state_dict()) for k, o in optimizers.items()}
    loader_state = loader.state_dict()
    looping = model.looping
    for i in range(t.compile_priming_steps):
        if cfg.model.recurrence_start_frac > 0:
            model.set_looping(i >= t.compile_priming_steps // 2)
        refresh_qat(model)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            x, y = loader.next_batch(t.batch_tokens, t.seq_len, accum)
            with autocast_for(rt.device, t.dtype):
                loss = forward(x.to(rt.device), y.to(rt.device))
            (loss / accum).backward()
        for opt in optimizers.values():
            opt.step()
    model.load_state_dict(model_state)
    for k, o in optimizers.items():
        o.load_state_dict(opt_states[k])
    loader.load_state_dict(loader_state)
    model.set_looping(looping)


def _finish(cfg: Config, rt: Runtime, run_dir: Path, model: GPT, averager: WeightAverager, val_tokens, tables,
            steps: int, train_seconds: float, show: bool, loader: DistributedTokenLoader) -> dict[str, Any]:
    """Averaging -> pre-quant eval -> pack -> unpack -> scored eval -> result.json, loss.png, summary."""
    model.set_looping(True)
    averaging = averager.apply_to(model)  # the explicit export rule of train.averaging: live | ema | swa
    if rt.is_main:
        LogWriter(run_dir / "log.jsonl").write({"step": steps, "averaging": averaging, "averaging_detail": averager.describe(),
                                                "swa_snapshots": averager.swa_count})
    if rt.is_main:  # full-precision final weights, for `pgolf pack` with another policy
        final_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(run_dir / "model.safetensors", lambda tmp: save_file(final_state, tmp))
    plain = plain_eval_config(cfg)
    prequant = evaluate(model, val_tokens, None, plain, tables=tables)
    hessians = None
    if "gptq" in (cfg.quant.method, cfg.quant.embed_method):
        hessians = collect_hessians(model, loader, cfg, rt.device)
    artifact = run_dir / "artifact.pgolf"
    # code_bytes = the exact size of the self-contained train_gpt.py `pgolf submit` writes for this config
    sizes = pack(model, cfg, artifact, hessians) if rt.is_main else None
    sizes = broadcast_object(sizes)
    barrier()
    scored_model, _ = unpack(artifact, rt.device)
    scored_model.attention_backend = model.attention_backend
    roundtrip_plain = evaluate(scored_model, val_tokens, None, plain, tables=tables)
    final = roundtrip_plain
    if cfg.eval.sliding_stride > 0 or cfg.eval.ttt != "none":
        final = evaluate(scored_model, val_tokens, None, cfg.eval, tables=tables)
    train_tokens = steps * cfg.train.batch_tokens
    result: dict[str, Any] = {
        "recipe": cfg.recipe, "scale": cfg.scale, "seed": cfg.seed,
        "val_loss": final.val_loss, "val_bpb": final.val_bpb,
        "val_bpb_prequant": prequant.val_bpb, "val_loss_prequant": prequant.val_loss,
        "val_bpb_plain": roundtrip_plain.val_bpb,
        **{k: sizes[k] for k in ("artifact_bytes", "code_bytes", "model_bytes", "under_limit", "limit_bytes", "compressor")},
        "steps": steps, "train_tokens": train_tokens, "train_seconds": train_seconds,
        "eval_seconds": final.seconds if final is not roundtrip_plain else roundtrip_plain.seconds,
        "tokens_per_second": train_tokens / max(train_seconds, 1e-9),
        "world_size": rt.world_size, "device": device_name(rt.device), "torch_version": torch.__version__,
        "val_targets": final.targets, "val_bytes": final.bytes,
        "val_tokens_limited": cfg.data.val_tokens_limit > 0,
        "eval_mode": final.mode, "legal": final.legal, "averaging": averaging,
        "averaging_detail": averager.describe(), "swa_snapshots": averager.swa_count,
    }
    if rt.is_main:
        write_json(run_dir / "result.json", result)
        LogWriter(run_dir / "log.jsonl").write({"step": steps, "val_loss": final.val_loss, "val_bpb": final.val_bpb})
        plot_losses(run_dir)
        if not cfg.train.keep_checkpoint:
            remove_checkpoint(run_dir)
        if show:
            print(summary(result, run_dir))
        if not result["under_limit"]:
            print(f"WARNING: the artifact is OVER the 16,000,000-byte limit by {result['artifact_bytes'] - 16_000_000:,} "
                  f"bytes; this run cannot be submitted as it is.", file=sys.stderr)
    barrier()
    return result
