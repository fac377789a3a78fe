"""Latency statistics, defined once so that every report's p99 means the same thing.

`webconf loadtest` and `python -m bench` both report percentiles; with one definition
(linear interpolation between closest ranks, numpy's default) their figures are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SUMMARY_PERCENTILES = (50, 95, 99)
"""The percentiles a latency summary reports."""


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError("p must be between 0 and 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def summary_ms(seconds: Sequence[float], *, with_max: bool = False) -> dict[str, float | None]:
    """p50/p95/p99 (and `max` when asked) of durations in seconds, in milliseconds rounded
    to 0.1 ms; None when nothing was measured."""
    out: dict[str, float | None] = {}
    for p in SUMMARY_PERCENTILES:
        value = percentile(seconds, p)
        out[f"p{p}"] = None if value is None else round(value * 1000, 1)
    if with_max:
        out["max"] = round(max(seconds) * 1000, 1) if seconds else None
    return out
