"""Worker initializers for tests/test_sweep.py: kept apart from the test
module so that a worker imports only this (and s2fast), not pytest."""
import os
import signal


def die_on_seed_3():
    """Running the point with seed 3 kills the worker (as the OOM killer would)."""
    import s2fast.sweeps as sw

    real = sw.compare

    def compare(workload, strategies):
        if workload.seed == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(workload, strategies)

    sw.compare = compare
