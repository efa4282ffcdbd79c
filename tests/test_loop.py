"""The training loop on a real GPU's terms, simulated on a CPU (issue #18 items 5, 6, 8, 9, 10).

- the clock counts the step's queued device work (a stand-in optimizer whose work runs on a serial "stream"
  that only `synchronize` waits for, as CUDA's does), logging, and GPTQ calibration; not validation or priming;
- two gloo ranks: exactly one collective per step besides DDP's gradient buckets and Muon's update exchange, no
  DDP buffer broadcast, the bf16 gradient all-reduce hook when asked, and rank-0-only phases longer than the
  collective timeout do not abort the other rank;
- FA3 is chosen only on sm90+; the residual stream is in the autocast dtype; QAT's batched refresh equals the
  torch.quantile export path bit for bit.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pgolf
from pgolf.training.runs import save_config
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon
from pgolf.quant.qat import FakeQuantizer, attach_qat, refresh_qat
from pgolf.quant.quantize import dequantize, quantize_with_scales, row_quantile, scales_from_clip
from pgolf.training import loop
from pgolf.training.runs import LogWriter, read_log

from conftest import REPO, SP1024_DIR, SP1024_MODEL, micro_config


# ============================================================================ the clock (item 5)


class VirtualGPU:
    """A deterministic stand-in for a host and one CUDA stream, in virtual seconds: the host's own work advances
    `host`; device work is queued behind what is already queued and runs while the host goes on; only
    synchronize() makes the host wait for it. Real CPU compute takes no virtual time, so the count is exact
    whatever the load on the machine running the test."""

    def __init__(self) -> None:
        self.host = 0.0
        self.device_busy_until = 0.0

    def perf_counter(self) -> float:
        return self.host

    def host_work(self, seconds: float) -> None:
        self.host += seconds

    def launch(self, seconds: float) -> None:
        self.device_busy_until = max(self.device_busy_until, self.host) + seconds

    def synchronize(self) -> None:
        self.host = max(self.host, self.device_busy_until)


PRIMING_TAIL_S = 2.0   # queued device work of each of the 2 priming steps
VALIDATION_S = 4.0     # host time of the in-loop validation at step 2


@pytest.fixture
def virtual_gpu(monkeypatch):
    """Muon.step queues `gpu.tail_s` of device work (PRIMING_TAIL_S while priming) and returns at once."""
    gpu = VirtualGPU()
    gpu.tail_s = 0.0
    state = {"priming": False}
    real_step, real_prime = Muon.step, loop._prime

    def step(self, *args, **kwargs):
        gpu.launch(PRIMING_TAIL_S if state["priming"] else gpu.tail_s)
        return real_step(self, *args, **kwargs)

    def prime(*args, **kwargs):
        state["priming"] = True
        try:
            return real_prime(*args, **kwargs)
        finally:
            state["priming"] = False

    monkeypatch.setattr(Muon, "step", step)
    monkeypatch.setattr(loop, "_prime", prime)
    monkeypatch.setattr(torch.cpu, "synchronize", gpu.synchronize)
    monkeypatch.setattr(time, "perf_counter", gpu.perf_counter)
    return gpu


@pytest.mark.parametrize("tail_s, log_s", [(1.0, 0.0), (0.0, 1.0)], ids=["optimizer tail", "logging"])
def test_clock_counts_queued_device_work_and_logging_but_not_validation_or_priming(micro, tmp_path, monkeypatch,
                                                                                     virtual_gpu, tail_s, log_s):
    """4 steps, each queueing `tail_s` of optimizer work on the device; `log_s` of host time per logged line."""
    virtual_gpu.tail_s = tail_s
    real_write, real_evaluate = LogWriter.write, loop.evaluate
    evaluations = []

    def slow_write(self, record):
        if "train_loss" in record:
            virtual_gpu.host_work(log_s)
        return real_write(self, record)

    def slow_validation(*args, **kwargs):
        if not evaluations:  # the first call is the in-loop validation at step 2
            virtual_gpu.host_work(VALIDATION_S)
        evaluations.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(LogWriter, "write", slow_write)
    monkeypatch.setattr(loop, "evaluate", slow_validation)
    cfg = micro(train__steps=4, train__val_every=2, train__compile_priming_steps=2)
    result = pgolf.train(cfg, tmp_path / "run", progress=False)
    logged = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "train_loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 4]
    counted = 4 * tail_s + len(logged) * log_s  # today's per-step sum counts none of it
    assert result["train_seconds"] >= counted
    # validation and priming were timed but are not in the count: either would add 4 s
    assert result["paused_seconds"] == VALIDATION_S and result["priming_seconds"] == 2 * PRIMING_TAIL_S
    assert result["train_seconds"] < counted + VALIDATION_S
    assert logged[-1]["elapsed_s"] <= result["train_seconds"]


def test_gptq_calibration_counts_against_the_training_cap(micro, tmp_path, monkeypatch, capsys):
    gptq = importlib.import_module("pgolf.quant.gptq")  # the optional module the loop reaches through the registry
    real = gptq.collect_hessians
    monkeypatch.setattr(gptq, "collect_hessians", lambda *a, **k: (time.sleep(2.0), real(*a, **k))[1])
    cfg = micro(train__steps=2, train__max_wallclock_s=1.5, quant__method="gptq", quant__gptq_calib_batches=2)
    result = pgolf.train(cfg, tmp_path / "run", progress=True)
    assert result["calibration_seconds"] >= 2.0
    assert result["capped_seconds"] >= result["train_seconds"] + result["calibration_seconds"]
    assert result["within_cap"] is False
    assert "training + GPTQ calibration took" in capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["within_cap"] is False and saved["capped_seconds"] == result["capped_seconds"]


# ============================================================================ two gloo ranks (items 6, 8, 9, 10)

PROBE = Path(__file__).with_name("dist_probe.py")
SHORT_TIMEOUT_S = 6     # PGOLF_COLLECTIVE_TIMEOUT_S of the probe runs
SLOW_RANK0_S = 15       # rank 0's data preparation and packing are each slowed this long


def _probe_run(tmp_path: Path, name: str, slow_rank0_s: float, **overrides) -> tuple[list[dict], Path]:
    cfg = micro_config(train__steps=4, train__grad_accum_steps=1, train__log_every=1, quant__qat="always",
                       quant__passthrough_max_numel=1024,
                       **overrides)
    save_config(cfg, tmp_path / f"{name}.toml")
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"),
           "PGOLF_COLLECTIVE_TIMEOUT_S": str(SHORT_TIMEOUT_S)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PROBE),
           str(out), str(tmp_path / f"{name}.toml"), str(slow_rank0_s)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"probe_rank{r}.json").read_text()) for r in range(2)], out


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, shared_data):
    """fp32 gradient all-reduce, QAT buffers present, rank 0's own phases slower than the collective timeout."""
    return _probe_run(tmp_path_factory.mktemp("fp32"), "fp32", SLOW_RANK0_S, train__ddp_grad_dtype="float32")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, shared_data):
    return _probe_run(tmp_path_factory.mktemp("bf16"), "bf16", 0.0, train__ddp_grad_dtype="bfloat16")


