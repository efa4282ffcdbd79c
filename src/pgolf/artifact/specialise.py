"""Specialise the carried modules to one config: switches that are off take their code with them.

A generated train_gpt.py trains one embedded config, so the switches that select code paths are known when the
script is built. This pass (run by pgolf.artifact.shipping before pruning and minifying) replaces each
*provable* read of a frozen config field by its value, folds the `if`/`elif`, ternaries, `and`/`or`/`not` and
comparisons that become constant, and drops the dead branches; the pruning that follows drops the definitions
and modules nothing reaches any more.

Frozen fields (`candidate_values`): every bool field and every string field with a fixed set of choices, plus
the numeric and list switches of `OFF_SWITCHES` while they hold their "off" value (0 or []): a technique that is
off is specialised away, a numeric hyperparameter keeps its code and stays tunable with PGOLF_SET. Fields whose
value the carried code itself writes (finalize's eval.context_len) are never frozen.

Provable reads. A config value is reached through names whose type is known (`typed`):
- a function parameter annotated with a config class (`cfg: Config`, `q: QuantConfig`; the annotation of a
  parameter is the only one trusted), not rebound in the function except to another typed value;
- a local bound only to typed values (`m = cfg.model`, `m, t = cfg.model, cfg.train`, `cfg = self.cfg`);
- `self.x` inside a class whose methods are the only code that stores any attribute named `x`, always as
  `self.x = <typed value>` (`self.cfg = cfg`);
- `<typed Config>.model` and the other sections; free names of nested functions and lambdas see the enclosing
  function's types.
Anything else (a name also bound by a loop, a `global`, an unannotated parameter, `getattr`, a config built at
run time) is left alone. The only configs carried code builds are the loaded ones (the embedded config, the
artifact's own header) and the defaults that `config_delta`/pack compare against through `asdict`, never
through typed reads (tests/test_bundle.py keeps that list).

The result records which keys it froze (`Specialised.frozen`: a key read at least once): the script refuses an
environment override that gives one of them a different value (pgolf.training.bundle_entry.check_frozen).
Statements keep their original line numbers (an `if` folded away leaves its branch's statements with theirs), so
the line map stays exact. Deterministic: the same trees and values give the same trees.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import typing
from dataclasses import dataclass
from typing import Any

from ..config import SECTIONS, Config

ROOT = ""  # the type of a whole Config
CLASS_SECTIONS = {"Config": ROOT, **{cls.__name__: name for name, cls in SECTIONS.items()}}
# Numeric and list fields that switch a technique (or a code path) on when they leave their off value; they are
# frozen only while off, so tuning them from a non-off value needs no new script.
OFF_SWITCHES = (
    "data.val_tokens_limit",
    "model.mlp_hidden", "model.rope_dims", "model.rope_ntk_train_len", "model.logit_softcap",
    "model.layer_schedule", "model.recurrence_start_frac", "model.bridge_layers", "model.lora_rank",
    "model.xsa_last_n", "model.bigram_buckets", "model.value_embed_dim", "model.value_embed_layers",
    "optim.muon_normuon_beta2", "optim.grad_clip_norm",
    "train.grad_accum_steps", "train.max_wallclock_s", "train.compile_priming_steps", "train.val_every",
    "train.checkpoint_every",
    "quant.attn_bits", "quant.mlp_bits", "quant.gate_bits", "quant.lqer_rank", "quant.hessian_clip_lambda",
    "quant.gptq_reserve_s", "quant.keep_float",
    "eval.sliding_stride", "eval.max_seconds", "eval.ttt_global_phase_docs",
)


def _fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    out = {}
    for section, cls in [(ROOT, Config), *SECTIONS.items()]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in SECTIONS:
                out[f"{section}.{f.name}" if section else f.name] = (hints[f.name], f)
    return out


def get_key(cfg: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def candidate_values(cfg: Config) -> dict[str, Any]:
    """key -> value of every field a script for `cfg` may be specialised on."""
    out = {}
    for key, (typ, f) in _fields().items():
        value = get_key(cfg, key)
        if typ is bool or (typ is str and f.metadata.get("choices")):
            out[key] = value
        elif key in OFF_SWITCHES and value in (0, []) and not isinstance(value, bool):
            out[key] = value
    return out


# ----------------------------------------------------------------------------- types of expressions

def _annotation_section(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Name):
        return CLASS_SECTIONS.get(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return CLASS_SECTIONS.get(node.value)
    return None


def _is_self(node: ast.AST, self_name: str | None) -> bool:
    return self_name is not None and isinstance(node, ast.Name) and node.id == self_name


class _Types:
    """Section types of names in one scope, plus the class attributes typed for `self`."""

    def __init__(self, names: dict[str, str], self_name: str | None, attrs: dict[str, str],
                 consts: dict[str, Any] | None = None):
        self.names, self.self_name, self.attrs = names, self_name, attrs
        self.consts = consts or {}  # local names bound once, to a constant (`use_lanes = False`)

    def of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            if _is_self(node.value, self.self_name) and node.attr in self.attrs:
                return self.attrs[node.attr]
            if self.of(node.value) == ROOT and node.attr in SECTIONS:
                return node.attr
        return None


_MEMO: dict[tuple[str, int], Any] = {}  # per-scope results while the trees do not change (cleared on every change)


def _scope_nodes(scope: ast.AST) -> list[ast.AST]:
    key = ("nodes", id(scope))
    if key not in _MEMO:
        _MEMO[key] = (scope, _scope_nodes_uncached(scope))  # the scope is held: its id stays its own
    return _MEMO[key][1]


def _scope_nodes_uncached(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a function's own scope: its body, not the insides of nested functions, lambdas, classes or
    comprehensions (their defaults and decorators do run in this scope; their bodies do not)."""
    out: list[ast.AST] = []
    if isinstance(scope, ast.Lambda):
        stack = [scope.body]
    elif isinstance(scope, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        stack = [n for g in scope.generators for n in [g.target, *g.ifs]] + (
            [scope.key, scope.value] if isinstance(scope, ast.DictComp) else [scope.elt])
        stack += [g.iter for g in scope.generators[1:]]
    else:
        stack = list(scope.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack += node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]
            continue
        if isinstance(node, ast.Lambda):
            stack += node.args.defaults + [d for d in node.args.kw_defaults if d]
            continue
        if isinstance(node, ast.ClassDef):
            stack += node.decorator_list + node.bases + [k.value for k in node.keywords]
            continue
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            stack.append(node.generators[0].iter)
            continue
        stack += list(ast.iter_child_nodes(node))
    return out


def _params(scope: ast.AST) -> list[ast.arg]:
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = scope.args
        return a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
    return []


def _scope_types(scope: ast.AST, outer: dict[str, str], self_name: str | None, attrs: dict[str, str],
                 is_method: bool = False, outer_consts: dict[str, Any] | None = None
                 ) -> tuple[dict[str, str], str | None, dict[str, Any]]:
    """(names of `scope` with a provable section type, the name of `self` there or None, names bound once to a
    constant): the enclosing scope's `outer` types (and `outer_consts`) hold for the names `scope` does not
    bind; `self` is its first parameter in a method, an enclosing method's `self` in a nested scope that does
    not bind the name."""
    bound = _bindings(scope)
    consts = {k: v for k, v in (outer_consts or {}).items() if k not in bound}
    for name, bindings in bound.items():
        if (len(bindings) == 1 and bindings[0] is not None and bindings[0][0] == "value"
                and isinstance(bindings[0][1], ast.Constant)
                and isinstance(bindings[0][1].value, (type(None), bool, int, float, str))):
            consts[name] = bindings[0][1].value
    names = {k: v for k, v in outer.items() if k not in bound}
    if self_name in bound and (len(bound[self_name]) > 1 or not is_method):
        self_name = None  # `self` rebound or shadowed: no attribute of it is provable
    changed = True
    while changed:  # a name is typed once every binding of it is typed with one section (grows monotonically)
        changed = False
        types = _Types(names, self_name, attrs)
        for name, bindings in bound.items():
            if name in names:
                continue
            sections = set()
            for b in bindings:
                if b is None:
                    sections.add(None)
                elif b[0] == "section":
                    sections.add(b[1])
                else:
                    sections.add(types.of(b[1]))
            if len(sections) == 1 and None not in sections:
                names[name] = sections.pop()
                changed = True
    return names, self_name, consts


def _bindings(scope: ast.AST) -> dict[str, list[Any]]:
    """name -> its bindings in `scope`: ("section", section or None) for a parameter, ("value", expr) for a
    plain assignment, None for any other binding (a loop target, an import, `global`, ...)."""
    key = ("bindings", id(scope))
    if key not in _MEMO:
        _MEMO[key] = (scope, _bindings_uncached(scope))
    return _MEMO[key][1]


def _bindings_uncached(scope: ast.AST) -> dict[str, list[Any]]:
    nodes = _scope_nodes(scope)
    bound: dict[str, list[Any]] = {}  # name -> its bindings: ("param", section|None) or ("value", expr) or None
    for p in _params(scope):
        bound.setdefault(p.arg, []).append(("section", _annotation_section(p.annotation)))
    if isinstance(scope, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        for g in scope.generators:
            for n in ast.walk(g.target):
                if isinstance(n, ast.Name):
                    bound.setdefault(n.id, []).append(None)
    plain_targets: set[int] = set()  # Name targets of the assignments read as ("value", expr) bindings
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name):
                bound.setdefault(target.id, []).append(("value", value))
                plain_targets.add(id(target))
            elif (isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts)
                    and all(isinstance(t, ast.Name) for t in target.elts)):
                for t, v in zip(target.elts, value.elts):
                    bound.setdefault(t.id, []).append(("value", v))
                    plain_targets.add(id(t))
    for node in nodes:
        if isinstance(node, ast.Name) and id(node) in plain_targets:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.setdefault(node.id, []).append(None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.setdefault(node.name, []).append(None)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                bound.setdefault(name, []).append(None)
        elif isinstance(node, ast.alias):
            bound.setdefault((node.asname or node.name).split(".")[0], []).append(None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.setdefault(node.name, []).append(None)
        elif isinstance(node, ast.arg) and node not in _params(scope):
            pass
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.setdefault(node.name, []).append(None)
    for node in nodes:  # `:=` in a comprehension binds in the enclosing function
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for n in ast.walk(node):
                if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name):
                    bound.setdefault(n.target.id, []).append(None)
    return bound


# ----------------------------------------------------------------------------- constants

_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_NO = object()


def _const(node: ast.AST) -> Any:
    """The value of a literal made of constants (tuples, lists, sets of them), else _NO."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        values = [_const(e) for e in node.elts]
        if any(v is _NO for v in values):
            return _NO
        return {ast.Tuple: tuple, ast.List: list, ast.Set: frozenset}[type(node)](values)
    return _NO


def _literal(value: Any, like: ast.AST) -> ast.expr:
    if isinstance(value, list):
        node: ast.expr = ast.List(elts=[_literal(v, like) for v in value], ctx=ast.Load())
    else:
        node = ast.Constant(value)
    return ast.copy_location(node, like)


def _quiet(node: ast.AST) -> bool:
    """An expression whose evaluation does nothing but read (names, attributes, constants, comparisons)."""
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Attribute):
        return _quiet(node.value)
    if isinstance(node, ast.Compare):
        return _quiet(node.left) and all(_quiet(c) for c in node.comparators)
    if isinstance(node, ast.UnaryOp):
        return _quiet(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(_quiet(v) for v in node.values)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_quiet(e) for e in node.elts)
    return False


def _truth(node: ast.AST) -> Any:
    """True/False when `node`, used as a condition, is decided (`x and False` is false), else _NO."""
    value = _const(node)
    if value is not _NO:
        return bool(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _truth(node.operand)
        return _NO if inner is _NO else not inner
    if isinstance(node, ast.BoolOp):
        decisive = not isinstance(node.op, ast.And)  # `and` is decided by a false operand, `or` by a true one
        for i, v in enumerate(node.values):
            if _truth(v) is decisive and all(_quiet(w) for w in node.values[:i]):
                return decisive
    return _NO


def _test(node: ast.expr) -> ast.expr:
    """`node` simplified where only its truth matters: `x and True` -> x, `x or False` -> x."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        node.operand = _test(node.operand)
        return node
    if isinstance(node, ast.BoolOp):
        neutral = isinstance(node.op, ast.And)  # operands that cannot change the truth of the result
        values = [_test(v) for v in node.values]
        kept = [v for v in values if not (_truth(v) is neutral and _quiet(v))]
        if not kept:
            return ast.copy_location(ast.Constant(neutral), node)
        if len(kept) == 1:
            return kept[0]
        node.values = kept
        return node
    return node


class _Folder(ast.NodeTransformer):
    """Fold expressions that became constant, and the branches they decide."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        value = _const(node.operand)
        if isinstance(node.op, ast.Not) and value is not _NO:
            return ast.copy_location(ast.Constant(not value), node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        is_and = isinstance(node.op, ast.And)
        values = list(node.values)
        while len(values) > 1:
            first = _const(values[0])
            if first is _NO:
                break
            if bool(first) != is_and:  # `falsy and ...` / `truthy or ...`: the first value is the result
                return values[0]
            values.pop(0)  # `truthy and x` -> x ; `falsy or x` -> x
        # a constant that cannot decide (`x and True`) stays
        if len(values) == 1:
            return values[0]
        node.values = values
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        operands = [node.left, *node.comparators]
        values = [_const(o) for o in operands]
        if any(v is _NO for v in values):
            return node
        if any(isinstance(op, (ast.Is, ast.IsNot)) and not any(v is None or isinstance(v, bool) for v in (a, b))
               for op, a, b in zip(node.ops, values, values[1:])):
            return node  # identity of other constants is an implementation detail
        try:
            result = all(_CMP[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:]))
        except TypeError:
            return node
        return ast.copy_location(ast.Constant(result), node)

    def visit_While(self, node: ast.While) -> Any:
        self.generic_visit(node)
        node.test = _test(node.test)
        return [] if _truth(node.test) is False and not node.orelse else node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        node.test = _test(node.test)
        test = _truth(node.test)
        if test is _NO:
            return node
        return node.body if test else node.orelse

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        node.test = _test(node.test)
        test = _truth(node.test)
        if test is _NO:
            return node
        return (node.body if test else node.orelse) or []

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):  # nothing after a return (a folded branch may end in one)
            block = getattr(node, name, None)
            if isinstance(block, list):
                end = next((i for i, s in enumerate(block) if isinstance(s, _JUMPS)), len(block))
                del block[end + 1:]
        block = getattr(node, "body", None)  # a block emptied by folding holds `pass` (an empty else is absent)
        if isinstance(block, list) and not block and not isinstance(node, ast.Module):
            block.append(ast.copy_location(ast.Pass(), node))
        return node


_JUMPS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


# ----------------------------------------------------------------------------- the pass

@dataclass
class Specialised:
    trees: dict[str, ast.Module]  # rel path -> specialised tree
    frozen: dict[str, Any]        # key -> value, for every key whose reads were replaced


@dataclass
class _Store:
    attr: str
    cls: int | None         # id of the class whose method stored it through its `self`, else None
    value: ast.AST | None   # the value assigned, when one plain assignment gives it
    value_key: str | None = None  # the config key the value reads, when it is a typed read (`x.tail = e.tail`)


def _stores(trees: dict[str, ast.Module], attrs: dict[int, dict[str, str]]) -> tuple[list[_Store], bool]:
    """Every attribute store of carried code, and whether a setattr with a computed name on something other
    than a config (whose keys pgolf.config.overrides sets before anything reads them) could store any."""
    out: list[_Store] = []
    anything = False
    for scope, types, cls, _ in _scopes(trees, attrs):
        values: dict[int, ast.AST] = {}
        nodes = _scope_nodes(scope)
        for node in nodes:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Attribute):
                    values[id(target)] = node.value
                elif (isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                      and len(target.elts) == len(node.value.elts)):
                    values.update({id(t): v for t, v in zip(target.elts, node.value.elts)})
        for node in nodes:
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
                own = cls if _is_self(node.value, types.self_name) else None
                value = values.get(id(node))
                key = None
                if isinstance(value, ast.Attribute) and types.of(value.value) is not None:
                    section = types.of(value.value)
                    key = f"{section}.{value.attr}" if section else value.attr
                out.append(_Store(node.attr, own, value, key))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    own = cls if _is_self(node.args[0], types.self_name) else None
                    out.append(_Store(node.args[1].value, own, node.args[2] if len(node.args) > 2 else None))
                elif not node.args or not _config_like(node.args[0], types):
                    anything = True
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("register_buffer", "register_parameter", "register_module", "add_module")):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    out.append(_Store(node.args[0].value, None, None))  # nn.Module stores it by name
                else:
                    anything = True
    return out, anything


def _config_like(node: ast.AST, types: _Types) -> bool:
    """A typed config, or getattr(<typed config>, ...) (a section of it)."""
    if types.of(node) is not None:
        return True
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and bool(node.args) and types.of(node.args[0]) == ROOT)


def _classes(trees: dict[str, ast.Module]) -> dict[int, ast.ClassDef]:
    return {id(n): n for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}


def _maybe_subclass(cls: ast.ClassDef, of: ast.ClassDef, classes: dict[int, ast.ClassDef]) -> bool:
    """Whether `cls` may inherit from `of` (by the names of its bases, through carried classes)."""
    by_name: dict[str, list[ast.ClassDef]] = {}
    for c in classes.values():
        by_name.setdefault(c.name, []).append(c)
    todo, seen = [cls], set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        for base in c.bases:
            if isinstance(base, ast.Name):
                if base.id == of.name:
                    return True
                todo += by_name.get(base.id, [])
            elif not isinstance(base, ast.Attribute):  # nn.Module and the like are outside pgolf
                return True
    return False


def _class_attrs(trees: dict[str, ast.Module], stores: list[_Store], anything: bool, types_of) -> dict[int, dict[str, str]]:
    """id(ClassDef) -> {attribute: section} for the `self.x = <typed>` attributes provable in that class: its
    methods store x only so, and no other code stores an x that an instance of it could hold."""
    if anything:
        return {}
    classes = _classes(trees)
    out: dict[int, dict[str, str]] = {}
    for cid, cls in classes.items():
        mine: dict[str, set] = {}
        for st in stores:
            if st.cls == cid:
                mine.setdefault(st.attr, set()).add(types_of(st.value) if st.value is not None else None)
        attrs = {}
        for attr, sections in mine.items():
            if len(sections) != 1 or None in sections or external_attribute(attr):
                continue
            if all(st.cls == cid or (st.cls is not None and not _maybe_subclass(classes[st.cls], cls, classes))
                   for st in stores if st.attr == attr):
                attrs[attr] = next(iter(sections))
        if attrs:
            out[cid] = attrs
    return out


# Public attributes that library base classes of pgolf's classes store themselves (nn.Module's `training`, an
# optimizer's `state`, a thread's `name`, an exception's `args`); with every name starting with "_", code outside
# pgolf may store them, unseen, so they are never folded. A fixed list, so that the bundle's bytes do not depend
# on the torch release (tests/test_specialise.py checks it against the installed one).
LIBRARY_ATTRIBUTES = frozenset({"training", "state", "param_groups", "defaults", "args", "name", "daemon", "ident",
                                "native_id", "grad", "data", "requires_grad"})


def external_attribute(name: str) -> bool:
    return name.startswith("_") or name in LIBRARY_ATTRIBUTES


def _class_constants(trees: dict[str, ast.Module], stores: list[_Store], anything: bool) -> dict[int, dict[str, Any]]:
    """id(ClassDef) -> {attribute: value} for attributes every store of which (anywhere) is `self.x = <constant>`
    with one value, in that class's methods, and that no class body defines (nor a library base class)."""
    if anything:
        return {}
    classes = _classes(trees)
    bodies: dict[str, list[int]] = {}  # name -> classes whose bodies bind it (fields, methods, properties)
    for cid, c in classes.items():
        for stmt in c.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bodies.setdefault(stmt.name, []).append(cid)
            else:
                for n in ast.walk(stmt):
                    if isinstance(n, ast.Name):
                        bodies.setdefault(n.id, []).append(cid)
    by_attr: dict[str, list[_Store]] = {}
    for st in stores:
        by_attr.setdefault(st.attr, []).append(st)
    out: dict[int, dict[str, Any]] = {}
    for attr, sts in sorted(by_attr.items()):
        if len({st.cls for st in sts}) != 1 or sts[0].cls is None or external_attribute(attr):
            continue
        mine = classes[sts[0].cls]
        if any(c == sts[0].cls or _maybe_subclass(classes[c], mine, classes) or _maybe_subclass(mine, classes[c], classes)
               for c in bodies.get(attr, [])):
            continue
        values = [st.value if isinstance(st.value, ast.Constant) else None for st in sts]
        if any(v is None for v in values):
            continue
        consts = {(type(v.value), v.value) for v in values}
        if len(consts) == 1 and isinstance(values[0].value, (type(None), bool, int, float, str)):
            out.setdefault(sts[0].cls, {})[attr] = values[0].value
    return out


def _written_fields(values: dict[str, Any], stores: list[_Store]) -> set[str]:
    """Keys a store of carried code could give another value: a store of an attribute of the field's name,
    other than through a method's `self` (an instance of a pgolf class, not a config), of anything but the
    frozen value itself (`plain.ttt = "none"` keeps eval.ttt frozen only where it is "none")."""
    out = set()
    for key, value in values.items():
        name = key.rpartition(".")[2]
        for st in stores:
            if st.attr == name and st.cls is None and st.value_key != key:
                const = _const(st.value) if st.value is not None else _NO
                if const is _NO or const != value or type(const) is not type(value):
                    out.add(key)
    return out


def _scopes(trees: dict[str, ast.Module], attrs: dict[int, dict[str, Any]]):
    """(scope node, its _Types, id of the class whose `self` it sees or None) for every function, lambda and
    comprehension in `trees`, outer scopes first."""
    for rel in sorted(trees):
        stack: list[tuple[ast.AST, tuple[dict, dict], str | None, dict[str, Any], bool, int | None]] = []
        for node in trees[rel].body:
            stack.append((node, ({}, {}), None, {}, False, None))
        while stack:
            node, (outer, outer_consts), self_name, cls_attrs, in_class, cid = stack.pop(0)
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    stack.append((child, (outer, outer_consts), None, attrs.get(id(node), {}), True, id(node)))
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
                                 ast.GeneratorExp, ast.DictComp)):
                method_self, is_method = self_name, False
                if in_class and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    static = any(isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")
                                 for d in node.decorator_list)
                    method_self = None if static or not _params(node) else _params(node)[0].arg
                    is_method = method_self is not None
                names, method_self, consts = _scope_types(node, outer, method_self, cls_attrs, is_method, outer_consts)
                own = cid if method_self is not None else None
                yield node, _Types(names, method_self, cls_attrs if own is not None else {}, consts), own, rel
                for child in _scope_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                                          ast.SetComp, ast.GeneratorExp, ast.DictComp)):
                        stack.append((child, (names, consts), method_self, cls_attrs, False, own))
                continue
            for child in ast.iter_child_nodes(node):  # module-level statements: reach the functions inside
                stack.append((child, (outer, outer_consts), self_name, cls_attrs, False, cid))


