"""Incremental decoding with a KV cache (model/decode.py) and #1019's self-generated GPTQ calibration on it.

- every model switch (test_model.TECHNIQUES) and every recipe's tiny form: logits decoded token by token, and in
  uneven chunks, equal the full forward's logits on the same sequence (documents inside it included);
- the refusals name their setting; generation with the cache samples the same tokens as the O(T^2) reference
  for a seed, all rows at once, and another seed samples others;
- the generated calibration's Hessians come from the sampled sequences only (not from the sampling forwards);
- calibration over quant.gptq_reserve_s is reported (result, log, warning).
"""

from __future__ import annotations

import importlib
import json
import time

import pytest
import torch

import pgolf
from pgolf.model.decode import KVCache, decode
from pgolf.quant.gptq import collect_hessians, generate_calibration
from pgolf.training.runs import read_log

from test_model import ALL_MODELS, BOS, SMALL, TECHNIQUES, build, random_ids, small_model

SEQ = 16


def _chunks(total: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        if start >= total:
            break
        out.append((start, min(total, start + n)))
        start += n
    if start < total:
        out.append((start, total))
    return out


def incremental_logits(model, ids: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache = KVCache(model, ids.size(0), ids.size(1))
    return torch.cat([decode(model, ids[:, a:b], cache) for a, b in _chunks(ids.size(1), sizes)], dim=1)


@pytest.mark.parametrize("kind,name", ALL_MODELS)
def test_decoding_with_the_cache_equals_the_full_forward(kind, name):
    model = build(kind, name)
    seq = SEQ  # = model.rope_ntk_train_len of ntk_rope: beyond it the cache is refused (below)
    ids = random_ids(2, seq, vocab=model.cfg.vocab_size, seed=3)
    ids[1, seq // 3], ids[1, 9] = 7, BOS  # the rows' second documents start at different places
    with torch.no_grad():
        full = model(ids)
    sizes = [3, 1, 1, 4, 1, 1, 2]  # a prefill, single tokens (unmasked) and chunks after the cache (masked), then 1s
    torch.testing.assert_close(incremental_logits(model, ids, sizes + [1] * seq), full, rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{kind} {name}: {m}")


def test_the_cache_is_needed_for_the_match():
    """The comparison can fail: a forward of only the new token (no cache) gives other logits."""
    model = small_model({})
    ids = random_ids(1, 8, seed=1)
    with torch.no_grad():
        assert not torch.allclose(model(ids[:, 7:8])[:, 0], model(ids)[:, 7], atol=1e-3)


def test_decoding_refusals_name_the_setting():
    model = small_model({"model.rope_dims": 8, "model.rope_ntk_train_len": 16})
    with pytest.raises(ValueError, match="model.rope_ntk_train_len"):
        KVCache(model, 1, 17)
    KVCache(model, 1, 16)
    looped = small_model({"model.layer_schedule": [0, 1, 2, 1, 2, 3], "model.recurrence_start_frac": 0.5})
    cache = KVCache(looped, 1, 8)
    looped.set_looping(True)
    with pytest.raises(ValueError, match="set_looping"):
        decode(looped, random_ids(1, 2), cache)
    cache = KVCache(model, 2, 4)
    with pytest.raises(ValueError, match="batch 2"):
        decode(model, random_ids(1, 2), cache)
    decode(model, random_ids(2, 3), cache)
    with pytest.raises(ValueError, match="max_len = 4"):
        decode(model, random_ids(2, 2), cache)


# ----------------------------------------------------------------------------- self-generated calibration


DECODER = importlib.import_module("pgolf.model.decode")


@pytest.mark.parametrize("name", ["plain", "smear_content", "bigram", "doc_attention"])
def test_cached_generation_samples_the_reference_tokens(name):
    model = small_model(TECHNIQUES[name])
    ref = generate_calibration(model, 3, 20, torch.device("cpu"), seed=5, batch=3)
    cached = generate_calibration(model, 3, 20, torch.device("cpu"), seed=5, decoder=DECODER)  # all rows at once
    assert cached.shape == (3, 20) and bool((cached[:, 0] == BOS).all())
    assert torch.equal(cached, ref)
    assert torch.equal(generate_calibration(model, 3, 20, torch.device("cpu"), seed=5, decoder=DECODER), cached)
    other = generate_calibration(model, 3, 20, torch.device("cpu"), seed=6, decoder=DECODER)
    assert not torch.equal(other, cached)
    assert len({tuple(r) for r in cached[:, 1:].tolist()}) == 3  # the rows are sampled independently


class _Fixed:
    """A loader whose batches are given sequences (the training-source path of collect_hessians)."""

    def __init__(self, seqs: torch.Tensor):
        self.rows = list(seqs.split(1))

    def next_batch(self, *args):
        x = self.rows.pop(0)
        return x, x


def test_generated_calibration_hessians_come_from_the_samples_only():
    over = {**SMALL, "train.seq_len": 16, "train.batch_tokens": 16, "quant.passthrough_max_numel": 256,
            "quant.method": "gptq", "quant.embed_method": "gptq", "quant.gptq_calib_batches": 2}
    cfg = pgolf.load_recipe("baseline", overrides={**over, "quant.gptq_calib_source": "generated"})
    torch.manual_seed(0)
    model = pgolf.build_model(cfg.model).eval()
    stats: dict = {}
    generated = collect_hessians(model, None, cfg, "cpu", stats)
    assert stats["calibration_generated_tokens"] == 2 * 16 and stats["calibration_generate_seconds"] > 0
    with torch.no_grad():
        seqs = generate_calibration(model, 2, 16, torch.device("cpu"), cfg.seed, decoder=DECODER)
    train_cfg = pgolf.load_recipe("baseline", overrides=over)
    from_samples = collect_hessians(model, _Fixed(seqs), train_cfg, "cpu")
    assert generated.keys() == from_samples.keys() and "tok_emb" in generated and len(generated) > 4
    for key in generated:
        torch.testing.assert_close(generated[key], from_samples[key], msg=key)


# ----------------------------------------------------------------------------- the reserve


@pytest.mark.parametrize("reserve,over", [(0.001, True), (600.0, False)])
def test_calibration_over_its_reserve_is_reported(micro, tmp_path, monkeypatch, capsys, reserve, over):
    gptq = importlib.import_module("pgolf.quant.gptq")
    real = gptq.generate_calibration
    monkeypatch.setattr(gptq, "generate_calibration", lambda *a, **k: (time.sleep(0.05), real(*a, **k))[1])
    cfg = micro(train__steps=2, train__max_wallclock_s=1000.0, quant__method="gptq", quant__gptq_calib_batches=2,
                quant__gptq_calib_source="generated", quant__gptq_reserve_s=reserve, quant__passthrough_max_numel=256)
    result = pgolf.train(cfg, tmp_path / "run", progress=True)
    captured = capsys.readouterr()
    err = captured.err
    summary = [line for line in captured.out.splitlines() if "gptq calib" in line]
    assert len(summary) == 1 and f"sampling {2 * cfg.train.seq_len} tokens" in summary[0]
    assert ("OVER quant.gptq_reserve_s" in summary[0]) is over
    assert result["calibration_over_reserve"] is over and result["calibration_reserve_s"] == reserve
    assert result["calibration_generate_seconds"] >= 0.05
    assert result["calibration_seconds"] >= result["calibration_generate_seconds"]
    assert result["calibration_generated_tokens"] == 2 * cfg.train.seq_len
    assert result["within_cap"] is True  # over the reserve, still inside the cap: said, not an error
    assert ("over quant.gptq_reserve_s" in err) is over
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["calibration_over_reserve"] is over
    logged = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "calibration_seconds" in r]
    assert len(logged) == 1 and logged[0]["calibration_over_reserve"] is over
