"""What a config's train_gpt.py carries: the modules its switches reach, and in them only what is used.

Modules. The bundle starts at its entry point (`ENTRY`, what `python train_gpt.py` runs) and follows every
pgolf import written in the code (module level or inside a function: read with `ast`, nothing is imported),
plus each carried module's parent packages. Optional technique modules are never imported that way: the code
reaches them through pgolf.config.optional, whose table says which config value pulls in which module; the
ones the config switches on are carried with everything they import in turn. A technique that is off is not
shipped, and a config cannot need a module its bundle left out: asking the registry for a module the config
does not use is an error everywhere, and a train_gpt.py refuses environment overrides that would switch on a
technique it does not carry (pgolf.training.bundle_entry). The modules that build scripts (`BUILD_ONLY`) never
ship and carried code's imports of them are cut: the one that exists, pgolf.artifact.sizes's code_bytes, is
reached only outside a script (inside one, the script's entry point sets the code size to its own first).

Definitions. In the carried modules, a top-level function, class, `from . import` name or constant that no
carried code refers to by name (a name, an attribute, a string) is dropped, repeated until nothing changes;
modules no carried code imports any more are then dropped too. So is a method whose name no carried code
uses, unless Python or torch call it by name (`FRAMEWORK_METHODS`, dunders). A definition with a decorator other than the
plain ones in `PURE_DECORATORS` is always kept (a decorator could register it). `if TYPE_CHECKING:` blocks go.
`__all__` lists are cut to the names that stay (they re-export; they do not use), and dropped when no carried
code star-imports (`from x import *`, the only reader of `__all__`; pgolf has none).

Registry questions. Before specialising, `optional_module`/`require_module` calls whose answer the build
knows (the entry's `needed` reads no RUNTIME_KEYS field) are answered (`fold_optional_calls`); after pruning, the
OPTIONAL_MODULES entries nothing can ask about any more leave the table (`cut_registry`).

Documentation arguments. The config schema's fields carry help texts (`_f(default, help, ...)`), read only by
`describe_keys` for the command line and the README: when no carried code reads a field's help, the texts are
replaced by "" (`DOC_ARGUMENTS`).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config.optional import needed_optional_modules
from .specialise import specialise

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ENTRY = "training/bundle_entry.py"
ENTRY_USES = frozenset({"run_bundle"})  # what the script's bootstrap calls (pgolf.artifact.bundle)
# The script builder: never carried; pgolf.artifact.sizes imports its code_bytes for use outside a script.
BUILD_ONLY = frozenset({"artifact/bundle.py", "artifact/shipping.py", "artifact/minify.py", "artifact/linemap.py",
                        "artifact/specialise.py"})
PURE_DECORATORS = frozenset({
    "dataclass", "dataclasses.dataclass", "staticmethod", "classmethod", "property", "functools.lru_cache",
    "lru_cache", "functools.cache", "torch.no_grad", "torch.inference_mode", "torch.compile",
    "contextlib.contextmanager", "contextmanager", "torch.compiler.disable"})
# Methods that Python, torch and the standard library call by name (never written as a call in pgolf's code).
FRAMEWORK_METHODS = frozenset({
    "forward", "backward", "setup_context", "jvp", "vmap", "extra_repr", "reset_parameters", "run", "default",
    "emit", "step", "zero_grad", "state_dict", "load_state_dict", "train", "eval", "find_spec", "create_module",
    "exec_module", "_load_from_state_dict", "_save_to_state_dict", "_apply", "_init_group"})
# (module, function, positional index, keyword, metadata key): arguments that only document.
DOC_ARGUMENTS = (("config/schema.py", "_f", 1, "help", "help"),)


def rel_of(dotted: str) -> str:
    """'pgolf.eval.bpb' -> 'eval/bpb.py' (or the package's '__init__.py')."""
    parts = dotted.split(".")[1:]
    module = "/".join(parts) + ".py"
    return module if (PACKAGE_DIR / module).is_file() else "/".join(parts + ["__init__.py"])


def read_tree(rel: str) -> ast.Module:
    return ast.parse((PACKAGE_DIR / rel).read_text(encoding="utf-8"), f"pgolf/{rel}")


def imported_modules(rel: str, tree: ast.AST) -> set[str]:
    """Package-relative paths of the pgolf modules that `tree` (the module `rel`) imports anywhere in its code."""
    package = rel.split("/")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf":
            parts = node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pgolf":
                    found |= _existing([alias.name.split(".")[1:]])
            continue
        else:
            continue
        found |= _existing([parts + [alias.name] for alias in node.names] + [parts])
    return found


def _existing(candidates: list[list[str]]) -> set[str]:
    out = set()
    for parts in candidates:
        for rel in ("/".join(parts) + ".py", "/".join(parts + ["__init__.py"])):
            if parts and (PACKAGE_DIR / rel).is_file():
                out.add(rel)
    return out


def parents(rel: str) -> list[str]:
    """The package __init__.py files that importing `rel` runs first."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i] + ["__init__.py"]) for i in range(len(parts) + 1)
            if (PACKAGE_DIR / "/".join(parts[:i] + ["__init__.py"])).is_file()]


def closure(roots: list[str], trees: dict[str, ast.Module]) -> list[str]:
    """Every module `roots` reach through imports written in `trees` (parsed on demand), sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        rel = todo.pop()
        if rel in seen or rel in BUILD_ONLY:
            continue
        seen.add(rel)
        if rel not in trees:
            trees[rel] = read_tree(rel)
        todo += parents(rel) + sorted(imported_modules(rel, trees[rel]))
    return sorted(seen)


def roots_for(optional: Sequence[str]) -> list[str]:
    """The entry point and the optional modules (dotted names) a config switches on."""
    return [ENTRY] + [rel_of(name) for name in optional]


def module_set(cfg: Any) -> list[str]:
    """Package-relative paths of the modules `cfg`'s train_gpt.py would carry before pruning definitions."""
    return closure(roots_for(needed_optional_modules(cfg)), {})


# ----------------------------------------------------------------------------- pruning definitions

def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _is_all(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
            and stmt.targets[0].id == "__all__")


_PURE_CALLS = frozenset({"frozenset", "set", "dict", "tuple", "list", "Path", "re.compile", "object"})


def _pure(node: ast.AST) -> bool:
    """An expression that only computes a value (no call with effects)."""
    if isinstance(node, ast.Call):
        return _dotted(node.func) in _PURE_CALLS and all(_pure(a) for a in node.args) and all(
            _pure(k.value) for k in node.keywords)
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.Attribute):
        return _pure(node.value)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_pure(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _pure(k) for k in node.keys) and all(_pure(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _pure(node.left) and _pure(node.right)
    if isinstance(node, ast.UnaryOp):
        return _pure(node.operand)
    return False


def defined_names(stmt: ast.stmt) -> list[str] | None:
    """Names a droppable top-level statement defines, or None when the statement always stays."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        if stmt.name.startswith("__") or any(_dotted(d) not in PURE_DECORATORS for d in stmt.decorator_list):
            return None
        return [stmt.name]
    if _pgolf_import(stmt):
        return [a.asname or a.name for a in stmt.names]
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and not _is_all(stmt):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if (stmt.value is not None and len(names) == len(targets) and _pure(stmt.value)
                and not any(n.startswith("__") for n in names)):
            return names
    return None


def used_names(node: ast.AST) -> set[str]:
    """Every name `node` may refer to: names, attributes, imported names, identifier-like strings."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.alias):
            out.add(n.name.split(".")[0])
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            out.add(n.value)
    return out


def _pgolf_import(stmt: ast.stmt) -> bool:
    """`from .x import a` or `from pgolf.x import a` (not `*`): it binds names of pgolf modules."""
    return (isinstance(stmt, ast.ImportFrom) and (stmt.level > 0 or (stmt.module or "").split(".")[0] == "pgolf")
            and all(a.name != "*" for a in stmt.names))


def _uses(stmt: ast.stmt) -> set[str]:
    """Names a kept statement uses (a definition's own name and an import's bound names are not uses)."""
    if _pgolf_import(stmt):
        return set()  # `from .x import a` uses nothing by itself; whoever uses `a` keeps it and x's `a`
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        parts = stmt.decorator_list + stmt.body
        parts += stmt.bases + [k.value for k in stmt.keywords] if isinstance(stmt, ast.ClassDef) else [stmt.args]
        return set().union(*(used_names(p) for p in parts)) if parts else set()
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and defined_names(stmt) is not None:
        return used_names(stmt.value)
    return used_names(stmt)


def _is_type_checking(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and not stmt.orelse and _dotted(stmt.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


@dataclass
class Pruned:
    trees: dict[str, ast.Module]      # rel path -> pruned tree, for every carried module
    dropped: dict[str, list[str]]     # rel path -> names dropped from it
    frozen: dict[str, Any] = field(default_factory=dict)  # key -> value the trees were specialised on


def prune(trees: dict[str, ast.Module], roots: list[str]) -> Pruned:
    """Drop the definitions no kept code uses, then the modules no kept code imports, until nothing changes."""
    modules = sorted(trees)
    star = any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
               for tree in trees.values() for n in ast.walk(tree))
    while True:
        bodies = {rel: [s for s in trees[rel].body if not _is_type_checking(s) and not _is_all(s)] for rel in modules}
        kept: dict[str, list[bool]] = {rel: [defined_names(s) is None for s in body] for rel, body in bodies.items()}
        uses: set[str] = set(ENTRY_USES)
        pending = [(rel, i) for rel in modules for i, k in enumerate(kept[rel]) if k]
        while pending:
            for rel, i in pending:
                uses |= _uses(bodies[rel][i])
            pending = []
            for rel in modules:
                for i, stmt in enumerate(bodies[rel]):
                    if not kept[rel][i] and any(name in uses for name in defined_names(stmt) or []):
                        kept[rel][i] = True
                        pending.append((rel, i))
        pruned: dict[str, ast.Module] = {}
        dropped: dict[str, list[str]] = {}
        for rel in modules:
            body = [s for s, k in zip(bodies[rel], kept[rel]) if k]
            names = [n for s, k in zip(bodies[rel], kept[rel]) if not k for n in defined_names(s) or []]
            body = _cut_imports(rel, body, uses)
            all_stmt = next((s for s in trees[rel].body if _is_all(s)), None)
            if all_stmt is not None and star:
                body.append(_cut_all(all_stmt, uses))
            pruned[rel] = ast.Module(body=body, type_ignores=[])
            if names:
                dropped[rel] = names
        still = closure(roots, dict(pruned))
        if still == modules:
            return Pruned(pruned, dropped)
        modules = still
        trees = {rel: pruned[rel] for rel in modules}


def _cut_imports(rel: str, body: list[ast.stmt], uses: set[str]) -> list[ast.stmt]:
    """`from .x import a, b` keeps only the names used somewhere (or the statement if all are); imports of
    BUILD_ONLY modules go."""
    out = []
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and imported_modules(rel, stmt) & BUILD_ONLY:
            continue
        if _pgolf_import(stmt):
            names = [a for a in stmt.names if (a.asname or a.name) in uses]
            if names:
                new = ast.ImportFrom(module=stmt.module, names=names, level=stmt.level)
                out.append(ast.copy_location(new, stmt))
            continue
        out.append(stmt)
    return out


def _cut_all(stmt: ast.Assign, uses: set[str]) -> ast.stmt:
    value = stmt.value
    if isinstance(value, (ast.List, ast.Tuple)):
        elts = [e for e in value.elts if isinstance(e, ast.Constant) and (e.value in uses or e.value.startswith("__"))]
        value = ast.copy_location(ast.List(elts=elts, ctx=ast.Load()), value)
    return ast.copy_location(ast.Assign(targets=stmt.targets, value=value), stmt)


def strip_doc_arguments(trees: dict[str, ast.Module]) -> list[str]:
    """Replace documentation-only arguments by "" where no kept code reads them; returns what was stripped.
    A schema field left with nothing but its default (`_f(1, "")`: no choices, not a list) becomes the plain
    default (`= 1`): a field without metadata reads as one with choices None (pgolf.config.overrides)."""
    stripped = []
    for rel, function, index, keyword, key in DOC_ARGUMENTS:
        if rel not in trees or any(_reads(tree, key, function) for tree in trees.values()):
            continue
        for node in ast.walk(trees[rel]):
            if isinstance(node, ast.Call) and _dotted(node.func) == function:
                if len(node.args) > index:
                    node.args[index] = ast.copy_location(ast.Constant(""), node.args[index])
                for kw in node.keywords:
                    if kw.arg == keyword:
                        kw.value = ast.copy_location(ast.Constant(""), kw.value)
        if (rel, function) == ("config/schema.py", "_f"):
            _plain_defaults(trees[rel])
        stripped.append(f"{rel}:{function}({keyword})")
    return stripped


def _plain_defaults(tree: ast.Module) -> None:
    """In the schema's dataclasses, `name: T = _f(default, "")` (no choices; default a number, string or bool
    literal) becomes `name: T = default`, in place."""
    for cls in [s for s in tree.body if isinstance(s, ast.ClassDef)]:
        for stmt in cls.body:
            call = stmt.value if isinstance(stmt, ast.AnnAssign) else None
            if (isinstance(call, ast.Call) and _dotted(call.func) == "_f" and not call.keywords
                    and len(call.args) == 2 and isinstance(call.args[1], ast.Constant) and call.args[1].value == ""
                    and _literal_scalar(call.args[0])):
                stmt.value = call.args[0]


def _literal_scalar(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool))


def _reads(tree: ast.AST, key: str, writer: str) -> bool:
    """Whether the string `key` (a metadata key) occurs in `tree` outside the function `writer` that stores it."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef) and node.name == writer:
            continue
        if isinstance(node, ast.Constant) and node.value == key:
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def carried_trees(optional: Sequence[str], values: dict[str, Any] | None = None) -> Pruned:
    """The pruned trees of every module a train_gpt.py carries for a config that uses the optional modules
    `optional` (dotted names, pgolf.config.optional.needed_optional_modules), keyed by package-relative path;
    with `values` (pgolf.artifact.specialise.candidate_values of the config), specialised to them first."""
    roots = roots_for(optional)
    trees: dict[str, ast.Module] = {}
    closure(roots, trees)
    frozen: dict[str, Any] = {}
    if values:
        fold_optional_calls(trees, optional)
        specialised = specialise(trees, values, ENTRY_USES)
        trees, frozen = specialised.trees, specialised.frozen
    result = prune(trees, roots)
    while True:  # methods nothing calls any more (a folded branch was their only caller), then what they used
        methods = drop_unused_methods(result.trees)
        if not methods:
            break
        again = prune(result.trees, roots)
        for rel, names in [*methods.items(), *result.dropped.items()]:
            again.dropped.setdefault(rel, []).extend(n for n in names if n not in again.dropped.get(rel, []))
        result = again
    if values:
        cut_registry(result.trees, optional)
    strip_doc_arguments(result.trees)
    result.frozen = frozen
    return result


# ----------------------------------------------------------------------------- answering the registry

REGISTRY = "config/optional.py"
_ASK = ("optional_module", "require_module")


def _runtime_keys(entry: ast.Module) -> set[str]:
    """bundle_entry.RUNTIME_KEYS, read from the carried entry point (empty if it is not a literal there)."""
    for stmt in entry.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RUNTIME_KEYS" for t in stmt.targets):
            return set(ast.literal_eval(stmt.value))
    return set()


@functools.lru_cache(maxsize=1)
def entry_runtime_keys() -> frozenset[str]:
    """bundle_entry.RUNTIME_KEYS, read from the entry point's source (pgolf.artifact sits below pgolf.training in
    the layers, so it reads the literal rather than importing it)."""
    return frozenset(_runtime_keys(read_tree(ENTRY)))


def _registry_entries(tree: ast.Module) -> dict[str, ast.Call]:
    """name -> the `OptionalModule(...)` call of each literal entry of OPTIONAL_MODULES in pgolf.config.optional."""
    out = {}
    for stmt in tree.body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "OPTIONAL_MODULES" and isinstance(stmt.value, ast.Tuple):
            for call in stmt.value.elts:
                if (isinstance(call, ast.Call) and _dotted(call.func) == "OptionalModule" and len(call.args) >= 3
                        and all(isinstance(a, ast.Constant) for a in call.args[:2])):
                    out[call.args[0].value] = call
    return out


def _reads_only(call: ast.Call, runtime: set[str]) -> str | None:
    """How an entry's `needed` decides: 'never' (`lambda x: False` on a package-only module), 'config' (it
    reads only fields of its section outside `runtime`, each as `x.field`), else None (it may change at run
    time, or it cannot be told)."""
    fn, section = call.args[2], call.args[1].value
    if not isinstance(fn, ast.Lambda) or len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwarg:
        return None
    package = any(k.arg == "package" and isinstance(k.value, ast.Constant) and k.value.value is True
                  for k in call.keywords)
    if isinstance(fn.body, ast.Constant) and fn.body.value is False and package:
        return "never"
    param = fn.args.args[0].arg
    parents = {id(c): n for n in ast.walk(fn.body) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(fn.body):
        if isinstance(node, (ast.Lambda, ast.NamedExpr)):
            return None
        if isinstance(node, ast.Name) and node.id == param:
            up = parents.get(id(node))
            if not isinstance(up, ast.Attribute) or f"{section}.{up.attr}" in runtime:
                return None
    return "config"


def _asks_registry(rel: str, tree: ast.Module) -> set[str]:
    """Which of optional_module/require_module `tree` binds by importing them from pgolf.config.optional (and
    nowhere else)."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and imported_modules(rel, node) & {REGISTRY}:
            imported |= {a.name for a in node.names if a.name in _ASK and a.asname is None}
    rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    rebound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    rebound |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    return imported - rebound


