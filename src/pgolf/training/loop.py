"""The training loop: it orchestrates the parts (data, model, optimizers, schedule, averaging, export, eval);
it does not know how any technique works.

Single process or torchrun (NCCL on GPU, gloo on CPU). Gradient accumulation keeps the global batch the same
for any world size. SIGINT/SIGTERM stop the run at the next step boundary (the step in flight is not applied),
write a checkpoint and stop; `resume=True` continues from it with the same numbers as an uninterrupted run.

One step = the micro-steps' forward/backward, then ONE small all-reduce of three flags (non-finite loss on any
rank, a stop signal on any rank, the wall-clock cap reached) and its one read to the host, then — only if no flag
is set — clip, optimizer and averaging. The loss stays on the device and is read only at log steps; a
non-finite loss is still caught before its update is applied, through the flag. Time is kept by
`clock.TrainingClock`: everything from t0 counts except validation and the priming steps, and the GPTQ
calibration after the last step counts against `train.max_wallclock_s` too (`quant.gptq_reserve_s` is its share),
and so does quant.fit's pruning search while packing (`quant.fit_reserve_s`).
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
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel

from ..artifact.sizes import fit_cost, pack_artifact
from ..config import Config, ConfigError
from ..config.optional import optional_module, require_module
from ..data.atomic import atomic_write
from ..data.dataset import (Dataset, check_vocabularies, load_validation, max_token_id, resolve_dataset,
                            validation_bytes)
from ..data.loader import DistributedTokenLoader, PrefetchingLoader
from ..data.tokenizer import file_sha256
from ..eval.bpb import evaluate
from ..model.attention import flash3_available
from ..model.gpt import GPT, build_model, count_parameters
from ..model.precision import autocast_for
from ..optim.averaging import WeightAverager
from ..optim.groups import (build_optimizers, muon_momentum_at, set_lr_multiplier, set_muon_momentum,
                             set_muon_weight_decay_multiplier, uses_muon)
from ..optim.schedule import lr_multiplier, muon_wd_multiplier, training_fraction
from ..quant.pack import unpack_written
from .clock import TrainingClock
from .kernels import attach_training_kernels, describe, training_kernels_for
from .runs import LogWriter, Progress, device_memory, device_name, environment, new_run_dir, save_config, write_json
from .runtime import (Runtime, any_rank_flags, barrier, broadcast_object, gather_objects, init_runtime,
                      seed_everything, synchronize)

StepCallback = Callable[[int, dict[str, Any]], None]


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after writing a checkpoint (a train_gpt.py writes one only when its config
    asks for checkpoints)."""

    def __init__(self, signum: int, step: int, run_dir: Path, checkpointed: bool = True):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        then = (f"checkpoint written. Continue with: pgolf train --resume {run_dir}" if checkpointed else
                "no checkpoint written (train.checkpoint_every = 0)")
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; {then}")


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
    """auto: FlashAttention-3 where installed on a CUDA device of compute capability 9.0+ (Hopper: FA3's kernels
    exist only there), else flex_attention (document masks) or SDPA."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "sdpa"
    if flash3_available() and torch.cuda.get_device_capability(device)[0] >= 9:
        return "fa3"
    return "flex" if doc_attention else "sdpa"


def grad_allreduce_dtype(requested: str, device: torch.device) -> torch.dtype:
    """train.ddp_grad_dtype: auto = bf16 on CUDA (the records' all-reduce bytes), fp32 elsewhere."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[requested]


def bf16_gradient_allreduce(process_group, bucket):  # no annotations: DDP compares them, and here they are strings
    """DDP's bf16_compress_hook (a gradient bucket cast to bf16, divided by the world size, all-reduced, cast
    back), under a name DDP does not refuse off CUDA: its guard checks the hook's name, not the backend, and
    gloo all-reduces bf16, so the CPU tests run the very hook the GPUs run."""
    return bf16_compress_hook(process_group, bucket)


def clip_local_then_average(params: list[nn.Parameter], max_norm: float) -> None:
    """train.clip_scope = "local": clip this rank's own gradient to a global norm of max_norm, then average the
    clipped gradients over the ranks (one flat all-reduce per gradient dtype: fp32 for fp32 parameters), as #1536 and #1573
    call clip_grad_norm_ before their all-reduce. Every rank ends with the same gradient."""
    with_grad = [p for p in params if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in with_grad:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(world)
        for g, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(averaged)


def wrap_ddp(forward: nn.Module, cfg: Config, rt: Runtime) -> DistributedDataParallel:
    """DDP as the records use it: no buffer broadcast each forward (every buffer — QAT's W_hat included — is
    computed identically on every rank), gradients all-reduced in train.ddp_grad_dtype (bf16 via DDP's
    bf16_compress_hook: half the bytes of fp32)."""
    ddp = DistributedDataParallel(forward, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                  broadcast_buffers=False)
    if grad_allreduce_dtype(cfg.train.ddp_grad_dtype, rt.device) == torch.bfloat16:
        ddp.register_comm_hook(state=None, hook=bf16_gradient_allreduce)
    return ddp


def _use_compile(cfg: Config, device: torch.device) -> bool:
    return cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda")


def _prepare_run_dir(rt: Runtime, cfg: Config, out_dir: str | Path | None, resume: bool, runs_root: str | Path) -> Path:
    path = None
    if rt.is_main:
        if resume:
            path = require_module("pgolf.training.checkpoint", cfg.train).resume_dir(out_dir)
        elif out_dir is not None:
            path = Path(out_dir)
            if path.exists() and any(path.iterdir()):
                raise FileExistsError(f"{path}: run folder exists and is not empty (resume it with --resume, or pick another --out)")
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = new_run_dir(runs_root, cfg.recipe, cfg.seed)
    return Path(broadcast_object(str(path) if path else None))


def _resolve_data(rt: Runtime, cfg: Config, progress: bool) -> Dataset:
    """Rank 0 prepares the embedded corpus once (the others wait the long rank-0 timeout); every rank checks
    every shard's header and size; the token-id scan of all shards is split across the ranks and its result
    shared, so every rank raises the same error on bad data and none waits for one rank to read them all."""
    if not rt.distributed:
        return resolve_dataset(cfg, progress)
    dataset = resolve_dataset(cfg, progress and rt.is_main, check_ids=False) if rt.is_main else None
    barrier(after_rank0_phase=True)
    if dataset is None:
        dataset = resolve_dataset(cfg, False, check_ids=False)
    files = list(dict.fromkeys(dataset.train_files + dataset.val_files))
    mine = max_token_id(files[rt.rank::rt.world_size])
    found = max(gather_objects((mine[0], str(mine[1]) if mine[1] is not None else None)), key=lambda m: m[0])
    check_vocabularies(dataset, cfg.model.vocab_size, scanned=(found[0], Path(found[1]) if found[1] else None))
    return dataset


def plain_eval_config(cfg: Config):
    """The run's eval settings without sliding windows or test-time training."""
    plain = copy.copy(cfg.eval)
    plain.sliding_stride, plain.ttt = 0, "none"
    return plain


def train(cfg: Config, out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
          runs_root: str | Path = "runs", step_callback: StepCallback | None = None,
          device: str | None = None) -> dict[str, Any]:
    """Train `cfg`, write the run folder, and return the result.json dict."""
    budget = optional_module("pgolf.artifact.budget", cfg.quant)  # None in a train_gpt.py: checked when built
    if budget is not None:
        budget.check_budget(cfg)  # a config estimated far over the byte limit is refused before anything starts
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
    kernels = training_kernels_for(t, rt.device)  # train.fused_mlp / fused_ce: CUDA training only
    attach_training_kernels(model, kernels)
    qat = optional_module("pgolf.quant.qat", cfg.quant)  # quant.qat: fake-quantize attn/mlp matrices on the export grid
    if qat is not None:
        qat.attach_qat(model, cfg.quant)  # before compile
    optimizers = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    averager = WeightAverager(model, t)
    # with document-isolated attention the loader also builds each batch's cu_seqlens (FA3 varlen) on its thread
    # data.loader: the baseline's sequential stream, or #1060's coprime-stride blocks (data/coprime.py)
    coprime = optional_module("pgolf.data.coprime", cfg.data)
    loader_cls = coprime.CoprimeBlockLoader if coprime is not None else DistributedTokenLoader
    loader = loader_cls(dataset.train_files, rt.rank, rt.world_size, cfg.model.vocab_size,
                        cfg.data.bos_id if cfg.model.doc_attention else None)
    if rt.device.type == "cuda":  # next batches are read and pinned on a thread while the GPU works
        loader = PrefetchingLoader(loader, t.batch_tokens, t.seq_len, accum, pin_memory=True)
    forward: nn.Module = model
    if _use_compile(cfg, rt.device):
        # one static graph per phase, as the records: a graph break or a recompile is a bug (tests/test_graphs.py)
        forward = torch.compile(model, fullgraph=True, dynamic=False)
        if uses_muon(optimizers):
            optimizers["matrix"].compile_newton_schulz()
    if rt.distributed:
        forward = wrap_ddp(forward, cfg, rt)

    if t.check_fast_paths:
        _check_fast_paths(model, forward, dataset, cfg, rt, kernels)
    step, priming_s = 0, 0.0
    clock = TrainingClock(rt.device)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    # checkpoints: always in the package; in a train_gpt.py (which never resumes) only with train.checkpoint_every
    ckpt = optional_module("pgolf.training.checkpoint", t)
    if resume:
        step = require_module("pgolf.training.checkpoint", t).resume(run_dir, model, optimizers, loader, averager,
                                                                     clock, rt.rank, rt.is_main)
    elif t.compile_priming_steps > 0:  # compiles every graph off the clock, as the records' warm-up steps
        start = time.perf_counter()
        _prime(forward, model, optimizers, loader, cfg, accum, rt)
        synchronize(rt.device)
        priming_s = time.perf_counter() - start
        averager = WeightAverager(model, t)

    log = LogWriter(run_dir / "log.jsonl") if rt.is_main else None  # a resume has cut it back to its step
    bar = Progress(t.steps, show, t.log_every)
    if show:
        bar.message(f"pgolf: {cfg.recipe} ({cfg.scale}) | {count_parameters(cfg.model):,} params | "
                    f"{rt.world_size} x {device_name(rt.device)} | {t.batch_tokens:,} tokens/step "
                    f"({accum} micro-step{'s' if accum > 1 else ''}) | kernels {describe(kernels, t)} | run {run_dir}")
    val_tokens = val_bytes = None

    def write_checkpoint(at_step_start: dict[str, Any] | None = None) -> None:
        ckpt.save_run(run_dir, step, model, optimizers, averager, loader, clock, rt.world_size, rt.rank, at_step_start)

    reserve = cfg.quant.gptq_reserve_s + (cfg.quant.fit_reserve_s if cfg.quant.fit else 0.0)  # post-training work inside the cap
    limit_s = t.max_wallclock_s - reserve if t.max_wallclock_s > 0 else math.inf
    global_tokens_per_step = t.batch_tokens
    flags = torch.zeros(3, device=rt.device)  # [non-finite loss, stop signal, wall-clock cap], max over ranks
    at_step_start: dict[str, Any] = {}
    local_clip = t.clip_scope == "local" and cfg.optim.grad_clip_norm > 0 and rt.distributed  # frozen keys first: they fold
    tapered_wd = cfg.optim.muon_wd_taper_start < 1.0 and uses_muon(optimizers)
    clock.start()
    with _StopSignal() as stop:
        while step < t.steps:
            at_step_start = {"loader": loader.state_dict(), "torch_rng": torch.get_rng_state()}
            mult = lr_multiplier(step, clock.read(), t, reserve)
            set_lr_multiplier(optimizers, mult)
            if qat is not None:
                if qat.late_qat_due(step, mult, cfg.quant, t.warmup_steps) and not qat.qat_enabled(model):
                    qat.set_qat_enabled(model, True)
                    bar.message(f"late QAT on at step {step} (lr multiplier {mult:.3f} < {cfg.quant.qat_start_lr})")
                qat.refresh_qat(model)  # W_hat of this step's weights, computed eagerly on the export grid
            set_muon_momentum(optimizers, muon_momentum_at(step, cfg.optim))
            frac = training_fraction(step, clock.read(), t, reserve)
            if tapered_wd:
                set_muon_weight_decay_multiplier(optimizers, muon_wd_multiplier(frac, cfg.optim))
            if not model.looping and frac >= cfg.model.recurrence_start_frac:
                model.set_looping(True)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=rt.device)
            for micro in range(accum):
                x, y, cu = loader.next_packed(t.batch_tokens, t.seq_len, accum)
                sync = nullcontext() if (not rt.distributed or (micro == accum - 1 and not local_clip)) else forward.no_sync()
                with sync:
                    with autocast_for(rt.device, t.dtype):
                        loss = forward(*_on_device((x, y, cu), rt.device))
                    (loss / accum).backward()
                loss_sum += loss.detach()
            flags[0].copy_(~torch.isfinite(loss_sum))
            flags[1].fill_(stop.signum is not None)
            flags[2].fill_(clock.read() >= limit_s)
            non_finite, stopping, capped = any_rank_flags(flags)  # the step's one collective and host sync
            if non_finite:
                head = f"non-finite training loss ({float(loss_sum.item()) / accum}) at step {step}; stopped before applying it."
                raise TrainingDiverged(ckpt.keep_last_good(run_dir, model, write_checkpoint, head, step, rt.device) if ckpt
                                       else head + " No weights saved (train.checkpoint_every = 0).")
            if stopping:
                if ckpt is not None:
                    write_checkpoint(at_step_start)
                bar.close()
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, step, run_dir, ckpt is not None)
            if capped:  # the previous step crossed the cap: this one is not applied
                bar.message(f"wall-clock cap reached after {clock.read():.1f} s at step {step}")
                break
            if local_clip:  # DDP did not reduce (no_sync): clip this rank's gradient, then average
                clip_local_then_average(list(model.parameters()), cfg.optim.grad_clip_norm)
            elif cfg.optim.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            for opt in optimizers.values():
                opt.step()
            step += 1
            averager.update(model, step, mult)
            if step % t.log_every == 0 or step == 1 or step == t.steps:
                train_loss = float(loss_sum.item()) / accum  # the loss reaches the host only at log steps
                elapsed = clock.read()
                tokens_per_s = global_tokens_per_step * step / max(elapsed, 1e-9)
                bar.update(step, train_loss, tokens_per_s, elapsed, t.max_wallclock_s)
                if log is not None:
                    line = {"step": step, "train_loss": train_loss, "lr_mult": mult, "tokens_per_s": tokens_per_s,
                            "ms_per_step": 1000 * elapsed / step, "elapsed_s": elapsed}
                    if tapered_wd:  # the weight decay the step just applied used
                        line["muon_weight_decay"] = optimizers["matrix"].param_groups[0]["weight_decay"]
                    log.write(line)
            if t.val_every > 0 and step % t.val_every == 0 and step < t.steps:
                with clock.paused():  # validation is not training time
                    if val_tokens is None:
                        val_tokens, val_bytes = _load_val(dataset, cfg)
                    ev = evaluate(model, val_tokens, None, plain_eval_config(cfg), token_bytes=val_bytes)
                if log is not None:
                    log.write({"step": step, "val_loss": ev.val_loss, "val_bpb": ev.val_bpb})
                bar.message(f"step {step}: val_loss {ev.val_loss:.4f} val_bpb {ev.val_bpb:.4f}")
            if step_callback is not None:
                step_callback(step, {"train_loss": float(loss_sum.item()) / accum, "elapsed_s": clock.read()})
            if t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and step < t.steps:  # ckpt is carried
                write_checkpoint()
    bar.close()
    # calibration reads on from the last applied step: not from a step the cap left unapplied, nor from batches
    # the prefetching thread had read ahead
    after_last_step = at_step_start["loader"] if at_step_start and step < t.steps else loader.state_dict()
    if isinstance(loader, PrefetchingLoader):
        loader.close()
        loader = loader.loader
    loader.load_state_dict(after_last_step)
    timing = {"train_seconds": clock.stop(), "priming_seconds": priming_s, "paused_seconds": clock.paused_s,
              **device_memory(rt.device, "train_")}
    if val_tokens is None:
        val_tokens, val_bytes = _load_val(dataset, cfg)
    return _finish(cfg, rt, run_dir, model, averager, val_tokens, val_bytes, step, timing, show, loader)


