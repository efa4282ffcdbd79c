"""The generated train_gpt.py: it carries exactly the modules its config's switches reach (every optional module
only through pgolf.config.optional), pruned and minified without changing what the code does, stored
deterministically, with a line map that leads a traceback back to the repository."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import re
import runpy
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

import pgolf
from pgolf.artifact import bundle, shipping
from pgolf.artifact.linemap import map_traceback, original_line
from pgolf.artifact.minify import minify_source
from pgolf.config import SECTIONS, recipe_names
from pgolf.config.optional import OPTIONAL_MODULES, OptionalModuleError, needed_optional_modules, optional_module, require_module
from pgolf.data.prepare import prepare_documents
from pgolf.training.bundle_entry import RUNTIME_KEYS

from conftest import REPO, SHARED, micro_config

PACKAGE = shipping.PACKAGE_DIR
OPTIONAL_PATHS = {shipping.rel_of(m.name) for m in OPTIONAL_MODULES}
# The layers, bottom to top (README "Layout"); eval, quant and optim sit side by side and do not reach each other.
LAYERS = {"config": 0, "data": 1, "model": 2, "eval": 3, "quant": 3, "optim": 3, "artifact": 4, "training": 5, "cli": 6}


def _all_modules() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(rel: str) -> int:
    return LAYERS.get(rel.split("/")[0], 7)  # pgolf/__init__.py, __main__.py: the API above everything


def _dispatch_calls(tree: ast.AST) -> list[str]:
    """Module names passed to optional_module / require_module in `tree`."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("optional_module", "require_module")):
            assert isinstance(node.args[0], ast.Constant), ast.dump(node)  # the registry key is always a literal
            out.append(node.args[0].value)
    return out


# ----------------------------------------------------------------------------- what ships

def test_optional_modules_are_reached_only_through_the_registry():
    """No module that can ship imports an optional module by a plain import: that would ship it with every script
    that carries the importer (another optional module too: the target would come with all its configs) and skip
    the registry's check. Dynamic imports happen only in the registry. (cli/, sweep/, downloads and the builder
    never ship: no module that can ship imports them.)"""
    can_ship = shipping.closure(shipping.roots_for([m.name for m in OPTIONAL_MODULES]), {})
    assert "training/loop.py" in can_ship and not [r for r in can_ship if r.startswith(("cli/", "sweep/"))]
    for rel in can_ship:
        leaked = shipping.imported_modules(rel, shipping.read_tree(rel)) & OPTIONAL_PATHS
        assert not leaked, f"pgolf/{rel} imports {sorted(leaked)} directly: use pgolf.config.optional.optional_module"
        text = (PACKAGE / rel).read_text(encoding="utf-8")
        assert ("import_module(" not in text and "__import__(" not in text) or rel == "config/optional.py", rel


def test_dispatch_points_name_registered_modules_from_their_own_layer_or_above():
    registered = {m.name for m in OPTIONAL_MODULES}
    seen = set()
    for rel in _all_modules():
        if rel == "config/optional.py":  # the registry itself
            continue
        for name in _dispatch_calls(shipping.read_tree(rel)):
            assert name in registered, f"pgolf/{rel} asks for {name}, which OPTIONAL_MODULES does not list"
            target = shipping.rel_of(name)
            caller, callee = rel.split("/")[0], target.split("/")[0]
            assert _layer(rel) >= _layer(target), f"pgolf/{rel} reaches up into {target}"
            assert caller == callee or _layer(rel) > _layer(target), f"pgolf/{rel} reaches sideways into {target}"
            seen.add(name)
    assert seen == registered, f"registered but never dispatched: {sorted(registered - seen)}"


def test_registry_refuses_a_module_the_config_leaves_off():
    cfg = pgolf.Config()
    assert optional_module("pgolf.eval.ttt_lora", cfg.eval) is None
    with pytest.raises(OptionalModuleError, match="eval.ttt = 'lora'"):
        require_module("pgolf.eval.ttt_lora", cfg.eval)
    with pytest.raises(OptionalModuleError, match=r"\[quant\] section"):
        optional_module("pgolf.quant.gptq", cfg.eval)
    cfg.eval.ttt = "lora"
    assert require_module("pgolf.eval.ttt_lora", cfg.eval).__name__ == "pgolf.eval.ttt_lora"


