"""The memory estimate (s2fast.memory) against the measured peak.

Each size runs ``s2fast compare --guest-size SIZE`` (the default workload,
all six strategies) once, in a fresh process, and compares the process's
peak RSS (VmHWM) with what the estimate says before the run: the process's
RSS when it starts the command plus ``estimate(workload).total``. The
estimate must be within 25% of the peak, so that refusing a run that does
not fit neither refuses runs that would fit nor lets through runs that would
not. One round per size, one size at a time: the 512 GiB run holds two
1 GiB tables."""
import json

import pytest

from conftest import run_child

GiB = 1 << 30

SCRIPT = """
import io, json, sys
from s2fast.cli import main
from s2fast.memory import estimate
from s2fast.vm import Workload

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

size = sys.argv[1]
start = status("VmRSS:")
est = estimate(Workload(guest_size=size))
out = io.StringIO()
assert main(["compare", "--guest-size", size, "--json", "--no-progress"], out=out) == 0, out.getvalue()
rows = json.loads(out.getvalue())["rows"]
print(json.dumps({"start_rss": start, "estimate": start + est.total, "tables": est.tables,
                  "working": est.working, "peak": status("VmHWM:"),
                  "identical": [r["identical"] for r in rows]}))
"""


@pytest.mark.parametrize("size", ["64G", "256G", "512G"])
def test_estimate_vs_peak(benchmark, size):
    out = {}

    def run():
        out.update(json.loads(run_child(SCRIPT, size)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio = out["estimate"] / out["peak"]
    benchmark.extra_info.update(out, estimate_over_peak=ratio)
    assert all(out["identical"])
    assert 0.75 <= ratio <= 1.25, f"estimate {out['estimate']} vs peak {out['peak']} ({ratio:.2f}x)"
