"""Quantizers, GPTQ, QAT, export policy and `pgolf pack`: properties, not frozen numbers.

Container round trips and damaged files are tested in test_artifact.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pgolf
from pgolf.artifact import sizes as sizes_module
from pgolf.cli import EXIT_OVER_LIMIT, EXIT_USAGE, main
from pgolf.config import ConfigError, finalize
from pgolf.data.shards import read_shard
from pgolf.model.layers import Linear, qclass_of
from pgolf.quant.breakdown import artifact_breakdown
from pgolf.quant.gptq import GPTQError, HessianAccumulator, collect_hessians, gptq_quantize
from pgolf.quant.methods import (clip_search, code_entropy_bits, fake_quantize_grid, quantize_rows,
                                 round_to_nearest_sdclip, sdclip_scales)
from pgolf.quant.qat import FakeQuantizer, attach_qat, late_qat_due, qat_enabled, refresh_qat, set_qat_enabled
from pgolf.quant.quantize import clip_max, dequantize, plan_tensor

from conftest import SP1024_MODEL, VAL_SHARD, write_run_folder
from test_model import SMALL, small_model

METHODS = ("percentile", "rowmax", "clip_search", "sdclip")


def quant_cfg(**quant) -> pgolf.Config:
    over = {**SMALL, "quant.passthrough_max_numel": 256, **{f"quant.{k}": v for k, v in quant.items()}}
    return pgolf.load_recipe("baseline", overrides=over)


def heavy_tailed(rows: int = 48, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with a few outliers per row, so that clipping matters."""
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(rows, cols, generator=g)
    outliers = torch.rand(rows, cols, generator=g) < 0.01
    return torch.where(outliers, 8 * w, w)


# ----------------------------------------------------------------------------- scalar quantizers

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [8, 7, 6, 5, 4])
def test_error_is_within_half_a_step_inside_the_clip_range(method, bits):
    w = heavy_tailed(seed=bits)
    cfg = quant_cfg(method=method, scale_floor=False).quant
    codes, scales = quantize_rows(w, bits, cfg, "mlp")
    qmax = clip_max(bits)
    assert codes.dtype == torch.int8 and codes.abs().max() <= qmax
    assert scales.dtype == torch.float16 and (scales > 0).all()
    s = scales.float()[:, None]
    inside = w.abs() <= qmax * s                      # |w| within the clip range of its row
    err = (dequantize(codes, scales) - w).abs()
    assert (err[inside] <= (s / 2).expand_as(w)[inside] * (1 + 1e-5)).all()
    # outside the range the code saturates at +-clip_max with the sign of w
    assert (codes[~inside].abs() == qmax).all() and (codes[~inside].sign() == w[~inside].sign()).all()


@pytest.mark.parametrize("floor", [False, True])
def test_clip_search_is_never_worse_than_any_of_its_candidates(floor):
    w = heavy_tailed(seed=3)
    candidates = [99.0, 99.9, 99.99, 100.0]
    codes, scales = clip_search(w, 5, candidates, floor)
    best = (dequantize(codes, scales) - w).square().mean()
    per_row_codes, per_row_scales = clip_search(w, 5, candidates, floor, per_row=True)
    row_err = (dequantize(per_row_codes, per_row_scales) - w).square().sum(dim=1)
    for p in candidates:
        cfg = quant_cfg(method="percentile", clip_percentile=p, scale_floor=floor).quant
        c, s = quantize_rows(w, 5, cfg, "attn")
        cand_err = (dequantize(c, s) - w).square()
        assert best <= cand_err.mean()
        assert (row_err <= cand_err.sum(dim=1) + 1e-12).all()
    assert row_err.mean() / w.shape[1] <= best + 1e-12
    # one percentile per tensor: every row was clipped with the same rule
    chosen = [p for p in candidates if torch.equal(quantize_rows(w, 5, quant_cfg(method="percentile", clip_percentile=p, scale_floor=floor).quant, "attn")[1], scales)]
    assert chosen


