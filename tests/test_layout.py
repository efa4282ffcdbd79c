"""The layout of src/pgolf: the layer contract of pyproject.toml holds, the import graph has no cycle, and no
pgolf import hides inside a function (where it would hold a cycle apart instead of breaking it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PACKAGE_DIR = SRC / "pgolf"

# Function-local pgolf imports that are allowed: only in the command line (cli/), only to keep `pgolf --help`
# fast, each with its reason, as {"cli/<file>.py": {"<imported module>": "why"}}. None is needed today:
# `import pgolf` itself loads torch and the trainer, so lazy command imports would save ~0.03 s of ~1.6 s.
ALLOWED_LAZY_IMPORTS: dict[str, dict[str, str]] = {}


def _lint_imports(config: Path, source_root: Path) -> subprocess.CompletedProcess:
    """import-linter on `config`'s contracts, over the pgolf found first in `source_root`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env,
                          cwd=source_root, timeout=300)


def test_the_layer_contract_of_pyproject_holds():
    out = _lint_imports(REPO / "pyproject.toml", SRC)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout, out.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One cycle (as a closed path of modules) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iteratively (no recursion limit)
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        components.append(component)
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph.find_modules_directly_imported_by(target)))))
            elif target in on_stack:
                low[module] = min(low[module], index[target])

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        chain = graph.find_shortest_chain(importer=start, imported=next(
            m for m in sorted(graph.find_modules_directly_imported_by(start)) if m in members))
        back = graph.find_shortest_chain(importer=chain[-1], imported=start)
        cycles.append(list(chain) + list(back[1:]))
    return cycles


def test_the_import_graph_has_no_cycle():
    """grimp reads every import statement, those inside functions included."""
    graph = grimp.build_graph("pgolf", cache_dir=None)
    assert "pgolf.config.schema" in graph.modules and "pgolf.cli.commands" in graph.modules
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c", "p.d"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.d", imported="p.a")
    assert import_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]


def function_local_pgolf_imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, imported pgolf module) of every import of pgolf placed inside a function of `path` (under `root`)."""
    package = list(path.relative_to(root).parts[:-1])  # the package a relative import starts from
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {node for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom))}
    found = []
    for node in sorted(local, key=lambda n: n.lineno):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pgolf"]
    return found


def test_no_pgolf_import_hides_inside_a_function():
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        allowed = ALLOWED_LAZY_IMPORTS.get(rel, {})
        local = [f"{rel}:{line} imports {module}" for line, module in function_local_pgolf_imports(path)
                 if module not in allowed]
        if local:
            found[rel] = local
    assert not found, ("pgolf imports inside functions (move them to the top of the module; if that makes a cycle, "
                       "the code is in the wrong layer):\n" + "\n".join(line for lines in found.values() for line in lines))


def test_the_allowed_lazy_imports_are_command_line_ones_that_still_exist():
    for rel, modules in ALLOWED_LAZY_IMPORTS.items():
        assert rel.startswith("cli/"), f"{rel}: lazy imports are allowed only in the command line"
        present = {module for _, module in function_local_pgolf_imports(PACKAGE_DIR / rel)}
        for module, reason in modules.items():
            assert reason, f"{rel}: say why {module} is imported lazily"
            assert module in present, f"{rel} no longer imports {module} lazily: remove it from ALLOWED_LAZY_IMPORTS"


def test_the_local_import_finder_sees_relative_and_absolute_imports(tmp_path):
    module = tmp_path / "pgolf" / "quant" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\nfrom ..config import Config\n\ndef f():\n    from ..model.gpt import GPT\n"
                      "    import pgolf.data.shards\n    from . import methods\n    import json\n\n"
                      "    def g():\n        from .quantize import Plan\n    return GPT\n")
    assert function_local_pgolf_imports(module, tmp_path) == [
        (5, "pgolf.model.gpt"), (6, "pgolf.data.shards"), (7, "pgolf.quant"), (11, "pgolf.quant.quantize")]
