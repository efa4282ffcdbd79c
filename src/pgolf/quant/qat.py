"""Quantization-aware training: fake quantization on the export grid with a straight-through estimator.

In a training-mode forward a QAT matrix uses W_q = W_hat + (W - stopgrad(W)): its value is exactly the
exported W_hat = q * s (same clip rule, same fp16-rounded scales: `methods.fake_quantize_grid` calls the
export quantizer), its gradient is the gradient with respect to W (straight through). Only matrices of
class attn/mlp that the export policy quantizes get a fake quantizer; the tied embedding never does (#206).

Under torch.compile: `enabled` is a (non-persistent) bool buffer read inside the graph, so a compiled model
really switches when late QAT turns on — no constant folding of a Python flag, no recompilation. The compiled
graph reads W_hat from a buffer that `refresh_qat` fills eagerly with the export quantizer once per optimizer
step (the trainer calls it before every step), so compiled arithmetic can never move W_hat off the export grid
(compiled rounding/division may differ in the last bit, which would change an fp16 scale). Eager forwards
compute W_hat themselves. Nothing is computed while late QAT is still off.

Cost per step: under the row-local scale rules (percentile, rowmax) every matrix with the same number of columns,
bits and class is refreshed in one batch — their rows stacked into one matrix, the clip from the top-k form of
the quantile (`quantize.row_quantile`, equal to torch.quantile bit for bit) — so #206's 54 matrices cost three
batches of a dozen kernels instead of ~700 kernel launches and 54 full row sorts. Every row gets exactly the
numbers the export computes for it alone (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import QuantConfig
from ..model.layers import Linear, qclass_of
from .methods import fake_quantize_grid, method_for
from .quantize import as_rows, plan_tensor

QAT_CLASSES = ("attn", "mlp")


class FakeQuantizer(nn.Module):
    """W -> (exported W_hat if enabled else W) with the identity gradient; a no-op in eval mode."""

    def __init__(self, weight: Tensor, bits: int, qcfg: QuantConfig, qclass: str, enabled: bool):
        super().__init__()
        self.bits, self.qcfg, self.qclass = bits, qcfg, qclass
        self.register_buffer("enabled", torch.tensor(bool(enabled), device=weight.device), persistent=False)
        self.register_buffer("w_hat", torch.zeros_like(weight, dtype=weight.dtype), persistent=False)
        self.on = bool(enabled)  # Python mirror of `enabled` for eager forwards (no device sync)

    @torch.no_grad()
    def export_values(self, w: Tensor) -> Tensor:
        """W_hat = q * s exactly as the export quantizer stores it."""
        return fake_quantize_grid(as_rows(w.detach().float()), self.bits, self.qcfg, self.qclass).reshape(w.shape).to(w.dtype)

    @torch.no_grad()
    def refresh(self, w: Tensor) -> None:
        if self.on:
            self.w_hat.copy_(self.export_values(w))

    def forward(self, w: Tensor) -> Tensor:
        if not self.training:
            return w
        if torch.compiler.is_compiling():
            w_hat = self.w_hat                       # filled by refresh_qat before the step
        else:
            w_hat = self.export_values(w) if self.on else w.detach()
        value = torch.where(self.enabled, w_hat, w.detach())
        return value + (w - w.detach())  # value in the forward, d/dW = identity (straight through)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, qclass={self.qclass}"


def attach_qat(model: nn.Module, qcfg: QuantConfig) -> int:
    """Give every attn/mlp Linear that the export quantizes a FakeQuantizer; returns how many got one.

    quant.qat = "always" enables them now; "late" attaches them disabled (see `late_qat_due`, `set_qat_enabled`).
    """
    if qcfg.qat == "none":
        return 0
    count = 0
    for module_name, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        name = f"{module_name}.weight"
        qclass = qclass_of(module.weight)
        plan = plan_tensor(module.weight, qclass, qcfg, name)
        if qclass in QAT_CLASSES and plan.encoding == "int":
            module.fake_quant = FakeQuantizer(module.weight, plan.bits, qcfg, qclass, qcfg.qat == "always")
            count += 1
    return count


def set_qat_enabled(model: nn.Module, on: bool) -> None:
    """Switch every FakeQuantizer of `model` in place (the compiled graph reads the buffer)."""
    for module in model.modules():
        if isinstance(module, FakeQuantizer):
            module.enabled.fill_(bool(on))
            module.on = bool(on)


ROW_LOCAL_METHODS = ("percentile", "rowmax")  # each row's scale depends on that row alone


@torch.no_grad()
def refresh_qat(model: nn.Module) -> None:
    """Recompute every enabled W_hat buffer from the current weights (call after each optimizer step)."""
    batches: dict[tuple, list[tuple[FakeQuantizer, Tensor]]] = {}
    for module in model.modules():
        if isinstance(module, Linear) and isinstance(module.fake_quant, FakeQuantizer) and module.fake_quant.on:
            fq, w = module.fake_quant, module.weight
            if w.ndim == 2 and method_for(fq.qclass, fq.qcfg) in ROW_LOCAL_METHODS:
                key = (w.shape[1], w.dtype, w.device, fq.bits, fq.qclass, id(fq.qcfg))
                batches.setdefault(key, []).append((fq, w))
            else:
                fq.refresh(w)
    for members in batches.values():
        fq0 = members[0][0]
        rows = torch.cat([w.detach() for _, w in members])  # (sum of rows, cols): the rule is per row
        w_hat = fq0.export_values(rows)
        for (fq, _), part in zip(members, w_hat.split([w.shape[0] for _, w in members])):
            fq.w_hat.copy_(part)


def qat_enabled(model: nn.Module) -> bool:
    return any(m.on for m in model.modules() if isinstance(m, FakeQuantizer))


def late_qat_due(step: int, lr_mult: float, qcfg: QuantConfig, warmup_steps: int) -> bool:
    """Late QAT is on once the LR multiplier has fallen below quant.qat_start_lr after the LR warm-up.

    After the warm-up the multiplier never rises again, so this is also the right state on resume.
    """
    return qcfg.qat == "late" and step >= warmup_steps and lr_mult < qcfg.qat_start_lr
