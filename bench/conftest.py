"""Shared fixtures for the benchmarks: the numpy-sum yardstick every engine
figure is quoted against (same machine, same run)."""
import time

import numpy as np
import pytest


def numpy_sum_rate(n: int) -> float:
    """uint64 values summed per second by numpy (best of 5 runs)."""
    a = np.ones(n, dtype=np.uint64)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return n / best


@pytest.fixture(scope="session")
def sum_rate():
    cache = {}

    def rate(n: int) -> float:
        if n not in cache:
            cache[n] = numpy_sum_rate(n)
        return cache[n]

    return rate


def record(benchmark, entries: int, sum_rate_fn) -> None:
    """Attach entries/s and the ratio to numpy's sum rate over as many values.
    ``entries`` is the walker's visits: each is one entry read from a table
    (the reload after a callback is not counted, so the ratio is not flattered)."""
    best = benchmark.stats.stats.min
    rate = entries / best
    benchmark.extra_info["entries"] = entries
    benchmark.extra_info["entries_per_s"] = rate
    benchmark.extra_info["numpy_sum_per_s"] = sum_rate_fn(entries)
    benchmark.extra_info["ratio_to_numpy_sum"] = rate / sum_rate_fn(entries)
