"""The challenge's own artifact scored by pgolf (`pgolf eval final_model.int8.ptz --recipe baseline`, issue #21).

tests/fixtures/challenge_baseline_tiny.int8.ptz was written by the challenge's baseline train_gpt.py itself at tiny
size (benchmarks/challenge_fixture.py; its JSON beside it holds the val_bpb that code's eval_val printed for the
file on the first 16,000 validation tokens of the sp1024 sample). pgolf must give the same score to 1e-5, and
refuse every malformed or hostile file with a message naming it, without running anything from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zlib
from pathlib import Path

import pytest
import torch

from pgolf.cli import main
from pgolf.cli.challenge_format import (ChallengeFormatError, challenge_config, dequantize_challenge,
                                        load_challenge_model, read_challenge_object)
from pgolf.cli.evaluate_artifact import evaluate_artifact
from pgolf.config import ConfigError
from pgolf.quant.container import MAGIC, ArtifactError

from conftest import SP1024_DIR, need_shared_data

FIXTURE = Path(__file__).parent / "fixtures" / "challenge_baseline_tiny.int8.ptz"
RECORD = json.loads(FIXTURE.with_suffix("").with_suffix(".json").read_text())


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_the_fixture_is_the_file_the_challenge_code_wrote():
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == RECORD["file_sha256"]
    assert FIXTURE.stat().st_size == RECORD["file_bytes"] < 50_000


def test_pgolf_scores_the_challenge_file_as_the_challenge_eval_val_did():
    need_shared_data(SP1024_DIR)
    result = evaluate_artifact(FIXTURE, str(SP1024_DIR), overrides={"eval.context_len": RECORD["seq_len"]},
                               val_tokens=RECORD["val_tokens"], recipe="baseline", device="cpu")
    assert result["format"] == "challenge" and result["eval_tail"] == "drop"
    assert result["val_targets"] == RECORD["val_targets_scored"]
    assert result["val_bpb"] == pytest.approx(RECORD["val_bpb"], abs=1e-5)
    assert result["val_loss"] == pytest.approx(RECORD["val_loss"], abs=1e-5)


def test_the_cli_scores_it_and_reads_the_widths_from_the_tensors(capsys):
    need_shared_data(SP1024_DIR)
    code = main(["eval", str(FIXTURE), "--recipe", "baseline", "--data", str(SP1024_DIR), "--val-tokens",
                 str(RECORD["val_tokens"]), "--set", f"eval.context_len={RECORD['seq_len']}", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(RECORD["val_bpb"], abs=1e-5)
    model, cfg = load_challenge_model(FIXTURE, "baseline")
    dims = RECORD["dims"]
    assert (cfg.model.vocab_size, cfg.model.num_layers, cfg.model.model_dim, cfg.model.num_heads,
            cfg.model.num_kv_heads, cfg.model.mlp_hidden) == (dims["vocab_size"], dims["num_layers"], dims["model_dim"],
                                                             dims["num_heads"], dims["num_kv_heads"],
                                                             dims["mlp_mult"] * dims["model_dim"])
    assert sum(p.numel() for p in model.parameters()) == RECORD["param_count"]


def test_dequantization_follows_the_format():
    q = torch.tensor([[1, -2, 3], [127, 0, -127]], dtype=torch.int8)
    obj = {"__quant_format__": "int8_clean_per_row_v1",
           "quantized": {"m": q, "v": torch.tensor([2, -4], dtype=torch.int8)},
           "scales": {"m": torch.tensor([0.5, 0.25], dtype=torch.float16), "v": torch.tensor(0.125)},
           "dtypes": {"m": "bfloat16", "v": "float32"}, "qmeta": {"m": {"scheme": "per_row", "axis": 0}},
           "passthrough": {"p": torch.tensor([1.5], dtype=torch.float16), "i": torch.tensor([3])},
           "passthrough_orig_dtypes": {"p": "float32"}}
    out = dequantize_challenge(obj)
    assert out["m"].dtype == torch.bfloat16
    assert out["m"].float().tolist() == [[0.5, -1.0, 1.5], [31.75, 0.0, -31.75]]  # row i times scale i
    assert out["v"].tolist() == [0.25, -0.5]                                     # one scale for the tensor
    assert out["p"].dtype == torch.float32 and out["p"].tolist() == [1.5]       # the fp16 storage undone
    assert out["i"].dtype == torch.int64


class Payload:
    """Unpickling this would create a file: a loader that runs code from the file would leave it behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("case, match", [
    ("not_zlib", "not zlib data"),
    ("missing", "challenge artifact not found"),
    ("truncated", "truncated"),
    ("trailing", "follow the zlib stream"),
    ("bomb", "decompresses to more than"),
    ("code", r"weights_only=True\) refused"),
    ("format", "'__quant_format__' is 'int6_v9'"),
    ("not_int8", r"quantized\['m'\] is torch.float32"),
    ("rows", r"scales\['m'\] has 3 values for 2 rows"),
    ("dtype", r"dtypes\['m'\] is 'os.system'"),
    ("no_scale", r"quantized\['m'\] has no scales entry"),
])
def test_malformed_or_hostile_files_are_refused_by_name(tmp_path, case, match):
    good = {"__quant_format__": "int8_clean_per_row_v1", "quantized": {"m": torch.zeros(2, 4, dtype=torch.int8)},
            "scales": {"m": torch.ones(2, dtype=torch.float16)}, "dtypes": {"m": "float32"}, "passthrough": {}}
    marker = tmp_path / "ran"
    blob = zlib.compress(saved(good))
    limit = 1 << 30
    if case == "not_zlib":
        blob = b"PK\x03\x04" + blob
    elif case == "missing":
        blob = None
    elif case == "truncated":
        blob = blob[:-7]
    elif case == "trailing":
        blob = blob + b"junk"
    elif case == "bomb":
        blob, limit = zlib.compress(bytes(4 << 20)), 1 << 20
    elif case == "code":
        blob = zlib.compress(pickle.dumps({"__quant_format__": Payload(marker)}))
    else:
        bad = dict(good, quantized=dict(good["quantized"]), scales=dict(good["scales"]), dtypes=dict(good["dtypes"]))
        if case == "format":
            bad["__quant_format__"] = "int6_v9"
        elif case == "not_int8":
            bad["quantized"]["m"] = torch.zeros(2, 4)
        elif case == "rows":
            bad["scales"]["m"] = torch.ones(3, dtype=torch.float16)
        elif case == "dtype":
            bad["dtypes"]["m"] = "os.system"
        elif case == "no_scale":
            bad["scales"] = {}
        blob = zlib.compress(saved(bad))
    path = tmp_path / "final_model.int8.ptz"
    if blob is not None:
        path.write_bytes(blob)
    with pytest.raises(ChallengeFormatError, match=match) as err:
        dequantize_challenge(read_challenge_object(path, limit), path)
    assert str(path) in str(err.value)
    assert not marker.exists()  # nothing from the file ran


