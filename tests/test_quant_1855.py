"""#1855's quantization and compression switches: per-class SDClip k, QuantGate, LQER, per-group lrzip.

Properties against hand-written expectations; every switch is off by default.
"""

from __future__ import annotations

import math
import struct

import brotli
import numpy as np
import pytest
import torch

import pgolf
from pgolf.artifact.budget import bits_per_code
from pgolf.config import ConfigError
from pgolf.model.layers import qclass_of
from pgolf.quant import lqer, pergroup
from pgolf.quant.compress import decompress
from pgolf.quant.container import ArtifactError, PartSpec, encode_payload, write_container
from pgolf.quant.layout import artifact_layout, layout_parts, quantize_model, serialize
from pgolf.quant.pack import header_of, read_artifact
from pgolf.quant.methods import quantize_rows
from pgolf.quant.quantize import dequantize, plan_tensor

from conftest import need
from test_model import SMALL, small_model


def cfg_with(**quant) -> pgolf.Config:
    over = {**SMALL, "quant.passthrough_max_numel": 256, **{f"quant.{k}": v for k, v in quant.items()}}
    return pgolf.load_recipe("baseline", overrides=over)


def tensors_by_name(model, cfg) -> dict:
    return {t.layout.name: t for t in quantize_model(model, cfg)}


# ----------------------------------------------------------------------------- per-class SDClip k (#1586)

def test_each_class_gets_its_own_sdclip_k():
    cfg = cfg_with(method="sdclip", embed_method="sdclip", matrix_bits=6, embed_bits=7, sdclip_k=12.85,
                   sdclip_k_attn=13.0, sdclip_k_mlp=11.5, sdclip_k_embed=14.0)
    model = small_model({})
    got = tensors_by_name(model, cfg)
    params = dict(model.named_parameters())
    for name, k, qmax in [("blocks.0.attn.c_q.weight", 13.0, 31), ("blocks.1.mlp.fc.weight", 11.5, 31),
                          ("blocks.0.mlp.proj.weight", 11.5, 31), ("tok_emb", 14.0, 63)]:
        w = params[name].detach().float()
        expected = (k * w.std(dim=1) / qmax).half().numpy()          # s_r = fp16(k * std(W_r) / clip_max)
        np.testing.assert_array_equal(got[name].scales, expected, err_msg=name)


def test_zero_class_k_falls_back_to_sdclip_k_and_the_estimate_follows_the_class():
    cfg = cfg_with(method="sdclip", matrix_bits=6, sdclip_k=12.0, sdclip_k_mlp=9.0)
    model = small_model({})
    w = dict(model.named_parameters())["blocks.0.attn.c_k.weight"].detach().float()
    np.testing.assert_array_equal(tensors_by_name(model, cfg)["blocks.0.attn.c_k.weight"].scales,
                                  (12.0 * w.std(dim=1) / 31).half().numpy())
    assert bits_per_code(6, "mlp", cfg) == pytest.approx(math.log2(31 / 9.0) + 2.05)
    assert bits_per_code(6, "attn", cfg) == pytest.approx(math.log2(31 / 12.0) + 2.05)


def test_negative_class_k_is_refused_by_name():
    with pytest.raises(ConfigError, match="quant.sdclip_k_mlp"):
        cfg_with(sdclip_k_mlp=-1.0)


# ----------------------------------------------------------------------------- QuantGate (#1736)

GATES = {"gate_w": "model.attn_gate", "sparse_gate_w": "model.sparse_attn_gate"}  # dense, and #1787's sparse gate


def gate_model_cfg(gate: str = "sparse_gate_w", **quant):
    # the passthrough limit is far above the gates' size: the gate rule must come first
    on = {GATES[gate]: True}
    cfg = pgolf.load_recipe("baseline", overrides={**SMALL, **on,
                                                   **{f"quant.{k}": v for k, v in {"passthrough_max_numel": 65536, **quant}.items()}})
    model = small_model(on)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if qclass_of(p) == "gate":
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model, cfg


