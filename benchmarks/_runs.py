"""Several runs of a figure: its median and spread, as the benchmark table states them."""

from __future__ import annotations

import statistics


def summary(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median M (min A, max B; N runs)``."""
    values = sorted(values)
    median, low, high = (fmt.format(v) for v in (statistics.median(values), values[0], values[-1]))
    return f"median {median} (min {low}, max {high}; {len(values)} runs)"
