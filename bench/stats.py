"""Small statistics helpers: medians and percentiles of plain lists."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100), linear between closest ranks; None for no values."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: list[float | None]) -> float | None:
    """The median of the values that are not None, or None."""
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def summary_ms(seconds: list[float]) -> dict:
    """p50 / p90 / p99 / max in milliseconds, and how many values."""
    def ms(v):
        return None if v is None else round(v * 1000.0, 3)
    return {"n": len(seconds), "p50_ms": ms(percentile(seconds, 50)),
            "p90_ms": ms(percentile(seconds, 90)), "p99_ms": ms(percentile(seconds, 99)),
            "max_ms": ms(max(seconds) if seconds else None)}