def test_package_modules_load_always_in_the_package_and_in_a_script_only_when_needed(monkeypatch):
    """checkpoint, report and budget (package=True): every package run loads them; a train_gpt.py (enter_script)
    loads checkpoints only with train.checkpoint_every / keep_checkpoint, never the report (loss.png, summary)
    nor the budget check (its config was checked when it was built; RUNTIME_KEYS cannot change its size)."""
    from pgolf.config import optional
    from pgolf.training.loop import TrainingInterrupted
    cfg = pgolf.Config()
    assert optional_module("pgolf.training.checkpoint", cfg.train).__name__ == "pgolf.training.checkpoint"
    assert optional_module("pgolf.training.report", cfg.train).__name__ == "pgolf.training.report"
    assert optional_module("pgolf.artifact.budget", cfg.quant).__name__ == "pgolf.artifact.budget"
    assert not {"pgolf.training.checkpoint", "pgolf.training.report"} & set(needed_optional_modules(cfg))
    monkeypatch.setattr(optional, "_IN_SCRIPT", [True])
    assert optional_module("pgolf.training.checkpoint", cfg.train) is None
    assert optional_module("pgolf.training.report", cfg.train) is None
    assert optional_module("pgolf.artifact.budget", cfg.quant) is None  # checked when the script was built
    cfg.train.checkpoint_every = 5
    assert optional_module("pgolf.training.checkpoint", cfg.train) is not None
    assert "pgolf.training.checkpoint" in needed_optional_modules(cfg)
    assert "no checkpoint written" in str(TrainingInterrupted(15, 3, Path("r"), checkpointed=False))
    assert "pgolf train --resume r" in str(TrainingInterrupted(15, 3, Path("r")))


def _keys_read(entry) -> set[str]:
    """The config keys `entry.needed` reads, found by running it on a recording stand-in of its section."""
    read = set()
    section = SECTIONS[entry.section]()

    class Recorder:
        def __getattr__(self, key):
            read.add(f"{entry.section}.{key}")
            return getattr(section, key)

    entry.needed(Recorder())
    return read


def test_module_sets_follow_the_switches():
    base = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "data.tokenizer": "/data/x.model"})
    carried = set(shipping.module_set(base))
    assert {"training/loop.py", "training/bundle_entry.py", "quant/pack.py", "eval/bpb.py", "config/schema.py",
            "model/gpt.py", "__init__.py", "config/__init__.py"} <= carried
    off = {"eval/modes.py", "eval/sliding.py", "eval/windows.py", "eval/ttt_lora.py", "eval/lora_adapters.py",
           "eval/ttt_chunk.py", "eval/ttt_pre.py", "eval/ttt_train.py", "quant/gptq.py", "quant/qat.py", "training/fastpath.py", "data/corpus.py", "data/prepare.py",
           "training/checkpoint.py", "training/report.py"}
    assert not carried & off
    # config validation is imported, but nothing a script runs calls it after pruning (bundle_entry.RUNTIME_KEYS)
    assert "pgolf/config/validate.py" not in bundle.module_sources(base)
    assert not carried & (shipping.BUILD_ONLY | {r for r in _all_modules() if r.startswith("cli/")})
    lora = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "eval.ttt": "lora"})
    assert set(shipping.module_set(lora)) - carried == {"eval/modes.py", "eval/ttt_lora.py", "eval/lora_adapters.py",
                                                        "eval/windows.py", "eval/sliding.py", "eval/deadline.py"}
    gptq = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "quant.method": "gptq"})
    assert set(shipping.module_set(gptq)) - carried == {"quant/gptq.py"}


def test_the_kernels_ride_only_with_their_switch():
    """The Triton/liger kernel modules (loaded on CUDA only) are carried exactly when their switch asks."""
    base = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "data.tokenizer": "/data/x.model"})
    carried = set(shipping.module_set(base))
    assert not carried & {"model/kernels/mlp_triton.py", "model/kernels/ce_liger.py"}
    for key, value, module in (("train.fused_mlp", "triton", "model/kernels/mlp_triton.py"),
                               ("train.fused_ce", "liger", "model/kernels/ce_liger.py")):
        cfg = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "data.tokenizer": "/data/x.model", key: value})
        assert set(shipping.module_set(cfg)) - carried == {module, "model/kernels/__init__.py"}


