"""One self-contained `train_gpt.py` per config: the pgolf modules the config uses and the config, in one file.

The challenge counts the bytes of the submitted `train_gpt.py`, so pgolf counts exactly that file: `code_bytes`
in every result.json is `len(bundle_bytes(cfg))`, the size of the script `pgolf submit` writes.

What goes in (pgolf.artifact.shipping): the modules the entry point imports and the optional technique modules
the config switches on, specialised to the config (pgolf.artifact.specialise: provable reads of its switches
become constants and the branches they decide are folded away), then pruned of the definitions nothing carried
uses. The keys the code was specialised on that the environment may set travel in the payload (segment
`FROZEN_SEGMENT`, after the modules; `checked_frozen`); the script refuses an environment override that gives
one of them another value (and any override of another key), naming the key,
its frozen value and how to rebuild (pgolf.training.bundle_entry.check_frozen). The specialisation values are
read from the config the script will load (`_key`: its embedded delta read back onto the defaults). Each module is minified with
python-minifier (pgolf.artifact.minify), module-level constants that no other carried module reaches shortened too
(`kept_globals`); the sources are joined behind the importer (BOOT, NUL, path, NUL, source, ...), bz2-compressed
(smaller than raw LZMA2 on every recipe, measured in benchmarks/budget.py) and stored in the script's last line;
a two-line bootstrap reads them back from the script file and runs the importer, which imports them from memory
(a meta-path importer that answers for every `pgolf.*` name: nothing is written to disk and an installed pgolf
is never mixed in) and trains the embedded config. The config is embedded as readable TOML
holding only the fields that differ from pgolf's defaults (`compact_toml`: key=value lines, arrays inline).

How the compressed bytes are stored (`ENCODINGS`; both measured in benchmarks/budget.py): "raw", the default,
puts them in a raw string literal of a latin-1 source file, escaping as backslash pairs the five bytes such a
literal cannot hold (NUL, LF, CR, the quote, the backslash): about 2% over the compressed size. "base85" is the
usual printable wrapper: 25% over. Either way the data sits on one physical line, so line-ending conversions
cannot damage it.

Minified modules move lines: `linemap(cfg)` maps each line of each carried module back to the repository file
and line (pgolf.artifact.linemap); `pgolf submit` writes it next to the script, outside the counted file.

The output is deterministic: the same sources, config and python-minifier release give the same bytes.
Specialising, pruning and minifying are cached per process (by the optional modules a config uses and its
specialisation values, and by module tree), so costing many configs with the same switches stays cheap.
"""

from __future__ import annotations

import ast
import base64
import bz2
import copy
import dataclasses
import functools
import hashlib
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from .._version import __version__
from ..config import Config, config_delta, config_from_dict
from ..config.optional import needed_optional_modules, optional_module
from ..data.dataset import default_tokenizer
from .linemap import make_linemap, write_linemap
from .minify import LineMap, minify_tree
from .shipping import ENTRY_USES, carried_trees, entry_runtime_keys, used_names
from .specialise import candidate_values

ENCODINGS = ("raw", "base85")
DEFAULT_ENCODING = "raw"
RAW_ESCAPES = {0x00: b"0", 0x0A: b"n", 0x0D: b"r", 0x27: b"q", 0x5C: b"\\"}  # byte -> letter after a backslash
BLOB_PREFIX = b"\n_=r'"  # the script's last line: _=r'<escaped data>'  (base85: _=b'<text>')


# ----------------------------------------------------------------------------- the carried sources

@dataclasses.dataclass(frozen=True)
class Carried:
    path: str        # 'pgolf/eval/bpb.py'
    source: str      # minified source, as the script carries it
    lines: LineMap   # per minified line: [(column, original line), ...]


FROZEN_SEGMENT = "frozen keys"  # the payload's segment naming the keys the modules were specialised on


@functools.lru_cache(maxsize=32)
def _carried(optional: tuple[str, ...], values: tuple[tuple[str, Any], ...]) -> tuple[tuple[Carried, ...], tuple[str, ...]]:
    pruned = carried_trees(optional, {k: list(v) if isinstance(v, tuple) else v for k, v in values})
    keep = kept_globals(pruned.trees)
    modules = tuple(Carried(f"pgolf/{rel}", *_minified(pruned.trees[rel], keep[rel])) for rel in sorted(pruned.trees))
    return modules, tuple(pruned.frozen)


