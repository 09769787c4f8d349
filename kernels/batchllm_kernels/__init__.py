"""Attention and layer kernels for batchllm: torch references (CPU path) and Triton kernels (GPU).

This package imports nothing of batchllm_cli.
"""

from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.ops import get_ops

__all__ = ["AttentionMetadata", "get_ops"]