def test_full_and_tiny_recipes_carry_the_same_modules():
    """The tiny scale changes sizes only, so the tiny runs below cover the full recipes' bundles too."""
    for name in recipe_names():
        full, tiny = pgolf.load_recipe(name, "full"), pgolf.load_recipe(name, "tiny")
        assert needed_optional_modules(bundle.script_config(full)) == needed_optional_modules(bundle.script_config(tiny))


def test_a_script_never_carries_the_embedded_corpus():
    cfg = pgolf.load_recipe("tiny")
    assert cfg.data.path == "" and "pgolf.data.corpus" in needed_optional_modules(cfg)
    script_cfg = bundle.script_config(cfg)
    assert script_cfg.data.path and Path(script_cfg.data.tokenizer).name == "tokenizer.model"
    assert "pgolf.data.corpus" not in needed_optional_modules(script_cfg)
    assert "pgolf/data/corpus.py" not in bundle.module_sources(cfg)


def test_pruning_drops_only_what_nothing_carried_uses():
    cfg = micro_config("baseline")
    pruned = shipping.carried_trees(tuple(needed_optional_modules(cfg)))
    dropped = {name for names in pruned.dropped.values() for name in names}
    assert "def describe_keys" not in ast.unparse(pruned.trees["config/schema.py"])
    # recipes are read by pgolf, not the script; its embedded config was validated when it was built
    assert "config/load.py" not in pruned.trees and "config/validate.py" not in pruned.trees
    carried = bundle.module_sources(cfg)
    identifiers = {tok.string for text in carried.values()
                   for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.NAME}
    for rel, names in pruned.dropped.items():
        for name in names:
            assert name not in identifiers, f"{name} was dropped from pgolf/{rel} but carried code names it"
    assert "def config_from_table" in ast.unparse(pruned.trees["config/overrides.py"])
    assert "def run_bundle" in ast.unparse(pruned.trees["training/bundle_entry.py"])
    # help texts are read only by describe_keys, which went: they are gone, the defaults and choices stay
    schema_text = ast.unparse(pruned.trees["config/schema.py"])
    assert "the embedded corpus" not in schema_text and "'relu2', 'leaky_relu2', 'swiglu'" in schema_text


def _registry_questions(trees: dict[str, ast.Module]) -> set[str]:
    return {c.args[0].value for rel, t in trees.items() if rel != "config/optional.py" for c in ast.walk(t)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in ("optional_module", "require_module")
            and c.args and isinstance(c.args[0], ast.Constant)}


def _imports(trees: dict[str, ast.Module]) -> set[str]:
    return {c.args[0].value for t in trees.values() for c in ast.walk(t)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "__import__"}


def test_registry_questions_the_build_can_answer_are_answered_and_the_others_asked_at_run_time():
    """shipping.fold_optional_calls / cut_registry: a module decided only by keys the environment cannot set is
    answered when the script is built (imported when carried, None when off) and leaves the script's table; one
    decided by RUNTIME_KEYS (the corpus, the tokenizer, checkpoints) is still asked, and the entries of modules
    the script does not carry stay (check_carried reports them)."""
    lora = pgolf.load_recipe("baseline", overrides={"data.path": "/data/x", "data.tokenizer": "/data/x.model",
                                                    "eval.ttt": "lora"})
    optional, values = bundle._key(lora)
    pruned = shipping.carried_trees(optional, {k: list(v) if isinstance(v, tuple) else v for k, v in values})
    asked, imported = _registry_questions(pruned.trees), _imports(pruned.trees)
    assert {"pgolf.data.corpus", "pgolf.data.byte_tokenizer", "pgolf.training.checkpoint"} <= asked
    assert {"pgolf.eval.modes", "pgolf.eval.ttt_lora"} <= imported
    assert not asked & {"pgolf.eval.modes", "pgolf.eval.ttt_lora", "pgolf.artifact.budget", "pgolf.training.report",
                        "pgolf.quant.qat", "pgolf.data.coprime"}
    table = set(shipping._registry_entries(pruned.trees["config/optional.py"]))
    assert not table & {"pgolf.eval.modes", "pgolf.eval.ttt_lora", "pgolf.artifact.budget", "pgolf.training.report"}
    assert {"pgolf.data.corpus", "pgolf.data.byte_tokenizer", "pgolf.training.checkpoint", "pgolf.eval.ttt_chunk",
            "pgolf.quant.gptq", "pgolf.quant.qat"} <= table