def carried_modules(optional: tuple[str, ...], values: tuple[tuple[str, Any], ...] = ()) -> tuple[Carried, ...]:
    """The minified modules a script carries for a config using the optional modules `optional`, by path,
    specialised to the frozen `values` ((key, value) pairs, lists as tuples; () = not specialised)."""
    return _carried(optional, values)[0]


def _key(cfg: Config) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """(optional modules, specialisation values) of `cfg`'s script: the values are read from the config the
    script will load (its embedded delta read back onto the defaults), so they are what its code will see."""
    embedded = script_config(cfg)
    loaded = config_from_dict(tomllib.loads(tomli_w.dumps(config_delta(embedded))), "embedded config")
    values = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(candidate_values(loaded).items()))
    return tuple(needed_optional_modules(embedded)), values


def frozen_keys(cfg: Config) -> tuple[str, ...]:
    """The config keys `cfg`'s script was specialised on (its code read them as constants), sorted."""
    return _carried(*_key(cfg))[1]


def kept_globals(trees: dict[str, ast.Module]) -> dict[str, frozenset[str]]:
    """Per module, the module-level names minification must keep: every name another carried module may use
    (names, attributes, imported names, identifier strings: shipping.used_names), the module's own attributes
    and identifier strings (getattr, __all__), the names of top-level functions and classes (tracebacks print
    them; exception names are part of messages) and what the script's bootstrap calls. The rest (constants,
    imported names) are private to their module and renamed."""
    uses = {rel: used_names(tree) for rel, tree in trees.items()}
    count: dict[str, int] = {}
    for names in uses.values():
        for name in names:
            count[name] = count.get(name, 0) + 1
    keep = {}
    for rel, tree in trees.items():
        own = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        own |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and n.value.isidentifier()}
        own |= {s.name for s in tree.body if isinstance(s, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
        others = {n for n in uses[rel] if count[n] > 1} | {n for n in count if n not in uses[rel]}
        keep[rel] = frozenset(others | own | ENTRY_USES)
    return keep


_MINIFIED: dict[str, tuple[str, LineMap]] = {}


def _minified(tree: ast.Module, keep: frozenset[str]) -> tuple[str, LineMap]:
    """minify_tree, cached by the tree (with line numbers: the line map depends on them) and the names kept."""
    key = hashlib.sha256((ast.dump(tree, include_attributes=True) + repr(sorted(keep))).encode("utf-8")).hexdigest()
    if key not in _MINIFIED:
        _MINIFIED[key] = minify_tree(tree, keep)
    return _MINIFIED[key]


def modules_for(cfg: Config) -> tuple[Carried, ...]:
    return _carried(*_key(cfg))[0]


def module_sources(cfg: Config) -> dict[str, str]:
    """{'pgolf/config/schema.py': minified source, ...}: exactly what `cfg`'s train_gpt.py carries."""
    return {m.path: m.source for m in modules_for(cfg)}


@functools.lru_cache(maxsize=32)
def _compressed(optional: tuple[str, ...], values: tuple[tuple[str, Any], ...]) -> bytes:
    modules, frozen = _carried(optional, values)
    return bz2.compress(joined_sources(modules, frozen).encode("utf-8"), 9)


def checked_frozen(frozen: tuple[str, ...]) -> tuple[str, ...]:
    """The frozen keys a script must check: those the environment may set (bundle_entry.RUNTIME_KEYS). The
    script refuses every other key before it compares frozen values, so listing them would only cost bytes."""
    runtime = entry_runtime_keys()
    return tuple(k for k in frozen if k in runtime)


def joined_sources(modules: tuple[Carried, ...], frozen: tuple[str, ...] = ()) -> str:
    """What the payload compresses: the bootstrap's importer, then NUL, path, NUL, source for every module, then
    NUL, FROZEN_SEGMENT, NUL and the frozen keys the script checks (`checked_frozen`) separated by spaces (when
    there are any)."""
    frozen = checked_frozen(frozen)
    tail = f"\0{FROZEN_SEGMENT}\0{' '.join(frozen)}" if frozen else ""
    return BOOT + "".join(f"\0{m.path}\0{m.source}" for m in modules) + tail


def compressed_sources(cfg: Config) -> bytes:
    """bz2 of the joined carried sources (BOOT first)."""
    return _compressed(*_key(cfg))


def escape_raw(data: bytes) -> bytes:
    """The bytes as the body of a raw one-line string literal: NUL, LF, CR, ' and \\ become \\0 \\n \\r \\q \\\\."""
    return re.sub(rb"[\x00\n\r'\\]", lambda m: b"\\" + RAW_ESCAPES[m[0][0]], data)


def unescape_raw(text: bytes) -> bytes:
    """Inverse of escape_raw (the bootstrap runs the same expression)."""
    letters = {v: bytes([k]) for k, v in RAW_ESCAPES.items()}
    return re.sub(rb"\\(.)", lambda m: letters[m[1]], text, flags=re.S)


# ----------------------------------------------------------------------------- config

def script_config(cfg: Config) -> Config:
    """The config a script embeds: `cfg` with its data paths resolved as the trainer resolves them.

    A train_gpt.py trains on the data folder its config names (or DATA_PATH); it never prepares pgolf's
    embedded corpus, so a config that uses the corpus (data.path = '') names the corpus folder instead, as its
    run's config.toml does. Pricing a recipe therefore gives the code bytes its run will record.
    """
    out = copy.deepcopy(cfg)
    corpus = optional_module("pgolf.data.corpus", cfg.data)
    if corpus is not None:
        folder = corpus.corpus_dir()
        out.data.path = str(folder)
        out.data.tokenizer = out.data.tokenizer or str(folder / "tokenizer.model")  # what preparing it writes
    if not out.data.tokenizer:
        out.data.tokenizer = str(default_tokenizer(Path(out.data.path), out.model.vocab_size))
    out.data.path = str(Path(out.data.path))
    return out


def compact_toml(table: dict[str, Any]) -> str:
    """`table` (a config delta: top-level values, then one level of tables) as short, readable TOML: one
    `key=value` line per setting, arrays inline, no blank lines. The text reads back as `table` (checked; if it
    could not, tomli_w's own layout is used)."""
    def line(key: str, value: Any) -> str:
        if isinstance(value, list):
            items = [tomli_w.dumps({"v": v})[4:-1] for v in value]
            if all("\n" not in i for i in items):
                return f"{key}=[{','.join(items)}]"
        one = tomli_w.dumps({key: value})
        return one[:-1].replace(" = ", "=", 1) if one.count("\n") == 1 else one[:-1]
    lines = [line(k, v) for k, v in table.items() if not isinstance(v, dict)]
    for name, section in table.items():
        if isinstance(section, dict):
            lines += [f"[{name}]"] + [line(k, v) for k, v in section.items()]
    text = "\n".join(lines) + "\n"
    return text if tomllib.loads(text) == table else tomli_w.dumps(table)


def _config_literal(cfg: Config) -> str:
    """The delta as a Python literal of ASCII text: readable TOML in r'''...''' when it can be, else escaped."""
    text = compact_toml(config_delta(cfg))
    if "'''" in text or text.endswith("\\") or not text.isascii():
        return ascii(text)
    return "r'''\n" + text + "'''"


# ----------------------------------------------------------------------------- the script

_HEADER = """\
# {title} by pgolf {version}: its modules are bz2'd in the last line ({encoding}); pgolf traceback maps errors
import bz2,{imports}
CONFIG={config}
d=open(__file__,"rb").read();d=bz2.decompress({decode}).decode().split("\\0")
SOURCES=dict(zip(d[1::2],d[2::2]));exec(d[0])
"""
# The bootstrap's importer, carried compressed ahead of the modules (the first segment of the payload) and run
# by the script's exec(d[0]) in its own namespace. `I` is a meta-path finder (find_spec) and a loader (Loader's
# create_module, exec_module) of pgolf.* from SOURCES only, never an installed pgolf; the excepthook prints
# tracebacks through linecache, so they show the carried lines.
BOOT = """\
import importlib.abc as A,importlib.util as U,linecache
class I(A.Loader):
 def find_spec(s,n,*a):
  if n.split(".")[0]!="pgolf":return
  q=n.replace(".","/");q=next((x for x in(q+"/__init__.py",q+".py")if x in SOURCES),"")
  if not q:raise ModuleNotFoundError(n+" is not carried by this train_gpt.py",name=n)
  return U.spec_from_loader(n,s,origin=__file__+"/"+q,is_package=q.endswith("__init__.py"))
 def exec_module(s,m):
  f=m.__file__=m.__spec__.origin;c=SOURCES[f[len(__file__)+1:]];linecache.cache[f]=(len(c),None,c.splitlines(1),f)
  exec(compile(c,f,"exec",dont_inherit=1),m.__dict__)
sys.meta_path.insert(0,I())
sys.excepthook=lambda*e:__import__("traceback").print_exception(*e)
if __name__=="__main__":
 from pgolf.training.bundle_entry import run_bundle;sys.exit(run_bundle(CONFIG,__file__,SOURCES))
"""
_DECODE = {
    # between the last line's opening quote and the file's last quote (so a CRLF or trailing blank is harmless)
    "raw": ("re,sys", "re.sub(rb'\\\\(.)',lambda m:b\"\\0\\n\\r'\\\\\"[b'0nrq\\\\'.index(m[1]):][:1],"
                      "d[d.rindex(b\"\\n_=r'\")+5:d.rindex(b\"'\")],flags=re.S)"),
    "base85": ("base64,sys", "base64.b85decode(d[d.rindex(b\"\\n_=b'\")+5:d.rindex(b\"'\")])"),
}


def bundle_bytes(cfg: Config, encoding: str = DEFAULT_ENCODING) -> bytes:
    """The complete train_gpt.py for `cfg`, as the bytes written (deterministic)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    imports, decode = _DECODE[encoding]
    cfg = script_config(cfg)
    title = f"{Path(str(cfg.recipe)).name} ({cfg.scale}, seed {cfg.seed})"
    header = _HEADER.format(title=ascii(title)[1:-1], version=__version__, config=_config_literal(cfg),
                            encoding=encoding, imports=imports, decode=decode).encode("ascii")
    data = compressed_sources(cfg)
    if encoding == "raw":
        return b"# -*- coding: latin-1 -*-\n" + header + b"_=r'" + escape_raw(data) + b"'\n"
    return header + b"_=b'" + base64.b85encode(data) + b"'\n"


def code_bytes(cfg: Config) -> int:
    """Bytes of the train_gpt.py that carries `cfg`: the `code_bytes` of every result and artifact."""
    return len(bundle_bytes(cfg))


def linemap(cfg: Config) -> dict[str, Any]:
    """Where each line of each module `cfg`'s script carries comes from (format: pgolf.artifact.linemap)."""
    return make_linemap(bundle_bytes(cfg), [(m.path, m.lines) for m in modules_for(cfg)], __version__)


def write_bundle(cfg: Config, path: str | Path, linemap_path: str | Path | None = None) -> int:
    """Write train_gpt.py for `cfg` (and its line map, when asked); returns the script's size in bytes."""
    data = bundle_bytes(cfg)
    Path(path).write_bytes(data)
    if linemap_path is not None:
        write_linemap(linemap(cfg), linemap_path)
    return len(data)


# ----------------------------------------------------------------------------- requirements

def third_party_imports(sources: dict[str, str]) -> list[str]:
    """Top-level names of the non-standard-library modules `sources` import, sorted."""
    names: set[str] = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names if n not in sys.stdlib_module_names and n not in ("pgolf", "__future__"))


def requirements(cfg: Config) -> tuple[list[str], list[str]]:
    """(pinned requirement lines, imported modules with no installed distribution) for `cfg`'s script.

    Versions are those installed here, without local tags (a CUDA machine's `torch==X` gets its CUDA build).
    A module that is imported but not installed is an optional fast path guarded at run time; it is listed
    as a comment, not a requirement.
    """
    owners = metadata.packages_distributions()
    lines, missing = set(), []
    for module in third_party_imports(module_sources(cfg)):
        dists = owners.get(module)
        if not dists:
            missing.append(module)
            continue
        for dist in dists:
            version = metadata.version(dist).split("+")[0]
            lines.add(f"{dist}=={version}")
    return sorted(lines, key=str.lower), missing