def specialise(trees: dict[str, ast.Module], values: dict[str, Any], entries: frozenset[str] = frozenset()
               ) -> Specialised:
    """`trees` (consumed: transformed in place) with the provable reads of `values`' keys replaced by the
    values and folded; then, until nothing changes, the reads of `self` attributes that every store gives one
    constant, of local names bound once to a constant and of parameters every call passes one constant.
    `entries`: the module-level functions code outside `trees` calls (the script's bootstrap calls run_bundle):
    their parameters are never folded."""
    _MEMO.clear()
    try:
        return _specialise(trees, values, entries)
    finally:
        _MEMO.clear()


def _specialise(trees: dict[str, ast.Module], values: dict[str, Any], entries: frozenset[str]) -> Specialised:
    stores, anything = _stores(trees, {})
    scopes = list(_scopes(trees, {}))
    plain = {id(scope): types for scope, types, _, _ in scopes}
    scope_of = {id(n): id(scope) for scope, _, _, _ in scopes for n in _scope_nodes(scope)}
    attrs = _class_attrs(trees, stores, anything, lambda v: plain[scope_of[id(v)]].of(v) if id(v) in scope_of else None)
    stores, anything = _stores(trees, attrs)
    values = {k: v for k, v in values.items() if k not in _written_fields(values, stores)}
    frozen: dict[str, Any] = {}
    replacements: dict[int, ast.expr] = {}
    touched: set[str] = set()
    for scope, types, _, rel in _scopes(trees, attrs):
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                section = types.of(node.value)
                if section is None:
                    continue
                key = f"{section}.{node.attr}" if section else node.attr
                if key in values:
                    replacements[id(node)] = _literal(values[key], node)
                    frozen[key] = values[key]
                    touched.add(rel)
    trees = _replace_and_fold(trees, replacements, touched)
    for _ in range(8):  # constants stored in attributes (`self.mode = 'none'` ... `if self.mode == 'ema':`) and
        # in local names bound once (`lanes = False` ... `if lanes:`), until nothing changes
        stores, anything = _stores(trees, {})
        constants = _class_constants(trees, stores, anything)
        replacements, touched = {}, set()
        for scope, types, cid, rel in _scopes(trees, {}):
            known = constants.get(cid, {}) if cid is not None else {}
            for node in _scope_nodes(scope):
                if (known and isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                        and _is_self(node.value, types.self_name) and node.attr in known):
                    replacements[id(node)] = _literal(known[node.attr], node)
                    touched.add(rel)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in types.consts:
                    replacements[id(node)] = _literal(types.consts[node.id], node)
                    touched.add(rel)
        for rel, fn, name, value in _parameter_constants(trees, entries):
            for node in _loads_of(fn, name):
                replacements[id(node)] = _literal(value, node)
                touched.add(rel)
        if not replacements:
            break
        trees = _replace_and_fold(trees, replacements, touched)
    _MEMO.clear()
    trees = {rel: _drop_dead_locals(tree) for rel, tree in trees.items()}
    return Specialised(trees, dict(sorted(frozen.items())))


