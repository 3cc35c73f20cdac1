"""The numbers: latency percentiles, medians over rounds, how much of a CPU went to others."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of ascending `ordered` by the nearest-rank method, as
    wrk's histogram reports it; NaN when there are no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    """The median, ignoring NaNs; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def foreign_share(busy: float, own_cpu_s: float, elapsed_s: float) -> float:
    """The share of one CPU that went to anything but our process: busy share from /proc/stat
    minus what our own process used, clamped at 0."""
    if elapsed_s <= 0:
        return 0.0
    return max(0.0, busy - own_cpu_s / elapsed_s)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, or None when either is missing, NaN or the divisor is 0."""
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def interpolated(ordered: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0-1) of ascending `ordered`, interpolated linearly between the
    closest ranks (numpy's default): over the 20 saves of a reload run, nearest rank would
    report a single save's latency as the p90. NaN when there are no values."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    if not ordered:
        return math.nan
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