def test_the_cli_tells_the_two_formats_apart(tmp_path, capsys):
    bad = tmp_path / "final_model.int8.ptz"
    bad.write_bytes(b"\x00" * 64)
    assert main(["eval", str(bad), "--recipe", "baseline", "--data", str(tmp_path)]) == 2
    assert f"{bad}: not zlib data" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="scored with --recipe baseline"):
        evaluate_artifact(FIXTURE)                      # a challenge file without --recipe
    with pytest.raises(ArtifactError, match="bad magic"):
        evaluate_artifact(bad)                          # neither: pgolf's own loader names what is wrong
    with pytest.raises(ConfigError, match="give --data"):
        evaluate_artifact(FIXTURE, recipe="baseline")   # it names no data folder
    artifact = tmp_path / "run.pgolf"
    artifact.write_bytes(MAGIC + bytes(64))  # refused on its magic, before anything is read
    with pytest.raises(ConfigError, match="is a pgolf artifact"):
        evaluate_artifact(artifact, str(tmp_path), recipe="baseline")


def test_only_the_baseline_recipe_takes_the_format():
    state = dequantize_challenge(read_challenge_object(FIXTURE), FIXTURE)
    with pytest.raises(ConfigError, match="maps onto the baseline recipe's model only"):
        challenge_config(state, "pr1536")
    state.pop("blocks.0.attn.q_gain")
    with pytest.raises(ChallengeFormatError, match="needs a 1-d 'blocks.0.attn.q_gain'"):
        challenge_config(state, "baseline")
