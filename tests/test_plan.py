"""`pgolf plan`: the FLOP count by hand, the activation-memory model against measured CPU runs, the warnings."""

from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import pgolf
from pgolf.cli import main
from pgolf.model.gpt import GPT
from pgolf.training.plan import activation_bytes, flops_per_token, plan, saved_activation_bytes


def test_baseline_flops_per_token_by_hand():
    cfg = pgolf.load_recipe("baseline")
    d, kv, hidden, layers, vocab, T = 512, 256, 1024, 9, 1024, 1024
    per_layer = d * d + 2 * d * kv + d * d + 2 * d * hidden       # q, k, v, o; fc, proj
    assert flops_per_token(cfg) == 6 * (layers * per_layer + vocab * d) + 6 * layers * T * d


def test_late_looping_recipe_has_a_cheaper_plain_phase():
    cfg = pgolf.load_recipe("pr1536")
    d, T = 512, 2048
    # the loop repeats blocks 3-5 twice more: 6 extra virtual layers of the same weights
    per_layer = d * d + 2 * d * 256 + d * d + 2 * d * 2048
    extra = 6 * 6 * (per_layer + T * d)
    assert flops_per_token(cfg, looped=True) - flops_per_token(cfg, looped=False) == pytest.approx(extra)


@pytest.mark.parametrize("recipe", ["baseline", "pr1536", "pr1573", "pr206", "pr103", "pr595"])
def test_activation_model_matches_a_measured_cpu_run(recipe):
    """The meta-device model (score matrices dropped, log-sum-exp added) against the tensors a real fp32 CPU
    training forward saves (CPU SDPA runs its fused kernel: no score matrix), at a batch of 2 sequences."""
    cfg = pgolf.load_recipe(recipe, scale="tiny", overrides={"model.doc_attention": False})
    torch.manual_seed(0)
    model = GPT(cfg.model)
    model.set_looping(True)
    ids = torch.randint(2, cfg.model.vocab_size, (2, cfg.train.seq_len))
    measured = saved_activation_bytes(model, ids, drop_scores=False)
    predicted = activation_bytes(cfg, 2, dtype=torch.float32, fused_loss=False)
    assert predicted == pytest.approx(measured, rel=0.10)


def test_saved_tensors_measure_what_the_allocator_holds_after_the_forward():
    """The measurement itself, against torch's memory profiler: the bytes the forward leaves allocated."""
    cfg = pgolf.load_recipe("baseline", scale="tiny")
    model = GPT(cfg.model)
    ids = torch.randint(2, cfg.model.vocab_size, (2, cfg.train.seq_len))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(ids, ids)  # kept: its graph holds the saved tensors until after the profile
    held = sum(e.self_cpu_memory_usage for e in prof.key_averages())  # allocated minus freed during the forward
    del loss
    assert saved_activation_bytes(model, ids, drop_scores=False) == pytest.approx(held, rel=0.05)


def test_plan_of_pr1536_on_8_h100(capsys):
    assert main(["plan", "--recipe", "pr1536", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["gpus"] == 8 and p["micro_batch_sequences_per_gpu"] == 48 and p["grad_accum_steps"] == 1
    assert set(p["ms_per_step"]) == {"plain", "looped"} and p["ms_per_step"]["plain"] < p["ms_per_step"]["looped"]
    mem = p["memory_per_gpu_bytes"]
    assert mem["total"] < mem["gpu_memory"] and mem["muon_momentum"] > 0 and mem["averaging"] > 0  # EMA
    assert p["artifact_bytes"]["total"] == p["artifact_bytes"]["code"] + p["artifact_bytes"]["model"]
    assert p["eval"]["mode"] == "lora_ttt" and p["eval"]["val_tokens"] == 40_540_160
    assert p["train_budget_s"] == 588.0 and not p["warnings"]


def test_plan_warns_where_memory_or_time_limits_are_exceeded(capsys):
    cfg = pgolf.load_recipe("pr1536", overrides={"train.micro_batch_tokens": 786432})
    p = plan(cfg, gpus=1, gpu="h100")
    assert p["micro_batch_sequences_per_gpu"] == 384
    assert any(w.startswith("memory:") for w in p["warnings"])
    assert any(w.startswith("evaluation:") for w in p["warnings"])   # LoRA TTT on one GPU
    assert not any(w.startswith("memory:") for w in plan(cfg, gpus=8, gpu="h100")["warnings"])
    assert main(["plan", "--recipe", "pr1536", "--gpus", "1", "--set", "train.micro_batch_tokens=786432"]) == 0
    assert "WARNING: memory:" in capsys.readouterr().out