def _replace_and_fold(trees: dict[str, ast.Module], replacements: dict[int, ast.expr], touched: set[str]
                      ) -> dict[str, ast.Module]:
    _MEMO.clear()
    class Replace(ast.NodeTransformer):
        def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
            if id(node) in replacements:
                return replacements[id(node)]
            return self.generic_visit(node)

        def visit_Name(self, node: ast.Name) -> ast.AST:
            return replacements.get(id(node), node)

    return {rel: ast.fix_missing_locations(_Folder().visit(Replace().visit(tree))) if rel in touched else tree
            for rel, tree in sorted(trees.items())}


_INTROSPECTION = frozenset({"locals", "vars", "eval", "exec", "dir"})


def _drop_dead_locals(tree: ast.Module) -> ast.Module:
    """Drop the assignments of function-local names that nothing reads any more (`m = cfg.model` after every
    `m.x` was folded), when the value only reads (names, attributes, constants)."""
    drop: set[int] = set()
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        inner = list(ast.walk(fn))
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _INTROSPECTION for n in inner):
            continue
        loaded = {n.id for n in inner if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Load, ast.Del))}
        loaded |= {n.target.id for n in inner if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
        loaded |= {name for n in inner if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
        params = {p.arg for p in _params(fn)}
        for name, bindings in _bindings(fn).items():
            if (name in loaded or name in params or not bindings
                    or any(b is None or b[0] != "value" or not _quiet(b[1]) for b in bindings)):
                continue
            drop |= {id(b[1]) for b in bindings}

    class Drop(ast.NodeTransformer):
        def visit_Assign(self, node: ast.Assign) -> Any:
            if id(node.value) in drop:
                return None
            target = node.targets[0] if len(node.targets) == 1 else None
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = [(t, v) for t, v in zip(target.elts, node.value.elts) if id(v) not in drop]
                if not pairs:
                    return None
                if len(pairs) < len(target.elts):
                    target.elts, node.value.elts = [t for t, _ in pairs], [v for _, v in pairs]
            return node

    return ast.fix_missing_locations(_Folder().visit(Drop().visit(tree)))


_SCALARS = (type(None), bool, int, float, str)


def _parameter_constants(trees: dict[str, ast.Module], entries: frozenset[str]) -> list[tuple[str, ast.AST, str, Any]]:
    """(module, function, parameter, value) for parameters of module-level functions (and of the __init__ of
    module-level classes without decorators or subclasses) that every call passes one constant (or leaves at a
    constant default): the function's name is defined once in the carried code and used only as `name(...)`,
    never with *args/**kwargs, as a value, an attribute or a string."""
    defs: dict[str, list[tuple[str, ast.stmt]]] = {}
    for rel, tree in sorted(trees.items()):
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                defs.setdefault(stmt.name, []).append((rel, stmt))
    calls: dict[str, list[ast.Call]] = {name: [] for name in defs}
    bad: set[str] = set(entries)
    for tree in trees.values():
        heads = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in defs:
                calls[n.func.id].append(n)
                heads.add(id(n.func))
                if any(isinstance(a, ast.Starred) for a in n.args) or any(k.arg is None for k in n.keywords):
                    bad.add(n.func.id)
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and n.id in defs and id(n) not in heads:
                bad.add(n.id)
            elif isinstance(n, ast.Attribute) and n.attr in defs:
                bad.add(n.attr)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in defs:
                bad.add(n.value)
            elif isinstance(n, ast.alias) and n.asname is not None:
                bad.add(n.name)
            elif isinstance(n, ast.ClassDef):
                bad |= {b.id for b in n.bases if isinstance(b, ast.Name)}
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in defs and (
                    len(defs[n.name]) != 1 or defs[n.name][0][1] is not n):
                bad.add(n.name)  # a method or nested function of the same name
    out = []
    for name, found in sorted(defs.items()):
        if len(found) != 1 or name in bad or not calls[name]:
            continue
        rel, node = found[0]
        if node.decorator_list:
            continue
        fn, skip = node, 0
        if isinstance(node, ast.ClassDef):
            fn = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
            if fn is None or fn.decorator_list or any(isinstance(s, ast.FunctionDef) and s.name == "__new__"
                                                     for s in node.body):
                continue
            skip = 1
        a = fn.args
        if a.vararg or a.kwarg:
            continue
        positional = (a.posonlyargs + a.args)[skip:]
        defaults = dict(zip([p.arg for p in a.posonlyargs + a.args][-len(a.defaults):], a.defaults)) if a.defaults else {}
        defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
        params = [(i, p.arg) for i, p in enumerate(positional)] + [(None, p.arg) for p in a.kwonlyargs]
        bindings = _bindings(fn)
        for index, param in params:
            if len(bindings.get(param, [])) != 1:
                continue  # rebound in the function
            values = set()
            for call in calls[name]:
                keyword = next((k.value for k in call.keywords if k.arg == param), None)
                if index is not None and index < len(call.args):
                    value = _const(call.args[index])
                elif keyword is not None:
                    value = _const(keyword)
                elif param in defaults:
                    value = _const(defaults[param])
                else:
                    value = _NO
                if value is _NO or not isinstance(value, _SCALARS):
                    break
                values.add((type(value), value))
            else:
                if len(values) == 1:
                    out.append((rel, fn, param, next(iter(values))[1]))
    return out


def _loads_of(fn: ast.AST, name: str) -> list[ast.Name]:
    """The loads of `name` in `fn` and in the scopes nested in it that do not bind `name` themselves."""
    out, todo = [], [fn]
    while todo:
        scope = todo.pop()
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
                out.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
                                   ast.GeneratorExp, ast.DictComp)) and name not in _bindings(node):
                todo.append(node)
            elif isinstance(node, ast.ClassDef):
                todo += [s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and name not in _bindings(s)]
    return out