def _check_fast_paths(model: GPT, forward: nn.Module, dataset: Dataset, cfg: Config, rt: Runtime,
                      kernels: dict) -> None:
    """Debug mode: the chosen kernels against the plain reference on one real batch, before training."""
    probe = DistributedTokenLoader(dataset.train_files[:1], 0, 1)
    x, _ = probe.next_batch(min(cfg.train.batch_tokens, 4 * cfg.train.seq_len), cfg.train.seq_len, 1)
    compiled = forward if forward is not model and not hasattr(forward, "module") else None
    fastpath = require_module("pgolf.training.fastpath", cfg.train)
    report = fastpath.check_fast_paths(model, x.to(rt.device), cfg.train.dtype, compiled)
    if kernels:
        report |= fastpath.check_training_kernels(model, x[:2].to(rt.device), kernels, cfg.train.dtype)
    dtype = "bfloat16" if (cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and rt.device.type == "cuda")) else "float32"
    if rt.is_main:
        print(f"fast paths vs reference: {report}", flush=True)
    fastpath.assert_fast_paths(report, dtype)


def _on_device(tensors, device: torch.device) -> list:
    """Host (pinned) batch tensors to the device without blocking; None stays None."""
    return [t.to(device, non_blocking=True) if t is not None else None for t in tensors]


