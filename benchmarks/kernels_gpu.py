"""Training kernels on a GPU: train.fused_mlp (own Triton LeakyReLU^2 MLP) and train.fused_ce (liger-kernel's
fused linear CE with softcap) against their PyTorch references, forward and backward, and their speed.

    python benchmarks/kernels_gpu.py [--out benchmarks/results/kernels_gpu_<device>.json]

Parity, at #1855's shapes (d 512, hidden 2048, vocab 8192, softcap 30): in fp32 each kernel against the PyTorch
path (max |diff| / max |reference|); under bf16 autocast (as training runs) the kernel and the PyTorch path each
against an fp32 truth, so the kernel passes when its error is of the PyTorch path's size. Then the whole pr1536
model with both kernels attached against the same model without them (pgolf.training.fastpath), and the time
of one forward + backward of each kernel and of the path it replaces (CUDA events, median of 20). fp32 matmuls
run without TF32 here, on both sides. A parity beyond TOLERANCE raises KernelMismatch (after the JSON is built).
benchmarks/gpu.py runs `kernel_parity` as its "training_kernels" section. tests/test_kernels.py runs the parity
part on a CPU under Triton's interpreter at small shapes. Without liger-kernel installed (a pure-Python wheel:
`pip download --no-deps liger-kernel` and carry it) the CE parts say so and only the MLP kernel is checked.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

import pgolf
from pgolf.model.loss import softcapped_cross_entropy as chunked_ce
from pgolf.model.precision import autocast_for
from pgolf.training.fastpath import check_training_kernels
from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
FULL = {"tokens": 8192, "d": 512, "hidden": 2048, "vocab": 8192}
# fp32: kernel vs PyTorch, max |diff| / max |ref|. bf16: the kernel's error against fp32 truth may be at most
# BF16_FACTOR x the PyTorch path's own error (or BF16_FLOOR, whichever is larger).
TOLERANCE = {"float32": 1e-4}
BF16_FACTOR, BF16_FLOOR = 2.0, 1e-2


class KernelMismatch(AssertionError):
    """A training kernel disagrees with its reference beyond TOLERANCE."""


def has_liger() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _kernels():
    """(fused_mlp, liger CE or None when liger-kernel is not installed)."""
    mlp = importlib.import_module("pgolf.model.kernels.mlp_triton").fused_mlp
    ce = importlib.import_module("pgolf.model.kernels.ce_liger").softcapped_cross_entropy if has_liger() else None
    return mlp, ce


@contextmanager
def _no_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def _run(fn, inputs: list[torch.Tensor], grad_out: torch.Tensor | None, dtype: str):
    """fn(*inputs) and the gradients of every input (fp32 leaves), under autocast for dtype 'bfloat16'."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with autocast_for(leaves[0].device, dtype):
        out = fn(*leaves)
    if grad_out is not None:
        out.backward(grad_out.to(out.dtype))
    else:
        out.backward()
    return [out.detach()] + [t.grad for t in leaves if t.requires_grad]


def _compare(kernel, reference, inputs, grad_out, dtype: str) -> dict:
    """fp32: kernel vs reference. bf16: both vs the reference in fp32 ('kernel' and 'pytorch' errors)."""
    names = ["out"] + [f"grad{i}" for i, t in enumerate(inputs) if t.is_floating_point()]
    truth = _run(reference, inputs, grad_out, "float32")
    got = _run(kernel, inputs, grad_out, dtype)
    if dtype == "float32":
        return {n: _rel(g, t) for n, g, t in zip(names, got, truth)}
    eager = _run(reference, inputs, grad_out, dtype)
    return {n: {"kernel": _rel(g, t), "pytorch": _rel(e, t)} for n, g, e, t in zip(names, got, eager, truth)}


