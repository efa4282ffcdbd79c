"""benchmarks/gpu.py: its CPU smoke run passes every section, and its checks fail on a broken kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHARED

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/gpu.py)


@pytest.mark.slow
def test_cpu_smoke_run_passes_every_section(shared_data, tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--cpu-smoke", "--data", str(SHARED),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert report["failures"] == [] and not any("error" in s for s in sections.values())
    assert sections["reference"] == {"skipped": "no --train-gpt given"}
    assert sections["environment"]["attention_backend_auto"] == {"plain": "sdpa", "document_masks": "sdpa"}
    assert sections["dtypes"]["gptq"]["sum"] == ["float32"]
    parity = sections["parity"]
    assert parity["backends"]["sdpa"]["within_tolerance"] and parity["backends"]["sdpa"]["isolation_leak"] == 0
    assert parity["one_token_mask_error"]["out"] > parity["tolerance"]["out"]
    assert set(sections["train_baseline"]["phases"]) == {"all"}
    pr = sections["train_pr1536"]
    assert set(pr["phases"]) == {"plain", "looped"}
    assert pr["phases"]["plain"]["flops_per_token"] < pr["phases"]["looped"]["flops_per_token"]
    assert pr["calibration_seconds"] > 0 and pr["eval_mode"] == "ttt_lora" and 0 < pr["uncounted_fraction_of_train_call"] < 1


def test_parity_check_fails_on_a_kernel_that_ignores_document_masks(monkeypatch):
    real = gpu.attention_module.attention_sdpa
    monkeypatch.setattr(gpu.attention_module, "attention_sdpa", lambda q, k, v, doc_ids: real(q, k, v, None))
    with pytest.raises(gpu.CheckFailed, match="parity or isolation failed for \\['sdpa'\\]"):
        gpu.parity(torch.device("cpu"), smoke=True)


def test_parity_check_fails_on_a_one_token_mask_error(monkeypatch):
    real = gpu.attention_module.attention_sdpa

    def off_by_one(q, k, v, doc_ids):
        shifted = doc_ids.clone()
        shifted[0, int((doc_ids[0] == 0).sum())] = 0   # the first document's end moved by one token
        return real(q, k, v, shifted)

    monkeypatch.setattr(gpu.attention_module, "attention_sdpa", off_by_one)
    with pytest.raises(gpu.CheckFailed, match="parity or isolation failed"):
        gpu.parity(torch.device("cpu"), smoke=True)


def test_dtype_check_fails_when_attention_gets_mixed_dtypes(shared_data, monkeypatch):
    module = gpu.attention_module

    def attend_without_the_cast(q, k, v, ctx):  # attend before #18's fix, as CUDA's fp32 rms_norm left q and k
        assert ctx.backend == "sdpa"  # what `auto` picks on a CPU
        return module.attention_sdpa(q.float(), k.float(), v, ctx.doc_ids)

    monkeypatch.setattr(module, "attend", attend_without_the_cast)
    with pytest.raises(gpu.CheckFailed, match="mixed q/k/v dtypes"):
        gpu.dtypes(torch.device("cpu"), SHARED, smoke=True)
