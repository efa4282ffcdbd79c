"""#1060's coprime-stride multi-shard loader (data.loader = "coprime"): each shard's blocks once per cycle,
rows disjoint across ranks and independent of the world size, resumable, the mixing ramp, training with it."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import pgolf
from pgolf.data.coprime import CoprimeBlockLoader, block_offset, draw_cycle, path_seed
from pgolf.data.shards import write_shard
from pgolf.training.loop import TrainingInterrupted

from conftest import MICRO

T = 16  # seq_len of the tests


@pytest.fixture
def shards(tmp_path):
    """12 shards whose token at global position g is g (every window names its shard and offset), sizes 150-260."""
    files, start = [], 0
    rng = np.random.default_rng(0)
    for i in range(12):
        n = int(rng.integers(150, 261))
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(start, start + n))
        files.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        start += n
    assert start < 2**16
    return files


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(T + 1, 5000))
def test_a_cycle_visits_every_block_once(seed, n):
    """Over one cycle, blocks (start + j s) mod bc for j < bc are 0..bc-1 each once, s coprime to bc, and every
    block's T+1 tokens lie inside the shard."""
    cycle = draw_cycle(np.random.Generator(np.random.PCG64(seed)), n, T)
    phase, bc, start, stride, taken = cycle
    assert taken == 0 and 0 <= phase <= max(min(T - 1, n - T - 1), 0) and bc == (n - 1 - phase) // T
    assert math.gcd(stride, bc) == 1 and 0 <= start < bc
    offsets = [block_offset(cycle, j, T) for j in range(bc)]
    assert sorted(offsets) == [phase + k * T for k in range(bc)]
    assert max(offsets) + T + 1 <= n


def _windows(loader, calls, rows=8, accum=1):
    """First token of each row of `calls` micro-batches (= its global position)."""
    out = []
    for _ in range(calls):
        x, y = loader.next_batch(rows * T * loader.world_size * accum, T, accum)
        assert x.shape == y.shape == (rows, T)
        assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy()) and np.all(np.diff(x.numpy(), axis=1) == 1)
        out.append(x[:, 0].tolist())
    return out


def test_each_shard_gives_every_block_once_per_cycle(shards):
    """Through the loader: until a shard's cycle is used up, no block of it repeats, and every block it gives is
    at phase + k T of that cycle."""
    loader = CoprimeBlockLoader(shards)
    starts = np.cumsum([0] + [int(np.fromfile(f, dtype="<i4", count=3)[2]) for f in shards])
    seen: dict[int, list[int]] = {i: [] for i in range(len(shards))}
    for batch in _windows(loader, 30):
        for g in batch:
            shard = int(np.searchsorted(starts, g, side="right") - 1)
            seen[shard].append(int(g - starts[shard]))
    cycles_done = 0
    for shard, offsets in seen.items():
        n = int(starts[shard + 1] - starts[shard])
        while offsets:
            first_bc = (n - 1 - offsets[0] % T) // T  # bc of the cycle the first offset belongs to
            cycle, offsets = offsets[:first_bc], offsets[first_bc:]
            assert len(set(cycle)) == len(cycle), shard
            assert len({o % T for o in cycle}) == 1, shard  # one phase per cycle
            cycles_done += len(cycle) == first_bc
    assert cycles_done > 0  # 30 calls x 8 rows used up some cycles and started new ones


def test_ranks_take_disjoint_rows_of_the_same_global_batch(shards):
    """World 2: rank r's rows are rows r, r+2, ... of the single-process batch of the same global size."""
    single = _windows(CoprimeBlockLoader(shards), 10, rows=8)
    ranks = [_windows(CoprimeBlockLoader(shards, rank=r, world_size=2), 10, rows=4) for r in range(2)]
    for step in range(10):
        assert ranks[0][step] == single[step][0::2] and ranks[1][step] == single[step][1::2]
        assert not set(ranks[0][step]) & set(ranks[1][step])


def test_resume_equals_an_uninterrupted_run(shards):
    """A loader restored from a JSON round trip of state_dict (as the checkpoint stores it) continues exactly."""
    straight = _windows(CoprimeBlockLoader(shards), 25)
    first = CoprimeBlockLoader(shards)
    head = _windows(first, 11)
    resumed = CoprimeBlockLoader(shards)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + _windows(resumed, 14) == straight
    other = CoprimeBlockLoader(shards[:-1])
    with pytest.raises(ValueError, match="read shards"):
        other.load_state_dict(first.state_dict())


def test_deterministic_from_the_file_list(shards):
    """The seed is FNV-1a's prime over the sorted paths from 0: the same list in any order gives the same batches."""
    assert _windows(CoprimeBlockLoader(shards), 5) == _windows(CoprimeBlockLoader(shards[::-1]), 5)
    seed = 0
    for path in sorted(shards):
        for b in str(path).encode():
            seed = ((seed ^ b) * 1099511628211) % 2**64
    assert path_seed(shards[::-1]) == seed


def test_the_number_of_shards_mixed_ramps_from_lo_to_hi(tmp_path):
    """World 8, 64 shards, 64 windows per call: 8 shards mixed at first, 64 from call 1800 on."""
    files = []
    for i in range(64):
        write_shard(tmp_path / f"s{i:03d}.bin", np.full(40 * T + 1, i))
        files.append(tmp_path / f"s{i:03d}.bin")
    loader = CoprimeBlockLoader(files, rank=0, world_size=8)
    loader.block = T
    mixed = []
    for call in range(1801):
        windows = loader.global_windows(64)
        if call in (0, 900, 1800):
            mixed.append(len({shard for shard, _ in windows}))
    assert mixed == [8, 36, 64]


@pytest.mark.slow
def test_training_with_the_coprime_loader_resumes_exactly(tmp_path):
    """A tiny run with data.loader = coprime, interrupted at step 3 (SIGTERM: a checkpoint) and resumed, ends
    with the same weights and val_bpb as the same run uninterrupted; and it trains on other rows than the stream."""
    over = {**MICRO, "data.loader": "coprime"}
    full = pgolf.train(pgolf.load_recipe("baseline", scale="tiny", overrides=over), tmp_path / "a", progress=False)

    def sigterm_at(step, info):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        pgolf.train(pgolf.load_recipe("baseline", scale="tiny", overrides=over), tmp_path / "b", progress=False,
                    step_callback=sigterm_at)
    resumed = pgolf.train(pgolf.load_config(tmp_path / "b" / "config.toml"), tmp_path / "b", resume=True,
                          progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_bpb"] == full["val_bpb"]
    stream = pgolf.train(pgolf.load_recipe("baseline", scale="tiny", overrides=MICRO), tmp_path / "c", progress=False)
    assert stream["val_bpb"] != full["val_bpb"]
