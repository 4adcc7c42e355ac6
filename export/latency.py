"""The one timing loop: the benchmarks' measurements and the export's cheap batch-1 figure.

It lives in ``export`` (the lowest stage that times anything) so that the benchmarks, a later
stage, use the same loop rather than a twin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

WARMUP_CALLS = 5
TIMED_CALLS = 30


def measure(
    call: Callable[[], object],
    budget_s: float,
    warmup: int = 3,
    min_iterations: int = 10,
    max_iterations: int = 20_000,
) -> list[float]:
    """Time ``call`` repeatedly after a warm-up, until the budget is spent; seconds per call.

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


def batch1_latency_ms(run: Callable[[np.ndarray], object], image: np.ndarray) -> float:
    """Median wall time of ``run`` on one image, in milliseconds, after a short warm-up: the
    export's status table (the benchmarks measure properly)."""
    timings = measure(lambda: run(image), budget_s=0.0, warmup=WARMUP_CALLS, min_iterations=TIMED_CALLS)
    return 1e3 * float(np.median(timings))
