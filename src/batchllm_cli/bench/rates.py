"""The device's ceilings, measured at the start of a bench: a square matmul and a device copy.

On CUDA: a bf16 (the run's dtype) 8192^3 matmul and a 1 GiB copy, timed with CUDA events after a
warm-up, best of a few. On a CPU the same test, smaller (a 1024^3 matmul, a 256 MiB copy), in
the run's dtype: a CPU run is bound by its host overhead far more than by these rates, so its
roofline fraction reads low.
"""

from __future__ import annotations

import time
from typing import Callable

from batchllm_cli.bench.roofline import DeviceRates

CUDA_MATMUL_N = 8192
CUDA_COPY_BYTES = 1 << 30
CPU_MATMUL_N = 1024
CPU_COPY_BYTES = 256 << 20
TRIALS = 5  # best of: the ceiling, not the average under noise


def measure_rates(device: str, dtype: str) -> DeviceRates:
    """Matmul FLOP/s and copy bytes/s (read + write) of `device` in `dtype`."""
    import torch

    from batchllm_cli.models.config import to_dtype

    cuda = device.startswith("cuda")
    n = CUDA_MATMUL_N if cuda else CPU_MATMUL_N
    nbytes = CUDA_COPY_BYTES if cuda else CPU_COPY_BYTES
    dt, dev = to_dtype(dtype), torch.device(device)
    matmul_s = _matmul_s(n, dt, dev, cuda)
    copy_s = _copy_s(nbytes, dt, dev, cuda)
    if cuda:
        torch.cuda.empty_cache()
    note = f"{dtype} {n}^3 matmul, {nbytes >> 20} MiB copy, best of {TRIALS}"
    return DeviceRates(2 * n**3 / matmul_s, 2 * nbytes / copy_s, dtype, note)


def _matmul_s(n: int, dt: object, dev: object, cuda: bool) -> float:
    import torch

    a = torch.randn(n, n, dtype=dt, device=dev)
    b = torch.randn(n, n, dtype=dt, device=dev)
    return _best_time(lambda: torch.mm(a, b), cuda)


def _copy_s(nbytes: int, dt: object, dev: object, cuda: bool) -> float:
    import torch

    x = torch.ones(nbytes // torch.empty((), dtype=dt).element_size(), dtype=dt, device=dev)
    y = torch.empty_like(x)
    return _best_time(lambda: y.copy_(x), cuda)


def _best_time(fn: Callable[[], object], cuda: bool) -> float:
    import torch

    fn()  # first call: kernel selection, allocation
    best = float("inf")
    for _ in range(TRIALS):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best
