"""quant.fit: an artifact forced over the limit comes back under it by pruning the cheapest ±1 codes, with what
it did and what it cost reported; a fit that cannot succeed says so and exits non-zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pgolf
from pgolf.artifact import sizes as budget
from pgolf.artifact.sizes import pack_artifact
from pgolf.cli import EXIT_OVER_LIMIT, main
from pgolf.quant.bitpack import unpack_codes
from pgolf.quant.container import encode_payload
from pgolf.quant.layout import quantize_model, serialize
from pgolf.quant.pack import read_artifact

from conftest import write_run_folder
from test_model import SMALL, small_model


def fit_cfg(**quant):
    over = {**SMALL, "quant.passthrough_max_numel": 256, "quant.fit": True, **{f"quant.{k}": v for k, v in quant.items()}}
    return pgolf.load_recipe("baseline", overrides=over)


def stored_codes(path) -> dict[str, np.ndarray]:
    """{name: flat int8 codes} of every int tensor of an artifact (bit-packed ones unpacked)."""
    _, layout, _, arrays = read_artifact(path)
    out = {}
    for t in layout:
        if t.plan.encoding != "int":
            continue
        kind = t.parts[0].kind
        codes = arrays[(t.name, kind)]
        out[t.name] = unpack_codes(codes, t.plan.bits, int(np.prod(t.shape))) if kind == "packed_codes" else codes.reshape(-1).copy()
    return out


def pruning_costs(model, cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (flat positions of the ±1 codes, cost of zeroing each)}, from the weights and the codes directly:
    cost = w^2 - (w - q s)^2, the rise in squared reconstruction error."""
    out = {}
    for t in quantize_model(model, cfg):
        if t.codes is None:
            continue
        q = t.codes.astype(np.float32)
        s = t.scales.astype(np.float32)[:, None]
        w = dict(model.named_parameters())[t.layout.name].detach().float().reshape(q.shape).numpy()
        flat = np.flatnonzero(np.abs(q.reshape(-1)) == 1)
        cost = (w * w - (w - q * s) ** 2).reshape(-1)[flat]
        out[t.layout.name] = (flat, cost)
    return out


