"""Minify one module with python-minifier, keeping a line map back to the original source.

python-minifier (a kept library) does the work: docstrings and comments go, local names are shortened, annotations
that are only hints go (class-level ones stay: dataclasses read them), constants are folded. It runs on an AST
that pgolf.artifact.shipping may already have pruned, and its own self-check (the printed code parses back into
the transformed tree) runs on every module.

Minified statements share lines, so each statement's place is recorded: `lines[n]` lists, for line n + 1 of the
minified code, (column, original line) of every statement that starts on it, in column order; columns count
characters from the line's first non-blank one (tracebacks print lines stripped). A traceback of a
train_gpt.py names the minified line (and the column under its ^ markers); pgolf.artifact.linemap maps it back.

Built for the python-minifier release pinned in pyproject.toml: the pipeline below is `python_minifier.minify`
step by step (that function only takes source text, and the line map needs the transformed tree), with
literal hoisting off (it makes the compressed output larger, measured) and module-level names renamed only when
the caller lists the ones to keep (pgolf.artifact.bundle keeps every name another carried module, an attribute, a
string reaches, and every top-level function and class name).
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
from pathlib import Path

import python_minifier
from python_minifier.ast_annotation import add_parent
from python_minifier.rename import (add_namespace, allow_rename_globals, allow_rename_locals, bind_names, rename,
                                    resolve_names)
from python_minifier.transforms.combine_imports import CombineImports
from python_minifier.transforms.constant_folding import FoldConstants
from python_minifier.transforms.remove_annotations import RemoveAnnotations
from python_minifier.transforms.remove_annotations_options import RemoveAnnotationsOptions
from python_minifier.transforms.remove_dead_branches import RemoveDeadBranches
from python_minifier.transforms.remove_exception_brackets import remove_no_arg_exception_call
from python_minifier.transforms.remove_explicit_return_none import RemoveExplicitReturnNone
from python_minifier.transforms.remove_literal_statements import RemoveLiteralStatements
from python_minifier.transforms.remove_object_base import RemoveObject
from python_minifier.transforms.remove_pass import RemovePass
from python_minifier.transforms.remove_posargs import remove_posargs

LineMap = list[list[tuple[int, int]]]  # per minified line: [(column, original line), ...]
PACKAGE_DIR = Path(__file__).resolve().parent.parent
ENTRY_NAMES = frozenset({"run_bundle"})  # what a script's bootstrap calls by name (pgolf.artifact.bundle)


@functools.lru_cache(maxsize=1)
def function_renames() -> dict[str, str]:
    """{original: short name} for the top-level functions of pgolf a script may rename, the same in every module.

    A name qualifies when every occurrence of it in pgolf's sources is a top-level `def`, a plain name that
    reads it or a `from <pgolf module> import` of it: never an attribute, a word of a string, an argument, a
    keyword, an assigned or deleted name, a method or nested definition, a builtin, nor what the bootstrap
    calls. Renaming it then changes no behaviour (one global table, so imports across modules agree; short names
    are `_` + letters that no pgolf source uses). Decided on all of pgolf's sources, so the table does not depend
    on what a config carries; the line map records it (`names`) and `pgolf traceback` prints the originals."""
    trees = [ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE_DIR.rglob("*.py"))
             if "__pycache__" not in p.parts]
    top: set[str] = set()
    bad: set[str] = set(dir(builtins)) | ENTRY_NAMES
    seen: set[str] = set()
    for tree in trees:
        top_defs = {id(s) for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                seen.add(node.id)
                if not isinstance(node.ctx, ast.Load):
                    bad.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seen.add(node.name)
                (top if id(node) in top_defs else bad).add(node.name)
            elif isinstance(node, ast.ClassDef):
                seen.add(node.name)
                bad.add(node.name)
            elif isinstance(node, ast.Attribute):
                bad.add(node.attr)
            elif isinstance(node, ast.arg):
                bad.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                bad.add(node.arg)
            elif isinstance(node, ast.alias):
                bad.add(node.asname or "")  # a renaming import binds a second name: leave both alone
                if node.asname:
                    bad.add(node.name)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                bad.update(node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bad.add(node.name)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                bad.update(re.findall(r"\w+", node.value))
            elif isinstance(node, ast.Import):
                bad.update(a.name.split(".")[0] for a in node.names)
    names = sorted(n for n in top - bad if not n.startswith("__"))  # (by use count instead: larger, measured)
    out: dict[str, str] = {}
    short = _short_names(seen)
    for name in names:
        out[name] = next(short)
    return out


def _short_names(taken: set[str]):
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    size = 1
    while True:
        for i in range(len(letters) ** size):
            name, k = "", i
            for _ in range(size):
                k, r = divmod(k, len(letters))
                name = letters[r] + name
            if "_" + name not in taken:
                yield "_" + name
        size += 1


def _rename_functions(module: ast.Module, table: dict[str, str]) -> None:
    """Apply `function_renames` to one module's tree (its top-level defs, the names reading them, pgolf imports)."""
    for stmt in module.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name in table:
            stmt.name = table[stmt.name]
    for node in ast.walk(module):
        if isinstance(node, ast.Name) and node.id in table:
            node.id = table[node.id]
        elif (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "pgolf")):
            for alias in node.names:
                if alias.asname is None and alias.name in table:
                    alias.name = table[alias.name]


