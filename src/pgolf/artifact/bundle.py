"""One self-contained `train_gpt.py` per config: pgolf's runtime modules and the resolved config in one file.

The challenge counts the bytes of the submitted `train_gpt.py`, so pgolf counts exactly that file: `code_bytes`
in every result.json is `len(bundle_source(cfg).encode())`, the size of the script `pgolf submit` writes.

What goes in: every `.py` file of the pgolf package, discovered at run time (new modules are picked up without
a list), except the command-line layer and the modules only it uses (`EXCLUDED_MODULES`); nothing that
trains, packs or evaluates is left out. Each module is slimmed — comments dropped, docstrings replaced by
`""` — keeping every line number, so tracebacks point at the same lines as the repository. The sources are
packed as JSON, lzma-compressed and base85-encoded; a short bootstrap imports them from memory (a meta-path
importer; nothing is written to disk) and trains the embedded config. The config is embedded as readable TOML
holding only the fields that differ from pgolf's defaults.

The output is deterministic: the same sources and the same config give the same bytes. The sources are read
and compressed once per process (`_code_blob` is cached), so costing a config stays cheap.

Inside a running bundle, `code_bytes` is the size of the script file itself (environment variables such as
DATA_PATH may change the config, never the file).
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import functools
import io
import json
import lzma
import sys
import tokenize
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from .._version import __version__
from ..config import SECTIONS, Config

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Used only by the command line (the whole cli/ layer: commands, `pgolf eval`, `pgolf recipes`, reports,
# submissions) and by downloads, document files and shard statistics; no module that trains, packs or scores a
# model imports them (tests/test_submit.py checks that). `pgolf sweep` (sweep/) only starts `pgolf train` in child
# processes.
EXCLUDED_PACKAGES = ("cli", "sweep")
EXCLUDED_MODULES = frozenset({"__main__.py", "data/docs.py", "data/download.py", "data/stats.py"} | {
    path.relative_to(PACKAGE_DIR).as_posix()
    for package in EXCLUDED_PACKAGES for path in (PACKAGE_DIR / package).rglob("*.py")})
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

# Set (by `running_in_script`) when this module runs inside a generated train_gpt.py.
_RUNNING: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- sources

def running_in_script(script_bytes: int, sources: dict[str, str]) -> None:
    """Called by the entry point of a generated train_gpt.py: from now on the carried sources are the ones
    packed in that script (the package folder does not exist there) and code_bytes is the script's size."""
    global _RUNNING
    _RUNNING = {"script_bytes": script_bytes, "sources": sources}


def bundled_module_paths() -> list[str]:
    """Package-relative paths ('quant/pack.py', ...) of every module the bundle carries, sorted."""
    if _RUNNING is not None:
        return sorted(_RUNNING["sources"])
    paths = []
    for path in PACKAGE_DIR.rglob("*.py"):
        rel_parts = path.relative_to(PACKAGE_DIR).parts
        rel = "/".join(rel_parts)
        if rel in EXCLUDED_MODULES or any(part == "__pycache__" or part.startswith(".") for part in rel_parts):
            continue
        paths.append(rel)
    return sorted(paths)


def slim_source(source: str) -> str:
    """Drop comments and replace docstrings by "" without moving any line; unparsable text is returned as is."""
    try:
        tree = ast.parse(source)
        comments = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError, ValueError):
        return source
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno: int, byte_col: int) -> int:  # ast columns are UTF-8 byte offsets
        return starts[lineno - 1] + len(lines[lineno - 1].encode("utf-8")[:byte_col].decode("utf-8"))

    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                a, b = offset(first.lineno, first.col_offset), offset(first.end_lineno, first.end_col_offset)
                edits.append((a, b, '""' + "\n" * source.count("\n", a, b)))
    for tok in comments:
        a = starts[tok.start[0] - 1] + tok.start[1]
        while a > starts[tok.start[0] - 1] and source[a - 1] in " \t":
            a -= 1
        edits.append((a, starts[tok.end[0] - 1] + tok.end[1], ""))
    out = source
    for a, b, text in sorted(edits, reverse=True):
        out = out[:a] + text + out[b:]
    try:
        compile(out, "<slim>", "exec", dont_inherit=True)
    except SyntaxError:  # never expected; keep the original rather than ship something different
        return source
    return out


def module_sources() -> dict[str, str]:
    """{'pgolf/config/schema.py': slimmed source, ...} for every bundled module."""
    if _RUNNING is not None:
        return dict(_RUNNING["sources"])
    return {f"pgolf/{rel}": slim_source((PACKAGE_DIR / rel).read_text(encoding="utf-8"))
            for rel in bundled_module_paths()}