@pytest.mark.slow
def test_one_collective_per_step_besides_gradients_and_muon(fp32_run, bf16_run):
    for probes in (fp32_run[0], bf16_run[0]):
        for probe in probes:
            steps = probe["steps"]
            assert sorted(int(s) for s in steps) == [1, 2, 3, 4]
            for s in ("2", "3", "4"):  # step 1's window also holds the set-up
                assert steps[s]["control"] == ["all_reduce"], (s, steps[s])
                assert steps[s]["ddp_buffer_broadcasts"] == 0
                assert len(steps[s]["optimizer"]) == len(steps["2"]["optimizer"]) > 0  # Muon's update exchange


@pytest.mark.slow
def test_ddp_broadcasts_no_buffers_and_uses_the_bf16_hook_only_when_asked(fp32_run, bf16_run):
    for probe in fp32_run[0] + bf16_run[0]:
        assert probe["ddp"]["broadcast_buffers"] is False and probe["fake_quantizers"] > 0
    assert all(p["ddp"]["comm_hook"] is None for p in fp32_run[0])
    assert all(p["ddp"]["comm_hook"] == "bf16_gradient_allreduce" for p in bf16_run[0])
    assert all(len(p["steps"]["2"]["ddp_hook"]) > 0 for p in bf16_run[0])  # the hook's bucket all-reduces ran


