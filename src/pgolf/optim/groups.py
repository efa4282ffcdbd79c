"""Optimizers from parameter roles: matrices to the Muon family, the rest to Adam(W) groups.

Every trainable parameter lands in exactly one group (asserted): a parameter in no group would silently
stay at its initial value.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import OptimConfig
from ..model.layers import role_of
from .muon import Muon


def _adam(params: list[nn.Parameter], lr: float, wd: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, or AdamW (decoupled: p <- p (1 - lr wd)) when wd > 0; betas and eps from the config."""
    fused = bool(params) and params[0].device.type == "cuda"
    cls = torch.optim.AdamW if wd > 0 else torch.optim.Adam
    kwargs = {"weight_decay": wd} if wd > 0 else {}
    opt = cls([{"params": params, "lr": lr, "base_lr": lr}], betas=(cfg.adam_beta1, cfg.adam_beta2),
              eps=cfg.adam_eps, fused=fused, **kwargs)
    return opt


def params_by_role(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the role their module tagged them with (matrix, embed, scalar, ...)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        try:
            role = role_of(p)
        except AttributeError:
            raise ValueError(f"parameter '{name}' has no optimizer role; tag it where its module creates it") from None
        groups.setdefault(role, []).append(p)
    return groups


def build_optimizers(model: nn.Module, cfg: OptimConfig, tied_embeddings: bool = True) -> dict[str, torch.optim.Optimizer]:
    """{'matrix': Muon (or Adam), 'embed', 'head', 'scalar', 'lora': Adam(W)}, only those with parameters;
    each param group carries its 'base_lr' for the schedule."""
    roles = params_by_role(model)
    matrices = roles.get("matrix", []) + (roles.get("proj", []) if cfg.proj_muon else [])
    scalars = roles.get("scalar", []) + ([] if cfg.proj_muon else roles.get("proj", []))
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if matrices:
        if cfg.matrix_optimizer == "muon":
            opt = Muon(matrices, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                       momentum_style=cfg.muon_momentum_style, ns_steps=cfg.muon_ns_steps,
                       ns_coeffs=cfg.muon_ns_coeffs, ns_dtype=cfg.muon_ns_dtype,
                       row_normalize=cfg.muon_row_normalize, normuon_beta2=cfg.muon_normuon_beta2,
                       weight_decay=cfg.muon_weight_decay, ns_safety=cfg.muon_ns_safety,
                       ns_grouping=cfg.muon_ns_grouping, shape_scale=cfg.muon_shape_scale)
            for group in opt.param_groups:
                group["base_lr"] = cfg.matrix_lr
                group["base_weight_decay"] = cfg.muon_weight_decay
        else:
            # Adam-only baseline: the same matrices by Adam(W) at matrix_lr (an Adam lr, ~10x below Muon's),
            # with the matrix weight decay decoupled as in Muon (AdamW: W <- W (1 - lr wd)); no momentum warm-up.
            opt = _adam(matrices, cfg.matrix_lr, cfg.muon_weight_decay, cfg)
        optimizers["matrix"] = opt
    if roles.get("embed"):
        lr = cfg.embed_lr if tied_embeddings else cfg.untied_embed_lr
        optimizers["embed"] = _adam(roles["embed"], lr, cfg.embed_weight_decay, cfg)
    if roles.get("head"):
        optimizers["head"] = _adam(roles["head"], cfg.head_lr, 0.0, cfg)
    if scalars:
        optimizers["scalar"] = _adam(scalars, cfg.scalar_lr, cfg.scalar_weight_decay, cfg)
    if roles.get("lora"):
        optimizers["lora"] = _adam(roles["lora"], cfg.lora_lr, 0.0, cfg)
    _assert_each_param_once(model, optimizers)
    return optimizers


def _assert_each_param_once(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    seen: dict[int, str] = {}
    for key, opt in optimizers.items():
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    raise AssertionError(f"a parameter is in both the '{seen[id(p)]}' and '{key}' optimizers")
                seen[id(p)] = key
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise AssertionError(f"parameters in no optimizer (they would never train): {missing}")


def set_lr_multiplier(optimizers: dict[str, torch.optim.Optimizer], multiplier: float) -> None:
    """lr = base_lr * multiplier for every group of every optimizer (Muon and Adam alike)."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * multiplier


def uses_muon(optimizers: dict[str, torch.optim.Optimizer]) -> bool:
    """Whether the matrices are trained by Muon (not Adam). Tested by a class attribute rather than isinstance,
    so that Muon's name is only ever called in the carried code and a train_gpt.py can fold the switches every
    call gives it (pgolf.artifact.specialise)."""
    return getattr(optimizers.get("matrix"), "is_muon", False)


def set_muon_momentum(optimizers: dict[str, torch.optim.Optimizer], momentum: float) -> None:
    """Set Muon's momentum (no-op when matrices are trained by Adam)."""
    if uses_muon(optimizers):
        for group in optimizers["matrix"].param_groups:
            group["momentum"] = momentum


def set_muon_weight_decay_multiplier(optimizers: dict[str, torch.optim.Optimizer], multiplier: float) -> None:
    """Muon's weight_decay = base_weight_decay * multiplier (the WD taper; no-op when matrices use Adam)."""
    if uses_muon(optimizers):
        for group in optimizers["matrix"].param_groups:
            group["weight_decay"] = group["base_weight_decay"] * multiplier


def muon_momentum_at(step: int, cfg: OptimConfig) -> float:
    """mu(s) = (1 - f) mu0 + f mu1, f = min(s / N, 1)."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    f = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - f) * cfg.muon_momentum_warmup_start + f * cfg.muon_momentum
