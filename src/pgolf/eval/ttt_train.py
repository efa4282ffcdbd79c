"""Full-model test-time training steps shared by chunk TTT, pre-scoring TTT and phased global TTT.

`eval.ttt_batch_seqs` is the GLOBAL number of sequences per optimizer step: each step's sequences are split
contiguously over the ranks, every rank's loss is weighted by its share of the step's tokens and the gradients
are summed (all-reduce), so a step is the same mean-CE step on any number of processes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..model.precision import autocast_for
from .deadline import Deadline
from .forward import training_loss
from .ranks import model_device, rank_world
from .windows import batches


def cosine_lr(lr0: float, chunk: int, n_chunks_total: int) -> float:
    """lr0 * (1 + cos(pi c / (C - 1))) / 2 (lr0 when there is a single trained chunk)."""
    if n_chunks_total <= 1:
        return lr0
    return lr0 * 0.5 * (1.0 + math.cos(math.pi * chunk / (n_chunks_total - 1)))


def trainable_parameters(model: nn.Module, freeze_blocks: int) -> list[nn.Parameter]:
    """Every parameter except those of the first `freeze_blocks` physical blocks (which get requires_grad False)."""
    blocks = getattr(model, "blocks", None)
    n_blocks = len(blocks) if blocks is not None else 0
    if freeze_blocks < 0 or freeze_blocks > n_blocks:
        raise ValueError(f"eval.ttt_freeze_blocks must be in 0..{n_blocks} (the model's physical blocks), got {freeze_blocks}")
    frozen = {id(p) for b in range(freeze_blocks) for p in blocks[b].parameters()}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            params.append(p)
    return params


def train_on_sequences(model: nn.Module, stream: Tensor, spans: list[tuple[int, int]], batch_seqs: int,
                       params: list[nn.Parameter], optimizer: torch.optim.Optimizer, grad_clip: float,
                       deadline: Deadline, where: str, use_compiled: bool = False,
                       targets: Tensor | None = None) -> float:
    """One pass over `spans` (input ranges of equal length); returns the mean loss.

    The targets of inputs stream[a:b] are stream[a+1:b+1], or targets[a:b] when a `targets` stream aligned with
    the inputs is given (phased TTT: documents that are not neighbours in the stream, each with its own targets).

    Step: loss = mean CE over the step's tokens (all ranks); grads all-reduced (sum of token-weighted
    shares); global-norm clip `grad_clip` (0 = off); optimizer step.
    """
    device = model_device(model)
    rank, world = rank_world()
    labels, shift = (stream, 1) if targets is None else (targets, 0)
    total, count = 0.0, 0
    for step_spans in batches(spans, batch_seqs):
        deadline.check(where)
        step_tokens = sum(b - a for a, b in step_spans)
        mine = step_spans[len(step_spans) * rank // world : len(step_spans) * (rank + 1) // world]
        optimizer.zero_grad(set_to_none=True)
        loss_value = torch.zeros((), device=device)
        if mine:
            inputs = torch.stack([stream[a:b] for a, b in mine])
            step_targets = torch.stack([labels[a + shift : b + shift] for a, b in mine])
            with autocast_for(device):
                loss = training_loss(model, inputs, step_targets, device, use_compiled)
            share = inputs.numel() / step_tokens  # this rank's fraction of the step's tokens
            (loss * share).backward()
            loss_value = loss.detach().float() * share
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            dist.all_reduce(loss_value, op=dist.ReduceOp.SUM)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        total += float(loss_value)
        count += 1
    optimizer.zero_grad(set_to_none=True)
    return total / max(count, 1)
