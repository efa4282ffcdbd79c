"""Artifact: exact round trip of the quantized values, size accounting, and damaged files rejected by region."""

from __future__ import annotations

import builtins
import pickle

import numpy as np
import pytest
import torch

import pgolf
from pgolf.model.layers import qclass_of
from pgolf.quant.bitpack import pack_codes, unpack_codes
from pgolf.quant.compress import CompressionError, byte_shuffle, byte_unshuffle, compress, decompress
from pgolf.quant.container import ArtifactError
from pgolf.quant.layout import artifact_layout
from pgolf.quant.methods import quantize_rows
from pgolf.quant.pack import quantize_model
from pgolf.quant.quantize import clip_max, dequantize, plan_tensor

from test_model import SMALL, small_model


def small_cfg(**quant):
    over = {**SMALL, "quant.passthrough_max_numel": 256, **{f"quant.{k}": v for k, v in quant.items()}}
    return pgolf.load_recipe("baseline", overrides=over)


def expected_state(model, cfg):
    """What the artifact must hold: every tensor after exactly one quantize -> dequantize."""
    plans = {t.name: t for t in artifact_layout(cfg)}
    out = {}
    for name, p in model.named_parameters():
        t = plans[name]
        if t.plan.encoding == "int":
            codes, scales = quantize_rows(p.detach().float().reshape(p.shape[0], -1), t.plan.bits, cfg.quant, t.qclass)
            out[name] = dequantize(codes, scales).reshape(p.shape)
        else:
            out[name] = p.detach().to(getattr(torch, t.plan.encoding)).float()
    return out


@pytest.mark.parametrize("quant", [{}, {"matrix_bits": 6, "embed_bits": 0}, {"matrix_bits": 5, "bit_pack": True},
                                   {"compressor": "zstd"}, {"compressor": "lzma"},
                                   {"compressor": "brotli", "byte_shuffle": True}, {"compressor": "auto"}])
def test_round_trip_is_exact_on_the_quantized_values(tmp_path, quant):
    cfg = small_cfg(**quant)
    model = small_model({})
    sizes = pgolf.pack(model, cfg, tmp_path / "a.pgolf")
    loaded, cfg2 = pgolf.unpack(tmp_path / "a.pgolf")
    assert cfg2.model == cfg.model and cfg2.quant == cfg.quant
    expected = expected_state(model, cfg)
    original = dict(model.named_parameters())
    quantized = 0
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p.detach().float(), expected[name], rtol=0, atol=0, msg=name)
        plan = plan_tensor(original[name], qclass_of(original[name]), cfg.quant, name)
        if plan.encoding == "int":  # ... and not only as quantize_rows computes it: as the rule says
            torch.testing.assert_close(p.detach().float(), percentile_rounding(original[name], plan.bits, cfg.quant),
                                       rtol=0, atol=0, msg=name)
            quantized += 1
    assert quantized >= 4 * 6  # q, k, v, o, fc, proj of each block at least
    assert sizes["model_bytes"] == (tmp_path / "a.pgolf").stat().st_size  # code_bytes vs its file: test_submit.py


def percentile_rounding(w: torch.Tensor, bits: int, q) -> torch.Tensor:
    """quantize.py's documented rule, written out here: s_r = fp16(max(c_r / qmax, 1 / qmax)) with c_r the
    quant.clip_percentile of |W_r|, W_hat = clamp(round(W / s_r), -qmax, qmax) * s_r (qmax = 2^(bits-1) - 1)."""
    assert q.method == q.embed_method == "percentile" and q.scale_floor
    rows = w.detach().float().reshape(w.shape[0], -1)
    qmax = 2 ** (bits - 1) - 1
    clip = torch.quantile(rows.abs(), q.clip_percentile / 100.0, dim=1)
    scale = (clip / qmax).clamp_min(1.0 / qmax).half().float()[:, None]
    return ((rows / scale).round().clamp(-qmax, qmax) * scale).reshape(w.shape)


def test_quantization_error_is_within_half_a_step():
    w = torch.randn(64, 128)
    for bits in (8, 6, 5, 4):
        cfg = small_cfg(method="rowmax", scale_floor=False).quant
        codes, scales = quantize_rows(w, bits, cfg)
        assert codes.abs().max() <= clip_max(bits)
        err = (dequantize(codes, scales) - w).abs()
        assert (err <= scales.float()[:, None] / 2 + 1e-6).all()