def test_a_registry_probe_built_on_the_spot_is_never_answered():
    """Only a section that is the run's own config is answered: a config built in the call (a probe) may not be."""
    code = ("from ..config.optional import optional_module, require_module\n"
            "def f(cfg):\n"
            "    return (optional_module('pgolf.quant.gptq', cfg.quant), require_module('pgolf.quant.gptq', cfg.quant),\n"
            "            optional_module('pgolf.quant.gptq', QuantConfig(method='gptq')),\n"
            "            optional_module('pgolf.data.corpus', cfg.data))\n")
    for optional, answer in ((["pgolf.quant.gptq"], "__import__('pgolf.quant.gptq', fromlist='*')"), ([], "None")):
        trees = {rel: shipping.read_tree(rel) for rel in ("config/optional.py", shipping.ENTRY)}
        trees["data/probe.py"] = ast.parse(code)
        shipping.fold_optional_calls(trees, optional)
        out = ast.unparse(trees["data/probe.py"])
        assert out.count(answer) == (2 if optional else 1)  # off: require_module still asks (and raises)
        assert "optional_module('pgolf.quant.gptq', QuantConfig(method='gptq'))" in out
        assert "optional_module('pgolf.data.corpus', cfg.data)" in out  # data.path is a runtime key


def test_the_embedded_config_is_compact_toml_that_reads_back():
    for name in recipe_names():
        delta = bundle.config_delta(bundle.script_config(pgolf.load_recipe(name)))
        text = bundle.compact_toml(delta)
        assert tomllib.loads(text) == delta and "\n\n" not in text and " = " not in text.split("[", 1)[-1]
    text = bundle.compact_toml({"model": {"layer_schedule": [0, 1, 1]}, "description": "a 'b' \"c\"\nd"})
    assert "layer_schedule=[0,1,1]" in text and tomllib.loads(text)["description"] == "a 'b' \"c\"\nd"


def test_a_script_carries_no_all_lists_and_plain_field_defaults():
    """No carried code star-imports, so `__all__` goes; schema fields with nothing but a default lose _f()."""
    sources = bundle.module_sources(micro_config("baseline"))
    assert not [p for p, text in sources.items() if "__all__" in text]
    schema = sources["pgolf/config/schema.py"]
    assert "num_heads:int=8;" in schema and "_f('relu2','',('relu2','leaky_relu2','swiglu'))" in schema


def test_minify_keeps_behaviour_and_maps_statements_to_their_lines():
    source = '''"""doc"""
import math


def area(radius):
    """Area."""
    squared = radius * radius  # r^2
    return math.pi * squared


def check(value):
    first = value + 1
    second = first * 2
    if second > 10:
        raise ValueError(f"too big: {second}")
    return second
'''
    code, lines = minify_source(source)
    assert len(code) < 0.7 * len(source) and "doc" not in code and "r^2" not in code
    scope: dict = {}
    exec(compile(code, "<m>", "exec"), scope)
    assert scope["area"](2.0) == 4 * math.pi and scope["check"](3) == 8
    with pytest.raises(ValueError, match="too big: 12"):
        scope["check"](5)
    linemap = {"modules": {"m": {"source": "m.py", "lines": lines}}}
    code_lines = code.split("\n")
    # each statement found where it starts in the minified code maps to its own original line
    for needle, original in (("def area", 5), ("return math.pi", 8), ("def check", 11), ("raise ValueError", 15),
                             ("return ", 16)):
        n = next(i for i, t in enumerate(code_lines) if needle in t and (needle != "return " or "math" not in t))
        column = code_lines[n].lstrip().index(needle)
        assert original_line(linemap, "m", n + 1, column) == ("m.py", original), needle
    raise_line = next(i for i, t in enumerate(code_lines) if "raise" in t)
    assert code_lines[raise_line].lstrip().startswith("if")  # `if ...:raise ...` share a line: the column decides
    assert original_line(linemap, "m", raise_line + 1, 0) == ("m.py", 14)
    assert original_line(linemap, "m", raise_line + 1) == ("m.py", 14)


