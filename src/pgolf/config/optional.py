"""Optional technique modules: which config value pulls in which module (the one dispatch point).

A module listed here implements a technique that a config may leave off. Code reaches it only through
`optional_module` / `require_module` with the config section that decides it, never by a plain import, so:
- the generated train_gpt.py (pgolf.artifact.shipping) carries exactly the modules whose `needed` holds for
  the run's config, plus the static imports of what it carries — a technique that is off is not shipped;
- loading a module for a section that does not need it is an error here, in the package, in every test, so a
  config can never need a module that its train_gpt.py left out.

A few modules every package run uses are optional only in a script (`package=True`): the package always loads
them, a train_gpt.py (which calls `enter_script` first) carries and loads them only when `needed` holds. They are
the run-folder extras a script does without (pgolf.training.report: loss.png, the printed summary), checkpoints
(a script never resumes; it writes them only when its config asks for them) and the budget check before a run
(pgolf.artifact.budget: a script's config was checked when it was built, and the environment may not change its
size: pgolf.training.bundle_entry.RUNTIME_KEYS).

The modules are imported with importlib (the registry names them as strings): a static import would make them
part of every bundle. tests/test_submit.py checks that no other module imports them and that each dispatch
point sits in the module's own layer or above it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from .schema import SECTIONS


BYTE260 = "byte260"  # the name of the challenge's pure-byte tokenizer, wherever pgolf takes a tokenizer path


def names_byte_tokenizer(spec: str) -> bool:
    """Whether a tokenizer path names the pure-byte tokenizer: "byte260" or a .json file (the exporter's format)."""
    return str(spec) == BYTE260 or str(spec).endswith(".json")


@dataclass(frozen=True)
class OptionalModule:
    name: str                      # dotted module name, 'pgolf.eval.ttt_lora'
    section: str                   # the config section `needed` reads: 'eval', 'quant', ...
    needed: Callable[[Any], bool]  # section config -> the module is used
    switch: str                    # the setting that pulls it in, for messages and the README
    package: bool = False          # always loaded in the package; `needed` decides only inside a train_gpt.py


OPTIONAL_MODULES: tuple[OptionalModule, ...] = (
    OptionalModule("pgolf.data.corpus", "data", lambda d: not d.path, "data.path = '' (the embedded corpus)"),
    OptionalModule("pgolf.data.caseops", "data", lambda d: d.text_transform == "caseops", "data.text_transform = 'caseops'"),
    OptionalModule("pgolf.data.byte_tokenizer", "data", lambda d: names_byte_tokenizer(d.tokenizer),
                   "data.tokenizer = 'byte260' or a pure-byte .json"),
    OptionalModule("pgolf.data.coprime", "data", lambda d: d.loader == "coprime", "data.loader = 'coprime'"),
    OptionalModule("pgolf.eval.modes", "eval",
                   lambda e: (e.ttt != "none" or e.sliding_stride > 0 or e.doc_boundaries or e.max_seconds > 0
                              or e.plain_windows != "fixed"),
                   "eval.ttt, eval.sliding_stride, eval.doc_boundaries, eval.plain_windows or eval.max_seconds"),
    OptionalModule("pgolf.eval.ttt_chunk", "eval", lambda e: e.ttt == "chunk", "eval.ttt = 'chunk'"),
    OptionalModule("pgolf.eval.ttt_lora", "eval", lambda e: e.ttt == "lora", "eval.ttt = 'lora'"),
    OptionalModule("pgolf.eval.ttt_phased", "eval", lambda e: e.ttt == "lora" and bool(e.ttt_global_phase_docs),
                   "eval.ttt = 'lora' with eval.ttt_global_phase_docs"),
    OptionalModule("pgolf.eval.ttt_pre", "eval", lambda e: e.ttt == "pre", "eval.ttt = 'pre'"),
    OptionalModule("pgolf.quant.gptq", "quant", lambda q: "gptq" in (q.method, q.embed_method),
                   "quant.method or quant.embed_method = 'gptq'"),
    OptionalModule("pgolf.quant.fit", "quant", lambda q: q.fit, "quant.fit = true"),
    OptionalModule("pgolf.model.decode", "quant",
                   lambda q: "gptq" in (q.method, q.embed_method) and q.gptq_calib_source == "generated",
                   "quant.gptq_calib_source = 'generated' with GPTQ"),
    OptionalModule("pgolf.quant.lqer", "quant", lambda q: q.lqer_rank > 0, "quant.lqer_rank > 0"),
    OptionalModule("pgolf.quant.pergroup", "quant", lambda q: q.compressor == "pergroup", "quant.compressor = 'pergroup'"),
    OptionalModule("pgolf.quant.qat", "quant", lambda q: q.qat != "none", "quant.qat = 'always' or 'late'"),
    OptionalModule("pgolf.model.kernels.mlp_triton", "train", lambda t: t.fused_mlp == "triton",
                   "train.fused_mlp = 'triton'"),
    OptionalModule("pgolf.model.kernels.ce_liger", "train", lambda t: t.fused_ce == "liger", "train.fused_ce = 'liger'"),
    OptionalModule("pgolf.training.fastpath", "train", lambda t: t.check_fast_paths, "train.check_fast_paths = true"),
    OptionalModule("pgolf.training.checkpoint", "train", lambda t: t.checkpoint_every > 0 or t.keep_checkpoint,
                   "train.checkpoint_every > 0 or train.keep_checkpoint = true (in the package: always)", package=True),
    OptionalModule("pgolf.training.report", "train", lambda t: False, "pgolf itself (never in a train_gpt.py)",
                   package=True),
    # a script's config was budget-checked when built, and the environment cannot change its size (RUNTIME_KEYS)
    OptionalModule("pgolf.artifact.budget", "quant", lambda q: False, "pgolf itself (never in a train_gpt.py)",
                   package=True),
)
_BY_NAME = {m.name: m for m in OPTIONAL_MODULES}


_IN_SCRIPT = [False]  # set by a generated train_gpt.py's entry point (pgolf.training.bundle_entry)


def enter_script() -> None:
    """Called first by a generated train_gpt.py: from now on `package` modules load only when `needed`."""
    _IN_SCRIPT[0] = True


class OptionalModuleError(RuntimeError):
    """Code asked for an optional module with a config that does not use it (the registry above is wrong)."""


def _entry(name: str, section_cfg: Any) -> OptionalModule:
    entry = _BY_NAME.get(name)
    if entry is None:
        raise OptionalModuleError(f"{name} is not in pgolf.config.optional.OPTIONAL_MODULES")
    if not isinstance(section_cfg, SECTIONS[entry.section]):
        raise OptionalModuleError(f"{name} is decided by the [{entry.section}] section, got {type(section_cfg).__name__}")
    return entry


def optional_module(name: str, section_cfg: Any) -> ModuleType | None:
    """The module when `section_cfg` switches its technique on, else None."""
    entry = _entry(name, section_cfg)
    used = entry.needed(section_cfg) or (entry.package and not _IN_SCRIPT[0])
    return importlib.import_module(name) if used else None


def require_module(name: str, section_cfg: Any) -> ModuleType:
    """The module, for code that only runs with the technique on; an error if the section leaves it off."""
    module = optional_module(name, section_cfg)
    if module is None:
        raise OptionalModuleError(f"{name} is needed here, but the config leaves it off ({_BY_NAME[name].switch} "
                                  f"pulls it in): fix pgolf.config.optional.OPTIONAL_MODULES or the caller")
    return module


def needed_optional_modules(cfg: Any) -> list[str]:
    """Dotted names of the optional modules `cfg` (a whole Config) uses, in registry order."""
    return [m.name for m in OPTIONAL_MODULES if m.needed(getattr(cfg, m.section))]