def test_bit_packing_round_trips_every_code():
    for bits in (2, 3, 4, 5, 6, 7):
        q = clip_max(bits)
        codes = np.random.default_rng(bits).integers(-q, q + 1, size=1001).astype(np.int8)
        packed = pack_codes(codes, bits)
        assert packed.size == (1001 * bits + 7) // 8
        assert np.array_equal(unpack_codes(packed, bits, 1001), codes)


@pytest.mark.parametrize("method", ["none", "zlib", "lzma", "zstd", "brotli"])
def test_compressors_round_trip(method):
    data = np.random.default_rng(0).integers(-20, 20, 50_000).astype(np.int8).tobytes()
    assert decompress(compress(data, method), method, len(data)) == data
    assert byte_unshuffle(byte_shuffle(data + b"x")) == data + b"x"


@pytest.fixture
def artifact(tmp_path):
    cfg = small_cfg()
    path = tmp_path / "a.pgolf"
    pgolf.pack(small_model({}), cfg, path)
    return path


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damaged_artifacts_name_file_and_region(artifact):
    size = artifact.stat().st_size
    header_len = int.from_bytes(artifact.read_bytes()[8:12], "little")
    cases = {0: "preamble", 9: "preamble|header", 20: "header", 44 + header_len // 2: "header",
             44 + header_len + 10: "payload", size - 20: "checksum", size - 3: "trailer"}
    original = artifact.read_bytes()
    for offset, region in cases.items():
        artifact.write_bytes(original)
        _flip(artifact, offset)
        with pytest.raises(ArtifactError, match=f"{artifact}: ({region})") as info:
            pgolf.unpack(artifact)
        assert str(artifact) in str(info.value)
    for cut in (0, 10, 44, 44 + header_len + 5, size - 41, size - 1):
        artifact.write_bytes(original[:cut])
        with pytest.raises(ArtifactError, match="truncated|shorter|end marker|size mismatch"):
            pgolf.unpack(artifact)


@pytest.mark.parametrize("quant", [{}, {"compressor": "none"}, {"compressor": "lzma"}, {"compressor": "brotli"},
                                   {"compressor": "zstd", "byte_shuffle": True}, {"matrix_bits": 5, "bit_pack": True}],
                         ids=["zlib", "none", "lzma", "brotli", "zstd+shuffle", "int5 bit-packed"])
def test_loading_never_unpickles_or_evaluates(tmp_path, monkeypatch, quant):
    import marshal

    path = tmp_path / "a.pgolf"
    pgolf.pack(small_model({}), small_cfg(**quant), path)

    def forbidden(*args, **kwargs):
        raise AssertionError("artifact loading must not unpickle or evaluate code")

    for owner, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (marshal, "loads"),
                        (torch, "load"), (np, "load"), (builtins, "eval"), (builtins, "exec"), (builtins, "compile")]:
        monkeypatch.setattr(owner, name, forbidden)
    model, cfg = pgolf.unpack(path)
    assert isinstance(model, torch.nn.Module)


@pytest.mark.parametrize("codes, scales", [((4096,), (4096,)), ((8, 4), (4,)), ((2, 3, 4), (2,)), ((8, 4), (8, 1))],
                         ids=["1-D codes, one scale each", "fewer rows than scales", "3-D codes", "2-D scales"])
def test_dequantize_refuses_codes_that_are_not_one_row_per_scale(codes, scales):
    with pytest.raises(ValueError, match="need one row per scale"):
        dequantize(torch.ones(codes, dtype=torch.int8), torch.ones(scales, dtype=torch.float16))