@pytest.mark.parametrize("compressor, bit_pack", [("zlib", False), ("brotli", False), ("lzma", True)])
def test_an_artifact_forced_over_the_limit_comes_back_under_it_pruning_the_cheapest_codes(tmp_path, monkeypatch,
                                                                                        compressor, bit_pack):
    model = small_model({})
    cfg = fit_cfg(compressor=compressor, matrix_bits=6, bit_pack=bit_pack)
    unfitted = pgolf.pack(model, cfg, tmp_path / "unfitted.pgolf")  # fits the real limit: nothing pruned
    assert unfitted["fit"]["pruned"] == 0
    monkeypatch.setattr(budget, "LIMIT_BYTES", unfitted["artifact_bytes"] - 200)
    sizes, report = pack_artifact(model, cfg, tmp_path / "fitted.pgolf")
    assert sizes["under_limit"] and sizes["artifact_bytes"] <= budget.LIMIT_BYTES
    assert (tmp_path / "fitted.pgolf").stat().st_size + sizes["code_bytes"] <= budget.LIMIT_BYTES
    assert report.needed and report.ok and 0 < report.pruned < report.candidates
    assert sizes["fit"]["pruned"] == report.pruned and "pruned" in sizes["fit"]["message"]

    # exactly `pruned` codes changed, each from ±1 to 0, and they are the cheapest ±1 codes by reconstruction error
    before, after = stored_codes(tmp_path / "unfitted.pgolf"), stored_codes(tmp_path / "fitted.pgolf")
    changed = {name: np.flatnonzero(before[name] != after[name]) for name in before}
    assert sum(c.size for c in changed.values()) == report.pruned
    assert all((np.abs(before[n][c]) == 1).all() and (after[n][c] == 0).all() for n, c in changed.items())
    costs = pruning_costs(model, cfg)
    pruned_cost = np.concatenate([cost[np.isin(flat, changed[n])] for n, (flat, cost) in costs.items()])
    kept_cost = np.concatenate([cost[~np.isin(flat, changed[n])] for n, (flat, cost) in costs.items()])
    assert pruned_cost.max() <= kept_cost.min() + 1e-12
    assert report.added_squared_error == pytest.approx(pruned_cost.sum(), rel=1e-5)

    # the least: pruning the largest count it measured over the budget really is over, and it is within 1 %
    assert report.pruned - report.pruned_over <= max(1, report.pruned // 100)
    tensors = quantize_model(model, cfg)
    order = np.argsort(np.concatenate([c for _, c in costs.values()]), kind="stable")[: report.pruned_over]
    owners = np.concatenate([[i] * flat.size for i, (flat, _) in enumerate(costs.values())]).astype(int)
    flats = np.concatenate([flat for flat, _ in costs.values()])
    int_tensors = [t for t in tensors if t.codes is not None]
    for k in order:
        int_tensors[owners[k]].codes.reshape(-1)[flats[k]] = 0
    payload, _ = encode_payload(serialize(tensors), sizes["compressor"], cfg.quant.byte_shuffle)
    assert len(payload) > report.max_payload_bytes


def test_the_fit_is_off_by_default_and_changes_nothing_when_the_artifact_fits(tmp_path):
    model = small_model({})
    off = pgolf.pack(model, fit_cfg(fit=False), tmp_path / "off.pgolf")
    assert off["fit"] is None
    on = pgolf.pack(model, fit_cfg(), tmp_path / "on.pgolf")
    assert on["fit"]["needed"] is False and on["fit"]["ok"] and on["fit"]["pruned"] == 0
    payload_bytes = [read_artifact(tmp_path / name)[2]["payload_bytes"] for name in ("on.pgolf", "off.pgolf")]
    assert payload_bytes[0] == payload_bytes[1]  # the headers differ by quant.fit itself
    assert stored_codes(tmp_path / "on.pgolf").keys() == stored_codes(tmp_path / "off.pgolf").keys()
    assert all(np.array_equal(a, b) for a, b in zip(stored_codes(tmp_path / "on.pgolf").values(),
                                                    stored_codes(tmp_path / "off.pgolf").values()))


@pytest.fixture
def run_folder(tmp_path):
    return write_run_folder(tmp_path / "run", fit_cfg(fit=False), small_model({}))


def test_a_fit_that_cannot_succeed_says_so_and_exits_non_zero(run_folder, tmp_path, capsys, monkeypatch):
    model = small_model({})
    unfitted = pgolf.pack(model, fit_cfg(), tmp_path / "unfitted.pgolf")
    monkeypatch.setattr(budget, "LIMIT_BYTES", unfitted["code_bytes"] + unfitted["model_bytes"] // 3)
    sizes = pgolf.pack(model, fit_cfg(), tmp_path / "python.pgolf")
    assert not sizes["under_limit"] and not sizes["fit"]["ok"] and sizes["fit"]["pruned"] == 0
    assert sizes["fit"]["message"].startswith(f"even pruning all {sizes['fit']['candidates']:,} ±1 codes leaves")
    # what is written is the unpruned artifact, reported over the limit, never a half-pruned one
    assert (tmp_path / "python.pgolf").read_bytes() == (tmp_path / "unfitted.pgolf").read_bytes()

    code = main(["pack", str(run_folder), "--set", "quant.fit=true", "--out", str(tmp_path / "cli.pgolf")])
    captured = capsys.readouterr()
    assert code == EXIT_OVER_LIMIT
    assert "pgolf: error:" in captured.err and "quant.fit failed: even pruning all" in captured.err


def test_pgolf_pack_fits_and_reports_what_it_cost_after_the_round_trip(micro, tmp_path, capsys, monkeypatch):
    from pgolf.cli.evaluate_artifact import evaluate_artifact

    cfg = micro(quant__passthrough_max_numel=1024)
    torch.manual_seed(0)
    folder = write_run_folder(tmp_path / "run", cfg, pgolf.build_model(cfg.model))
    assert main(["pack", str(folder), "--out", str(tmp_path / "unfitted.pgolf"), "--json"]) == 0
    unfitted = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(budget, "LIMIT_BYTES", unfitted["artifact_bytes"] - 300)
    code = main(["pack", str(folder), "--set", "quant.fit=true", "--out", str(tmp_path / "fitted.pgolf")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "quant.fit: pruned" in text and "after the round trip" in text
    assert main(["pack", str(folder), "--set", "quant.fit=true", "--out", str(tmp_path / "fitted.pgolf"), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    # the cost is measured on the artifacts as loaded: the unfitted score is pgolf eval's score of the unfitted file
    assert fit["val_bpb_unfitted"] == pytest.approx(evaluate_artifact(tmp_path / "unfitted.pgolf", val_tokens=cfg.data.val_tokens_limit)["val_bpb"], abs=1e-9)
    assert fit["val_bpb_unfitted"] + fit["val_bpb_cost"] == pytest.approx(
        evaluate_artifact(tmp_path / "fitted.pgolf", val_tokens=cfg.data.val_tokens_limit)["val_bpb"], abs=1e-9)


@pytest.mark.slow
def test_training_with_quant_fit_prunes_inside_the_run_and_reports_the_cost(micro, tmp_path, monkeypatch):
    plain = pgolf.train(micro(quant__passthrough_max_numel=1024), tmp_path / "plain", progress=False)
    assert plain["fit"] is None
    monkeypatch.setattr(budget, "LIMIT_BYTES", plain["artifact_bytes"] - 300)
    fitted = pgolf.train(micro(quant__passthrough_max_numel=1024, quant__fit=True), tmp_path / "fitted", progress=False)
    fit = fitted["fit"]
    assert fitted["under_limit"] and fitted["artifact_bytes"] <= budget.LIMIT_BYTES
    assert fit["ok"] and fit["pruned"] > 0
    assert fitted["capped_seconds"] >= fitted["train_seconds"] + fit["seconds"]  # the fit is on the training clock
    # the same seed trains the same weights: the unfitted score is the first run's round-trip score
    assert fit["val_bpb_unfitted"] == pytest.approx(plain["val_bpb_plain"], abs=1e-9)
    assert fit["val_bpb_unfitted"] + fit["val_bpb_cost"] == pytest.approx(fitted["val_bpb_plain"], abs=1e-9)
