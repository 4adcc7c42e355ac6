"""Summaries of measured call times: percentiles and throughput.

Percentiles use linear interpolation between order statistics (numpy's default), so p50 of an
even-sized sample is the mean of its two middle values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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


def measure(
    call: Callable[[], object],
    budget_s: float,
    warmup: int = 3,
    min_iterations: int = 10,
    max_iterations: int = 20_000,
) -> list[float]:
    """Time ``call`` repeatedly after a warm-up, until the budget is spent.

    At least ``min_iterations`` calls are timed even past the budget, so slow contenders still
    get a percentile worth the name; ``max_iterations`` bounds fast ones.
    """
    for _ in range(warmup):
        call()
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(timings) < max_iterations and (len(timings) < min_iterations or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return timings