def fold_optional_calls(trees: dict[str, ast.Module], optional: Sequence[str]) -> dict[str, str]:
    """Answer, in place, the registry questions a script's answers are known for when it is built; returns
    {module name: 'module' | 'None'} for the modules whose calls were answered.

    A script refuses every environment override outside bundle_entry.RUNTIME_KEYS before it trains, so an
    OPTIONAL_MODULES entry whose `needed` reads only other fields of its section gives, for the run's config,
    the answer it gave when the script was built (the module is in `optional`, what the script carries); a
    package-only entry with `lambda x: False` answers None in every script. A call
    `optional_module('<name>', section)` / `require_module('<name>', section)` (a literal name; a section that is
    not built on the spot: no call in it, so it is the run's own config, not a probe; carried code builds
    configs only where tests/test_specialise.py::test_only_configs_pgolf_loads_are_built_in_carried_code lists,
    the probes among them inside the call) becomes
    `__import__('<name>', fromlist='*')` when the answer is the module, and optional_module's None when it is
    not (require_module then still raises, as it would). The entries no carried code can ask about any more
    leave the script's table: the carried modules that were answered (check_carried never reports a carried
    module) and the never-needed ones."""
    if REGISTRY not in trees or ENTRY not in trees:
        return {}
    runtime = _runtime_keys(trees[ENTRY])
    if not runtime:
        return {}
    entries = _registry_entries(trees[REGISTRY])
    kinds = {name: _reads_only(call, runtime) for name, call in entries.items()}
    answers = {name: ("module" if name in optional else "None") if kind == "config" else "None"
               for name, kind in kinds.items() if kind}
    answered: dict[str, str] = {}
    for rel, tree in sorted(trees.items()):
        if rel == REGISTRY:
            continue
        ask = _asks_registry(rel, tree)

        class Answer(ast.NodeTransformer):
            def visit_Call(self, node: ast.Call) -> ast.AST:
                self.generic_visit(node)
                if not (isinstance(node.func, ast.Name) and node.func.id in ask and len(node.args) == 2
                        and not node.keywords and isinstance(node.args[0], ast.Constant)):
                    return node
                name = node.args[0].value
                answer = answers.get(name)
                if answer is None or any(isinstance(n, ast.Call) for n in ast.walk(node.args[1])):
                    return node
                if answer == "None" and node.func.id == "require_module":
                    return node
                answered[name] = answer
                if answer == "None":
                    return ast.copy_location(ast.Constant(None), node)
                new = ast.Call(func=ast.Name("__import__", ast.Load()), args=[ast.Constant(name)],
                               keywords=[ast.keyword("fromlist", ast.Constant("*"))])
                return ast.copy_location(new, node)

        trees[rel] = ast.fix_missing_locations(Answer().visit(tree))
    return answered


