"""The device benchmark: one run (at most 8 minutes on one H100/H200) that proves pgolf's CUDA path, or fails.

It writes its JSON after every section (a run cut short keeps what it measured) and exits non-zero when a check
fails. Sections, in order:
  environment  torch / Triton / CUDA versions, the GPU, the attention backend `auto` picks (plain and document
               masks), which optional packages are there, and a measured bf16 matmul peak;
  dtypes       the dtypes that actually reach the attention kernel (q, k, v) in a bf16-autocast training forward and
               backward of baseline and pr1536, and the dtypes GPTQ's Hessians see and sum in (asserted: q, k, v
               share one dtype; the Hessian sums are fp32);
  parity       every attention backend that runs here (SDPA, flex_attention, FlashAttention-3 where
               importable) against the fp32 math reference on outputs AND gradients of q, k, v, with document
               masks of short documents, at a tolerance that a one-token mask error fails (asserted: the same
               reference with one document boundary moved by one token is out of tolerance), and document
               isolation (asserted: changing one document's q, k, v leaves every other position's output as it was);
  train_*      the real `pgolf.train` loop at full size for baseline and pr1536 on the sample shards: ms/step and
               tokens/s per phase (pr1536: plain steps, then looped steps, timed apart; each phase's first step,
               which holds the switch, left out), MFU against the 989
               TFLOP/s spec and the measured matmul peak, peak allocated and reserved memory, compile (priming)
               seconds, the share of the `train()` call's wall time the 600 s clock did not count and where it
               went, and for pr1536 the end of the run: GPTQ calibration, packing, evaluation/TTT seconds;
  training_kernels  train.fused_mlp (Triton) and train.fused_ce (liger-kernel) against their PyTorch references,
               forward and backward, fp32 and bf16 (benchmarks/kernels_gpu.py; asserted within its tolerance);
  reference    the challenge's own train_gpt.py (--train-gpt PATH, read at run time, never part of pgolf) on
               the same GPU, data and batch: its ms/step beside pgolf's baseline, and the ratio;
  targets      baseline >= 1.25x the reference's tokens/s; pr1536 >= 1.02 M (plain) and 0.70 M (looped)
               tokens/s per GPU (#1536's log on 8 x H100), each reported as met or not (measured, not asserted).

On the device machine (Python 3.12, torch 2.11 + Triton, no FlashAttention package, no network; brotli,
zstandard and tomli-w missing): carry the three wheels and the sample data in ignored folders. Once, here, in
the repository root:

    echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl brotli zstandard tomli-w
    mkdir -p .gpu_data && cp -r ../shared/data/datasets ../shared/data/tokenizers .gpu_data/
    git -C /work/.mirror/openai+parameter-golf/repo show HEAD:train_gpt.py > .gpu_data/train_gpt.py

then the device tool's `run` with carry [".whl", ".gpu_data"] and timeout_s 540:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; PYTHONUNBUFFERED=1 python3 \\
        benchmarks/gpu.py --data .gpu_data --train-gpt .gpu_data/train_gpt.py --out $OUT/gpu_h200.json

Without brotli the pr1536 run packs with zlib (recorded as `compressor_fallback`); without tomli-w pgolf cannot
write a run's config.toml, and the script stops at once saying which wheels to carry.

`python benchmarks/gpu.py --cpu-smoke` runs every section at micro size on the CPU (the reference section only
with --train-gpt, which needs CUDA); tests/test_gpu_benchmark.py runs it in CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import pgolf
from pgolf.model import attention as attention_module
from pgolf.quant import gptq as gptq_module
from pgolf.training import loop
from pgolf.training.loop import choose_attention_backend
from pgolf.training.plan import GPUS, flops_per_token
from pgolf.training.runs import write_json

from kernels_gpu import kernel_parity  # benchmarks/kernels_gpu.py: train.fused_mlp / fused_ce vs their references

REPO = Path(__file__).resolve().parent.parent
SPEC_PEAK_FLOPS = GPUS["h100"]["peak_bf16_flops"]  # 989 TFLOP/s dense bf16 (H100 SXM; the H200 has the same)
DATA = {"baseline": ("fineweb10B_sp1024_sample", "fineweb_1024_bpe.model"),
        "pr1536": ("fineweb10B_sp8192_sample", "fineweb_8192_bpe.model")}
TARGETS = {"baseline_vs_reference": 1.25, "pr1536_plain_tokens_per_s": 1.02e6, "pr1536_looped_tokens_per_s": 0.70e6}
KERNELS = ("attention_math", "attention_sdpa", "attention_flex", "attention_flash3")  # model.attention's backends
OPTIONAL = ("brotli", "zstandard", "tomli_w", "flash_attn_interface", "triton")
# Micro sizes of --cpu-smoke: the recipes' tiny scale cut to a few steps on a few hundred tokens.
SMOKE = {"train.steps": 6, "train.batch_tokens": 512, "train.micro_batch_tokens": 512, "train.seq_len": 128,
         "train.log_every": 1, "data.val_tokens_limit": 1025, "quant.gptq_calib_batches": 1,
         "eval.ttt_batch_docs": 4, "train.compile_priming_steps": 2, "quant.compressor": "zlib"}


class CheckFailed(AssertionError):
    """A benchmark check (parity, isolation, dtypes) failed; the JSON says which and by how much."""


class Report:
    """The JSON, written after every section; a section that raises is recorded and the run goes on."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path, self.data, self.failures = path, {**meta, "sections": {}}, []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        start = time.perf_counter()
        print(f"[gpu.py] {name} ...", flush=True)
        try:
            out = fn()
        except Exception as exc:  # recorded, reported, and the exit status says so
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"[gpu.py] {name} FAILED: {exc}", flush=True)
        out["seconds"] = time.perf_counter() - start
        self.data["sections"][name] = out
        self.write()
        return out if "error" not in out else None

    def write(self) -> None:
        self.data["failures"] = self.failures
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, smoke: bool) -> float:
    """FLOP/s of a large bf16 matmul (fp32 at 512 on a CPU smoke run), mean of 10 after 3 warm-ups."""
    n, dtype = (512, torch.float32) if smoke else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start)


