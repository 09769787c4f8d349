"""Picks the op implementations for a device: Triton kernels on CUDA, torch references elsewhere."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch


def get_ops(device: str | torch.device) -> ModuleType:
    """The module holding the ops contract's functions for `device`.

    CPU (and any non-CUDA device): `batchllm_kernels.reference`. CUDA: `batchllm_kernels.triton_ops`
    when that module exists, else the reference (slow but correct). A triton_ops that exists but
    fails to import is a bug and raises.
    """
    from batchllm_kernels import reference

    if torch.device(device).type != "cuda":
        return reference
    if importlib.util.find_spec("batchllm_kernels.triton_ops") is None:
        return reference
    return importlib.import_module("batchllm_kernels.triton_ops")
