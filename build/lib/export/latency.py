"""A cheap batch-1 latency figure for the export's status table (the benchmarks measure properly)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

WARMUP_CALLS = 5
TIMED_CALLS = 30


def batch1_latency_ms(run: Callable[[np.ndarray], object], image: np.ndarray) -> float:
    """Median wall time of ``run`` on one image, in milliseconds, after a short warm-up."""
    for _ in range(WARMUP_CALLS):
        run(image)
    times = []
    for _ in range(TIMED_CALLS):
        started = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))
