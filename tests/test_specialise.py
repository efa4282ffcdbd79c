"""The config-specialisation pass of the bundle (pgolf.artifact.specialise): on small modules, it folds what a
config proves and leaves alone what it cannot prove; on the real modules, a script refuses overrides of the keys
its code was specialised on, and only configs pgolf itself loads reach the specialised code."""

from __future__ import annotations

import ast
import itertools
import textwrap

import pytest
import torch

import pgolf
from pgolf.artifact import bundle, shipping
from pgolf.artifact.specialise import CLASS_SECTIONS, OFF_SWITCHES, candidate_values, external_attribute, specialise
from pgolf.config import ConfigError, ModelConfig, all_keys, config_delta
from pgolf.config.optional import OPTIONAL_MODULES
from pgolf.training.bundle_entry import bundle_config

from conftest import micro_config

import tomli_w

MODULE = textwrap.dedent('''
    import copy
    from pgolf.config import Config, ModelConfig, TrainConfig

    def route(cfg: ModelConfig, x):
        if cfg.smear != "none":
            return "smear:" + cfg.smear
        elif cfg.bigram_buckets:
            return "bigram"
        return "plain" if not cfg.tie_embeddings else ("tied", cfg.bigram_buckets and x, cfg.bigram_buckets or x)

    def through_root(cfg: Config):
        m, t = cfg.model, cfg.train
        return [k for k in ("a", "b") if m.smear == "none"], t.averaging, (lambda: m.tie_embeddings)()

    class Net:
        def __init__(self, cfg: ModelConfig):
            self.cfg = cfg
            self.mode = cfg.smear

        def forward(self):
            cfg = self.cfg
            if self.mode == "none":
                return cfg.tie_embeddings
            return -1

    def unannotated(cfg):
        return cfg.smear

    def rebound(cfg: ModelConfig, others):
        for cfg in others:
            pass
        return cfg.smear

    def copied(cfg: ModelConfig):
        plain = copy.copy(cfg)
        plain.bigram_buckets = 0
        return plain.bigram_buckets, cfg.bigram_buckets, route(plain, 1)  # route sees a config with 0 buckets
''')
ENTRIES = frozenset({"route", "through_root", "Net", "unannotated", "rebound", "copied"})  # the tests call them
VALUES = {"model.smear": "none", "model.bigram_buckets": 0, "model.tie_embeddings": True, "train.averaging": "ema"}


def _run(tree: ast.Module) -> dict:
    namespace: dict = {}
    exec(compile(tree, "snippet.py", "exec"), namespace)
    return namespace


def _calls(ns: dict, model: ModelConfig) -> list:
    cfg = pgolf.Config(model=model)
    cfg.train.averaging = VALUES["train.averaging"]
    return [ns["route"](model, 7), ns["through_root"](cfg), ns["Net"](model).forward(), ns["unannotated"](model),
            ns["rebound"](model, [model]), ns["copied"](model)]


def test_folded_code_computes_what_the_original_computes_for_the_frozen_values():
    original = ast.parse(MODULE)
    result = specialise({"snippet.py": original}, VALUES, ENTRIES)
    tree = result.trees["snippet.py"]
    model = ModelConfig(smear="none", bigram_buckets=0, tie_embeddings=True)
    assert _calls(_run(tree), model) == _calls(_run(ast.parse(MODULE)), model)
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    # the branches the values decide are gone: route is one return of a constant tuple (`0 and x` is 0, `0 or x` x)
    assert ast.unparse(functions["route"].body) == "return ('tied', 0, x)"
    text = ast.unparse(tree)
    assert "m.smear" not in text and "t.averaging" not in text and "lambda: True" in text
    assert "if 'none' == 'none'" not in text and "return True" in text  # self.cfg and self.mode both proved
    assert result.frozen == VALUES