def _transform(module: ast.Module, preserve_globals: frozenset[str] | None) -> ast.Module:
    """python_minifier.minify's transformations (its defaults, plus docstring removal, minus literal hoisting);
    module-level names are renamed too unless `preserve_globals` is None, except those it lists."""
    if preserve_globals is not None:  # a script's module: top-level functions get short names too
        table = function_renames()
        _rename_functions(module, table)
        preserve_globals = preserve_globals | frozenset(table.values())
    add_parent(module)
    add_namespace(module)
    module = RemoveLiteralStatements()(module)
    module = CombineImports()(module)
    # class-level annotations stay: dataclasses (the config schema) are built from them
    module = RemoveAnnotations(RemoveAnnotationsOptions(remove_class_attribute_annotations=False))(module)
    module = RemovePass()(module)
    module = RemoveObject()(module)
    module = FoldConstants()(module)
    module = RemoveDeadBranches()(module)
    module = RemoveExplicitReturnNone()(module)
    bind_names(module)
    resolve_names(module)
    if not module.tainted:  # a module using locals()/exec keeps its names
        remove_no_arg_exception_call(module)
    rename_locals = not module.tainted
    allow_rename_locals(module, rename_locals, list(module.preserved))
    kept = list(module.preserved) + sorted(preserve_globals or ())
    allow_rename_globals(module, preserve_globals is not None and rename_locals, kept)
    rename(module, prefix_globals=preserve_globals is None, preserved_globals=kept)
    return remove_posargs(module)


def _statements(tree: ast.AST) -> list[ast.stmt]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.stmt)]


def minify_tree(tree: ast.Module, preserve_globals: frozenset[str] | None = None) -> tuple[str, LineMap]:
    """(minified code, line map) of a parsed module; the tree is consumed (transformed in place). With
    `preserve_globals` (the module-level names other code reaches: imports, attributes, strings), every other
    module-level name is shortened as well; without it, none is."""
    transformed = _transform(tree, preserve_globals)
    code = python_minifier.unparse(transformed)  # raises UnstableMinification if the code would not round-trip
    printed = ast.parse(code)
    before, after = _statements(transformed), _statements(printed)
    if len(before) != len(after):  # unparse checked that both trees are equal, so this cannot happen
        raise AssertionError(f"minified code has {len(after)} statements, its tree {len(before)}")
    text_lines = code.split("\n")
    lines: LineMap = [[] for _ in text_lines]
    for old, new in zip(before, after):
        original = getattr(old, "lineno", None)
        if original is None:  # a statement python-minifier made (combined imports): no single origin
            continue
        line_text = text_lines[new.lineno - 1]
        column = len(line_text.encode("utf-8")[: new.col_offset].decode("utf-8"))  # ast columns are UTF-8 bytes
        indent = len(line_text) - len(line_text.lstrip())
        lines[new.lineno - 1].append((column - indent, original))
    for entries in lines:
        entries.sort()
    return code, lines


def minify_source(source: str, filename: str = "<module>") -> tuple[str, LineMap]:
    return minify_tree(ast.parse(source, filename))