def test_a_scripts_functions_get_short_names_and_tracebacks_get_the_originals_back():
    """minify.function_renames: one table for every module, only names that nothing reaches by attribute,
    string or keyword (those stay), none left in the carried code; the line map puts the originals back."""
    from pgolf.artifact.minify import function_renames
    table = function_renames()
    assert "run_bundle" not in table and "check_budget" not in table  # the bootstrap's name; an attribute (registry)
    assert "load_byte_tokenizer" not in table  # reached as an attribute of an optional module
    assert "find_shards" in table and "resolve_dataset" in table  # (grad_accum_steps: also a config field)
    assert len(set(table.values())) == len(table)
    every = {n.id for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Name)}
    assert not set(table.values()) & every  # no short name is a name pgolf uses
    cfg = micro_config("baseline")
    identifiers = {tok.string for text in bundle.module_sources(cfg).values()
                   for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.NAME}
    assert not identifiers & set(table) and table["resolve_dataset"] in identifiers
    short = table["resolve_dataset"]
    lines = bundle.module_sources(cfg)["pgolf/data/dataset.py"].split("\n")
    n = next(i for i, text in enumerate(lines, 1) if text.startswith(f"def {short}("))
    mapped = map_traceback(f'  File "/x/train_gpt.py/pgolf/data/dataset.py", line {n}, in {short}', bundle.linemap(cfg))
    assert f"line {n}, in resolve_dataset   [src/pgolf/data/dataset.py:" in mapped


def test_escaping_of_raw_data_round_trips_every_byte():
    data = bytes(range(256)) * 3 + b"\\'\n\r\x00''\\"
    escaped = bundle.escape_raw(data)
    assert not set(escaped) & {0, 10, 13, 39} and len(escaped) == len(data) + sum(b in (0, 10, 13, 39, 92) for b in data)
    assert bundle.unescape_raw(escaped) == data
    literal = b"# -*- coding: latin-1 -*-\n_=r'" + escaped + b"'\n"
    compile(literal, "<raw>", "exec")  # a valid Python source file


def test_bundle_is_deterministic_across_processes(tmp_path):
    """Same sources and config: the same bytes, whatever the hash seed of the process that builds them."""
    probe = ("import sys, pgolf; from pgolf.artifact import bundle; "
             "cfg = pgolf.load_recipe('pr1536', 'tiny', {'data.path': '/d', 'data.tokenizer': '/t.model'}); "
             "sys.stdout.buffer.write(bundle.bundle_bytes(cfg))")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO / "src"))
        outs.append(subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, timeout=600, check=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 5000
    here = bundle.bundle_bytes(pgolf.load_recipe("pr1536", "tiny", {"data.path": "/d", "data.tokenizer": "/t.model"}))
    assert here == outs[0]


def _top_level_names(tree: ast.Module) -> set[str]:
    out = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            out.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            out.update(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return out


def test_module_private_names_are_shortened_and_the_shared_ones_kept():
    """Minification renames a module-level name only when no other carried module can reach it: every name a
    carried module imports from another carried module is still defined there, functions and classes keep their
    names (tracebacks print them), and a constant only its own module reads (the container's _FIXED) is shortened."""
    sources = bundle.module_sources(micro_config("baseline"))
    trees = {path: ast.parse(text) for path, text in sources.items()}
    assert "_FIXED" in (PACKAGE / "quant/container.py").read_text() and "_FIXED" not in sources["pgolf/quant/container.py"]
    assert "class ConfigError(" in sources["pgolf/config/schema.py"] and "def _f(" in sources["pgolf/config/schema.py"]
    checked = 0
    for path, tree in trees.items():
        package = path.split("/")[:-1]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level > 0):
                continue
            base = "/".join(package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else []))
            target = next((t for t in (base + ".py", base + "/__init__.py") if t in trees), None)
            for alias in node.names:
                if target is None or f"{base}/{alias.name}.py" in trees or f"{base}/{alias.name}/__init__.py" in trees:
                    continue  # a submodule, not a name
                assert alias.name in _top_level_names(trees[target]), f"{path} imports {alias.name}, gone from {target}"
                checked += 1
    assert checked > 100