def kernel_parity(device: torch.device, shapes: dict | None = None, dtypes=("float32", "bfloat16"),
                  slope: float = 0.5, cap: float = 30.0) -> dict:
    """Max relative errors of both kernels against their references at `shapes` (FULL by default)."""
    s = {**FULL, **(shapes or {})}
    fused_mlp, liger_ce = _kernels()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["tokens"], s["d"], generator=g).to(device)
    w_fc = (torch.randn(s["hidden"], s["d"], generator=g) / s["d"] ** 0.5).to(device)
    w_proj = (torch.randn(s["d"], s["hidden"], generator=g) / s["hidden"] ** 0.5).to(device)
    dout = torch.randn(s["tokens"], s["d"], generator=g).to(device)
    weight = (torch.randn(s["vocab"], s["d"], generator=g) * 0.05).to(device)
    targets = torch.randint(0, s["vocab"], (s["tokens"],), generator=g).to(device)

    def eager_mlp(x, w_fc, w_proj):
        return F.linear(F.leaky_relu(F.linear(x, w_fc), slope).square(), w_proj)

    def reference_ce(h, w, t):
        z = F.linear(h, w).float()
        return F.cross_entropy(cap * torch.tanh(z / cap), t)

    report: dict = {"shapes": s, "slope": slope, "softcap": cap}
    with _no_tf32():
        for dtype in dtypes:
            report[f"mlp_{dtype}"] = _compare(lambda a, b, c: fused_mlp(a, b, c, slope), eager_mlp,
                                              [x, w_fc, w_proj], dout, dtype)
            report[f"ce_chunked_{dtype}"] = _compare(lambda h, w, t: chunked_ce(h, w, t, cap), reference_ce,
                                                     [x, weight, targets], None, dtype)
            if liger_ce is None:
                report[f"ce_{dtype}"] = {"skipped": "liger-kernel is not installed"}
                continue
            report[f"ce_{dtype}"] = _compare(lambda h, w, t: liger_ce(h, w, t, cap), reference_ce,
                                             [x, weight, targets], None, dtype)
    report["failures"] = parity_failures(report)
    if report["failures"]:
        raise KernelMismatch(json.dumps(report))
    return report


def parity_failures(report: dict) -> list[str]:
    """'part.value: error' for every comparison of `report` beyond TOLERANCE."""
    failures = []
    for part, errors in report.items():
        if not isinstance(errors, dict) or "skipped" in errors or part in ("shapes",):
            continue
        for name, err in errors.items():
            if isinstance(err, dict):  # bf16: the kernel against the PyTorch path's own error
                if err["kernel"] > max(BF16_FACTOR * err["pytorch"], BF16_FLOOR):
                    failures.append(f"{part}.{name}: {err['kernel']:.2e} (pytorch {err['pytorch']:.2e})")
            elif err > TOLERANCE["float32"]:
                failures.append(f"{part}.{name}: {err:.2e}")
    return failures


def model_parity(device: torch.device, recipe: str = "pr1536") -> dict:
    """The full-size model with both kernels against itself without them (bf16 autocast, 2 x 2048 tokens)."""
    cfg = pgolf.load_recipe(recipe)
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model).to(device)
    model.set_looping(True)
    ids = torch.randint(0, cfg.model.vocab_size, (2, cfg.train.seq_len + 1), device=device)
    fused_mlp, liger_ce = _kernels()
    kernels = {"mlp": fused_mlp} | ({"loss": liger_ce} if liger_ce is not None else {})
    return check_training_kernels(model, ids, kernels, "bfloat16")


def _time_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_timing(device: torch.device, tokens: int = 98_304, slope: float = 0.5, cap: float = 30.0) -> dict:
    """ms of one forward + backward under bf16 autocast: each kernel and the PyTorch path it replaces."""
    fused_mlp, liger_ce = _kernels()
    d, hidden, vocab = FULL["d"], FULL["hidden"], FULL["vocab"]
    x = torch.randn(tokens, d, device=device, requires_grad=True)
    w_fc = torch.randn(hidden, d, device=device, requires_grad=True)
    w_proj = torch.randn(d, hidden, device=device, requires_grad=True)
    weight = torch.randn(vocab, d, device=device, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device=device)

    def step(loss_fn):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss_fn().float().sum().backward()
        return run

    out = {
        "tokens": tokens,
        "mlp_triton_ms": _time_ms(step(lambda: fused_mlp(x, w_fc, w_proj, slope))),
        "mlp_pytorch_ms": _time_ms(step(lambda: F.linear(F.leaky_relu(F.linear(x, w_fc), slope).square(), w_proj))),
        "ce_chunked_ms": _time_ms(step(lambda: chunked_ce(x, weight, targets, cap))),
    }
    if liger_ce is not None:
        out["ce_liger_ms"] = _time_ms(step(lambda: liger_ce(x, weight, targets, cap)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: the kernels are CUDA-only (tests/test_kernels.py runs them under the interpreter)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    report = {"benchmark": "kernels_gpu", "device": name, "torch": torch.__version__,
              "parity": kernel_parity(device), "model": model_parity(device), "timing": kernel_timing(device)}
    print(json.dumps(report, indent=1))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"kernels_gpu_{name.replace(' ', '_').replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
