"""Full-Hessian GPTQ (TECHNIQUES.md §9.6): calibration Hessians and the column-wise OBS quantizer.

For a weight W (rows = outputs, cols = inputs) and layer inputs X (tokens, cols), GPTQ minimises the output
error ||X W^T - X W_hat^T||^2 = tr((W - W_hat) H (W - W_hat)^T) with H = X^T X. Columns are quantized one at a
time in act-order (descending diag H); each column's rounding error is pushed onto the not-yet-quantized
columns through the upper Cholesky factor U of H^-1 (the optimal brain surgeon update):
    q_j = clamp(round(w_j / s), +-clip_max),  e_j = (w_j - q_j s) / U_jj,  W[:, j+1:] -= e_j U[j, j+1:].
The scales s are fixed before the loop (SDClip), so clipping only happens through the clamp of q.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config, QuantConfig
from ..config.optional import require_module
from ..model.layers import Linear, qclass_of
from ..model.precision import autocast_for
from .quantize import clip_max, method_for, plan_tensor


class GPTQError(ValueError):
    """The Hessian of a tensor cannot be used (wrong shape, not finite)."""


# ----------------------------------------------------------------------------- the quantizer

def _inverse_cholesky_upper(hessian: Tensor, damp: float) -> Tensor:
    """U = chol(H^-1)^T (upper), after damping H += damp * mean(diag H) * I; more damping if H is not PD."""
    n = hessian.shape[0]
    eye = torch.eye(n, dtype=hessian.dtype, device=hessian.device)
    base = float(hessian.diagonal().mean())
    base = base if base > 0 else 1.0
    for attempt in range(6):
        damped = hessian + max(damp, 1e-6) * (10.0 ** attempt) * base * eye
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise GPTQError(f"the Hessian ({n}x{n}) is not positive definite even after damping with "
                    f"{max(damp, 1e-6) * 1e5:g} x mean(diag H) (see quant.gptq_damp)")


def gptq_quantize(w: Tensor, hessian: Tensor, scales: Tensor, bits: int, damp: float = 0.01,
                  block: int = 128) -> Tensor:
    """int8 codes of W (rows, cols) on the fixed per-row grid `scales` (fp16), minimising the H-weighted error."""
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise GPTQError(f"Hessian of shape {tuple(hessian.shape)} does not match a weight with {cols} input columns")
    if not torch.isfinite(hessian).all():
        raise GPTQError("the Hessian has non-finite entries (calibration activations overflowed)")
    qmax = clip_max(bits)
    W = w.detach().float().clone()
    H = hessian.detach().double().clone()  # the inverse and its Cholesky factor in fp64, the sweep in fp32
    dead = H.diagonal() == 0                      # inputs never active: their columns cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = torch.argsort(H.diagonal(), descending=True, stable=True)  # act-order
    W, H = W[:, order], H[order][:, order]
    U = _inverse_cholesky_upper(H, damp).float()
    s = scales.float()
    Q = torch.zeros_like(W)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W_blk = W[:, start:end].clone()
        err_blk = torch.zeros_like(W_blk)
        U_blk = U[start:end, start:end]
        for j in range(end - start):
            col = W_blk[:, j]
            q = torch.clamp(torch.round(col / s), -qmax, qmax)
            Q[:, start + j] = q
            err = (col - q * s) / U_blk[j, j]
            W_blk[:, j:] -= err[:, None] * U_blk[j, j:][None, :]   # W[:, j:] -= e_j (x) U[j, j:]
            err_blk[:, j] = err
        W[:, end:] -= err_blk @ U[start:end, end:]                     # lazy update of the later blocks
    codes = torch.empty_like(Q)
    codes[:, order] = Q                                                 # undo act-order
    return codes.to(torch.int8)


# ----------------------------------------------------------------------------- calibration

def hessian_targets(model: nn.Module, qcfg: QuantConfig) -> dict[str, nn.Module]:
    """{parameter name: Linear module} of every weight that the export quantizes with GPTQ."""
    targets = {}
    for module_name, module in model.named_modules():
        if isinstance(module, Linear):
            name = f"{module_name}.weight" if module_name else "weight"
            qclass = qclass_of(module.weight)
            if plan_tensor(module.weight, qclass, qcfg, name).encoding == "int" and method_for(qclass, qcfg) == "gptq":
                targets[name] = module
    return targets


def _tied_embedding_quantized_by_gptq(model: nn.Module, qcfg: QuantConfig) -> bool:
    emb = getattr(model, "tok_emb", None)
    if emb is None or getattr(model, "lm_head", None) is not None:
        return False
    return plan_tensor(emb, "embed", qcfg, "tok_emb").encoding == "int" and method_for("embed", qcfg) == "gptq"


class HessianAccumulator:
    """Forward pre-hooks adding X^T X of each target's input; a looped block adds once per virtual use.

    The running sums are fp32 buffers and every product runs in fp32 outside autocast (under autocast the matmul
    would run, and its sum accumulate, in bf16: ~4e-3 relative error after a few adds, an indefinite H later).
    """

    def __init__(self, targets: dict[str, nn.Module]):
        self.sums: dict[str, Tensor] = {}
        self._handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in targets.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.add(name, args[0])
        return hook

    def add(self, name: str, x: Tensor) -> None:
        """H_name += X^T X, X = x flattened to (tokens, features), in fp32."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.detach().reshape(-1, x.shape[-1]).float()
            if name not in self.sums:
                self.sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
            self.sums[name].addmm_(x.T, x)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def collect_hessians(model: nn.Module, loader: Any, cfg: Config, device: torch.device | str,
                     stats: dict[str, float] | None = None) -> dict[str, Tensor]:
    """H = sum over calibration batches of X^T X, divided by the number of batches, per GPTQ-quantized weight.

    Calibration input: quant.gptq_calib_batches batches of train.batch_tokens / world_size training tokens
    drawn from `loader` (the training stream, after the tokens training used), or — with
    quant.gptq_calib_source = "generated" — sequences the model samples itself at temperature 0.8 (with a KV
    cache; `stats`, if given, receives the generation's seconds and token count).
    Each batch runs in forwards of at most train.micro_batch_tokens tokens (the whole batch in one forward
    would need tens of GB of activations per layer); H is a sum over tokens, so the split does not change it.
    The tied embedding is quantized as the output layer: its H is built from the final-norm output.
    Never validation data.
    """
    qcfg = cfg.quant
    device = torch.device(device)
    targets = hessian_targets(model, qcfg)
    with_embedding = _tied_embedding_quantized_by_gptq(model, qcfg)
    if not targets and not with_embedding:
        return {}
    n_batches = max(1, qcfg.gptq_calib_batches)
    # generated sequences are sampled before the hooks go in: the sampling forwards are no calibration input
    batches = (list(_generated_batches(model, cfg, device, n_batches, stats)) if qcfg.gptq_calib_source == "generated"
               else _training_batches(loader, cfg, n_batches))
    accumulator = HessianAccumulator(targets)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                for x in batch.split(calibration_rows(cfg)):
                    with autocast_for(device, cfg.train.dtype):
                        hidden = model.hidden(x.to(device))
                        if with_embedding:
                            accumulator.add("tok_emb", hidden)
                        if getattr(model, "lm_head", None) is not None and any(n.startswith("lm_head") for n in targets):
                            model.lm_head(hidden)
    finally:
        accumulator.remove()
        model.train(was_training)
    return {name: h / n_batches for name, h in accumulator.sums.items()}