def cut_registry(trees: dict[str, ast.Module], optional: Sequence[str]) -> list[str]:
    """Drop, in place, the OPTIONAL_MODULES entries of the pruned trees that no carried code can ask about:
    the name is written nowhere outside the table but in `__import__` (every call was answered,
    fold_optional_calls, or pruned),
    and the entry is one check_carried can never report (never needed, or answered by the config alone for a
    module the script carries). Returns the names dropped."""
    if REGISTRY not in trees or ENTRY not in trees:
        return []
    runtime = _runtime_keys(trees[ENTRY])
    entries = _registry_entries(trees[REGISTRY])
    imports = {id(n.args[0]) for tree in trees.values() for n in ast.walk(tree)
               if isinstance(n, ast.Call) and _dotted(n.func) == "__import__" and n.args}  # answers, not questions
    named = {n.value for rel, tree in trees.items() if rel != REGISTRY for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and n.value in entries and id(n) not in imports}
    gone = []
    for name, call in entries.items():
        kind = _reads_only(call, runtime) if runtime else None
        if name not in named and (kind == "never" or (kind == "config" and name in optional)):
            gone.append(name)
    for stmt in trees[REGISTRY].body:
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Tuple) and any(e in entries.values() for e in value.elts):
            value.elts = [e for e in value.elts if not (e in entries.values() and e.args[0].value in gone)]
    return gone


def drop_unused_methods(trees: dict[str, ast.Module]) -> dict[str, list[str]]:
    """Drop, in place, the methods of carried classes whose name no carried code uses (a name, an attribute,
    a string), except dunders, those Python or torch call by name (`FRAMEWORK_METHODS`) and those with a
    decorator other than the plain ones; returns {rel: ['Class.method', ...]} dropped."""
    used: set[str] = set()
    for tree in trees.values():
        used |= used_names(tree)
    dropped: dict[str, list[str]] = {}
    for rel, tree in sorted(trees.items()):
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            keep = []
            for stmt in cls.body:
                if (isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and not stmt.name.startswith("__")
                        and stmt.name not in used and stmt.name not in FRAMEWORK_METHODS
                        and all(_dotted(d) in PURE_DECORATORS for d in stmt.decorator_list)):
                    dropped.setdefault(rel, []).append(f"{cls.name}.{stmt.name}")
                    continue
                keep.append(stmt)
            if len(keep) < len(cls.body):
                cls.body = keep or [ast.copy_location(ast.Pass(), cls)]
    return dropped