@pytest.mark.slow
def test_bf16_gradient_all_reduce_matches_fp32_to_bf16_tolerance(fp32_run, bf16_run):
    fp32 = load_file(fp32_run[1] / "grads_step1.safetensors")
    bf16 = load_file(bf16_run[1] / "grads_step1.safetensors")
    assert fp32.keys() == bf16.keys() and fp32
    rounded, nonzero = 0, 0
    for name, g in fp32.items():
        scale = float(g.abs().max()) or 1.0
        torch.testing.assert_close(bf16[name], g, rtol=2 ** -7, atol=2 ** -8 * scale, msg=name)
        rounded += not torch.equal(bf16[name], g)
        nonzero += bool(g.abs().max() > 0)  # zero-initialised projections get exactly zero gradients at step 1
    assert rounded > nonzero // 2  # the bf16 hook really ran: most gradients differ from fp32 in low bits


@pytest.mark.slow
def test_rank0_phases_longer_than_the_collective_timeout_do_not_abort_the_others(fp32_run):
    probes, out = fp32_run
    assert probes[0]["slowed_s"] >= 2 * SLOW_RANK0_S > 2 * SHORT_TIMEOUT_S  # data preparation + packing, rank 0
    assert probes[1]["slowed_s"] == 0
    result = json.loads((out / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 4


def _clip_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One gloo rank of test_local_clip_...: rank-specific gradients of very different norms, clipped locally."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5)),
              torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    gen = torch.Generator().manual_seed(100 + rank)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * (10.0 if rank == 0 else 0.1)
    loop.clip_local_then_average(params, 1.0)
    torch.save([p.grad for p in params], Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_local_clip_scope_clips_each_rank_then_averages(tmp_path):
    """#1536/#1573's order: clip_grad_norm_ on the rank's own gradient, then the all-reduce average."""
    torch.multiprocessing.spawn(_clip_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    local, raw = [], []
    for rank in range(2):
        gen = torch.Generator().manual_seed(100 + rank)
        shapes = [((3, 4), torch.float32), ((5,), torch.float32), ((2,), torch.float64)]
        grads = [torch.randn(s, generator=gen, dtype=d) * (10.0 if rank == 0 else 0.1) for s, d in shapes]
        raw.append(grads)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
        local.append([g * min(1.0, 1.0 / (float(norm) + 1e-6)) for g in grads])
    expected = [(a + b) / 2 for a, b in zip(*local)]
    for rank in range(2):
        for g, e in zip(got[rank], expected):
            assert g.dtype == e.dtype
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    # the global order (average, then clip) gives another gradient: there rank 1's small gradient barely counts
    mean = [(a + b) / 2 for a, b in zip(*raw)]
    mean_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in mean])))
    assert not torch.allclose(got[0][0], mean[0] * min(1.0, 1.0 / mean_norm), rtol=1e-3)


@pytest.mark.parametrize("recipe, norm, scope", [("baseline", 0.0, "global"), ("pr103", 1.0, "global"),
                                                  ("pr206", 0.0, "global"), ("pr595", 0.3, "global"),
                                                  ("pr1573", 0.3, "local"), ("pr1536", 0.3, "local")])
def test_recipes_clip_where_their_code_clips(recipe, norm, scope):
    """#103 and #595 clip after DDP has averaged; #1573 and #1536 clip before their own all-reduce."""
    cfg = pgolf.load_recipe(recipe)
    assert (cfg.optim.grad_clip_norm, cfg.train.clip_scope) == (norm, scope)


@pytest.mark.slow
def test_local_clip_scope_in_the_loop_leaves_the_average_under_the_norm(tmp_path, shared_data):
    """Two gloo ranks, clip 1e-3: the global scope clips the averaged gradient to exactly 1e-3; the local scope
    averages two gradients each of norm 1e-3 (different, so their mean is shorter) with its own all-reduce."""
    norms = {}
    for scope in ("global", "local"):
        (tmp_path / scope).mkdir()
        probes, out = _probe_run(tmp_path / scope, scope, 0.0, optim__grad_clip_norm=1e-3, train__clip_scope=scope,
                                 train__ddp_grad_dtype="float32")
        grads = load_file(out / "grads_step1.safetensors")
        norms[scope] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))
        extra = [len(p["steps"]["2"]["control"]) for p in probes]
        assert extra == ([1, 1] if scope == "global" else [2, 2]), (scope, extra)  # + one flat fp32 all-reduce
    assert norms["global"] == pytest.approx(1e-3, rel=1e-4)
    assert norms["local"] < 0.999e-3