@functools.lru_cache(maxsize=1)
def _code_blob() -> str:
    """base85(lzma(JSON of the module sources)), computed once per process."""
    payload = json.dumps(module_sources(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    packed = lzma.compress(payload.encode("utf-8"), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return base64.b85encode(packed).decode("ascii")


# ----------------------------------------------------------------------------- config

def config_delta(cfg: Config) -> dict[str, Any]:
    """The fields of `cfg` that differ from pgolf's defaults, as nested tables (what the script embeds)."""
    default = dataclasses.asdict(Config())
    current = dataclasses.asdict(cfg)
    delta: dict[str, Any] = {}
    for key, value in current.items():
        if key in SECTIONS:
            table = {k: v for k, v in value.items() if v != default[key][k]}
            if table:
                delta[key] = table
        elif value != default[key]:
            delta[key] = value
    return delta


def _config_literal(cfg: Config) -> str:
    text = tomli_w.dumps(config_delta(cfg))
    if "'''" in text or text.endswith("\\"):
        return repr(text)
    return "r'''\n" + text + "'''"


# ----------------------------------------------------------------------------- the script

_BOOTSTRAP = '''\
# train_gpt.py - {title}
# Generated by pgolf {version} from the config below; pgolf's runtime modules are packed in SOURCES
# (comments and docstrings dropped, line numbers kept) and imported from memory.
#   torchrun --standalone --nproc_per_node=8 train_gpt.py      (or: python train_gpt.py)
# Environment: DATA_PATH, TOKENIZER_PATH (default: the run's own), SEED, RUN_DIR (default: runs/<name>),
# PGOLF_SET="train.steps=100 eval.sliding_stride=0" (any config key), PGOLF_DEVICE (cpu or cuda).
import base64,importlib.abc,importlib.util,json,linecache,lzma,sys
CONFIG={config}
SOURCES=json.loads(lzma.decompress(base64.b85decode("{blob}"),format=lzma.FORMAT_RAW,filters=[{{"id":lzma.FILTER_LZMA2}}]))
class PackedModules(importlib.abc.MetaPathFinder,importlib.abc.Loader):
    def path(self,name):
        stem=name.replace(".","/")
        return next((p for p in (stem+"/__init__.py",stem+".py") if p in SOURCES),None)
    def find_spec(self,name,path=None,target=None):
        p=self.path(name) if name.split(".")[0]=="pgolf" else None
        return importlib.util.spec_from_loader(name,self,is_package=p.endswith("__init__.py")) if p else None
    def create_module(self,spec):
        return None
    def exec_module(self,module):
        p=self.path(module.__name__);f=module.__file__=__file__+"/"+p;src=SOURCES[p]
        linecache.cache[f]=(len(src),None,src.splitlines(True),f)
        exec(compile(src,f,"exec",dont_inherit=True),module.__dict__)
    def get_source(self,name):
        return SOURCES[self.path(name)]
sys.meta_path.insert(0,PackedModules())
if __name__=="__main__":
    from pgolf.training.bundle_entry import run_bundle
    sys.exit(run_bundle(CONFIG,__file__,SOURCES))
'''


def bundle_source(cfg: Config) -> str:
    """The complete text of the self-contained train_gpt.py for `cfg` (deterministic)."""
    title = f"pgolf recipe {Path(str(cfg.recipe)).name} (scale {cfg.scale}, seed {cfg.seed})"
    return _BOOTSTRAP.format(title=title.replace("\n", " "), version=__version__, config=_config_literal(cfg),
                             blob=_code_blob())


def code_bytes(cfg: Config) -> int:
    """Bytes of the train_gpt.py that carries `cfg`: the `code_bytes` of every result and artifact."""
    if _RUNNING is not None:
        return _RUNNING["script_bytes"]
    return len(bundle_source(cfg).encode("utf-8"))


def write_bundle(cfg: Config, path: str | Path) -> int:
    """Write train_gpt.py for `cfg` (UTF-8, '\\n' line ends); returns its size in bytes."""
    data = bundle_source(cfg).encode("utf-8")
    Path(path).write_bytes(data)
    return len(data)


# ----------------------------------------------------------------------------- requirements

def third_party_imports(sources: dict[str, str] | None = None) -> list[str]:
    """Top-level names of the non-standard-library modules the bundled sources import, sorted."""
    names: set[str] = set()
    for text in (sources or module_sources()).values():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names if n not in sys.stdlib_module_names and n not in ("pgolf", "__future__"))


def requirements() -> tuple[list[str], list[str]]:
    """(pinned requirement lines, imported modules with no installed distribution) for the bundled sources.

    Versions are those installed here, without local tags (a CUDA machine's `torch==X` gets its CUDA build).
    A module that is imported but not installed is an optional fast path guarded at run time; it is listed
    as a comment, not a requirement.
    """
    owners = metadata.packages_distributions()
    lines, missing = set(), []
    for module in third_party_imports():
        dists = owners.get(module)
        if not dists:
            missing.append(module)
            continue
        for dist in dists:
            version = metadata.version(dist).split("+")[0]
            lines.add(f"{dist}=={version}")
    return sorted(lines, key=str.lower), missing
