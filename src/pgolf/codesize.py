"""Bytes of code counted in the artifact size.

The challenge counts the bytes of the code that runs the model. pgolf counts the UTF-8 source of every module
needed to load an artifact and evaluate it (config, model, unpack, byte-exact evaluation); `pgolf submit`
replaces this with the size of the single self-contained train_gpt.py it writes.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).parent
RUNTIME_MODULES = (
    "__init__.py", "config.py", "codesize.py",
    "model/__init__.py", "model/layers.py", "model/attention.py", "model/mlp.py", "model/embeddings.py", "model/gpt.py",
    "quant/__init__.py", "quant/quantize.py", "quant/bitpack.py", "quant/container.py", "quant/compress.py", "quant/pack.py",
    "data/__init__.py", "data/shards.py", "data/tokenizer.py",
    "eval/__init__.py", "eval/bpb.py",
)


def runtime_code_bytes() -> int:
    return sum((PACKAGE / rel).stat().st_size for rel in RUNTIME_MODULES)