@pytest.mark.parametrize("method", ["zlib", "lzma", "zstd", "brotli"])
def test_decompression_stops_at_the_promised_size(method):
    data = np.random.default_rng(1).integers(-20, 20, 60_000).astype(np.int8).tobytes()
    packed = compress(data, method)
    with pytest.raises(CompressionError, match="expands past the promised 59,999 bytes"):
        decompress(packed, method, len(data) - 1)
    with pytest.raises(CompressionError, match="ends after 60,000 of the promised 60,001 bytes"):
        decompress(packed, method, len(data) + 1)
    with pytest.raises(CompressionError, match="ends after|corrupt"):
        decompress(packed[: len(packed) // 2], method, len(data))
    with pytest.raises(CompressionError, match="4 unexpected bytes|corrupt"):
        decompress(packed + b"tail", method, len(data))


def test_the_header_holds_the_config_and_checks_only_and_the_estimate_counts_it_exactly(tmp_path):
    from pgolf.artifact.budget import estimate_breakdown
    from pgolf.artifact.sizes import runtime_code_bytes
    from pgolf.quant.container import FRAMING_BYTES
    from pgolf.quant.pack import read_artifact

    cfg = small_cfg(compressor="brotli")
    sizes = pgolf.pack(small_model({}), cfg, tmp_path / "a.pgolf")
    _, layout, header, _ = read_artifact(tmp_path / "a.pgolf")
    assert set(header) - {"compressor", "byte_shuffle", "header_bytes", "payload_bytes", "raw_bytes"} == {"pgolf_version", "defaults", "config"}
    estimate = estimate_breakdown(cfg)
    assert estimate["header_bytes"] == sizes["header_bytes"] == header["header_bytes"]
    assert estimate["code_bytes"] == sizes["code_bytes"] == runtime_code_bytes(cfg)
    assert sizes["model_bytes"] == FRAMING_BYTES + header["header_bytes"] + header["payload_bytes"]
    assert sizes["artifact_bytes"] == sizes["model_bytes"] + sizes["code_bytes"]
    n_parts = sum(len(t.parts) for t in layout)
    assert header["header_bytes"] < 2000 and n_parts > 40  # a 67-part table would have cost ~10 KB as JSON


@pytest.mark.parametrize("scale", ["full", "tiny"])
@pytest.mark.parametrize("recipe", pgolf.config.recipe_names())
def test_the_header_gives_back_the_config_exactly(recipe, scale, tmp_path):
    from pgolf.config import config_from_dict
    from pgolf.quant.pack import header_of

    cfg = pgolf.load_recipe(recipe, scale, {"quant.allow_over_budget": True, "seed": 7})
    assert config_from_dict(header_of(cfg)["config"]) == cfg  # only the changes are stored; the defaults fill in


def test_an_artifact_written_against_other_defaults_is_refused(tmp_path, monkeypatch):
    import pgolf.quant.pack as pack_module

    cfg = small_cfg()
    pgolf.pack(small_model({}), cfg, tmp_path / "a.pgolf")
    table, fingerprint = pack_module._defaults()
    monkeypatch.setattr(pack_module, "_defaults", lambda: (table, fingerprint + 1))  # a pgolf with other defaults
    with pytest.raises(ValueError, match="config defaults differ"):
        pgolf.unpack(tmp_path / "a.pgolf")


@pytest.mark.parametrize("recipe", pgolf.config.recipe_names())
def test_the_header_is_under_2_kb_at_full_size(recipe):
    from pgolf.quant.pack import header_bytes

    cfg = pgolf.load_recipe(recipe, "full", {"quant.allow_over_budget": True})
    assert header_bytes(cfg) + 84 <= 2000


def test_pack_refuses_code_bytes_other_than_the_configs_own(tmp_path):
    from pgolf.artifact.sizes import runtime_code_bytes

    cfg = small_cfg()
    code = runtime_code_bytes(cfg)
    assert pgolf.pack(small_model({}), cfg, tmp_path / "a.pgolf", code_bytes=code)["code_bytes"] == code
    for wrong in (0, code - 1, 10**9):
        with pytest.raises(ValueError, match=f"code_bytes={wrong:,} is not the size of this config's train_gpt.py"):
            pgolf.pack(small_model({}), cfg, tmp_path / "b.pgolf", code_bytes=wrong)
    assert not (tmp_path / "b.pgolf").exists()


def test_the_trainers_read_back_checks_the_config_it_wrote(tmp_path):
    """unpack_written (the trainer's round trip, which carries no config validation) gives the model unpack
    gives, and refuses an artifact written for another config, naming the file."""
    from pgolf.quant.container import HeaderProblem
    from pgolf.quant.pack import unpack_written
    cfg = small_cfg()
    path = tmp_path / "a.pgolf"
    pgolf.pack(small_model({}), cfg, path)
    model, _ = pgolf.unpack(path)
    again = unpack_written(path, cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = small_cfg()
    other.seed += 1
    with pytest.raises((HeaderProblem, ArtifactError), match="not the config this run wrote it for"):
        unpack_written(path, other)