def test_raw_storage_is_smaller_than_base85_and_both_carry_the_same_code():
    cfg = micro_config("baseline")
    raw, b85 = bundle.bundle_bytes(cfg, "raw"), bundle.bundle_bytes(cfg, "base85")
    packed = len(bundle.compressed_sources(cfg))
    assert len(raw) < len(b85) and len(raw) - packed < 0.04 * packed + 4000
    assert bundle.code_bytes(cfg) == len(raw)
    sources = []
    for data in (raw, b85, raw.replace(b"\n", b"\r\n")):  # CRLF line ends (a Windows checkout) do not hurt either
        path = Path(f"/tmp/pgolf_test_{os.getpid()}_{len(data)}.py")
        path.write_bytes(data)
        try:
            with _carried_import_scope():
                namespace = runpy.run_path(str(path), run_name="probe")
            sources.append(namespace["SOURCES"])
        finally:
            path.unlink()
    assert sources[0] == sources[1] == sources[2]
    # the keys the code was specialised on that the environment may set (the script refuses every other key
    # before it compares them), then the modules
    frozen = sources[0].pop(bundle.FROZEN_SEGMENT).split()
    assert "model.smear" in bundle.frozen_keys(cfg) and "model.smear" not in frozen and "train.val_every" in frozen
    assert frozen == [k for k in bundle.frozen_keys(cfg) if k in RUNTIME_KEYS]
    assert sources[0] == bundle.module_sources(cfg)


# ----------------------------------------------------------------------------- running the carried code