def _load_val(dataset: Dataset, cfg: Config):
    """The validation tokens and the bytes of each target under data.byte_source."""
    tokens = load_validation(dataset, cfg.model.vocab_size, cfg.data.val_tokens_limit)
    return tokens, validation_bytes(dataset, cfg.data, tokens, cfg.model.vocab_size)


def _prime(forward: nn.Module, model: GPT, optimizers: dict, loader: DistributedTokenLoader, cfg: Config,
           accum: int, rt: Runtime) -> None:
    """Run train.compile_priming_steps real steps (compiling every graph, looped too), then undo them."""
    t = cfg.train
    model_state = copy.deepcopy(model.state_dict())
    opt_states = {k: copy.deepcopy(o.state_dict()) for k, o in optimizers.items()}
    loader_state = loader.state_dict()
    looping = model.looping
    qat = optional_module("pgolf.quant.qat", cfg.quant)
    for i in range(t.compile_priming_steps):
        if cfg.model.recurrence_start_frac > 0:
            model.set_looping(i >= t.compile_priming_steps // 2)
        if qat is not None:
            qat.refresh_qat(model)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            batch = loader.next_packed(t.batch_tokens, t.seq_len, accum)
            with autocast_for(rt.device, t.dtype):
                loss = forward(*_on_device(batch, rt.device))
            (loss / accum).backward()
        for opt in optimizers.values():
            opt.step()
    model.load_state_dict(model_state)
    for k, o in optimizers.items():
        o.load_state_dict(opt_states[k])
    loader.load_state_dict(loader_state)
    model.set_looping(looping)


def calibration_report(cfg: Config, calibration_s: float, capped_s: float) -> dict[str, Any]:
    """The result fields of the cap check: calibration over its reserve (quant.gptq_reserve_s, when a cap is set:
    training stops at cap - reserve, so more calibration than reserved eats into time the cap does not have) and
    training + calibration over train.max_wallclock_s."""
    cap = cfg.train.max_wallclock_s
    return {"calibration_seconds": calibration_s, "calibration_reserve_s": cfg.quant.gptq_reserve_s,
            "calibration_over_reserve": cap > 0 and calibration_s > cfg.quant.gptq_reserve_s,
            "capped_seconds": capped_s, "within_cap": cap <= 0 or capped_s <= cap}


def _finish(cfg: Config, rt: Runtime, run_dir: Path, model: GPT, averager: WeightAverager, val_tokens, val_bytes,
            steps: int, timing: dict[str, Any], show: bool, loader: DistributedTokenLoader) -> dict[str, Any]:
    """Averaging -> GPTQ calibration (on the training clock) -> pre-quant eval -> pack -> unpack -> scored eval ->
    result.json, loss.png, summary."""
    start = time.perf_counter()
    model.set_looping(True)
    averaging = averager.apply_to(model)  # the explicit export rule of train.averaging: live | ema | swa
    # GPTQ's calibration Hessians (from training tokens or self-generated ones) count as training time
    gptq = optional_module("pgolf.quant.gptq", cfg.quant)
    hessians, calibration_s, calib_stats = None, 0.0, {}
    if gptq is not None:
        calibration_start = time.perf_counter()
        hessians = gptq.collect_hessians(model, loader, cfg, rt.device, calib_stats)
        synchronize(rt.device)
        calibration_s = time.perf_counter() - calibration_start
    capped_s = timing["train_seconds"] + time.perf_counter() - start
    timing.update(calibration_report(cfg, calibration_s, capped_s), **calib_stats)
    if show and gptq is not None:
        gptq.warn_over_cap(cfg, calibration_s, capped_s, timing)
    elif show and not timing["within_cap"]:
        print(f"WARNING: training took {capped_s:.1f} s, over train.max_wallclock_s = {cfg.train.max_wallclock_s:g} s",
              file=sys.stderr)
    if rt.is_main:
        calibration = {k: v for k, v in timing.items() if k.startswith("calibration_")}
        LogWriter(run_dir / "log.jsonl").write({"step": steps, "averaging": averaging, "averaging_detail": averager.describe(),
                                                "swa_snapshots": averager.swa_count, **calibration})
    if rt.is_main:  # full-precision final weights, for `pgolf pack` with another policy
        final_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(run_dir / "model.safetensors", lambda tmp: save_file(final_state, tmp))
    plain = plain_eval_config(cfg)
    prequant = evaluate(model, val_tokens, None, plain, token_bytes=val_bytes)
    artifact = run_dir / "artifact.pgolf"
    # code_bytes = the exact size of the self-contained train_gpt.py `pgolf submit` writes for this config;
    # with quant.fit, an artifact over the limit is pruned under it here, on the training clock (its share of the
    # cap: quant.fit_reserve_s, which also bounds its search)
    pack_start = time.perf_counter()
    packed = pack_artifact(model, cfg, artifact, hessians) if rt.is_main else None
    pack_s = time.perf_counter() - pack_start
    sizes, fit = broadcast_object(packed, after_rank0_phase=True)  # the others wait out rank 0's GPTQ + compression
    if cfg.quant.fit and fit is not None and fit.needed:  # the switch first: it folds
        timing["capped_seconds"] += fit.seconds
        timing["within_cap"] = cfg.train.max_wallclock_s <= 0 or timing["capped_seconds"] <= cfg.train.max_wallclock_s
    barrier()
    scored_model = unpack_written(artifact, cfg, rt.device)
    scored_model.attention_backend = model.attention_backend
    roundtrip_plain = evaluate(scored_model, val_tokens, None, plain, token_bytes=val_bytes)
    if cfg.quant.fit and fit is not None and fit.pruned:  # what the pruning cost, measured on the model as loaded
        sizes["fit"].update(fit_cost(scored_model, fit,
                                     lambda m: evaluate(m, val_tokens, None, plain, token_bytes=val_bytes).val_bpb,
                                     roundtrip_plain.val_bpb))
    final = roundtrip_plain
    if cfg.eval.sliding_stride > 0 or cfg.eval.ttt != "none":
        final = evaluate(scored_model, val_tokens, None, cfg.eval, token_bytes=val_bytes)
    train_tokens = steps * cfg.train.batch_tokens
    train_seconds = timing["train_seconds"]
    result: dict[str, Any] = {
        "recipe": cfg.recipe, "scale": cfg.scale, "seed": cfg.seed,
        "val_loss": final.val_loss, "val_bpb": final.val_bpb,
        "val_bpb_prequant": prequant.val_bpb, "val_loss_prequant": prequant.val_loss,
        "val_bpb_plain": roundtrip_plain.val_bpb,
        **{k: sizes[k] for k in ("artifact_bytes", "code_bytes", "model_bytes", "header_bytes", "under_limit",
                                 "limit_bytes", "compressor", "fit")},
        "artifact_sha256": file_sha256(artifact),  # pgolf submit checks the artifact is still the one scored
        "steps": steps, "train_tokens": train_tokens, "train_seconds": train_seconds,
        "eval_seconds": final.seconds if final is not roundtrip_plain else roundtrip_plain.seconds,
        "tokens_per_second": train_tokens / max(train_seconds, 1e-9),
        "world_size": rt.world_size, "device": device_name(rt.device), "torch_version": torch.__version__,
        "val_targets": final.targets, "val_bytes": final.bytes,
        "val_tokens_limited": cfg.data.val_tokens_limit > 0,
        "byte_source": cfg.data.byte_source, "text_transform": cfg.data.text_transform,
        "eval_mode": final.mode, "eval_tail": final.tail, "legal": final.legal,
        "document_independent": final.document_independent, "averaging": averaging,
        "averaging_detail": averager.describe(), "swa_snapshots": averager.swa_count,
        **timing, "pack_seconds": pack_s, **device_memory(rt.device),
    }
    if rt.is_main:
        write_json(run_dir / "result.json", result)
        LogWriter(run_dir / "log.jsonl").write({"step": steps, "val_loss": final.val_loss, "val_bpb": final.val_bpb})
        report = optional_module("pgolf.training.report", cfg.train)  # loss.png, the summary: not in a train_gpt.py
        if report is not None:
            report.plot_losses(run_dir)
        ckpt = optional_module("pgolf.training.checkpoint", cfg.train)
        if ckpt is not None and not cfg.train.keep_checkpoint:
            ckpt.remove_checkpoint(run_dir)
        if show and report is not None:
            print(report.summary(result, run_dir))
        if not result["under_limit"]:
            fitted = (f" quant.fit failed: {sizes['fit']['message']}." if cfg.quant.fit and sizes["fit"]
                      else " (quant.fit=true prunes it under)")
            print(f"WARNING: the artifact is OVER the {sizes['limit_bytes']:,}-byte limit by "
                  f"{result['artifact_bytes'] - sizes['limit_bytes']:,} bytes; this run cannot be submitted as it is."
                  f"{fitted}", file=sys.stderr)
    barrier(after_rank0_phase=True)  # rank 0 wrote result.json, loss.png and the summary
    return result
