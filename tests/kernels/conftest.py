"""Kernel tests: without a CUDA device, Triton kernels run in Triton's CPU interpreter
(TRITON_INTERPRET, set by tests/conftest.py before any test module imports the kernels)."""