@pytest.mark.parametrize("gate", sorted(GATES))
def test_quantgate_stores_gates_int8_per_row_and_round_trips_within_half_a_step(tmp_path, gate):
    model, cfg = gate_model_cfg(gate, gate_bits=8, method="gptq")
    gates = [n for n, p in model.named_parameters() if qclass_of(p) == "gate"]
    assert gates and {n.rsplit(".", 1)[-1] for n in gates} == {gate}
    layout = {t.name: t for t in artifact_layout(cfg)}
    for name in gates:
        t = layout[name]
        rows, cols = t.shape
        assert (t.plan.encoding, t.plan.bits) == ("int", 8)
        assert sum(p.nbytes for p in t.parts) == rows * cols + 2 * rows   # 1 byte per weight + fp16 per row
    pgolf.pack(model, cfg, tmp_path / "g.pgolf")
    loaded, _ = pgolf.unpack(tmp_path / "g.pgolf")
    got = dict(loaded.named_parameters())
    for name in gates:
        w = dict(model.named_parameters())[name].detach().float()
        s = (w.abs().amax(dim=1) / 127).half().float()                    # s_h = fp16(max_j |W_hj| / 127)
        err = (got[name].detach().float() - w).abs()
        assert (err <= s[:, None] / 2 + 1e-7).all(), name
        assert got[name].dtype == w.dtype


def test_gates_stay_float_by_default():
    model, cfg = gate_model_cfg()
    for name, p in model.named_parameters():
        if qclass_of(p) == "gate":
            assert plan_tensor(p, "gate", cfg.quant, name).encoding == cfg.quant.control_dtype


# ----------------------------------------------------------------------------- LQER (#1797)

def test_top_k_picks_exactly_the_largest_error_norms():
    assert lqer.top_k([1.0, 5.0, 3.0, 5.0, 0.5], 2) == [1, 3]
    assert lqer.top_k([2.0, 1.0, 3.0], 3) == [0, 1, 2]
    assert lqer.top_k([4.0, 4.0, 4.0], 1) == [0]                       # ties: the earlier tensor


def test_full_rank_unquantized_factors_reconstruct_the_error():
    e = torch.randn(12, 20, generator=torch.Generator().manual_seed(0))
    a, b = lqer.factor(e, 12)
    torch.testing.assert_close(a @ b, e, atol=1e-5, rtol=0)
    a1, b1 = lqer.factor(e, 1)
    u, s, vh = torch.linalg.svd(e)
    torch.testing.assert_close(a1 @ b1, s[0] * torch.outer(u[:, 0], vh[0]), atol=1e-5, rtol=0)


