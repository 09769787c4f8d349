"""`bench --profile`: one extra run of a system under the torch profiler, outside the timing.

On CUDA it records CUDA activity only (kernels and copies on the GPU) and reports the GPU's busy
time over the wall time and the kernels that took longest; a run whose GPU time is a small
share of its wall time is bound by the host. On a CPU it records CPU activity and reports
operator self time instead (there is no kernel time to speak of).
"""

from __future__ import annotations

import time
from typing import Any, Callable

TOP_KERNELS = 10


def with_timed_wall(profile: dict[str, Any], timed_walls: list[float]) -> dict[str, Any]:
    """`profile` with its GPU time over the median wall time of the system's timed runs: the
    profiler slows the host (every launch is recorded), so its own wall time is longer than an
    unprofiled run's, while the kernels' time on the GPU is what it would be."""
    if not timed_walls or not profile.get("busy_s"):
        return profile
    walls = sorted(timed_walls)
    median = walls[len(walls) // 2] if len(walls) % 2 else (walls[len(walls) // 2 - 1] + walls[len(walls) // 2]) / 2
    return profile | {"timed_wall_s": round(median, 4), "busy_fraction_of_timed": round(profile["busy_s"] / median, 4)}
NAME_WIDTH = 90  # kernel names are long templates; keep the start, which says what it is


def profile_run(run: Callable[[], object], device: str) -> dict[str, Any]:
    """Runs `run()` under the profiler; {wall_s, busy_s, busy_fraction, activity, top: [...]}."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    rows = []
    for e in prof.key_averages():
        us = _self_time_us(e, cuda)
        if us > 0:
            rows.append((e.key[:NAME_WIDTH], us, int(e.count)))
    rows.sort(key=lambda r: -r[1])
    busy = sum(us for _, us, _ in rows) / 1e6
    return {
        "activity": "cuda" if cuda else "cpu",
        "what": "GPU kernel time / wall" if cuda else "CPU operator self time / wall",
        "wall_s": round(wall, 4),
        "busy_s": round(busy, 4),
        "busy_fraction": round(busy / wall, 4) if wall > 0 else None,
        "top": [{"name": n, "ms": round(us / 1e3, 3), "calls": c} for n, us, c in rows[:TOP_KERNELS]],
    }


def _self_time_us(event: Any, cuda: bool) -> float:
    if cuda:  # the attribute was renamed from cuda to device in torch 2.4
        for name in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(event, name):
                return float(getattr(event, name))
        return 0.0
    return float(event.self_cpu_time_total)
