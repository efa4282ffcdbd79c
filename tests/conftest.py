"""Shared fixtures: the real FineWeb sample from ../shared/data and tiny configs.

A test that needs the shared data asks for it through `need_shared_data` (or the `shared_data` fixture): when a
file is missing it is skipped with the reason, except under CI (CI=true), where it fails: CI must run it.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from safetensors.torch import save_file

# The Triton training kernels (tests/test_kernels.py) run under Triton's CPU interpreter where there is no GPU.
# triton reads the switch when it is first imported (torch._dynamo imports it), so it is set before anything can.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pgolf  # noqa: E402
from pgolf.data.shards import write_shard  # noqa: E402
from pgolf.training.runs import save_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
SP1024_DIR = SHARED / "datasets" / "fineweb10B_sp1024_sample"
SP1024_MODEL = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
VAL_SHARD = SP1024_DIR / "fineweb_val_000000.bin"
VAL_DOCS_JSONL = SHARED / "fineweb" / "val_prefix_docs_sp1024_decoded.jsonl"
VAL_DOCS_BYTES = 1_634_550  # UTF-8 bytes of those 600 documents (shared/data/README.md)
RAW_DOCS_JSONL = SHARED / "fineweb" / "docs_sample_200.jsonl"
# #1855's CaseOps sp8192 (the record folder's tokenizers/…_caseops_v1_reserved.model; operators at ids 4-7).
CASEOPS_8192_MODEL = SHARED / "tokenizers" / "alt" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
# The challenge exporter's byte260 tokenizer file (its PureByteTokenizer.save_json output), byte for byte.
BYTE260_JSON = ('{\n  "config": {\n    "bos_id": 1,\n    "byte_count": 256,\n    "byte_offset": 4,\n    "eos_id": 2,\n'
                '    "pad_id": 0,\n    "unk_id": 3\n  },\n  "tokenizer_type": "pure_byte",\n  "vocab_size": 260\n}\n')

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(ok: bool, reason: str, module: bool = False) -> None:
    """Skip the calling test (`module`: the whole test module, at import) with `reason` when a prerequisite of the
    machine is missing (`ok` false: the shared data, a system tool or package CI installs, Linux); fail under CI,
    which must run every test."""
    if ok:
        return
    if under_ci():
        pytest.fail(f"CI=true and a prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def need_shared_data(*paths: Path) -> None:
    """Skip the calling test when one of `paths` (files or folders of the shared data) is missing; fail under CI."""
    missing = [p for p in paths if not p.exists()]
    need(not missing, f"needs {missing[0] if missing else ''} from the project's shared data ({SHARED}; set "
                      f"PGOLF_SHARED_DATA to its data folder)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder, with the FineWeb sp1024 sample and tokenizer in it."""
    need_shared_data(VAL_SHARD, SP1024_MODEL)
    return SHARED


# Small enough to train a few steps in seconds on one CPU core.
MICRO = {
    "model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
    "train.steps": 6, "train.batch_tokens": 512, "train.seq_len": 64, "train.micro_batch_tokens": 512,
    "train.log_every": 2, "optim.muon_momentum_warmup_steps": 3, "train.warmdown": "frac",
    "train.warmdown_frac": 0.5, "data.val_tokens_limit": 4097,
}


def micro_config(recipe: str = "baseline", **overrides) -> pgolf.Config:
    """A recipe at scale tiny, shrunk further, on the sp1024 sample; overrides use '__' for '.'."""
    over = dict(MICRO)
    over.update({"data.path": str(SP1024_DIR), "data.tokenizer": str(SP1024_MODEL)})
    over.update({k.replace("__", "."): v for k, v in overrides.items()})
    return pgolf.load_recipe(recipe, scale="tiny", overrides=over)


# A recipe at scale tiny with narrower layers, short sequences and light calibration / test-time training; its
# depth and switches stay (layer schedules, value-embedding layers and parallel lanes name physical layers).
MICRO_RECIPE = {
    "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2, "train.steps": 2,
    "train.batch_tokens": 512, "train.seq_len": 64, "train.micro_batch_tokens": 512, "train.compile_priming_steps": 0,
    "data.val_tokens_limit": 2049, "eval.context_len": 0,
    "quant.gptq_calib_batches": 4, "eval.ttt_epochs": 1, "eval.ttt_lora_rank": 4,  # the same stages, less work
}


@functools.lru_cache(maxsize=1)
def caseops_sample() -> Path:
    """CaseOps shards (and byte sidecar) of the shared FineWeb documents with the record's CaseOps sp8192: the
    600 validation documents, then the 200 training ones; made once per test process in a temporary folder."""
    from pgolf.data.prepare import prepare_documents

    need_shared_data(VAL_DOCS_JSONL, RAW_DOCS_JSONL, CASEOPS_8192_MODEL)
    val = [json.loads(line)["text"] for line in VAL_DOCS_JSONL.read_text().splitlines()]
    train = [json.loads(line)["text"] for line in RAW_DOCS_JSONL.read_text().splitlines()]
    folder = Path(tempfile.mkdtemp(prefix="pgolf-caseops-")) / "caseops_sample"
    prepare_documents(val + train, folder, tokenizer=CASEOPS_8192_MODEL, val_docs=len(val), progress=False,
                      transform="caseops")
    return folder


def recipe_data(recipe: str) -> tuple[Path, Path]:
    """(data folder, tokenizer) a shipped recipe trains on at tiny scale: the FineWeb sample of its vocabulary,
    or for a CaseOps recipe (pr1855) caseops_sample()."""
    cfg = pgolf.load_recipe(recipe, scale="tiny")
    if cfg.data.text_transform == "caseops":
        folder = caseops_sample()
        return folder, folder / "tokenizer.model"
    vocab = cfg.model.vocab_size
    return (SHARED / "datasets" / f"fineweb10B_sp{vocab}_sample",
            SHARED / "tokenizers" / f"fineweb_{vocab}_bpe.model")


def micro_recipe(recipe: str, **overrides) -> pgolf.Config:
    """A shipped recipe shrunk by MICRO_RECIPE, on the FineWeb sample and tokenizer of its own vocabulary
    (CaseOps shards of it for a CaseOps recipe)."""
    data, tokenizer = recipe_data(recipe)
    over = dict(MICRO_RECIPE)
    over.update({"data.path": str(data), "data.tokenizer": str(tokenizer)})
    over.update({k.replace("__", "."): v for k, v in overrides.items()})
    return pgolf.load_recipe(recipe, scale="tiny", overrides=over)


@pytest.fixture
def micro(shared_data):
    return micro_config


def random_stream(n: int, vocab: int, seed: int = 0, bos_every: int = 50, bos_id: int = 1) -> np.ndarray:
    """A token stream with BOS at regular document starts."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(2, vocab, size=n).astype(np.uint16)
    toks[::bos_every] = bos_id
    return toks


@pytest.fixture
def synthetic_shards(tmp_path):
    """A data folder with random train/val shards of vocab 1024 (no tokenizer)."""
    folder = tmp_path / "data"
    write_shard(folder / "fineweb_train_000000.bin", random_stream(20_000, 1024, 1))
    write_shard(folder / "fineweb_val_000000.bin", random_stream(5_000, 1024, 2))
    return folder


def write_run_folder(folder: Path, cfg: pgolf.Config, model: torch.nn.Module) -> Path:
    """A run folder as training leaves it: config.toml + model.safetensors (the weights need not be trained)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.toml")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder
