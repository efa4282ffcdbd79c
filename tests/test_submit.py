"""`pgolf submit` (the challenge's submission folder): it checks the runs instead of trusting result.json, writes
the one script whose size the runs counted, its line map and a custom tokenizer, and that script reproduces every
recipe's run in a clean virtual environment."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
import torch

import pgolf
from pgolf.artifact import bundle
from pgolf.cli import main
from pgolf.cli.submit import CHALLENGE_TOKENIZERS, LINEMAP_NAME, SubmissionError, make_submission
from pgolf.config import load_config, recipe_names
from pgolf.data.tokenizer import file_sha256, tokenizer_sha256
from pgolf.training.bundle_entry import bundle_config

from conftest import SHARED, SP1024_MODEL, VAL_SHARD, micro_config, micro_recipe, need_shared_data


def _train(tmp_path_factory, name, **overrides):
    need_shared_data(VAL_SHARD, SP1024_MODEL)
    run = tmp_path_factory.mktemp("submit") / name
    pgolf.train(micro_config("baseline", train__steps=4, data__val_tokens_limit=2049, **overrides), run, progress=False)
    return run


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """One finished micro run of the baseline recipe on the FineWeb sample."""
    return _train(tmp_path_factory, "run")


@pytest.fixture(scope="module")
def micro_run_seed2(tmp_path_factory):
    return _train(tmp_path_factory, "run_s2", seed=2)


def _copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- the script and its size

def test_the_runs_code_bytes_are_the_size_of_its_script(micro_run):
    cfg = load_config(micro_run / "config.toml")
    data = bundle.bundle_bytes(cfg)
    result = json.loads((micro_run / "result.json").read_text())
    assert result["code_bytes"] == len(data) == bundle.code_bytes(load_config(micro_run / "config.toml"))
    assert result["artifact_bytes"] == len(data) + (micro_run / "artifact.pgolf").stat().st_size
    other_seed = load_config(micro_run / "config.toml")
    other_seed.seed = 7
    assert b"\nseed=7\n" in bundle.bundle_bytes(other_seed) and b"seed=7" not in data  # the embedded TOML


def test_budget_estimate_counts_the_script():
    from pgolf.artifact.budget import estimate_artifact_bytes
    from pgolf.quant.pack import header_bytes

    cfg = pgolf.load_recipe("tiny", scale="tiny")
    lora = pgolf.load_recipe("tiny", scale="tiny", overrides={"eval.ttt": "lora"})  # more code, same model
    extra_code = bundle.code_bytes(lora) - bundle.code_bytes(cfg)
    assert extra_code > 1000
    extra_header = header_bytes(lora) - header_bytes(cfg)  # the header holds the (compressed) config
    assert estimate_artifact_bytes(lora) - estimate_artifact_bytes(cfg) == extra_code + extra_header


def test_requirements_pin_what_the_script_imports():
    lines, optional = bundle.requirements(micro_config("baseline"))
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"torch", "numpy", "sentencepiece", "safetensors"} <= names
    assert all("==" in line and "+" not in line for line in lines)
    assert not names & {"huggingface-hub", "python-minifier"}  # only pgolf itself imports them (downloads, bundling)
    assert all(m not in sys.stdlib_module_names for m in optional)


def test_environment_overrides_of_the_embedded_config(micro_run):
    cfg = load_config(micro_run / "config.toml")
    config_text = tomli_w.dumps(bundle.config_delta(cfg))
    same = bundle_config(config_text, {})
    assert same == cfg
    moved = bundle_config(config_text, {"DATA_PATH": "/elsewhere/data", "SEED": "42",
                                        "PGOLF_SET": "train.steps=2 train.val_every=0"})
    assert (moved.data.path, moved.seed, moved.train.steps) == ("/elsewhere/data", 42, 2)
    assert moved.data.tokenizer == cfg.data.tokenizer  # the run's tokenizer file still exists here
    with pytest.raises(pgolf.ConfigError, match="PGOLF_SET"):
        bundle_config(config_text, {"PGOLF_SET": "train.steps"})
    carried = set(bundle.module_sources(cfg))
    with pytest.raises(pgolf.ConfigError, match="does not carry pgolf.eval.modes"):
        bundle_config(config_text, {"PGOLF_SET": "eval.sliding_stride=32"}, carried)
    assert bundle_config(config_text, {"PGOLF_SET": "train.steps=3"}, carried).train.steps == 3
    # a script carries no config validation: keys it cannot check are refused, naming them; train.steps is checked
    with pytest.raises(pgolf.ConfigError, match=r"PGOLF_SET: model.num_heads: a train_gpt.py takes only seed"):
        bundle_config(config_text, {"PGOLF_SET": "train.steps=3 model.num_heads=3"}, carried)
    with pytest.raises(pgolf.ConfigError, match=r"'train.steps' must be positive, got 0"):
        bundle_config(config_text, {"PGOLF_SET": "train.steps=0"}, carried)
    with pytest.raises(pgolf.ConfigError, match="'train.steps' must be an integer|train.steps"):
        bundle_config(config_text, {"PGOLF_SET": "train.steps=many"}, carried)  # types are still checked


def _fields_read(tree: ast.AST) -> set[str]:
    return ({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            | {w for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               for w in re.findall(r"\w+", n.value)})


def test_what_a_script_lets_the_environment_set_needs_no_validation():
    """RUNTIME_KEYS (what a train_gpt.py, which carries no pgolf.config.validate, accepts from the environment):
    validation never reads them (validate.py's code, and the schema helpers it calls), except train.steps, whose
    check bundle_entry makes itself; every key exists."""
    from pgolf.config import all_keys
    from pgolf.training.bundle_entry import RUNTIME_KEYS
    src = Path(pgolf.__file__).parent / "config"
    validate_tree = ast.parse((src / "validate.py").read_text())
    read = _fields_read(validate_tree)
    schema = ast.parse((src / "schema.py").read_text())
    called = {n.id for n in ast.walk(validate_tree) if isinstance(n, ast.Name)}
    for node in schema.body:
        if isinstance(node, ast.FunctionDef) and node.name in called:
            read |= _fields_read(node)
    assert set(RUNTIME_KEYS) <= set(all_keys()) | {"seed"}
    assert "steps" in read  # validate does check train.steps (positive): bundle_entry repeats that check
    unchecked = [k for k in RUNTIME_KEYS if k != "train.steps" and k.split(".")[-1] in read]
    assert not unchecked, f"validation reads {unchecked}: a script would take them unchecked"


# ----------------------------------------------------------------------------- pgolf submit

def test_submit_writes_the_challenge_folder(micro_run, tmp_path):
    out = tmp_path / "sub"
    made = make_submission([micro_run], out, name="Micro test", author="Tester")
    assert sorted(made["files"]) == sorted(["README.md", "submission.json", "train_gpt.py", "requirements.txt",
                                            LINEMAP_NAME, "log.jsonl", "train.log", "loss.png"])
    result = json.loads((micro_run / "result.json").read_text())
    record = json.loads((out / "submission.json").read_text())
    code = (out / "train_gpt.py").stat().st_size
    assert record["bytes_code"] == code == result["code_bytes"]
    assert record["bytes_total"] == result["artifact_bytes"] and "bytes_tokenizer" not in record  # sp1024: published
    assert record["val_bpb"] == result["val_bpb"] and record["val_loss"] == result["val_loss"]
    assert record["name"] == "Micro test" and record["author"] == "Tester" and record["github_id"]
    assert record["seeds"] == [1337] and record["track"] == "non_record_16mb"
    assert record["compliance"]["full_validation_split"] is False and record["compliance"]["three_seeds"] is False
    assert any("3 or more" in w for w in made["warnings"])
    readme = (out / "README.md").read_text()
    for heading in ("# Micro test", "## Results", "## Configuration", "## Reproduce", "## Included files"):
        assert heading in readme
    assert f"{code:,} bytes" in readme and "DATA_PATH" in readme
    log = (out / "train.log").read_text()
    assert "step:1/4 train_loss:" in log and f"val_bpb:{result['val_bpb']:.8f}" in log
    assert "torch==" in (out / "requirements.txt").read_text()
    assert (out / "log.jsonl").read_text() == (micro_run / "log.jsonl").read_text()
    with pytest.raises(SubmissionError, match="not empty"):
        make_submission([micro_run], out)


def test_submit_several_seeds_and_refuses_different_configs(micro_run, micro_run_seed2, tmp_path):
    made = make_submission([micro_run, micro_run_seed2], tmp_path / "two")
    record = made["record"]
    assert record["seeds"] == [1337, 2] and set(record["seed_results"]) == {"1337", "2"}
    assert record["val_bpb_std"] > 0
    assert {"train_seed1337.log", "train_seed2.log", "log_seed2.jsonl"} <= set(made["files"])

    other = _copy(micro_run, tmp_path, "wider")
    table = tomllib.loads((other / "config.toml").read_text())
    table["model"]["num_layers"] = 3
    (other / "config.toml").write_text(tomli_w.dumps(table))
    with pytest.raises(SubmissionError, match="model.num_layers"):
        make_submission([micro_run, other], tmp_path / "bad")


# ----------------------------------------------------------------------------- nothing taken on trust

def test_an_artifact_repacked_in_place_is_refused(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    model, cfg = pgolf.unpack(run / "artifact.pgolf")
    cfg.quant.compressor = "lzma"  # another policy, written over the run's artifact
    pgolf.pack(model, cfg, run / "artifact.pgolf")
    with pytest.raises(SubmissionError, match="model_bytes"):  # a new size
        make_submission([run], tmp_path / "a")
    size = (run / "artifact.pgolf").stat().st_size
    _edit_json(run / "result.json", model_bytes=size)  # even with the size patched: the checksum
    with pytest.raises(SubmissionError, match="sha256 differs"):
        make_submission([run], tmp_path / "b")
    _edit_json(run / "result.json", artifact_sha256=None)  # a result.json without one: the embedded config
    with pytest.raises(SubmissionError, match="embedded config differs .* quant.compressor"):
        make_submission([run], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # refused before writing anything


def test_a_corrupted_or_missing_artifact_is_refused(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    data = bytearray((run / "artifact.pgolf").read_bytes())
    data[-10] ^= 0xFF
    (run / "artifact.pgolf").write_bytes(bytes(data))
    with pytest.raises(SubmissionError, match="sha256 differs"):
        make_submission([run], tmp_path / "a")
    _edit_json(run / "result.json", artifact_sha256=None)
    with pytest.raises(SubmissionError, match="cannot be read back"):
        make_submission([run], tmp_path / "b")
    (run / "artifact.pgolf").unlink()
    with pytest.raises(SubmissionError, match="missing"):
        make_submission([run], tmp_path / "c")


def test_changed_code_is_refused_unless_forced(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    result = json.loads((run / "result.json").read_text())
    _edit_json(run / "result.json", code_bytes=result["code_bytes"] - 1)  # as if the sources changed since
    with pytest.raises(SubmissionError, match=r"counted .* code bytes, its train_gpt.py would now be"):
        make_submission([run], tmp_path / "a")
    assert not (tmp_path / "a").exists()
    made = make_submission([run], tmp_path / "b", force=True)
    assert any("pgolf's code changed" in w for w in made["warnings"])
    assert made["record"]["bytes_code"] == (tmp_path / "b" / "train_gpt.py").stat().st_size == result["code_bytes"]


def test_seeds_must_be_integers_before_they_name_files(micro_run, tmp_path):
    for bad in ("../../etc/x", True, 1.5, None):
        run = _copy(micro_run, tmp_path, f"seed_{bad}".replace("/", "_"))
        _edit_json(run / "result.json", seed=bad) if bad is not None else _edit_json(run / "result.json", seed=None)
        with pytest.raises(SubmissionError, match="'seed' must be an integer"):
            make_submission([run], tmp_path / "out")
    run = _copy(micro_run, tmp_path, "seed_mismatch")
    _edit_json(run / "result.json", seed=5)
    with pytest.raises(SubmissionError, match="result.json says seed 5, config.toml says 1337"):
        make_submission([run], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_custom_tokenizer_ships_in_the_folder(micro_run, tmp_path):
    official = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
    assert file_sha256(official) in CHALLENGE_TOKENIZERS
    run = _copy(micro_run, tmp_path)
    custom = tmp_path / "my_tokenizer.model"
    shutil.copyfile(official, custom)
    with custom.open("ab") as f:
        f.write(b"\0")  # another file: the challenge does not publish it
    _edit_json(run / "env.json", tokenizer=str(custom), tokenizer_sha256=file_sha256(custom))
    made = make_submission([run], tmp_path / "sub")
    assert "tokenizers/my_tokenizer.model" in made["files"]
    assert (tmp_path / "sub" / "tokenizers" / "my_tokenizer.model").read_bytes() == custom.read_bytes()
    record = made["record"]
    assert record["bytes_tokenizer"] == custom.stat().st_size and record["tokenizer"] == "tokenizers/my_tokenizer.model"
    assert record["bytes_total"] == json.loads((run / "result.json").read_text())["artifact_bytes"]  # not counted
    readme = (tmp_path / "sub" / "README.md").read_text()
    assert "TOK=tokenizers/my_tokenizer.model" in readme and "not part of the counted artifact" in readme
    with custom.open("ab") as f:
        f.write(b"\0")  # changed since the run
    with pytest.raises(SubmissionError, match="tokenizer changed since the run"):
        make_submission([run], tmp_path / "sub2")
    custom.unlink()
    with pytest.raises(SubmissionError, match="the file is gone"):
        make_submission([run], tmp_path / "sub3")
    _edit_json(run / "env.json", tokenizer="byte260", tokenizer_sha256=tokenizer_sha256("byte260"))
    assert not any(f.startswith("tokenizers/") for f in make_submission([run], tmp_path / "sub4")["files"])  # published


def test_cli_submit(micro_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["submit", str(micro_run), "--out", str(out)]) == 0
    assert "train_gpt.py" in capsys.readouterr().out
    assert main(["submit", str(micro_run), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["submit", str(micro_run), "--out", str(out), "--force"]) == 0


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    """A micro run of every shipped recipe (conftest.micro_recipe: 2 steps) on the FineWeb sample, by the package."""
    need_shared_data(VAL_SHARD, SP1024_MODEL)
    root = tmp_path_factory.mktemp("recipes")
    runs = {}
    for name in sorted(recipe_names()):
        pgolf.train(micro_recipe(name), root / name, progress=False)
        runs[name] = root / name
    return runs


@pytest.mark.slow
def test_every_recipes_script_reproduces_its_run_in_a_clean_venv(recipe_runs, tmp_path):
    """python -m venv + pip install -r requirements.txt (once), then each recipe's `python train_gpt.py` scores
    the same val_bpb, with the same code and model bytes, as the package did; pgolf is not installed there."""
    subs = {}
    requirements = set()
    for name, run in recipe_runs.items():
        subs[name] = tmp_path / "sub" / name
        make_submission([run], subs[name])
        requirements |= {line for line in (subs[name] / "requirements.txt").read_text().splitlines() if "==" in line}
    (tmp_path / "requirements.txt").write_text("\n".join(sorted(requirements)) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(tmp_path / "requirements.txt")],
                         capture_output=True, text=True, timeout=1800)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PGOLF"))}
    threads = str(torch.get_num_threads())  # the package's runs used these: another count changes the floats
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PGOLF_CACHE=str(tmp_path / "cache"))
    probe = subprocess.run([str(py), "-c", "import pgolf"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode != 0  # pgolf itself is not installed there: each script carries what it needs
    for name, run in recipe_runs.items():
        rerun = tmp_path / "rerun" / name
        proc = subprocess.run([str(py), "train_gpt.py"], cwd=subs[name], env=dict(env, RUN_DIR=str(rerun)),
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, name + proc.stdout[-3000:] + proc.stderr[-5000:]
        original = json.loads((run / "result.json").read_text())
        again = json.loads((rerun / "result.json").read_text())
        assert again["code_bytes"] == (subs[name] / "train_gpt.py").stat().st_size == original["code_bytes"], name
        assert bundle.frozen_keys(load_config(run / "config.toml")), name  # a specialised script reproduced it
        assert again["val_bpb"] == original["val_bpb"] and again["val_loss"] == original["val_loss"], name
        assert again["model_bytes"] == original["model_bytes"] and again["eval_mode"] == original["eval_mode"], name
        assert f"val_bpb:{original['val_bpb']:.8f}" in proc.stdout
