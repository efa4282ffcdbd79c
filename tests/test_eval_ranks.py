"""How evaluation work is split over ranks, on two real gloo processes (one spawn, a few seconds).

gather_concat: every rank's scores come back, in rank order, cut to each rank's own count, with their dtype and
device; one process returns its own tensor untouched. Plain evaluation: each rank scores its own windows only,
and every rank ends with every target's score.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pgolf.eval import audit
from pgolf.eval.bpb import plain_nll
from pgolf.eval.ranks import gather_concat, rank_world

COUNTS = [5, 2]  # uneven: rank 1's padded tail must be cut off


def _local(rank: int) -> dict[str, torch.Tensor]:
    """Values fp32 / a float default would not hold exactly: fp64 thirds and int64 beyond 2**53."""
    n = COUNTS[rank]
    return {"float64": torch.arange(n, dtype=torch.float64) / 3 + 100 * rank + 1,
            "int64": torch.arange(n, dtype=torch.int64) + 2**60 + 1000 * rank + 1}


def _gathered(rank: int) -> dict[str, torch.Tensor]:
    out = {"rank_world": torch.tensor(rank_world())}
    # torch's default device is made a different one: the buffers must follow the local tensor, as on GPUs
    # (where the default device is the CPU and NCCL needs CUDA tensors), not the default
    local = _local(rank)
    with torch.device("meta"):
        for name in local:
            out[name] = gather_concat(local[name], COUNTS)
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({"gather": _gathered(rank), "plain": _plain_scores()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks returned (one spawn for the module's tests)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


def test_gather_concat_on_two_gloo_ranks_returns_every_ranks_values_in_order(two_ranks):
    one = torch.arange(3, dtype=torch.float64) / 7
    assert rank_world() == (0, 1) and gather_concat(one, [3]) is one  # one process: the tensor itself
    for rank in range(2):
        got = two_ranks[rank]["gather"]
        assert got["rank_world"].tolist() == [rank, 2]
        for name in ("float64", "int64"):
            want = torch.cat([_local(0)[name], _local(1)[name]])
            assert got[name].dtype == want.dtype and got[name].device.type == "cpu", (rank, name, got[name])
            assert torch.equal(got[name], want), (rank, name, got[name], want)


# ----------------------------------------------------------------------------- plain evaluation over two ranks

T = 16
# (targets, context_len): whole windows split 2 / 3; a short last window, of 7 or of T - 1 targets; a single short
# or whole window (rank 0 gets no window at all)
PLAIN_CASES = [(5 * T, T), (4 * T + 7, T), (3 * T - 1, T), (10, T), (T, T)]


def _plain_model():
    from test_model import small_model
    return small_model({"model.vocab_size": 64})


def _stream(n_targets: int) -> np.ndarray:
    return np.random.default_rng(n_targets).integers(0, 64, size=n_targets + 1).astype(np.int64)


def _plain_scores() -> dict[str, dict[str, torch.Tensor]]:
    """This rank's plain_nll of each case, and the targets it scored itself (eval.audit)."""
    model, out = _plain_model(), {}
    for n_targets, ctx in PLAIN_CASES:
        with audit.recording() as recorded:
            nll = plain_nll(model, _stream(n_targets), ctx, batch_seqs=2)
        out[f"{n_targets}/{ctx}"] = {"nll": torch.from_numpy(nll), "scored": torch.tensor(sorted(recorded))}
    return out


@torch.no_grad()
def _reference_plain(model, tokens: np.ndarray, ctx: int) -> np.ndarray:
    """One causal pass per window of ctx targets from an empty context, the obvious way (fp64 log-softmax)."""
    nll = []
    for start in range(0, tokens.size - 1, ctx):
        x = torch.from_numpy(tokens[start : start + ctx + 1])
        logp = torch.log_softmax(model(x[None, :-1])[0].double(), -1)
        nll.append(-logp[torch.arange(x.numel() - 1), x[1:]])
    return torch.cat(nll).numpy()


def test_plain_evaluation_on_two_gloo_ranks_scores_each_window_once_and_every_target(two_ranks):
    """Each rank scores its contiguous share of the windows (rank 0: the first half, rounded down) and no other
    target; every rank gets all the scores, equal to one pass per window."""
    model = _plain_model()
    got = [two_ranks[rank]["plain"] for rank in range(2)]
    for n_targets, ctx in PLAIN_CASES:
        key = f"{n_targets}/{ctx}"
        want = _reference_plain(model, _stream(n_targets), ctx)
        np.testing.assert_allclose(plain_nll(model, _stream(n_targets), ctx, batch_seqs=2), want, rtol=1e-5, atol=1e-5)
        split = min(-(-n_targets // ctx) // 2 * ctx, n_targets)  # first target of rank 1's windows
        for rank in range(2):
            np.testing.assert_allclose(got[rank][key]["nll"].numpy(), want, rtol=1e-5, atol=1e-5, err_msg=key)
            share = range(0, split) if rank == 0 else range(split, n_targets)
            assert got[rank][key]["scored"].tolist() == list(share), (key, rank)