def test_every_combination_of_values_gives_the_originals_results():
    """A pass that folds a branch the wrong way (or an `and`/`or` to the wrong operand) fails here."""
    for smear, buckets, tied in itertools.product(("none", "pre_norm"), (0, 8), (True, False)):
        values = {"model.smear": smear, "model.bigram_buckets": buckets, "model.tie_embeddings": tied,
                  "train.averaging": "ema"}
        model = ModelConfig(smear=smear, bigram_buckets=buckets, tie_embeddings=tied)
        tree = specialise({"snippet.py": ast.parse(MODULE)}, values, ENTRIES).trees["snippet.py"]
        assert _calls(_run(tree), model) == _calls(_run(ast.parse(MODULE)), model), values


def test_reads_it_cannot_prove_are_left_alone():
    tree = specialise({"snippet.py": ast.parse(MODULE)}, VALUES, ENTRIES).trees["snippet.py"]
    functions = {f.name: ast.unparse(f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert "return cfg.smear" in functions["unannotated"]  # no annotation: any object
    assert "return cfg.smear" in functions["rebound"]  # also bound by a loop
    # bigram_buckets is stored into a copy: frozen only because the copy gets the frozen value itself (0)
    assert "return (plain.bigram_buckets, 0, route(plain, 1))" in functions["copied"]
    other = specialise({"snippet.py": ast.parse(MODULE)}, dict(VALUES, **{"model.bigram_buckets": 8}), ENTRIES)
    copied = next(f for f in other.trees["snippet.py"].body if getattr(f, "name", "") == "copied")
    assert "cfg.bigram_buckets" in ast.unparse(copied) and "model.bigram_buckets" not in other.frozen


def test_folded_statements_keep_their_lines():
    tree = specialise({"snippet.py": ast.parse(MODULE)}, dict(VALUES, **{"model.smear": "pre_norm"}), ENTRIES).trees["snippet.py"]
    route = next(f for f in tree.body if getattr(f, "name", "") == "route")
    line = MODULE.split("\n").index('        return "smear:" + cfg.smear') + 1
    assert [s.lineno for s in route.body] == [line] and isinstance(route.body[0], ast.Return)


def test_candidates_are_switches_and_off_numbers_only():
    keys = set(all_keys())
    assert set(OFF_SWITCHES) <= keys
    cfg = micro_config("baseline")
    values = candidate_values(cfg)
    assert values["model.smear"] == "none" and values["model.tie_embeddings"] is True
    assert "optim.matrix_lr" not in values and "train.steps" not in values and "data.path" not in values
    cfg.model.bigram_buckets = 64  # a switch that is on stays tunable
    assert "model.bigram_buckets" not in candidate_values(cfg)


# ----------------------------------------------------------------------------- on the carried modules

def test_a_script_refuses_overrides_of_its_frozen_keys():
    cfg = micro_config("baseline")
    frozen = bundle.frozen_keys(cfg)
    assert {"model.smear", "train.averaging", "eval.ttt", "train.val_every"} <= set(frozen)
    text = tomli_w.dumps(config_delta(bundle.script_config(cfg)))
    # a runtime key (one PGOLF_SET may set) that the code was specialised on while 0
    with pytest.raises(ConfigError, match=r"specialised on train\.val_every = 0 \(asked: 5\).*pgolf submit"):
        bundle_config(text, {"PGOLF_SET": "train.val_every=5"}, frozen=frozen)
    with pytest.raises(ConfigError, match=r"model\.smear: a train_gpt\.py takes only"):  # not a runtime key at all
        bundle_config(text, {"PGOLF_SET": "model.smear=pre_norm"}, frozen=frozen)
    same = bundle_config(text, {"PGOLF_SET": "train.val_every=0 train.steps=3"}, frozen=frozen)
    assert same.train.val_every == 0 and same.train.steps == 3  # the same value, and a tunable key: allowed


def test_specialisation_drops_the_code_of_switches_that_are_off():
    off = {m.path: m.source for m in bundle.modules_for(micro_config("baseline"))}
    on = {m.path: m.source for m in bundle.modules_for(micro_config("baseline", model__smear="pre_norm"))}
    assert "class SmearGate" in on["pgolf/model/embeddings.py"] and "class SmearGate" not in off.get("pgolf/model/embeddings.py", "")
    assert len(off["pgolf/model/gpt.py"]) < len(on["pgolf/model/gpt.py"])


def test_only_configs_pgolf_loads_are_built_in_carried_code():
    """The pass trusts that a config-typed value holds the run's config: the carried code builds configs only
    here, each of them loading a config (read back onto the defaults) or reading the defaults as a dict."""
    trees: dict = {}
    shipping.closure(shipping.roots_for([m.name for m in OPTIONAL_MODULES]), trees)
    built = set()
    for rel, tree in trees.items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                built |= {(rel, fn.name) for n in ast.walk(fn) if isinstance(n, ast.Call)
                          and isinstance(n.func, ast.Name) and n.func.id in CLASS_SECTIONS}
    # (data/tokenizer.py builds a DataConfig holding only a tokenizer path, a free string that is never frozen,
    # to ask the registry whether the byte tokenizer module applies)
    assert built == {("config/load.py", "load_recipe"), ("config/overrides.py", "config_from_table"),
                     ("config/schema.py", "config_delta"), ("quant/pack.py", "_defaults"),
                     ("artifact/sizes.py", "runtime_code_bytes"), ("data/prepare.py", "transform_module"),
                     ("data/tokenizer.py", "byte_tokenizer_module"), ("data/tokenizer.py", "tokenizer_sha256")}


def test_attributes_a_library_base_class_may_set_are_not_folded():
    source = textwrap.dedent('''
        import torch

        class Head(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.training = False
                self.gate = None

            def forward(self, x):
                return (x if self.training else -x), self.gate
    ''')
    tree = specialise({"head.py": ast.parse(source)}, {}).trees["head.py"]
    forward = ast.unparse(tree.body[1].body[1])
    assert "self.training" in forward  # nn.Module.train() stores it, unseen by the pass
    assert "return (x if self.training else -x, None)" in forward  # only this class stores gate: folded
    namespace = _run(tree)
    head = namespace["Head"]().train()
    assert head(torch.tensor(2.0))[0].item() == 2.0


def test_the_library_attribute_list_covers_what_the_installed_libraries_store():
    import threading

    probe = torch.zeros(1, requires_grad=True)
    stored = {*vars(torch.nn.Module()), *vars(torch.optim.SGD([probe], lr=0.1)), *vars(threading.Thread()),
              *vars(Exception()), *(a for a in dir(threading.Thread()) if not callable(getattr(threading.Thread, a, None)))}
    assert all(external_attribute(a) for a in stored), sorted(a for a in stored if not external_attribute(a))


def test_methods_nothing_calls_are_dropped_and_the_rest_kept():
    source = textwrap.dedent('''
        class Block:
            def forward(self, x):
                return self.used(x) + getattr(self, "by_name")(x)

            def used(self, x):
                return x

            def by_name(self, x):
                return x

            def lanes(self, x):
                return helper(x)

            def __repr__(self):
                return "Block"

        def helper(x):
            return x
    ''')
    trees = {"block.py": ast.parse(source)}
    assert shipping.drop_unused_methods(trees) == {"block.py": ["Block.lanes"]}
    assert [f.name for f in trees["block.py"].body[0].body] == ["forward", "used", "by_name", "__repr__"]


def test_parameters_every_call_passes_one_constant_are_folded():
    source = textwrap.dedent('''
        def scale(x, factor, shift=0, mode=None):
            if mode is None:
                return x * factor + shift
            return -x

        def twice(x, flag):
            return x if flag else -x

        def use(x):
            return scale(x, 3), scale(x, factor=3, mode=None), twice(x, True), twice(x, False), keep(x, 1)

        def keep(x, k):
            return x + k

        KEEP = [keep]
    ''')
    tree = specialise({"p.py": ast.parse(source)}, {}, frozenset({"use"})).trees["p.py"]
    functions = {f.name: ast.unparse(f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert "return x * 3 + 0" in functions["scale"] and "mode" not in functions["scale"].split(":", 1)[1]
    assert "x if flag else -x" in functions["twice"]  # two different values
    assert "x + k" in functions["keep"]  # also used as a value
    assert _run(tree)["use"](5) == _run(ast.parse(source))["use"](5)
