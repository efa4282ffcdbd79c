"""End to end: a tiny run writes every output; resume equals uninterrupted; 2 gloo ranks equal 1 rank x 2 micro-steps."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pgolf
from pgolf.data.shards import read_shard
from pgolf.training.loop import TrainingInterrupted
from pgolf.training.runs import save_config
from pgolf.training.runs import RESULT_KEYS

from byte_rule import RuleTokenizer
from conftest import REPO, SP1024_DIR, SP1024_MODEL, VAL_SHARD
from test_eval import _reference_nll


def _weights(run_dir):
    return load_file(run_dir / "model.safetensors")


def test_tiny_run_writes_every_output(micro, tmp_path):
    cfg = micro()
    result = pgolf.train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.toml", "env.json", "log.jsonl", "result.json", "artifact.pgolf", "loss.png", "model.safetensors"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "result.json").read_text())
    assert set(RESULT_KEYS) <= set(saved)
    assert saved["model_bytes"] == (run / "artifact.pgolf").stat().st_size  # code_bytes vs its file: test_submit.py
    assert saved["steps"] == 6 and saved["train_tokens"] == 6 * 512
    assert saved["val_targets"] == 4096 and saved["under_limit"] is True
    assert all(result[k] == v for k, v in saved.items())  # what train() returns is what it wrote
    # the score is the artifact's plain loss on the 4,096-target prefix, computed here the slow obvious way
    model, _ = pgolf.unpack(run / "artifact.pgolf")
    tokens = np.asarray(read_shard(VAL_SHARD))[: cfg.data.val_tokens_limit]
    nll = _reference_nll(model, tokens)  # 64-token windows = the micro config's eval.context_len
    n_bytes = int(RuleTokenizer(SP1024_MODEL).stream_bytes(tokens).sum())
    assert saved["val_bytes"] == n_bytes and saved["eval_mode"] == "plain" and saved["eval_tail"] == "score"
    assert saved["val_loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert saved["val_bpb"] == pytest.approx(nll.sum() / math.log(2) / n_bytes, rel=1e-5)
    env = json.loads((run / "env.json").read_text())
    assert env["tokenizer_sha256"] and env["world_size"] == 1
    # the artifact scores the same number through `pgolf eval`
    from pgolf.cli.evaluate_artifact import evaluate_artifact
    again = evaluate_artifact(run / "artifact.pgolf", device="cpu", val_tokens=cfg.data.val_tokens_limit)
    assert again["val_bpb"] == pytest.approx(saved["val_bpb"], abs=1e-9)
    assert not (run / "checkpoint").exists()


def test_interrupted_then_resumed_equals_uninterrupted(micro, tmp_path):
    cfg = micro(train__steps=8, train__averaging="ema")
    pgolf.train(cfg, tmp_path / "straight", progress=False)

    def sigterm_at(step, info):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        pgolf.train(micro(train__steps=8, train__averaging="ema"), tmp_path / "stopped", progress=False,
                    step_callback=sigterm_at)
    assert info.value.step == 3
    assert (tmp_path / "stopped" / "checkpoint" / "state.json").is_file()
    resumed_cfg = pgolf.load_config(tmp_path / "stopped" / "config.toml")
    result = pgolf.train(resumed_cfg, tmp_path / "stopped", resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert result["val_bpb"] == straight["val_bpb"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()
             if "train_loss" in json.loads(line)]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_rank_with_two_micro_steps(micro, tmp_path):
    one = micro(train__grad_accum_steps=2)
    pgolf.train(one, tmp_path / "one", progress=False)
    two = micro(train__grad_accum_steps=1)
    save_config(two, tmp_path / "two.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pgolf", "train", "--recipe", str(tmp_path / "two.toml"), "--out", str(tmp_path / "two"),
           "--device", "cpu", "--quiet", "--data", str(SP1024_DIR), "--tokenizer", str(SP1024_MODEL)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ra = json.loads((tmp_path / "one" / "result.json").read_text())
    rb = json.loads((tmp_path / "two" / "result.json").read_text())
    assert rb["world_size"] == 2 and rb["val_targets"] == ra["val_targets"]
    assert rb["val_bpb"] == pytest.approx(ra["val_bpb"], abs=1e-4)


def test_cli_train_quick(micro, tmp_path, capsys):
    from pgolf.cli import main
    code = main(["train", "--recipe", "baseline", "--scale", "tiny", "--data", str(SP1024_DIR), "--tokenizer",
                 str(SP1024_MODEL), "--out", str(tmp_path / "cli"), "--quiet", "--json",
                 *sum((["--set", f"{k}={v}"] for k, v in _micro_sets().items()), [])])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads((tmp_path / "cli" / "result.json").read_text())  # --json prints the run's result.json
    assert (out["recipe"], out["scale"], out["steps"], out["val_targets"]) == ("baseline", "tiny", 6, 4096)


def _micro_sets():
    from conftest import MICRO
    return {k: v for k, v in MICRO.items()}
