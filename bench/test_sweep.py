"""A 96-point sweep (16-64 GiB guests) on 2 local worker processes against
the same sweep run serially in one process, in the same run.

Goal (issue 14): the 2-worker sweep takes under 60% of the serial time on
the 2-core machine. Both tables must be identical but for timing columns.
Run it on an idle machine: other work takes CPU from the workers (with
the kernel's autogroup scheduling, all processes of one terminal session
share one session's CPU share, so under load 2 workers get no more CPU
than 1). extra_info records the load average before and after.
`python bench/test_sweep.py` prints the two times without pytest."""
import os
import sys
import time

import pytest

pd = pytest.importorskip("pandas")

from s2fast.results import TIMING_COLUMNS  # noqa: E402
from s2fast.sweeps import LocalProcesses, sweep  # noqa: E402

#: 4 sizes x 4 backings x 2 chunks x 3 seeds = 96 points, each KERNEL and SKIP_LEVEL
GRID = {"guest_size": ["16G", "32G", "48G", "64G"], "backing": ["1g", "2m", "4k", "mix:1g=50,2m=30,4k=20"],
        "chunk": ["2M", "1G"], "seed": [0, 1, 2], "writes": 4096, "passes": 2, "strategy": "SKIP_LEVEL"}
GOAL = 0.60


def timed(executor):
    t = time.perf_counter()
    res = sweep(GRID, executor=executor, progress=False)
    assert len(res.points) == 96 and not res.failed
    return time.perf_counter() - t, res.table


def test_sweep_96_points_two_workers(benchmark):
    load_before = os.getloadavg()[0]
    serial_s, serial = timed("serial")
    state = {}

    def parallel():
        state["s"], state["table"] = timed(LocalProcesses(2))

    benchmark.pedantic(parallel, rounds=1, iterations=1)
    ratio = state["s"] / serial_s
    # other work on the machine takes CPU from the workers: the load average says how much
    benchmark.extra_info.update(points=96, serial_s=serial_s, two_workers_s=state["s"], ratio=ratio,
                                loadavg_1min_before=load_before, loadavg_1min_after=os.getloadavg()[0])
    pd.testing.assert_frame_equal(serial.drop(columns=list(TIMING_COLUMNS)),
                                  state["table"].drop(columns=list(TIMING_COLUMNS)))
    assert ratio < GOAL, f"2 workers took {state['s']:.1f} s, {ratio:.0%} of serial {serial_s:.1f} s"


if __name__ == "__main__":
    load = os.getloadavg()[0]
    serial_s, _ = timed("serial")
    two_s, _ = timed(LocalProcesses(2))
    print(f"96 points: serial {serial_s:.1f} s, 2 workers {two_s:.1f} s, ratio {two_s / serial_s:.2f} "
          f"(goal < {GOAL}); 1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    sys.exit(0 if two_s / serial_s < GOAL else 1)
