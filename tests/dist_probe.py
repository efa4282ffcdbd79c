"""One rank of a probed 2-process run (tests/test_loop.py launches it with torchrun; not a test file itself).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_probe.py OUT CONFIG SLOW_RANK0_S

Runs pgolf.train on CONFIG with probes and writes OUT/probe_rank<r>.json:
- every torch.distributed collective called from Python, per training step (the window between two step
  callbacks), classified by who called it: "ddp_hook" (DDP's comm hook on a gradient bucket), "optimizer"
  (Muon's update exchange) or "control" (everything else: the loop's own); DDP's bucket all-reduces in C++ are
  not visible here, by design; and DDP's buffer broadcasts (dist._broadcast_coalesced) per step;
- the arguments DDP was built with and the comm hook registered;
- OUT/grads_step1.safetensors (rank 0): the all-reduced gradients of step 1;
- with SLOW_RANK0_S > 0, rank 0's own phases (data preparation, packing) each sleep that long first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import pgolf
from pgolf.quant.qat import FakeQuantizer
from pgolf.training import loop

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "barrier", "monitored_barrier", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "gather_object", "scatter",
               "scatter_object_list")

out, config, slow_rank0_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rank = int(os.environ["RANK"])
window: dict = {"control": [], "optimizer": [], "ddp_hook": [], "ddp_buffer_broadcasts": 0}
steps: dict[int, dict] = {}
record: dict = {"ddp": {"comm_hook": None}, "slowed_s": 0.0}
depth = 0


def caller_kind() -> str:
    frame = sys._getframe(2)
    names = []
    while frame is not None:
        names.append(frame.f_globals.get("__name__", ""))
        frame = frame.f_back
    if any(n.startswith("torch.distributed.algorithms.ddp_comm_hooks") for n in names):
        return "ddp_hook"
    if any(n.startswith("pgolf.optim") for n in names):
        return "optimizer"
    return "control"


def counted(name, fn):
    def call(*args, **kwargs):
        global depth
        if depth == 0:  # a collective built on others (broadcast_object_list -> broadcast) counts once
            window[caller_kind()].append(name)
        depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            depth -= 1
    return call


for name in COLLECTIVES:
    if hasattr(dist, name):
        setattr(dist, name, counted(name, getattr(dist, name)))
real_broadcast_coalesced = dist._broadcast_coalesced


def broadcast_coalesced(*args, **kwargs):
    window["ddp_buffer_broadcasts"] += 1
    return real_broadcast_coalesced(*args, **kwargs)


dist._broadcast_coalesced = broadcast_coalesced


class ProbedDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        record["ddp"]["broadcast_buffers"] = self.broadcast_buffers

    def register_comm_hook(self, state, hook):
        record["ddp"]["comm_hook"] = hook.__name__
        return super().register_comm_hook(state, hook)


torch.nn.parallel.DistributedDataParallel = ProbedDDP  # wherever the trainer takes DDP from
if hasattr(loop, "DistributedDataParallel"):
    loop.DistributedDataParallel = ProbedDDP
models = []
real_build = loop.build_model
loop.build_model = lambda *a, **k: models.append(real_build(*a, **k)) or models[-1]


def slowed(fn):
    def call(*args, **kwargs):
        if rank == 0 and slow_rank0_s > 0:
            time.sleep(slow_rank0_s)
            record["slowed_s"] += slow_rank0_s
        return fn(*args, **kwargs)
    return call


loop.pack_artifact = slowed(loop.pack_artifact)
real_resolve = loop.resolve_dataset
loop.resolve_dataset = lambda cfg, progress=True, check_ids=True: (
    slowed(real_resolve) if rank == 0 and not record.get("resolved") else real_resolve)(cfg, progress, check_ids)


def on_step(step: int, info: dict) -> None:
    global window
    record["resolved"] = True
    steps[step] = window
    window = {"control": [], "optimizer": [], "ddp_hook": [], "ddp_buffer_broadcasts": 0}
    if step == 1 and rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in models[0].named_parameters() if p.grad is not None}
        save_file(grads, out / "grads_step1.safetensors")


out.mkdir(parents=True, exist_ok=True)
pgolf.train(pgolf.load_config(config), out / "run", progress=False, device="cpu", step_callback=on_step)
record["steps"] = steps
record["fake_quantizers"] = sum(isinstance(m, FakeQuantizer) for m in models[0].modules())
(out / f"probe_rank{rank}.json").write_text(json.dumps(record, indent=1))
