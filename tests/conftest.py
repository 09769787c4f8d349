"""Suite-wide test settings: the `gpu` marker skips cleanly where no CUDA device is present,
and there Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined (batchllm_kernels
defines some helpers at import), so it is set here, before any test module is collected: a
module that imports the kernels indirectly cannot define them for the wrong mode.
"""

import os

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
