"""Summaries of repeated runs: the median and the min-max spread of one figure."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Spread:
    """The median of a figure over repeated runs, and its smallest and largest value."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vals = sorted(float(v) for v in values)
        if not vals:
            raise ValueError("no values to summarize")
        return cls(statistics.median(vals), vals[0], vals[-1], len(vals))

    @property
    def rel_spread(self) -> float:
        """The largest distance from the median to min or max, as a fraction of the median."""
        if self.median == 0:
            return 0.0
        return max(self.median - self.lo, self.hi - self.median) / abs(self.median)

    def to_dict(self, digits: int = 4) -> dict[str, float | int]:
        return {
            "median": round(self.median, digits),
            "min": round(self.lo, digits),
            "max": round(self.hi, digits),
            "n": self.n,
            "rel_spread": round(self.rel_spread, 4),
        }

    def format(self, fmt: str | Callable[[float], str] = "{:.2f}") -> str:
        """`median [min-max]`, or the median alone when every run reads the same in `fmt`."""
        show = fmt.format if isinstance(fmt, str) else fmt
        mid, lo, hi = show(self.median), show(self.lo), show(self.hi)
        if self.n < 2 or lo == hi:
            return mid
        return f"{mid} [{lo}-{hi}]"