@contextlib.contextmanager
def _carried_import_scope():
    """Import pgolf from a script inside this process: the package's modules step aside and come back after."""
    saved = {k: v for k, v in sys.modules.items() if k == "pgolf" or k.startswith("pgolf.")}
    meta, hook = list(sys.meta_path), sys.excepthook
    for key in saved:
        del sys.modules[key]
    try:
        yield
    finally:
        sys.meta_path[:] = meta
        sys.excepthook = hook
        for key in [k for k in sys.modules if k == "pgolf" or k.startswith("pgolf.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def run_script_in_process(script: Path, environ: dict[str, str]) -> tuple[int, set[str]]:
    """Run a train_gpt.py's entry point here (its importer, its modules); returns (status, pgolf modules used)."""
    with _carried_import_scope():
        namespace = runpy.run_path(str(script), run_name="bundle_test")
        entry = importlib.import_module("pgolf.training.bundle_entry")
        old = dict(os.environ)
        os.environ.update(environ)
        try:
            status = entry.run_bundle(namespace["CONFIG"], str(script), namespace["SOURCES"])
        finally:
            os.environ.clear()
            os.environ.update(old)
        used = {k for k in sys.modules if k == "pgolf" or k.startswith("pgolf.")}
        files = {getattr(sys.modules[k], "__file__", "") for k in used}
        assert all(f.startswith(str(script) + "/pgolf/") for f in files), sorted(files)  # nothing from the package
    return status, used


SWITCH_VALUES = {  # a valid value for each non-choice key a registry entry reads (choices are all tried)
    "eval.sliding_stride": 32, "eval.max_seconds": 600.0, "eval.doc_boundaries": True, "train.check_fast_paths": True,
    "quant.lqer_rank": 2, "quant.fit": True, "train.checkpoint_every": 1, "train.keep_checkpoint": True,
}
COMPANIONS = {  # settings a switch value needs to be a valid config at micro size
    ("eval.ttt", "pre"): {"eval.ttt_epochs": 1}, ("eval.ttt", "chunk"): {"eval.ttt_epochs": 1, "eval.ttt_chunk_tokens": 512},
    ("eval.ttt", "lora"): {"eval.ttt_lora_rank": 4, "eval.ttt_batch_docs": 4},
    ("quant.qat", "late"): {"quant.qat_start_lr": 0.9},
    ("quant.lqer_rank", 2): {"quant.passthrough_max_numel": 256},  # some integer tensors to correct
}


def switch_cases() -> list[tuple[str, dict]]:
    """(id, overrides): every value of every key the registry's predicates read, on the micro baseline."""
    cases = []
    for entry in OPTIONAL_MODULES:
        for key in sorted(_keys_read(entry)):
            if key == "data.path":
                continue  # a script never prepares the embedded corpus: test_a_script_never_carries_the_embedded_corpus
            if key == "data.text_transform":
                continue  # needs CaseOps shards: test_caseops_runs_under_its_own_scripts_importer
            if key == "data.tokenizer":
                continue  # needs byte260 shards: test_byte_tokenizer.py::test_a_byte260_script_carries_the_byte_tokenizer...
            if key in ("train.fused_mlp", "train.fused_ce"):
                continue  # CUDA-only kernels a CPU run never loads: test_the_kernels_ride_only_with_their_switch
            section, name = key.split(".")
            fld = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
            values = list(fld.metadata.get("choices") or [SWITCH_VALUES[key]])
            for value in values:
                if value == fld.default:
                    continue
                over = {key: value, **COMPANIONS.get((key, value), {})}
                case = (f"{key}={value}", over)
                if case[0] not in [c[0] for c in cases]:
                    cases.append(case)
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("case", switch_cases(), ids=lambda c: c[0])
def test_each_switch_value_runs_under_its_own_scripts_importer(case, shared_data, tmp_path):
    _run_case(micro_config("baseline", train__steps=2, data__val_tokens_limit=2049,
                           **{k.replace(".", "__"): v for k, v in case[1].items()}), tmp_path)


@pytest.mark.slow
def test_caseops_runs_under_its_own_scripts_importer(shared_data, tmp_path):
    """data.text_transform = caseops on pgolf-prepared CaseOps shards of the 200 raw FineWeb documents."""
    docs = [json.loads(line)["text"] for line in (SHARED / "fineweb" / "docs_sample_200.jsonl").read_text().splitlines()]
    folder = tmp_path / "caseops"
    prepare_documents(docs, folder, vocab_size=1024, val_docs=50, progress=False, transform="caseops")
    _run_case(micro_config("baseline", train__steps=2, data__val_tokens_limit=2049, data__path=str(folder),
                           data__tokenizer=str(folder / "tokenizer.model"), data__text_transform="caseops"),
              tmp_path / "run")


def _run_case(cfg: pgolf.Config, tmp_path: Path) -> None:
    """Train a few steps, pack and score with only the modules the config's script carries; same val_bpb as pgolf.

    Every recipe's script runs the same way, in a clean virtual environment without pgolf
    (tests/test_submit.py::test_every_recipes_script_reproduces_its_run_in_a_clean_venv); its full-scale
    bundle carries the same modules (test_full_and_tiny_recipes_carry_the_same_modules)."""
    package = pgolf.train(cfg, tmp_path / "package", progress=False)
    script = tmp_path / "train_gpt.py"
    size = bundle.write_bundle(cfg, script)
    status, used = run_script_in_process(script, {"RUN_DIR": str(tmp_path / "script"), "PGOLF_DEVICE": "cpu"})
    assert status == 0
    carried = {m.path[: -len(".py")].removesuffix("/__init__").replace("/", ".") for m in bundle.modules_for(cfg)}
    assert used <= carried and used >= {"pgolf.training.loop", "pgolf.quant.pack", "pgolf.eval.bpb"}
    for name in needed_optional_modules(cfg):
        assert name in used, f"{name} is carried for this config but the run never imported it"
    result = json.loads((tmp_path / "script" / "result.json").read_text())
    # a script's run folder has the essentials; loss.png (pgolf.training.report) is the package's alone
    essentials = {"config.toml", "env.json", "log.jsonl", "result.json", "model.safetensors", "artifact.pgolf",
                  *(["checkpoint"] if cfg.train.keep_checkpoint and cfg.train.checkpoint_every else [])}
    assert {p.name for p in (tmp_path / "script").iterdir()} == essentials
    assert {p.name for p in (tmp_path / "package").iterdir()} == essentials | {"loss.png"}
    assert result["code_bytes"] == size == package["code_bytes"]
    assert result["val_bpb"] == package["val_bpb"] and result["model_bytes"] == package["model_bytes"]


def _refused(tmp_path: Path, pgolf_set: str) -> str:
    """stderr of the micro baseline's script run with PGOLF_SET: refused (exit 2) before anything runs."""
    cfg = micro_config("baseline", train__steps=2, data__val_tokens_limit=2049)
    script = tmp_path / "train_gpt.py"
    bundle.write_bundle(cfg, script)
    env = dict(os.environ, PGOLF_SET=pgolf_set, RUN_DIR=str(tmp_path / "r"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not (tmp_path / "r").exists()
    return proc.stderr


def test_an_override_needing_an_uncarried_module_is_refused(shared_data, tmp_path):
    stderr = _refused(tmp_path, "eval.ttt=lora")
    assert "does not carry pgolf.eval.modes" in stderr and "eval.ttt = 'lora'" in stderr


def test_an_override_of_a_key_the_script_was_specialised_on_is_refused(shared_data, tmp_path):
    # train.val_every is a runtime key (PGOLF_SET may set it) that the script was specialised on while 0
    stderr = _refused(tmp_path, "train.steps=1 train.val_every=1")
    assert "specialised on train.val_every = 0 (asked: 1)" in stderr and "pgolf submit" in stderr
    assert "train.steps" not in stderr  # a numeric hyperparameter is never frozen


def test_a_traceback_from_a_script_maps_back_to_the_repository(shared_data, tmp_path):
    cfg = micro_config("baseline", train__steps=2)
    script = tmp_path / "train_gpt.py"
    bundle.write_bundle(cfg, script, tmp_path / "train_gpt.linemap.json")
    env = dict(os.environ, DATA_PATH=str(tmp_path / "no_such_data"), RUN_DIR=str(tmp_path / "r"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "data folder not found" in proc.stderr
    out = subprocess.run([sys.executable, "-m", "pgolf", "traceback", str(tmp_path / "train_gpt.linemap.json"),
                          "--script", str(script)], input=proc.stderr, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=300)
    assert out.returncode == 0, out.stderr
    places = re.findall(r'File "[^"]*?/(pgolf/[^"]+)", line \d+, in (\w+)   \[(src/pgolf/[^:]+):(\d+)\]', out.stdout)
    assert [p[1] for p in places][-3:] == ["_resolve_data", "resolve_dataset", "find_shards"], out.stdout
    for module, function, source, line in places:
        assert source == f"src/{module}"
        text = (REPO / source).read_text(encoding="utf-8").split("\n")
        enclosing = next(t for t in reversed(text[: int(line)]) if re.match(r"\s*def ", t))
        assert re.match(rf"\s*def {function}\(", enclosing), (source, line, enclosing)
    source, line = places[-1][2:]
    assert "data folder not found" in (REPO / source).read_text(encoding="utf-8").split("\n")[int(line) - 1]
    # each mapped line is the call into the next frame, though the minified line holds several statements
    for (_, _, source, line), (_, callee, _, _) in zip(places, places[1:]):
        assert f"{callee}(" in (REPO / source).read_text(encoding="utf-8").split("\n")[int(line) - 1], (source, line)
    assert "[not in the line map]" not in out.stdout


def test_the_runtime_keys_read_from_the_entry_points_source_are_the_ones_it_enforces():
    # pgolf.artifact may not import pgolf.training (tests/test_layout.py), so it reads RUNTIME_KEYS from the source
    from pgolf.artifact.shipping import entry_runtime_keys
    from pgolf.training.bundle_entry import RUNTIME_KEYS
    assert entry_runtime_keys() == frozenset(RUNTIME_KEYS) and "train.steps" in entry_runtime_keys()
