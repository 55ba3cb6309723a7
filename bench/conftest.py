"""Shared fixtures for the benchmarks: the numpy-sum yardstick every engine
figure is quoted against (same machine, same run)."""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import s2fast


def run_child(script: str, *args: str) -> str:
    """Run ``script`` in a fresh Python and return its stdout. The child
    imports the s2fast this process imported, whatever the working directory
    (run from a checkout's top, ``python -c`` would otherwise import the
    source folder, which has no compiled engine after ``pip install .``); a
    failure shows the child's stderr."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(s2fast.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env,
                             capture_output=True, text=True)
    if res.returncode:
        raise AssertionError(f"benchmark subprocess exited with status {res.returncode}; its stderr:\n"
                             f"{res.stderr}")
    return res.stdout


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
