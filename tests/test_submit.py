"""The bundled train_gpt.py (its size is code_bytes; it carries every runtime module; it trains the same run) and
`pgolf submit` (the challenge's submission folder)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import tomli_w
import torch

import pgolf
from pgolf.artifact import bundle
from pgolf.artifact.bundle import EXCLUDED_MODULES, PACKAGE_DIR, bundle_source, bundled_module_paths, slim_source
from pgolf.artifact.sizes import runtime_code_bytes
from pgolf.cli import main
from pgolf.cli.submit import SubmissionError, make_submission
from pgolf.config import load_config
from pgolf.training.bundle_entry import bundle_config

from conftest import micro_config


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """One finished micro run of the baseline recipe on the FineWeb sample."""
    from conftest import SP1024_MODEL, VAL_SHARD

    if not VAL_SHARD.is_file() or not SP1024_MODEL.is_file():
        pytest.skip("needs the FineWeb sample and sp1024 tokenizer (the project's shared/data)")
    run = tmp_path_factory.mktemp("submit") / "run"
    pgolf.train(micro_config("baseline", train__steps=4, data__val_tokens_limit=2049), run, progress=False)
    return run


# ----------------------------------------------------------------------------- the bundle

def test_bundle_is_deterministic_and_its_size_is_the_counted_code_bytes(micro_run):
    cfg = load_config(micro_run / "config.toml")
    text = bundle_source(cfg)
    assert text == bundle_source(load_config(micro_run / "config.toml"))
    size = len(text.encode("utf-8"))
    result = json.loads((micro_run / "result.json").read_text())
    assert result["code_bytes"] == size == runtime_code_bytes(cfg) == bundle.code_bytes(cfg)
    assert result["artifact_bytes"] == size + (micro_run / "artifact.pgolf").stat().st_size
    other_seed = load_config(micro_run / "config.toml")
    other_seed.seed = 7
    assert bundle_source(other_seed) != text and "seed = 7" in bundle_source(other_seed)


def test_budget_estimate_counts_the_bundle():
    from pgolf.artifact.budget import estimate_artifact_bytes

    cfg = pgolf.load_recipe("tiny", scale="tiny")
    small = estimate_artifact_bytes(cfg)
    assert small > runtime_code_bytes(cfg) > 20_000


def test_bundle_carries_every_module_except_the_cli_and_report_ones():
    on_disk = {p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(bundled_module_paths()) == on_disk - EXCLUDED_MODULES
    for needed in ("training/loop.py", "training/bundle_entry.py", "config/schema.py", "quant/pack.py", "eval/bpb.py",
                   "model/gpt.py", "artifact/bundle.py"):
        assert needed in bundled_module_paths()


def _imported_modules(rel: str, source: str) -> set[str]:
    """Package-relative paths of the pgolf modules `rel` imports (module level or inside functions)."""
    package = rel.split("/")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            names = [parts + [alias.name] for alias in node.names] + [parts]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf":
            parts = node.module.split(".")[1:]
            names = [parts + [alias.name] for alias in node.names] + [parts]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "pgolf"]
        else:
            continue
        for parts in names:
            for candidate in ("/".join(parts) + ".py", "/".join(parts + ["__init__.py"])):
                if (PACKAGE_DIR / candidate).is_file():
                    found.add(candidate)
    return found


def test_no_bundled_module_imports_an_excluded_one():
    for rel in bundled_module_paths():
        source = (PACKAGE_DIR / rel).read_text(encoding="utf-8")
        try:
            imported = _imported_modules(rel, source)
        except SyntaxError:
            continue  # a module being edited right now; its own tests report it
        leaked = imported & EXCLUDED_MODULES
        assert not leaked, (f"pgolf/{rel} imports {sorted(leaked)}, which pgolf.artifact.bundle.EXCLUDED_MODULES leaves out of "
                            f"train_gpt.py: remove it from EXCLUDED_MODULES")


def test_slimming_keeps_line_numbers_and_drops_comments_and_docstrings():
    source = '"""Module doc."""\nimport os  # why\n\n\ndef f(x):\n    """Doc\n    more."""\n    s = "# not a comment"\n    return x  # done\n\n\nclass C:\n    """Only a docstring."""\n'
    slim = slim_source(source)
    assert slim.count("\n") == source.count("\n")
    assert "why" not in slim and "Doc" not in slim and "Only a docstring" not in slim
    assert '"# not a comment"' in slim
    scope: dict = {}
    exec(compile(slim, "<slim>", "exec"), scope)
    assert scope["f"](3) == 3 and scope["C"].__doc__ == ""
    for rel in bundled_module_paths():
        original = (PACKAGE_DIR / rel).read_text(encoding="utf-8")
        assert slim_source(original).count("\n") == original.count("\n"), rel


def test_bundled_script_imports_pgolf_from_itself(micro_run, tmp_path):
    script = tmp_path / "train_gpt.py"
    bundle.write_bundle(load_config(micro_run / "config.toml"), script)
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); import pgolf.training.loop, inspect; "
             "print(pgolf.training.loop.__file__); print(len(inspect.getsource(pgolf.training.loop.grad_accum_steps)))")
    out = subprocess.run([sys.executable, "-c", probe, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == f"{script}/pgolf/training/loop.py" and int(lines[1]) > 50


def test_requirements_pin_the_third_party_imports():
    lines, optional = bundle.requirements()
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"torch", "numpy", "sentencepiece", "safetensors"} <= names
    assert all("==" in line and "+" not in line for line in lines)
    assert "huggingface-hub" not in names  # only `pgolf data download` (not bundled) needs it
    assert all(m not in sys.stdlib_module_names for m in optional)


def test_environment_overrides_of_the_embedded_config(micro_run):
    cfg = load_config(micro_run / "config.toml")
    config_text = tomli_w.dumps(bundle.config_delta(cfg))
    same = bundle_config(config_text, {})
    assert same == cfg
    moved = bundle_config(config_text, {"DATA_PATH": "/elsewhere/data", "SEED": "42",
                                               "PGOLF_SET": "train.steps=2 eval.sliding_stride=0"})
    assert (moved.data.path, moved.seed, moved.train.steps) == ("/elsewhere/data", 42, 2)
    assert moved.data.tokenizer == cfg.data.tokenizer  # the run's tokenizer file still exists here
    with pytest.raises(pgolf.ConfigError, match="PGOLF_SET"):
        bundle_config(config_text, {"PGOLF_SET": "train.steps"})


# ----------------------------------------------------------------------------- pgolf submit

def test_submit_writes_the_challenge_folder(micro_run, tmp_path):
    out = tmp_path / "sub"
    made = make_submission([micro_run], out, name="Micro test", author="Tester")
    assert sorted(made["files"]) == sorted(["README.md", "submission.json", "train_gpt.py", "requirements.txt",
                                            "log.jsonl", "train.log", "loss.png"])
    result = json.loads((micro_run / "result.json").read_text())
    record = json.loads((out / "submission.json").read_text())
    code = (out / "train_gpt.py").stat().st_size
    assert record["bytes_code"] == code == result["code_bytes"]
    assert record["bytes_total"] == result["artifact_bytes"]
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


def test_submit_several_seeds_and_refuses_different_configs(micro_run, tmp_path):
    def copy_with(name, **changes):
        run = tmp_path / name
        shutil.copytree(micro_run, run)
        table = tomllib.loads((run / "config.toml").read_text())
        result = json.loads((run / "result.json").read_text())
        for key, value in changes.items():
            section, field = key.split("__")
            table[section][field] = value
        (run / "config.toml").write_text(tomli_w.dumps(table))
        return run, table, result

    run2, table, result = copy_with("seed2")
    table["seed"] = 2
    (run2 / "config.toml").write_text(tomli_w.dumps(table))
    result.update(seed=2, val_bpb=result["val_bpb"] + 0.01, val_loss=result["val_loss"] + 0.02)
    (run2 / "result.json").write_text(json.dumps(result))
    made = make_submission([micro_run, run2], tmp_path / "two")
    record = made["record"]
    assert record["seeds"] == [1337, 2] and set(record["seed_results"]) == {"1337", "2"}
    assert record["val_bpb_std"] > 0
    assert {"train_seed1337.log", "train_seed2.log", "log_seed2.jsonl"} <= set(made["files"])

    other, _, _ = copy_with("wider", model__num_layers=3)
    with pytest.raises(SubmissionError, match="model.num_layers"):
        make_submission([micro_run, other], tmp_path / "bad")


def test_cli_submit(micro_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["submit", str(micro_run), "--out", str(out)]) == 0
    assert "train_gpt.py" in capsys.readouterr().out
    assert main(["submit", str(micro_run), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["submit", str(micro_run), "--out", str(out), "--force"]) == 0


@pytest.mark.slow
def test_submitted_script_reproduces_the_run_in_a_clean_venv(micro_run, tmp_path):
    """python -m venv + pip install -r requirements.txt, then `python train_gpt.py` scores the same val_bpb."""
    sub = tmp_path / "sub"
    make_submission([micro_run], sub)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(sub / "requirements.txt")],
                         capture_output=True, text=True, timeout=1800)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PGOLF"))}
    env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), RUN_DIR=str(tmp_path / "rerun"),
               PGOLF_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([str(py), "train_gpt.py"], cwd=sub, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    original = json.loads((micro_run / "result.json").read_text())
    rerun = json.loads((tmp_path / "rerun" / "result.json").read_text())
    assert rerun["code_bytes"] == (sub / "train_gpt.py").stat().st_size == original["code_bytes"]
    assert rerun["val_bpb"] == pytest.approx(original["val_bpb"], abs=1e-9)
    assert rerun["val_loss"] == pytest.approx(original["val_loss"], abs=1e-9)
    assert rerun["model_bytes"] == original["model_bytes"]
    assert "final val_loss:" in proc.stdout
    probe = subprocess.run([str(py), "-c", "import pgolf"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode != 0  # pgolf itself is not installed there: the script carried it