def test_sdclip_scale_is_k_std_over_clip():
    w = heavy_tailed(seed=5)
    for bits, qclass, k_key in [(6, "attn", "sdclip_k"), (8, "embed", "sdclip_k_embed")]:
        cfg = quant_cfg(method="sdclip", embed_method="sdclip", sdclip_k=11.0, sdclip_k_embed=17.0).quant
        codes, scales = quantize_rows(w, bits, cfg, qclass)
        k = getattr(cfg, k_key)
        expected = (k * w.std(dim=1) / clip_max(bits)).to(torch.float16)
        assert torch.equal(scales, expected)
        assert torch.equal(codes, torch.clamp(torch.round(w / scales.float()[:, None]), -clip_max(bits), clip_max(bits)).to(torch.int8))
    # larger k -> coarser grid -> lower code entropy (fewer bytes)
    assert code_entropy_bits(round_to_nearest_sdclip(w, 6, 20.0)[0]) < code_entropy_bits(round_to_nearest_sdclip(w, 6, 8.0)[0])


def test_constant_rows_get_a_usable_scale():
    w = torch.zeros(4, 16)
    w[1] = 0.5
    for method in ("clip_search", "sdclip", "gptq"):
        codes, scales = quantize_rows(w, 6, quant_cfg(method=method).quant, "mlp")
        assert (scales > 0).all() and torch.isfinite(dequantize(codes, scales)).all()
        assert dequantize(codes, scales)[0].abs().max() == 0


# ----------------------------------------------------------------------------- GPTQ

def correlated_inputs(n: int = 1024, cols: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g)
    scale = torch.linspace(0.2, 3.0, cols)            # uneven input energy, so act-order matters
    return (torch.randn(n, cols, generator=g) @ mixing) * scale


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_gptq_has_lower_output_error_than_round_to_nearest(bits):
    x = correlated_inputs()
    w = heavy_tailed(32, 64, seed=bits)
    scales = sdclip_scales(w, bits, 12.85)
    rtn = torch.clamp(torch.round(w / scales.float()[:, None]), -clip_max(bits), clip_max(bits)).to(torch.int8)
    gptq = gptq_quantize(w, x.T @ x, scales, bits, damp=0.01, block=16)
    assert gptq.abs().max() <= clip_max(bits)
    err_rtn = (x @ (w - dequantize(rtn, scales)).T).norm()
    err_gptq = (x @ (w - dequantize(gptq, scales)).T).norm()
    assert err_gptq < 0.9 * err_rtn


def test_gptq_block_size_does_not_change_the_result_much_and_dead_inputs_are_zeroed():
    x = correlated_inputs(cols=48)
    x[:, 5] = 0.0                                      # an input that never fires
    w = heavy_tailed(16, 48, seed=1)
    scales = sdclip_scales(w, 6, 12.85)
    h = x.T @ x
    a = gptq_quantize(w, h, scales, 6, block=8)
    b = gptq_quantize(w, h, scales, 6, block=48)
    assert (a[:, 5] == 0).all() and (b[:, 5] == 0).all()
    # lazy block updates are algebraically the same sweep: codes agree up to rare round-off ties
    assert (a != b).float().mean() < 0.01
    with pytest.raises(GPTQError, match="does not match"):
        gptq_quantize(w, torch.eye(5), scales, 6)


def test_gptq_with_identity_hessian_is_round_to_nearest():
    w = heavy_tailed(16, 32, seed=2)
    codes, scales = round_to_nearest_sdclip(w, 5, 12.85)
    assert torch.equal(gptq_quantize(w, torch.eye(32), scales, 5, damp=0.0), codes)