def calibration_rows(cfg: Config) -> int:
    """Sequences per calibration forward: train.micro_batch_tokens worth (at least one)."""
    return max(1, cfg.train.micro_batch_tokens // cfg.train.seq_len)


def _training_batches(loader: Any, cfg: Config, n_batches: int):
    """Batches of train.batch_tokens global tokens; each rank takes its own share (no all-reduce, as #1536)."""
    for _ in range(n_batches):
        x, _targets = loader.next_batch(cfg.train.batch_tokens, cfg.train.seq_len, 1)
        yield x


@torch.no_grad()
def generate_calibration(model: nn.Module, n_seqs: int, seq_len: int, device: torch.device, seed: int,
                         temperature: float = 0.8, batch: int = 0, decoder: Any = None) -> Tensor:
    """(n_seqs, seq_len) token ids sampled by the model itself from BOS at `temperature` (#1019's calibration).

    `batch` rows are sampled together (0 = all n_seqs at once), from one generator seeded with `seed` on `device`.
    With `decoder` (the module pgolf.model.decode) each new token is one KV-cached decoding step; without it every
    token reruns the whole prefix, O(T^2): the reference that tests/test_decode.py checks the cache against (same
    tokens for the same seed and batch).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    bos = getattr(model, "bos_id", 1)
    rows = batch if batch > 0 else n_seqs
    out = []
    for first in range(0, n_seqs, rows):
        ids = torch.full((min(rows, n_seqs - first), seq_len), bos, dtype=torch.long, device=device)
        cache = decoder.KVCache(model, ids.size(0), max(1, seq_len - 1)) if decoder is not None else None
        for t in range(1, seq_len):
            if cache is None:
                logits = model(ids[:, :t])[:, -1]
            else:
                logits = decoder.decode(model, ids[:, t - 1 : t], cache)[:, -1]
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            ids[:, t] = torch.multinomial(probs, 1, generator=gen)[:, 0]
        out.append(ids)
    return torch.cat(out)


def _generated_batches(model: nn.Module, cfg: Config, device: torch.device, n_batches: int,
                       stats: dict[str, float] | None = None):
    """quant.gptq_calib_batches self-generated sequences of train.seq_len tokens, sampled all at once with the KV
    cache (pgolf.model.decode) in the training dtype; the seconds it took go to stats["calibration_generate_seconds"]."""
    decoder = require_module("pgolf.model.decode", cfg.quant)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with autocast_for(device, cfg.train.dtype):
        seqs = generate_calibration(model, n_batches, cfg.train.seq_len, device, cfg.seed, decoder=decoder)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if stats is not None:
        stats["calibration_generate_seconds"] = time.perf_counter() - start
        stats["calibration_generated_tokens"] = seqs.numel()
    model.train(was_training)
    per_batch = max(1, math.ceil(seqs.shape[0] / n_batches))
    for first in range(0, seqs.shape[0], per_batch):
        yield seqs[first : first + per_batch]


def warn_over_cap(cfg: Config, calibration_s: float, capped_s: float, timing: dict[str, Any]) -> None:
    """The training loop's warnings when calibration took more than its reserve (quant.gptq_reserve_s) or
    training + calibration more than train.max_wallclock_s (`timing`: the loop's calibration_report fields)."""
    cap, reserve = cfg.train.max_wallclock_s, cfg.quant.gptq_reserve_s
    if timing["calibration_over_reserve"]:
        print(f"WARNING: GPTQ calibration took {calibration_s:.1f} s, over quant.gptq_reserve_s = {reserve:g} s; raise "
              f"it or lower quant.gptq_calib_batches", file=sys.stderr)
    if not timing["within_cap"]:
        print(f"WARNING: training + GPTQ calibration took {capped_s:.1f} s, over train.max_wallclock_s = {cap:g} s "
              f"(calibration {calibration_s:.1f} s, quant.gptq_reserve_s = {reserve:g} s)", file=sys.stderr)
