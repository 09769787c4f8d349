"""What a bench will cost on a CPU, said before it starts: its runs' roofline time at the measured
rates, scaled by how far from the roofline a CPU run stays, plus the host time of its steps."""

from __future__ import annotations

from typing import Mapping

from batchllm_cli.bench.roofline import DeviceRates, WorkCount

# Measured on the 2-core development machine (2026-12-03, OMP_NUM_THREADS=1, float32, tiny-llama):
# 8 requests of 40 tokens reach 14-20% of the roofline; P2000/S200 degree 16 at 64 requests
# 5-10% (the CPU path's attention over long contexts), so a bench of that took 54 s where
# these constants say 46 s.
CPU_STEP_S = 0.002
CPU_ROOFLINE_FRACTION = 0.07


def estimate_s(work: Mapping[str, WorkCount], rates: DeviceRates, runs_per_system: int) -> float:
    """Seconds `runs_per_system` runs of every system in `work` should take on this CPU."""
    one_each = sum(w.ideal_s(rates) / CPU_ROOFLINE_FRACTION + w.steps * CPU_STEP_S for w in work.values())
    return runs_per_system * one_each