class FixedLoader:
    """Stands in for the training loader: the same batches every time."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.i = batches, 0

    def next_batch(self, global_tokens: int, seq_len: int, accum: int):
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        return x, x


def test_hessian_under_bf16_autocast_equals_the_fp32_sum():
    """Calibration runs under bf16 autocast; H must still be the fp32 sum of X^T X (the records' fp32 buffer)."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(512, 48, generator=g).to(torch.bfloat16) for _ in range(8)]  # bf16 activations
    accumulator = HessianAccumulator({})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x in batches:
            accumulator.add("w", x)
    exact = sum(x.double().T @ x.double() for x in batches)
    h = accumulator.sums["w"]
    assert h.dtype == torch.float32
    assert float((h.double() - exact).norm() / exact.norm()) < 1e-6


def test_calibration_forwards_hold_at_most_micro_batch_tokens():
    """A calibration batch of train.batch_tokens runs in forwards of train.micro_batch_tokens, with the same H."""
    over = {"train.batch_tokens": 128, "train.seq_len": 16, "quant.passthrough_max_numel": 256,
            "quant.method": "gptq", "quant.gptq_calib_batches": 2}
    batches = [torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    results = {}
    for micro in (32, 128):
        cfg = pgolf.load_recipe("baseline", overrides={**SMALL, **over, "train.micro_batch_tokens": micro})
        torch.manual_seed(0)
        model = pgolf.build_model(cfg.model)
        rows: list[int] = []
        handle = model.blocks[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
        results[micro] = collect_hessians(model, FixedLoader(batches), cfg, "cpu")
        handle.remove()
        assert max(rows) == micro // 16 and sum(rows) == 16
    for name, h in results[128].items():
        assert float((results[32][name] - h).norm() / h.norm()) < 1e-6, name


def test_hessians_sum_every_virtual_use_and_the_tied_embedding_uses_the_final_norm_output():
    over = {"model.layer_schedule": [0, 1, 2, 1, 2, 3], "train.batch_tokens": 64, "train.seq_len": 16}
    cfg = pgolf.load_recipe("baseline", overrides={**SMALL, **over, "quant.passthrough_max_numel": 256,
                                                   "quant.method": "gptq", "quant.embed_method": "gptq",
                                                   "quant.gptq_calib_batches": 2})
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model)
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    seen: list[torch.Tensor] = []
    handle = model.blocks[1].attn.c_q.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    hessians = collect_hessians(model, FixedLoader(batches), cfg, "cpu")
    handle.remove()
    assert len(seen) == 4                              # block 1 runs twice per batch
    expected = sum(x.reshape(-1, x.shape[-1]).T @ x.reshape(-1, x.shape[-1]) for x in seen) / 2
    torch.testing.assert_close(hessians["blocks.1.attn.c_q.weight"], expected)
    with torch.no_grad():
        hidden = [model.hidden(x).reshape(-1, 32) for x in batches]
    torch.testing.assert_close(hessians["tok_emb"], sum(h.T @ h for h in hidden) / 2)
    quantized = {n for n, p in model.named_parameters()
                 if plan_tensor(p, qclass_of(p), cfg.quant, n).encoding == "int"}
    assert set(hessians) == quantized                  # every GPTQ-quantized weight, nothing else


# ----------------------------------------------------------------------------- export policy

def test_policy_follows_the_class_fields():
    cfg = quant_cfg(attn_bits=6, mlp_bits=5, embed_bits=0, keep_float=["blocks.0.attn.c_k.weight"]).quant
    model = small_model({})
    plans = {n: plan_tensor(p.detach(), qclass_of(p), cfg, n) for n, p in model.named_parameters()}
    assert plans["blocks.1.attn.c_q.weight"].bits == 6 and plans["blocks.1.mlp.fc.weight"].bits == 5
    assert plans["tok_emb"].encoding == "float16" and plans["blocks.0.attn.c_k.weight"].encoding == "float16"
    assert plans["blocks.0.attn_scale"].encoding == "float32"      # control tensor, control_dtype


def _recipe_plans(name: str) -> dict[str, tuple[str, int]]:
    cfg = pgolf.load_recipe(name)
    with torch.device("meta"):
        model = pgolf.model.gpt.GPT(cfg.model)
    out = {}
    for n, p in model.named_parameters():
        plan = plan_tensor(p, qclass_of(p), cfg.quant, n)
        out[n] = (plan.encoding, plan.bits)
    return out


def test_recipes_export_what_their_code_exported():
    """TECHNIQUES.md §9.7 / §11 'quantization' row, at full scale."""
    p103 = _recipe_plans("pr103")
    assert p103["blocks.0.attn.c_q.weight"] == ("int", 6) and p103["tok_emb"] == ("float16", 0)
    assert p103["lora_a_q"] == ("float16", 0) and p103["layer_scales"] == ("float16", 0)
    assert p103["skip_weights"] == ("float32", 0)
    p206 = _recipe_plans("pr206")
    assert p206["blocks.0.mlp.fc.weight"] == ("int", 6) and p206["tok_emb"] == ("float16", 0)
    assert p206["smear.gate"] == ("float16", 0) and p206["blocks.0.attn.q_gain"] == ("float32", 0)
    p595 = _recipe_plans("pr595")
    assert p595["blocks.0.attn.c_q.weight"] == ("int", 6) and p595["blocks.0.mlp.fc.weight"] == ("int", 5)
    assert p595["blocks.9.attn.c_k.weight"] == ("float16", 0) and p595["bigram.table"] == ("int", 8)
    assert p595["bigram.proj.weight"] == ("float16", 0) and p595["blocks.0.attn_scale"] == ("float16", 0)
    # over the passthrough (a wider bigram, or tiny lockstep's 1,024), #595's _classify_param makes bigram.proj "attn"
    small = pgolf.load_recipe("pr595", overrides={"quant.passthrough_max_numel": 1024}).quant
    assert plan_tensor(torch.empty(512, 128, device="meta"), "other", small, "bigram.proj.weight").bits == 6
    p1573 = _recipe_plans("pr1573")
    assert {v for k, v in p1573.items() if ".attn.c_" in k or ".mlp." in k or "attn.proj" in k} == {("int", 5)}
    assert p1573["tok_emb"] == ("int", 8) and p1573["value_embed.table"] == ("int", 8)
    p1536 = _recipe_plans("pr1536")
    assert p1536["blocks.3.mlp.proj.weight"] == ("int", 6) and p1536["tok_emb"] == ("int", 8)
    assert p1536["lane_merge"] == ("float16", 0)
    cfg = pgolf.load_recipe("pr1536")
    assert (cfg.quant.method, cfg.quant.embed_method, cfg.quant.sdclip_k, cfg.quant.sdclip_k_embed) == ("gptq", "gptq", 12.85, 20.0)
    assert pgolf.load_recipe("pr1573").quant.clip_search_percentiles == [99.9, 99.95, 99.99, 100.0]


@pytest.mark.parametrize("key,value", [("sdclip_k", 0.0), ("clip_search_percentiles", [0.0]), ("gptq_block", 0),
                                       ("clip_percentile", 101.0), ("qat_start_lr", 2.0)])
def test_bad_quant_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"quant.{key}"):
        quant_cfg(**{key: value})


@pytest.mark.parametrize("method", ["clip_search", "sdclip", "gptq"])
def test_new_methods_round_trip_through_the_artifact(tmp_path, method):
    cfg = quant_cfg(method=method, embed_method=method, matrix_bits=5, bit_pack=True, compressor="lzma")
    model = small_model({})
    hessians = None
    if method == "gptq":
        g = torch.Generator().manual_seed(0)
        hessians = {n: (lambda x: x.T @ x)(torch.randn(256, p.shape[1], generator=g))
                    for n, p in model.named_parameters() if p.ndim == 2 and qclass_of(p) in ("attn", "mlp")}
    pgolf.pack(model, cfg, tmp_path / "a.pgolf", hessians)
    loaded, cfg2 = pgolf.unpack(tmp_path / "a.pgolf")
    assert cfg2.quant == cfg.quant
    for name, p in model.named_parameters():
        plan = plan_tensor(p, qclass_of(p), cfg.quant, name)
        if plan.encoding != "int":
            continue
        codes, scales = quantize_rows(p.detach().reshape(p.shape[0], -1), plan.bits, cfg.quant, qclass_of(p),
                                      None if hessians is None else hessians.get(name))
        torch.testing.assert_close(dict(loaded.named_parameters())[name].detach(),
                                   dequantize(codes, scales).reshape(p.shape), rtol=0, atol=0)
    # ... and the method did its job on the loaded weights, against plain rounding written out here
    checked = 0
    for name, p in model.named_parameters():
        plan = plan_tensor(p, qclass_of(p), cfg.quant, name)
        if plan.encoding != "int" or (method == "gptq" and name not in hessians):
            continue
        w = p.detach().float().reshape(p.shape[0], -1)
        got = dict(loaded.named_parameters())[name].detach().float().reshape_as(w)
        qmax = 2 ** (plan.bits - 1) - 1
        if method == "gptq":  # GPTQ: lower H-weighted error tr(D H D^T) than rounding to nearest on its own grid
            rtn = dequantize(*round_to_nearest_sdclip(w, plan.bits, cfg.quant.sdclip_k))
            h_err = lambda x: float(torch.trace((x - w) @ hessians[name] @ (x - w).T))  # noqa: E731
            assert h_err(got) < h_err(rtn), name
        else:  # clip_search has the row max among its clips; SDClip clips: both beat / differ from rounding at the max
            scale = (w.abs().amax(1) / qmax).clamp_min(1.0 / qmax if cfg.quant.scale_floor else 1e-8).half().float()[:, None]
            at_max = (w / scale).round().clamp(-qmax, qmax) * scale
            if method == "clip_search":
                assert (got - w).square().sum() <= (at_max - w).square().sum() * (1 + 1e-6), name
            else:
                assert not torch.equal(got, at_max), name
        checked += 1
    assert checked >= 4 * 6


# ----------------------------------------------------------------------------- QAT

def _fp16_exact(model):
    """Round every parameter to fp16 values, so that float passthrough round-trips exactly."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.mark.parametrize("method", METHODS)
def test_qat_forward_equals_the_exported_then_loaded_model(tmp_path, method):
    cfg = quant_cfg(method=method, matrix_bits=5, embed_bits=0, qat="always", scale_floor=(method != "rowmax"))
    model = _fp16_exact(small_model({}))
    assert attach_qat(model, cfg.quant) == 4 * 6       # q, k, v, o, fc, proj of each block; not tok_emb
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    model.train()
    qat_logits = model(ids)
    pgolf.pack(model, cfg, tmp_path / "a.pgolf")
    loaded, _ = pgolf.unpack(tmp_path / "a.pgolf")
    torch.testing.assert_close(qat_logits, loaded.eval()(ids), rtol=0, atol=0)
    model.eval()                                        # eval forwards use the live weights
    assert not torch.equal(model(ids), qat_logits)


def test_qat_gradient_is_straight_through():
    cfg = quant_cfg(qat="always", matrix_bits=4)
    lin = Linear(32, 16, "matrix", "mlp")
    holder = torch.nn.Sequential(lin)
    attach_qat(holder, cfg.quant)
    x = torch.randn(8, 32)
    holder.train()
    holder(x).square().sum().backward()
    w_hat = fake_quantize_grid(lin.weight.detach(), 4, cfg.quant, "mlp")
    w_ref = w_hat.clone().requires_grad_(True)
    (x @ w_ref.T).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, w_ref.grad)  # d loss / dW = d loss / dW_hat


def test_late_qat_switches_on_only_after_warmup_below_the_threshold():
    q = quant_cfg(qat="late", qat_start_lr=0.15).quant
    assert not late_qat_due(3, 0.05, q, warmup_steps=10)         # LR warm-up ramps from 0: not yet
    assert not late_qat_due(50, 0.5, q, warmup_steps=10)
    assert late_qat_due(50, 0.1, q, warmup_steps=10)
    assert not late_qat_due(50, 0.1, quant_cfg(qat="always").quant, warmup_steps=0)


def test_late_qat_really_switches_under_torch_compile():
    cfg = quant_cfg(qat="late", matrix_bits=4, method="percentile")
    torch.manual_seed(0)
    lin = Linear(32, 16, "matrix", "mlp")
    holder = torch.nn.Sequential(lin)
    attach_qat(holder, cfg.quant)
    holder.train()
    x = torch.randn(4, 32)
    compiled = torch.compile(holder, dynamic=False)
    refresh_qat(holder)
    off = compiled(x)  # Inductor needs a C++ compiler: .ci/run installs g++
    torch.testing.assert_close(off, x @ lin.weight.detach().T)
    import torch._dynamo.config as dynamo_config
    with dynamo_config.patch(error_on_recompile=True):   # the switch is data in the graph, not a recompile
        set_qat_enabled(holder, True)
        refresh_qat(holder)
        on = compiled(x)
    assert qat_enabled(holder)
    w_hat = fake_quantize_grid(lin.weight.detach(), 4, cfg.quant, "mlp")
    torch.testing.assert_close(on, x @ w_hat.T)
    assert not torch.allclose(on, off)


# ----------------------------------------------------------------------------- training and `pgolf pack`

def test_training_with_late_qat_and_gptq_end_to_end(micro, tmp_path, monkeypatch):
    import pgolf.quant.qat as qat  # the optional module the loop reaches through the registry

    switched: list[bool] = []
    real = qat.set_qat_enabled
    monkeypatch.setattr(qat, "set_qat_enabled", lambda m, on: (switched.append(on), real(m, on)))
    cfg = micro(quant__qat="late", quant__qat_start_lr=0.9, quant__method="gptq", quant__embed_method="gptq",
                quant__matrix_bits=6, quant__gptq_calib_batches=2, quant__passthrough_max_numel=1024)
    result = pgolf.train(cfg, tmp_path / "run", progress=False)
    assert switched == [True] and result["under_limit"]
    model, cfg2 = pgolf.unpack(tmp_path / "run" / "artifact.pgolf")
    assert cfg2.quant.method == "gptq"
    assert not any(isinstance(m, FakeQuantizer) for m in model.modules())   # nothing of QAT is exported
    # GPTQ ran on calibration Hessians: the exported matrices are on the SDClip grid but not plain rounding on it
    trained = load_file(tmp_path / "run" / "model.safetensors")
    moved = 0
    for name, p in model.named_parameters():
        if qclass_of(p) in ("attn", "mlp") and plan_tensor(p, qclass_of(p), cfg.quant, name).encoding == "int":
            w = trained[name].float()
            scales = sdclip_scales(w, 6, cfg.quant.sdclip_k).float()[:, None]
            got = p.detach().float()
            torch.testing.assert_close(got / scales, (got / scales).round(), rtol=0, atol=1e-3, msg=name)
            moved += not torch.equal(got, dequantize(*round_to_nearest_sdclip(w, 6, cfg.quant.sdclip_k)))
    assert moved >= 4  # error feedback changed codes in most matrices


@pytest.fixture
def run_folder(tmp_path):
    return write_run_folder(tmp_path / "run", quant_cfg(), small_model({}))


def test_pgolf_pack_repacks_and_prints_the_breakdown(run_folder, tmp_path, capsys):
    out = tmp_path / "int5.pgolf"
    code = main(["pack", str(run_folder), "--set", "quant.matrix_bits=5", "--set", "quant.method=clip_search",
                 "--set", "quant.compressor=zstd", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    for word in ("attn", "mlp", "embed", "scales", "header", "code", "to spare"):
        assert word in text
    model, cfg = pgolf.unpack(out)
    assert cfg.quant.matrix_bits == 5 and cfg.quant.compressor == "zstd"
    b = artifact_breakdown(out, 1000, sizes_module.LIMIT_BYTES)
    assert b["model_bytes"] == out.stat().st_size  # (header + framing + payload is that size by construction)
    assert b["classes"]["mlp"]["encodings"] == ["int5"] and b["classes"]["control"]["encodings"] == ["float32"]
    assert b["params"] == sum(p.numel() for p in model.parameters())


def test_pgolf_pack_over_the_limit_exits_4_loudly(run_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sizes_module, "LIMIT_BYTES", 10_000)
    code = main(["pack", str(run_folder), "--set", "quant.matrix_bits=8", "--out", str(tmp_path / "big.pgolf")])
    captured = capsys.readouterr()
    assert code == EXIT_OVER_LIMIT
    assert "OVER THE LIMIT" in captured.out and "OVER the 10,000-byte limit" in captured.err


def test_pgolf_pack_rejects_bad_input_by_name(run_folder, tmp_path, capsys):
    assert main(["pack", str(run_folder), "--set", "model.num_layers=2", "--out", str(tmp_path / "x")]) == EXIT_USAGE
    assert "model.num_layers" in capsys.readouterr().err
    (run_folder / "model.safetensors").unlink()
    assert main(["pack", str(run_folder), "--out", str(tmp_path / "x")]) == EXIT_USAGE
    assert "model.safetensors" in capsys.readouterr().err


def test_pgolf_pack_gptq_calibrates_on_training_data_and_eval_scores_it(micro, tmp_path, capsys):
    from pgolf.cli.evaluate_artifact import evaluate_artifact

    cfg = micro(quant__passthrough_max_numel=1024)
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model)
    folder = write_run_folder(tmp_path / "run", cfg, model)
    out = tmp_path / "gptq.pgolf"
    code = main(["pack", str(folder), "--set", "quant.method=gptq", "--set", "quant.embed_method=gptq",
                 "--set", "quant.gptq_calib_batches=2", "--set", "quant.matrix_bits=6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = evaluate_artifact(out, val_tokens=cfg.data.val_tokens_limit)
    assert result["val_targets"] == cfg.data.val_tokens_limit - 1 and result["val_prefix"]
    packed, packed_cfg = pgolf.unpack(out)
    tokens = np.asarray(read_shard(VAL_SHARD))[: cfg.data.val_tokens_limit]
    direct = pgolf.evaluate(packed, tokens, str(SP1024_MODEL), finalize(packed_cfg).eval)
    assert result["val_bpb"] == pytest.approx(direct.val_bpb, abs=1e-9)  # pgolf eval scores the artifact's model
    w = model.blocks[0].mlp.fc.weight.detach().float()  # and that model is GPTQ's, not plain rounding
    assert not torch.equal(packed.blocks[0].mlp.fc.weight.detach().float(),
                           dequantize(*round_to_nearest_sdclip(w, 6, cfg.quant.sdclip_k)))
