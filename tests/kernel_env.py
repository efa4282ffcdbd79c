"""Import the training kernels so that tests can run them: on CUDA as compiled, elsewhere under Triton's CPU
interpreter (TRITON_INTERPRET=1, which tests/conftest.py sets before triton is first imported: triton decides at
its own import whether its standard library's @jit functions are interpreted).

Two gaps of the interpreter (triton 3.x) are bridged for liger-kernel's cross-entropy kernel while a test runs
(`interpreter_shims`); neither exists on a GPU, where benchmarks/kernels_gpu.py checks the compiled kernels:
- a Python float argument reaches the kernel as a Python float (the compiled path passes an fp32 scalar), so
  liger's `softcap.to(tl.float32)` fails: floats are passed as fp32 scalars;
- libdevice's tanh is CUDA-only: it is replaced by tanh(x) = 2 sigmoid(2x) - 1.
The interpreter's bf16 tl.dot is also wrong (numpy has no bf16), so CPU tests run the kernels in fp32.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np
import torch
from conftest import need

try:
    import liger_kernel.ops.cross_entropy as liger_ce
    import triton
    import triton.language as tl
    import triton.runtime.interpreter as interp
except ImportError as err:
    MISSING: ImportError | None = err
else:
    MISSING = None

    @triton.jit
    def _tanh(x):  # module level: an interpreted @jit function must see triton.language in its globals
        return 2 * tl.sigmoid(2 * x) - 1

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def import_kernels():
    """(mlp_triton, ce_liger) modules; a clear skip (a failure under CI=true) if triton / liger-kernel are missing."""
    need(MISSING is None, f"{getattr(MISSING, 'name', '')} is not installed: pip install -e '.[kernels]'", module=True)
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("no CUDA device and TRITON_INTERPRET is not 1: tests/conftest.py sets it before triton loads")
    return (importlib.import_module("pgolf.model.kernels.mlp_triton"),
            importlib.import_module("pgolf.model.kernels.ce_liger"))


@contextlib.contextmanager
def interpreter_shims():
    """The two interpreter bridges above, for the duration of the block (nothing on CUDA)."""
    if CUDA:
        yield
        return
    original_cvt, original_tanh = interp._implicit_cvt, liger_ce.tanh

    def cvt(arg):
        if isinstance(arg, float):
            return tl.tensor(interp.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return original_cvt(arg)

    interp._implicit_cvt, liger_ce.tanh = cvt, _tanh
    try:
        yield
    finally:
        interp._implicit_cvt, liger_ce.tanh = original_cvt, original_tanh
