"""Summaries of measured call times: percentiles and throughput.

Percentiles use linear interpolation between order statistics (numpy's default), so p50 of an
even-sized sample is the mean of its two middle values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of the sample."""
    if not len(seconds):
        raise ValueError("no timings")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q))


def throughput(batch: int, seconds: Sequence[float]) -> float:
    """Images per second over all measured calls: every image processed over the total time."""
    total = float(np.sum(seconds))
    if total <= 0:
        raise ValueError("timings must add up to more than zero")
    return batch * len(seconds) / total


def summarize(batch: int, seconds: Sequence[float]) -> dict[str, float]:
    """The figures a report shows for one cell; latencies in milliseconds."""
    return {
        "iterations": len(seconds),
        "p50_ms": 1e3 * percentile(seconds, 50),
        "p90_ms": 1e3 * percentile(seconds, 90),
        "p99_ms": 1e3 * percentile(seconds, 99),
        "mean_ms": 1e3 * float(np.mean(seconds)),
        "min_ms": 1e3 * float(np.min(seconds)),
        "throughput_ips": throughput(batch, seconds),
    }