# ============================================================================ attention chooser, dtypes (item 10)


@pytest.mark.parametrize("installed, capability, doc, expected", [
    (True, (9, 0), False, "fa3"), (True, (10, 0), True, "fa3"),
    (True, (8, 0), False, "sdpa"), (True, (8, 9), True, "flex"),
    (False, (9, 0), True, "flex"), (False, (9, 0), False, "sdpa"),
])
def test_fa3_is_chosen_only_where_installed_on_sm90_or_newer(monkeypatch, installed, capability, doc, expected):
    monkeypatch.setattr(loop, "flash3_available", lambda: installed)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert loop.choose_attention_backend("auto", torch.device("cuda", 0), doc) == expected
    assert loop.choose_attention_backend("auto", torch.device("cpu"), doc) == "sdpa"
    assert loop.choose_attention_backend("flex", torch.device("cuda", 0), doc) == "flex"


@pytest.mark.parametrize("recipe", ["baseline", "pr1536", "pr1573"])
def test_residual_stream_is_in_the_autocast_dtype(recipe):
    cfg = pgolf.load_recipe(recipe, scale="tiny")
    model = pgolf.build_model(cfg.model)
    model.set_looping(True)
    seen: list[torch.dtype] = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.extend(a.dtype for a in args[:2]))  # x and x0
    ids = torch.randint(2, cfg.model.vocab_size, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids)
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    model(ids)  # without autocast the stream stays fp32
    assert set(seen) == {torch.float32}


def test_grad_allreduce_dtype_defaults_to_bf16_on_cuda_only():
    assert loop.grad_allreduce_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert loop.grad_allreduce_dtype("auto", torch.device("cpu")) == torch.float32
    assert loop.grad_allreduce_dtype("float32", torch.device("cuda", 0)) == torch.float32


# ============================================================================ QAT refresh (item 9)


@pytest.mark.parametrize("q", [0.9999984, 0.9999, 0.999, 0.99, 0.5, 1.0, 0.0])
def test_row_quantile_equals_torch_quantile_bit_for_bit(q):
    torch.manual_seed(0)
    for a in (torch.randn(7, 512).abs(), torch.randn(5, 1536).abs(), torch.randint(0, 4, (6, 64)).float(),
              torch.randn(3, 2).abs(), torch.randn(4, 1).abs()):
        assert torch.equal(row_quantile(a, q), torch.quantile(a, q, dim=1)), (tuple(a.shape), q)


def _quantile_export(w: torch.Tensor, bits: int, percentile: float, floor: bool) -> torch.Tensor:
    """The export path as it was: torch.quantile clip per row, fp16 scales, round, dequantize."""
    scales = scales_from_clip(torch.quantile(w.abs(), percentile / 100.0, dim=1), bits, floor)
    return dequantize(quantize_with_scales(w, scales, bits), scales)


@pytest.mark.parametrize("method", ["percentile", "rowmax"])
def test_batched_qat_refresh_equals_the_per_matrix_export(method):
    cfg = pgolf.load_recipe("pr206", scale="tiny", overrides={"quant.method": method})
    torch.manual_seed(1)
    model = GPT(cfg.model)
    n = attach_qat(model, cfg.quant)
    assert n == 6 * cfg.model.num_layers
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    refresh_qat(model)
    for module in model.modules():
        if isinstance(getattr(module, "fake_quant", None), FakeQuantizer):
            fq, w = module.fake_quant, module.weight.detach()
            expected = (_quantile_export(w, fq.bits, cfg.quant.clip_percentile, cfg.quant.scale_floor)
                        if method == "percentile" else fq.export_values(w))
            assert torch.equal(fq.w_hat, expected)