def test_asym_packing_ranges_and_group_layout():
    cfg = cfg_with(lqer_rank=4, lqer_group=64).quant
    g = torch.Generator().manual_seed(1)
    a = torch.randn(96, 4, generator=g)
    a[5, 2] = a.abs().max() * 1.0001                          # the largest |A| is positive: A/s_A = 1.5 there
    b = torch.randn(4, 128, generator=g) * torch.linspace(0.1, 3.0, 128)
    parts = lqer.pack(a, b, cfg)
    q_a, s_a, q_b, s_b = (parts[k] for k in lqer.KINDS)
    assert s_a.shape == (1,) and s_a.dtype == np.float16
    assert set(np.unique(q_a)) <= {-2, -1, 0, 1} and q_a[5, 2] == 1     # round(1.5) = 2 clipped to 1 (asymmetric)
    assert q_b.min() >= -8 and q_b.max() <= 7 and s_b.shape == (4 * 128 // 64,)
    for g_index in range(s_b.size):                            # group g = row g // 2, columns 64 (g % 2) ...
        row, start = divmod(g_index * 64, 128)
        block = b[row, start : start + 64]
        assert s_b[g_index] == np.float16(float(block.abs().max()) / 7.5), g_index
    spec = {p.kind: p.shape for p in lqer.part_specs("x", 96, 128, cfg)}
    assert spec == {"lqer_a_codes": (96, 4), "lqer_a_scales": (1,), "lqer_b_codes": (4, 128), "lqer_b_scales": (8,)}


def test_symmetric_fallback_when_groups_do_not_tile_b():
    cfg = cfg_with(lqer_rank=3, lqer_group=64, lqer_factor_bits=4).quant
    assert not lqer.is_asym(40, 30, cfg)                       # 3 * 30 = 90 is not a multiple of 64
    a, b = lqer.factor(torch.randn(40, 30, generator=torch.Generator().manual_seed(2)), 3)
    parts = lqer.pack(a, b, cfg)
    assert parts["lqer_a_scales"].shape == (40,) and parts["lqer_b_scales"].shape == (3,)
    assert np.abs(parts["lqer_a_codes"]).max() <= 7 and np.abs(parts["lqer_b_codes"]).max() <= 7


def test_packed_correction_reduces_a_dominant_low_rank_error():
    g = torch.Generator().manual_seed(4)
    e = 0.5 * torch.outer(torch.randn(64, generator=g), torch.randn(128, generator=g)) + 0.01 * torch.randn(64, 128, generator=g)
    cfg = cfg_with(lqer_rank=4).quant
    parts = lqer.pack(*lqer.factor(e, 4), cfg)
    assert float((e - lqer.correction(parts, cfg)).norm()) < 0.75 * float(e.norm())   # int2 A: ~0.53 here


def lqer_model():
    """Weights with a low-rank structure the int4 grid cannot hold, in some tensors only."""
    model = small_model({})
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("blocks.0.mlp.fc.weight", "blocks.1.attn.c_q.weight", "tok_emb"):
                p.add_(0.02 * torch.outer(torch.randn(p.shape[0], generator=g), torch.randn(p.shape[1], generator=g)))
    return model


def test_lqer_lowers_the_error_of_the_tensors_it_picks_and_leaves_the_others_alone(tmp_path):
    model = lqer_model()
    off = cfg_with(matrix_bits=4, embed_bits=4)
    on = cfg_with(matrix_bits=4, embed_bits=4, lqer_rank=2, lqer_top_k=2)
    base, corrected = quantize_model(model, off), quantize_model(model, on)
    params = dict(model.named_parameters())
    picked = [t.layout.name for t in corrected if t.lqer is not None]
    assert len(picked) == 2
    errors = {t.layout.name: float((params[t.layout.name].detach().reshape(t.codes.shape).float()
                                    - dequantize(torch.from_numpy(t.codes), torch.from_numpy(t.scales))).norm())
              for t in base if t.codes is not None}
    assert sorted(picked) == sorted(sorted(errors, key=errors.get)[-2:])    # the two largest ||E||_F
    pgolf.pack(model, on, tmp_path / "l.pgolf")
    loaded = dict(pgolf.unpack(tmp_path / "l.pgolf")[0].named_parameters())
    pgolf.pack(model, off, tmp_path / "o.pgolf")
    plain = dict(pgolf.unpack(tmp_path / "o.pgolf")[0].named_parameters())
    for name, p in params.items():
        if name in picked:
            assert float((loaded[name] - p).detach().norm()) < float((plain[name] - p).detach().norm()), name
        else:
            torch.testing.assert_close(loaded[name], plain[name], rtol=0, atol=0, msg=name)


def test_lqer_artifact_round_trip_is_exact_and_counted(tmp_path):
    model = lqer_model()
    cfg = cfg_with(matrix_bits=4, embed_bits=4, lqer_rank=2, lqer_top_k=2, compressor="brotli")
    tensors = quantize_model(model, cfg)
    result = pgolf.pack(model, cfg, tmp_path / "a.pgolf")
    assert result["model_bytes"] == (tmp_path / "a.pgolf").stat().st_size
    _, layout, header, arrays = read_artifact(tmp_path / "a.pgolf")
    assert header["lqer"] == [i for i, t in enumerate(tensors) if t.lqer is not None]
    raw = b"".join(arrays[(p.tensor, p.kind)].tobytes() for p in layout_parts(layout))
    assert raw == b"".join(serialize(tensors))                           # every part bit-exact
    extra = sum(p.nbytes for t in layout for p in t.parts if p.kind.startswith("lqer_"))
    r = 2
    expected = sum(rows * r + 2 + r * cols + 2 * (r * cols // 64)
                   for t in tensors if t.lqer is not None for rows, cols in [t.codes.shape])
    assert extra == expected and header["raw_bytes"] == result["raw_bytes"]
    loaded = dict(pgolf.unpack(tmp_path / "a.pgolf")[0].named_parameters())
    for t in tensors:
        if t.lqer is None:
            continue
        w_hat = dequantize(torch.from_numpy(t.codes), torch.from_numpy(t.scales)) + lqer.correction(t.lqer, cfg.quant)
        torch.testing.assert_close(loaded[t.layout.name].detach(), w_hat.reshape(t.layout.shape), rtol=0, atol=0)
    pgolf.pack(model, cfg, tmp_path / "b.pgolf")
    assert (tmp_path / "a.pgolf").read_bytes() == (tmp_path / "b.pgolf").read_bytes()


@pytest.mark.parametrize("picks,match", [([0, 0], "distinct"), ([3, 1], "ascending"), ([1, 2, 3], "at most"),
                                          ([10 ** 9], "not an integer-coded"), (["x"], "list of tensor positions"),
                                          (None, "list of tensor positions")])
def test_crafted_lqer_headers_are_refused_before_anything_is_read(tmp_path, picks, match):
    model = lqer_model()
    cfg = cfg_with(matrix_bits=4, embed_bits=4, lqer_rank=2, lqer_top_k=2)
    tensors = quantize_model(model, cfg)
    parts = serialize(tensors)
    header = header_of(cfg, [])
    header["lqer"] = picks
    payload, used = encode_payload(parts, "zlib", False)
    write_container(tmp_path / "c.pgolf", header, parts, payload, used, False)
    with pytest.raises(ArtifactError, match="header") as info:
        read_artifact(tmp_path / "c.pgolf")
    assert match in str(info.value)


def test_lqer_picks_need_lqer_on_and_an_integer_tensor(tmp_path):
    model = small_model({})
    cfg = cfg_with(matrix_bits=4)
    parts = serialize(quantize_model(model, cfg))
    header = {**header_of(cfg), "lqer": [10]}
    payload, used = encode_payload(parts, "zlib", False)
    write_container(tmp_path / "c.pgolf", header, parts, payload, used, False)
    with pytest.raises(ArtifactError, match="quant.lqer_rank = 0"):
        read_artifact(tmp_path / "c.pgolf")
    on = cfg_with(matrix_bits=4, lqer_rank=2)
    float_position = next(i for i, t in enumerate(artifact_layout(on)) if t.plan.encoding != "int")
    header = {**header_of(on), "lqer": [float_position]}
    write_container(tmp_path / "d.pgolf", header, parts, payload, used, False)
    with pytest.raises(ArtifactError, match="not an integer-coded tensor"):
        read_artifact(tmp_path / "d.pgolf")


# ----------------------------------------------------------------------------- per-group lrzip (#1855)

def needs_lrzip():
    """lrzip is a system tool (.ci/run installs it): under CI its absence is a failure, elsewhere a skip."""
    need(pergroup.lrzip_available(), "lrzip is not installed (apt-get install lrzip); CI must test the real codec")


def brute_force_l1_order(m: np.ndarray) -> list[int]:
    order, unused = [0], set(range(1, m.shape[0]))
    while unused:
        cur = m[order[-1]].astype(int)
        best = min(sorted(unused), key=lambda r: sum(abs(int(a) - int(b)) for a, b in zip(m[r], cur)))
        order.append(best)
        unused.remove(best)
    return order


def test_simsort_takes_the_nearest_unused_row_ties_to_the_lowest_index():
    g = np.random.default_rng(0)
    m = g.integers(-3, 4, size=(12, 8)).astype(np.int8)
    m[7] = m[3]                                   # exact ties
    m[9] = m[0]
    assert pergroup.simsort_l1(m).tolist() == brute_force_l1_order(m)
    assert pergroup.simsort_l1(np.zeros((5, 3), np.int8)).tolist() == [0, 1, 2, 3, 4]


def pergroup_cfg(**quant):
    return cfg_with(matrix_bits=6, embed_bits=6, compressor="pergroup", **quant)


@pytest.mark.parametrize("codec", ["brotli", "lrzip"])
def test_pergroup_round_trip_is_bit_exact(tmp_path, codec):
    if codec == "lrzip":
        needs_lrzip()
    model = small_model({})
    cfg = pergroup_cfg(pergroup_codec=codec, byte_shuffle=True, lqer_rank=2)
    tensors = quantize_model(model, cfg)
    layout = artifact_layout(cfg, [i for i, t in enumerate(tensors) if t.lqer is not None])
    sorted_parts = [p.tensor for p in layout_parts(layout) if p.row_order]
    assert {"tok_emb", "blocks.0.attn.c_q.weight", "blocks.3.mlp.fc.weight"} <= set(sorted_parts)
    assert not any("c_k" in name or "proj" in name for name in sorted_parts)
    result = pgolf.pack(model, cfg, tmp_path / "p.pgolf")
    assert result["compressor"] == f"pergroup+{codec}"
    assert result["model_bytes"] == (tmp_path / "p.pgolf").stat().st_size
    _, layout, header, arrays = read_artifact(tmp_path / "p.pgolf")
    assert header["compressor"] == f"pergroup+{codec}"
    raw = b"".join(arrays[(p.tensor, p.kind)].tobytes() for p in layout_parts(layout))
    assert raw == b"".join(serialize(tensors))                 # codes, scales, floats, LQER: every byte
    loaded = dict(pgolf.unpack(tmp_path / "p.pgolf")[0].named_parameters())
    pgolf.pack(model, cfg_with(matrix_bits=6, embed_bits=6, byte_shuffle=True, lqer_rank=2), tmp_path / "z.pgolf")
    for name, p in pgolf.unpack(tmp_path / "z.pgolf")[0].named_parameters():
        torch.testing.assert_close(loaded[name], p, rtol=0, atol=0, msg=name)
    pgolf.pack(model, cfg, tmp_path / "q.pgolf")
    assert (tmp_path / "p.pgolf").read_bytes() == (tmp_path / "q.pgolf").read_bytes()


def test_stored_rows_follow_the_order_and_decode_inverts_it():
    codes = np.random.default_rng(1).integers(-8, 8, size=(10, 6)).astype(np.int8)
    spec = PartSpec("t", "codes", "int8", (10, 6), "g", True)
    payload, used = pergroup.encode([codes.tobytes()], [spec], "brotli", False)
    streams = pergroup.split_streams(payload, 3)
    order = np.frombuffer(decompress(streams[2], "brotli", 20), dtype="<u2")
    group = np.frombuffer(decompress(streams[0], "brotli", 60), dtype=np.int8).reshape(6, 10)
    np.testing.assert_array_equal(group, codes[order].T)       # sorted rows, column after column
    assert order.tolist() == pergroup.simsort_l1(codes).tolist()
    assert pergroup.decode(payload, used, [spec], False) == codes.tobytes()


def test_missing_lrzip_is_named_and_auto_falls_back_to_brotli(tmp_path, monkeypatch):
    model = small_model({})
    monkeypatch.setenv("PATH", str(tmp_path))                  # no lrzip on PATH
    with pytest.raises(pergroup.LrzipMissing, match=r"lrzip.*apt-get install lrzip.*pergroup_codec = 'auto'"):
        pgolf.pack(model, pergroup_cfg(), tmp_path / "x.pgolf")
    result = pgolf.pack(model, pergroup_cfg(pergroup_codec="auto"), tmp_path / "a.pgolf")
    assert result["compressor"] == "pergroup+brotli"
    assert read_artifact(tmp_path / "a.pgolf")[2]["compressor"] == "pergroup+brotli"


def test_reading_an_lrzip_artifact_without_lrzip_says_what_is_missing(tmp_path, monkeypatch):
    needs_lrzip()
    pgolf.pack(small_model({}), pergroup_cfg(), tmp_path / "l.pgolf")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ArtifactError, match=r"payload codec.*lrzip.*apt-get install lrzip"):
        read_artifact(tmp_path / "l.pgolf")


def crafted_pergroup(tmp_path, cfg, mutate):
    """An artifact whose pergroup payload has been altered by `mutate(streams)`, with valid checksums."""
    model = small_model({})
    tensors = quantize_model(model, cfg)
    specs = [p for t in tensors for p in t.layout.parts]
    payload, used = pergroup.encode(serialize(tensors), specs, "brotli", False)
    streams = pergroup.split_streams(payload, len({p.group for p in specs if p.group}) + 2)
    streams = mutate(streams)
    crafted = struct.pack(f"<I{len(streams)}Q", len(streams), *map(len, streams)) + b"".join(streams)
    write_container(tmp_path / "c.pgolf", header_of(cfg), serialize(tensors), crafted, used, False)
    return tmp_path / "c.pgolf"


def test_a_row_order_that_is_not_a_permutation_is_refused(tmp_path):
    cfg = pergroup_cfg(pergroup_codec="brotli")
    rows = sum(p.shape[0] for t in artifact_layout(cfg) for p in t.parts if p.row_order)
    path = crafted_pergroup(tmp_path, cfg, lambda s: [*s[:-1], brotli.compress(bytes(2 * rows))])
    with pytest.raises(ArtifactError, match="payload.*not a permutation"):
        read_artifact(path)


def test_group_streams_that_expand_past_the_layout_are_stopped(tmp_path):
    cfg = pergroup_cfg(pergroup_codec="brotli")
    path = crafted_pergroup(tmp_path, cfg, lambda s: [brotli.compress(bytes(50_000_000)), *s[1:]])
    with pytest.raises(ArtifactError, match="payload.*expands past"):
        read_artifact(path)
    path = crafted_pergroup(tmp_path, cfg, lambda s: s[:-1])
    with pytest.raises(ArtifactError, match="payload.*stream lengths"):
        read_artifact(path)


def test_an_lrzip_stream_announcing_another_size_is_refused_before_lrzip_runs(monkeypatch):
    header = b"LRZI\x00\x06" + struct.pack("<Q", 10 ** 12) + bytes(40)
    monkeypatch.setattr(pergroup.subprocess, "Popen", None)     # lrzip must not even start
    with pytest.raises(pergroup.CompressionError, match="announces 1,000,000,000,000 bytes, expected 4,096"):
        pergroup.lrzip_decompress(header, 4096)
    with pytest.raises(pergroup.CompressionError, match="bad magic"):
        pergroup.lrzip_decompress(b"NOPE" + bytes(20), 4096)


def test_a_pergroup_payload_under_a_config_that_does_not_ask_for_it_is_refused(tmp_path):
    model = small_model({})
    cfg = cfg_with(matrix_bits=6)                                # quant.compressor = zlib
    tensors = quantize_model(model, cfg)
    specs = [p for t in tensors for p in t.layout.parts]
    payload, used = pergroup.encode(serialize(tensors), specs, "brotli", False)
    write_container(tmp_path / "m.pgolf", header_of(cfg), serialize(tensors), payload, used, False)
    with pytest.raises(ArtifactError, match=r"header.*pergroup\+brotli.*quant.compressor = 'zlib'"):
        read_artifact(tmp_path / "m.pgolf")


# ----------------------------------------------------------------------------- Hessian-aware SDClip (#1412)

def constructed_w_and_h():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(6, 16, generator=g) * torch.linspace(0.5, 2.0, 6)[:, None]
    x = torch.randn(64, 16, generator=g) * torch.linspace(0.1, 3.0, 16)
    h = x.T @ x
    h[3, :] = 0.0
    h[:, 3] = 0.0                                                  # a dead input
    return w, h


def test_hessian_clip_at_lambda_zero_is_sdclip():
    w, h = constructed_w_and_h()
    cfg = cfg_with(method="gptq", matrix_bits=6, hessian_clip_lambda=0.0).quant
    from pgolf.quant.methods import hessian_clip_scales, sdclip_scales
    assert torch.equal(hessian_clip_scales(w, 6, 12.85, h, 0.0, 0.01), sdclip_scales(w, 6, 12.85))
    codes, scales = quantize_rows(w, 6, cfg, "mlp", h)
    assert torch.equal(scales, sdclip_scales(w, 6, 12.85))


def test_hessian_clip_scales_follow_the_row_importance():
    from pgolf.quant.methods import hessian_row_importance
    w, h = constructed_w_and_h()
    lam, k = 0.175, 12.85
    d = [float(h[j, j]) if float(h[j, j]) != 0 else 1.0 for j in range(16)]
    mean_d = sum(d) / 16
    d = [max(v + 0.01 * mean_d, 1e-8) for v in d]                 # damped diagonal, original column order
    c = [v / (sum(d) / 16) for v in d]
    r = [sum(abs(float(w[i, j])) * c[j] for j in range(16)) / 16 for i in range(6)]
    r = [v / (sum(r) / 6) for v in r]
    got = hessian_row_importance(w, h, 0.01)
    np.testing.assert_allclose(got.numpy(), r, rtol=1e-9)
    factors = [1 + lam * (v - 1) for v in r]
    assert sum(factors) / 6 == pytest.approx(1.0, abs=1e-12)       # the adjustment keeps the mean scale
    cfg = cfg_with(method="gptq", matrix_bits=6, hessian_clip_lambda=lam, sdclip_k=k).quant
    _, scales = quantize_rows(w, 6, cfg, "mlp", h)
    std = w.std(dim=1)
    for i in range(6):
        assert float(scales[i]) == pytest.approx(k * float(std[i]) * factors[i] / 31, rel=1e-3)   # fp16 rounding
    assert not torch.equal(scales, quantize_rows(w, 6, cfg_with(method="gptq", matrix_bits=6).quant, "mlp", h)[1])


def test_hessian_clip_lambda_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="quant.hessian_clip_lambda"):
        cfg_with(hessian_clip_lambda=1.5)


def test_pgolf_pack_with_pergroup_and_lqer_prints_where_the_bytes_go(tmp_path, capsys):
    from pgolf.artifact import sizes as sizes_module
    from pgolf.cli import main
    from pgolf.quant.breakdown import artifact_breakdown

    from conftest import write_run_folder

    folder = write_run_folder(tmp_path / "run", cfg_with(), lqer_model())
    out = tmp_path / "g.pgolf"
    code = main(["pack", str(folder), "--set", "quant.matrix_bits=5", "--set", "quant.compressor=pergroup",
                 "--set", "quant.pergroup_codec=brotli", "--set", "quant.lqer_rank=2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "pergroup+brotli" in text and "LQER factors" in text and "compressed alone (brotli)" in text
    b = artifact_breakdown(out, 1000, sizes_module.LIMIT_BYTES)
    assert b["model_bytes"] == out.stat().st_size
    assert sum(row["lqer_bytes"] > 0 for row in b["classes"].values()) >= 1