def recipe_config(name: str, data: Path, smoke: bool, extra: dict[str, Any] | None = None) -> pgolf.Config:
    folder, tokenizer = DATA[name]
    overrides = {"data.path": str(data / "datasets" / folder), "data.tokenizer": str(data / "tokenizers" / tokenizer)}
    if smoke:
        overrides.update(SMOKE)
    overrides.update(extra or {})
    return pgolf.load_recipe(name, scale="tiny" if smoke else "full", overrides=overrides)


# ----------------------------------------------------------------------------- sections

def environment(device: torch.device, smoke: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": _version("triton"), "packages": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL},
        "attention_backend_auto": {"plain": choose_attention_backend("auto", device, False),
                                   "document_masks": choose_attention_backend("auto", device, True)},
    }
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        out["capability"] = list(torch.cuda.get_device_capability(device))
        out["memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    else:
        out["device"] = f"cpu ({platform.machine()})"
    out["matmul_peak_flops"] = matmul_peak_flops(device, smoke)
    out["spec_peak_flops"] = SPEC_PEAK_FLOPS
    return out


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # absent or without a version: reported as such
        return None


def dtypes(device: torch.device, data: Path, smoke: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: set[tuple[str, ...]] = set()
    kernels = {n: getattr(attention_module, n) for n in KERNELS if hasattr(attention_module, n)}

    def recorded(kernel):
        def call(q, k, v, *args, **kwargs):  # what the kernel itself receives
            seen.add(tuple(str(t.dtype).removeprefix("torch.") for t in (q, k, v)))
            return kernel(q, k, v, *args, **kwargs)
        return call

    for n, kernel in kernels.items():
        setattr(attention_module, n, recorded(kernel))
    try:
        for name in ("baseline", "pr1536"):
            cfg = recipe_config(name, data, smoke)
            model = pgolf.build_model(cfg.model).to(device)
            model.attention_backend = choose_attention_backend("auto", device, cfg.model.doc_attention)
            model.fused_loss = device.type == "cuda"
            model.set_looping(True)
            ids = torch.randint(2, cfg.model.vocab_size, (1, cfg.train.seq_len), device=device)
            seen.clear()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(ids, ids)
            loss.backward()
            out[f"attention_{name}"] = sorted(seen)
            if any(len(set(s)) != 1 for s in seen):
                raise CheckFailed(f"{name}: attention received mixed q/k/v dtypes {sorted(seen)}")
            del model, loss
    finally:
        for n, kernel in kernels.items():
            setattr(attention_module, n, kernel)
    out["gptq"] = _gptq_dtypes(device, data, smoke)
    if out["gptq"]["sum"] != ["float32"]:
        raise CheckFailed(f"GPTQ Hessians summed in {out['gptq']['sum']}, not float32")
    return out


def _gptq_dtypes(device: torch.device, data: Path, smoke: bool) -> dict[str, Any]:
    from pgolf.data.loader import DistributedTokenLoader
    from pgolf.data.shards import find_shards

    cfg = recipe_config("pr1536", data, smoke, {"quant.gptq_calib_batches": 1, "train.batch_tokens": 8 * 2048 if not smoke else 512})
    model = pgolf.build_model(cfg.model).to(device)
    model.attention_backend = choose_attention_backend("auto", device, cfg.model.doc_attention)
    loader = DistributedTokenLoader(find_shards(cfg.data.path, cfg.data.train_pattern, "training"), 0, 1, cfg.model.vocab_size)
    inputs, sums = set(), set()
    real_add = gptq_module.HessianAccumulator.add

    def add(self, name, x):
        inputs.add(str(x.dtype).removeprefix("torch."))
        real_add(self, name, x)
        sums.add(str(self.sums[name].dtype).removeprefix("torch."))

    gptq_module.HessianAccumulator.add = add
    try:
        gptq_module.collect_hessians(model, loader, cfg, device)
    finally:
        gptq_module.HessianAccumulator.add = real_add
    return {"input": sorted(inputs), "sum": sorted(sums)}


def _documents(B: int, T: int, device: torch.device, seed: int) -> torch.Tensor:
    """(B, T) document ids of short documents (4..40 tokens): a one-token mask error moves a large share."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        ids, doc, pos = torch.empty(T, dtype=torch.int32), 0, 0
        while pos < T:
            n = int(torch.randint(4, 41, (1,), generator=g))
            ids[pos:pos + n] = doc
            pos, doc = pos + n, doc + 1
        rows.append(ids)
    return torch.stack(rows).to(device)


def parity(device: torch.device, smoke: bool) -> dict[str, Any]:
    B, H, Hkv, T, hd = (2, 4, 2, 128, 32) if smoke else (4, 8, 4, 1024, 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tol = {"out": 2.5e-2, "grad": 4e-2} if dtype == torch.bfloat16 else {"out": 1e-4, "grad": 2e-4}
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, h, T, hd, generator=g).to(device, dtype) for h in (H, Hkv, Hkv))
    grad_out = torch.randn(B, H, T, hd, generator=g).to(device)
    doc_ids = _documents(B, T, device, 1)

    def run(backend: str, docs: torch.Tensor, q=q, k=k, v=v) -> tuple[torch.Tensor, ...]:
        leaves = [t.detach().clone().float().requires_grad_() if backend == "math" else t.detach().clone().requires_grad_()
                  for t in (q, k, v)]
        ctx = attention_module.AttentionContext(cos=torch.empty(0), sin=torch.empty(0), rotary_dims=0, doc_ids=docs,
                                                backend=backend)
        out = attention_module.attend(*leaves, ctx)
        (out.float() * grad_out).sum().backward()
        return (out.detach().float(), *(t.grad.float() for t in leaves))

    def rel(a: tuple, b: tuple) -> dict[str, float]:
        names = ("out", "grad_q", "grad_k", "grad_v")
        return {n: float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for n, x, y in zip(names, a, b)}

    def within(err: dict[str, float]) -> bool:
        return err["out"] <= tol["out"] and all(err[n] <= tol["grad"] for n in ("grad_q", "grad_k", "grad_v"))

    reference = run("math", doc_ids)
    shifted = doc_ids.clone()
    first_end = int((doc_ids[0] == 0).sum())
    shifted[0, first_end] = 0  # one token moved into the previous document: a one-token mask error
    one_token = rel(run("math", shifted), reference)
    if within(one_token):
        raise CheckFailed(f"the tolerance {tol} does not catch a one-token mask error ({one_token})")
    out: dict[str, Any] = {"dtype": str(dtype), "shape": [B, H, Hkv, T, hd], "tolerance": tol,
                           "one_token_mask_error": one_token, "backends": {}}
    backends = ["sdpa", "flex"] + (["fa3"] if attention_module.flash3_available() else [])
    failed = []
    for backend in backends:
        try:
            got = run(backend, doc_ids)
        except Exception as exc:  # a backend this torch or device lacks (flex off CUDA, say): recorded
            out["backends"][backend] = {"unavailable": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        err = rel(got, reference)
        # isolation: new q, k, v for document 0 of row 0; every other position's output must not move
        in_doc = (doc_ids == 0) & (torch.arange(B, device=device)[:, None] == 0)
        mask = in_doc[:, None, :, None]
        q2, k2, v2 = (torch.where(mask, torch.randn_like(t.float()).to(t.dtype), t) for t in (q, k, v))
        moved = run(backend, doc_ids, q2, k2, v2)[0]
        outside = ~in_doc[:, None, :, None].expand_as(moved)
        leak = float((moved - got[0]).abs()[outside].max() / got[0].abs().max())
        out["backends"][backend] = {"error": err, "within_tolerance": within(err), "isolation_leak": leak}
        if not within(err) or leak > 1e-6:
            failed.append(backend)
    if failed:
        raise CheckFailed(f"attention parity or isolation failed for {failed}: {out['backends']}")
    return out


def train_recipe(name: str, device: torch.device, data: Path, smoke: bool, steps: int, val_tokens: int,
                 peak: float | None, work: Path) -> dict[str, Any]:
    extra: dict[str, Any] = {"train.max_wallclock_s": 0.0, "train.val_every": 0, "train.log_every": 1}
    if not smoke:
        extra.update({"train.steps": steps, "data.val_tokens_limit": val_tokens})
    fallback = None
    if name == "pr1536":
        extra["model.recurrence_start_frac"] = 0.5  # half the steps plain, half looped: both phases timed
        if importlib.util.find_spec("brotli") is None:
            extra["quant.compressor"] = fallback = "zlib"
    cfg = recipe_config(name, data, smoke, extra)
    marks: list[tuple[int, float, bool]] = []
    models = []
    real_build = loop.build_model
    loop.build_model = lambda *a, **k: models.append(real_build(*a, **k)) or models[-1]
    start = time.perf_counter()
    try:
        result = pgolf.train(cfg, work / name, progress=False, device=device.type,
                             step_callback=lambda s, i: marks.append((s, time.perf_counter(), models[0].looping)))
    finally:
        loop.build_model = real_build
    wall = time.perf_counter() - start
    out: dict[str, Any] = {"config": {"steps": result["steps"], "batch_tokens": cfg.train.batch_tokens,
                                      "seq_len": cfg.train.seq_len, "compile": cfg.train.compile,
                                      "compile_priming_steps": cfg.train.compile_priming_steps,
                                      "attention_backend": choose_attention_backend(cfg.model.attention_backend, device,
                                                                                    cfg.model.doc_attention)},
                           "compressor_fallback": fallback, "phases": {}}
    late_loop = cfg.model.recurrence_start_frac > 0
    for phase, looped in ((("plain", False), ("looped", True)) if late_loop else (("all", True),)):
        times = [t for _, t, lp in marks if lp == looped]
        if len(times) < 3:
            continue
        step_s = (times[-1] - times[1]) / (len(times) - 2)  # each phase's first step holds the switch
        tps = cfg.train.batch_tokens / step_s
        fpt = flops_per_token(cfg, looped=looped)
        out["phases"][phase] = {"steps": len(times), "ms_per_step": 1000 * step_s, "tokens_per_s": tps,
                                "flops_per_token": fpt, "mfu_spec": tps * fpt / SPEC_PEAK_FLOPS,
                                "mfu_measured_peak": tps * fpt / peak if peak else None}
    counted = result["train_seconds"]
    out.update({
        "train_seconds": counted, "tokens_per_s_counted": result["tokens_per_second"],
        "compile_seconds": result["priming_seconds"], "calibration_seconds": result["calibration_seconds"],
        "pack_seconds": result["pack_seconds"], "eval_seconds": result["eval_seconds"], "eval_mode": result["eval_mode"],
        "val_targets": result["val_targets"], "val_bpb": result["val_bpb"], "artifact_bytes": result["artifact_bytes"],
        "train_call_wall_seconds": wall, "uncounted_fraction_of_train_call": 1 - counted / wall,
        "uncounted_breakdown_s": {"compile_priming": result["priming_seconds"],
                                  "validation_in_loop": result["paused_seconds"],
                                  "calibration_counted_separately": result["calibration_seconds"],
                                  "pack": result["pack_seconds"],
                                  "rest (setup, evaluations, writes)": wall - counted - result["priming_seconds"]
                                  - result["paused_seconds"] - result["calibration_seconds"] - result["pack_seconds"]},
        "peak_memory": {k: v for k, v in result.items() if "peak_memory" in k},
    })
    return out


def reference(train_gpt: Path, device: torch.device, data: Path, steps: int) -> dict[str, Any]:
    """The challenge's train_gpt.py, unmodified, in a scratch folder, at the baseline's settings on this GPU."""
    if device.type != "cuda":
        raise CheckFailed("the challenge's train_gpt.py runs on CUDA only")
    folder, tokenizer = DATA["baseline"]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(train_gpt, Path(tmp) / "train_gpt.py")
        env = {**os.environ, "DATA_PATH": str((data / "datasets" / folder).resolve()),
               "TOKENIZER_PATH": str((data / "tokenizers" / tokenizer).resolve()), "RUN_ID": "gpu_bench",
               "ITERATIONS": str(steps), "WARMUP_STEPS": "20", "MAX_WALLCLOCK_SECONDS": "0", "VAL_LOSS_EVERY": "0",
               "TRAIN_LOG_EVERY": "1", "TRAIN_BATCH_TOKENS": "524288", "TRAIN_SEQ_LEN": "1024"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=300)
        wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    times = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", log)]
    if proc.returncode != 0 or len(times) < 3:
        raise CheckFailed(f"train_gpt.py exited {proc.returncode} with {len(times)} step lines: {log[-2000:]}")
    (s1, t1), (s2, t2) = times[1], times[-1]
    step_s = (t2 - t1) / 1000 / (s2 - s1)
    return {"steps": s2, "ms_per_step": 1000 * step_s, "tokens_per_s": 524288 / step_s, "wall_seconds": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                        help="folder with datasets/fineweb10B_sp{1024,8192}_sample and tokenizers/")
    parser.add_argument("--train-gpt", help="the challenge's train_gpt.py (read at run time)")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per recipe (full size)")
    parser.add_argument("--val-tokens", type=int, default=131073, help="validation tokens scored at the end of each run")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section at micro size on the CPU")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu_<device>.json)")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: this benchmark runs on a GPU (--cpu-smoke runs it at micro size on the CPU)", file=sys.stderr)
        return 2
    missing = [m for m in ("tomli_w",) if importlib.util.find_spec(m) is None]
    if missing:
        print(f"missing {missing}: pgolf writes each run's config.toml with tomli-w; carry the wheels as the "
              f"docstring of benchmarks/gpu.py says (brotli, zstandard, tomli-w)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = Path(args.data)
    name = "cpu_smoke" if smoke else torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"gpu_{name}.json")
    report = Report(out, {"benchmark": "gpu", "cpu_smoke": smoke, "command": " ".join(sys.argv),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    env = report.run("environment", lambda: environment(device, smoke))
    peak = env["matmul_peak_flops"] if env and not smoke else None
    report.run("dtypes", lambda: dtypes(device, data, smoke))
    report.run("parity", lambda: parity(device, smoke))
    if smoke:  # the Triton kernels are CUDA-only; tests/test_kernels.py runs them under Triton's interpreter
        report.data["sections"]["training_kernels"] = {"skipped": "CUDA only"}
    else:
        report.run("training_kernels", lambda: kernel_parity(device))
    with tempfile.TemporaryDirectory() as work:
        runs = {r: report.run(f"train_{r}", lambda r=r: train_recipe(r, device, data, smoke, args.steps,
                                                                        args.val_tokens, peak, Path(work)))
                for r in ("baseline", "pr1536")}
    ref = None
    if args.train_gpt:
        ref = report.run("reference", lambda: reference(Path(args.train_gpt), device, data, args.steps))
    else:
        report.data["sections"]["reference"] = {"skipped": "no --train-gpt given"}
    targets: dict[str, Any] = {}
    base = runs.get("baseline")
    if ref and base and "all" in base["phases"]:
        ratio = base["phases"]["all"]["tokens_per_s"] / ref["tokens_per_s"]
        targets["baseline_vs_reference"] = {"ratio": ratio, "target": TARGETS["baseline_vs_reference"],
                                            "met": ratio >= TARGETS["baseline_vs_reference"]}
    pr = runs.get("pr1536")
    for phase in ("plain", "looped"):
        if pr and phase in pr["phases"] and not smoke:
            key = f"pr1536_{phase}_tokens_per_s"
            tps = pr["phases"][phase]["tokens_per_s"]
            targets[key] = {"tokens_per_s": tps, "target": TARGETS[key], "met": tps >= TARGETS[key]}
    report.data["targets"] = targets
    report.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report.write()
    print(f"wrote {out}")
    for failure in report.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
