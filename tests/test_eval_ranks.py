"""How evaluation work is split over ranks: gather_concat on two real gloo processes (no model, a few seconds).

Every rank's scores come back, in rank order, cut to each rank's own count, with their dtype and device; one
process returns its own tensor untouched.
"""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from pgolf.eval.ranks import gather_concat, rank_world

COUNTS = [5, 2]  # uneven: rank 1's padded tail must be cut off


def _local(rank: int) -> dict[str, torch.Tensor]:
    """Values fp32 / a float default would not hold exactly: fp64 thirds and int64 beyond 2**53."""
    n = COUNTS[rank]
    return {"float64": torch.arange(n, dtype=torch.float64) / 3 + 100 * rank + 1,
            "int64": torch.arange(n, dtype=torch.int64) + 2**60 + 1000 * rank + 1}


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {"rank_world": torch.tensor(rank_world())}
        # torch's default device is made a different one: the buffers must follow the local tensor, as on GPUs
        # (where the default device is the CPU and NCCL needs CUDA tensors), not the default
        local = _local(rank)
        with torch.device("meta"):
            for name in local:
                out[name] = gather_concat(local[name], COUNTS)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_concat_on_two_gloo_ranks_returns_every_ranks_values_in_order(tmp_path):
    one = torch.arange(3, dtype=torch.float64) / 7
    assert rank_world() == (0, 1) and gather_concat(one, [3]) is one  # one process: the tensor itself
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["rank_world"].tolist() == [rank, 2]
        for name in ("float64", "int64"):
            want = torch.cat([_local(0)[name], _local(1)[name]])
            assert got[name].dtype == want.dtype and got[name].device.type == "cpu", (rank, name, got[name])
            assert torch.equal(got[name], want), (rank, name, got[name], want)
