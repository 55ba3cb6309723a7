"""Engine speed on a 64 GiB guest (issue: the engine's acceptance list).

Each figure is stored in extra_info as entries per second and as a ratio to
numpy summing the same number of uint64 values in the same run (see
bench/README.md). "Entries" are the walker's visits (pt.stats.visits): one
8-byte table entry read each, so the ratio compares like with like."""
import pytest

import s2fast
from s2fast import MemCache, Stage2PageTable, WalkFlags

from conftest import record, run_child

GiB = 1 << 30
GUEST = 64 * GiB
PHYS = 1 << 40


def build_4k(size=GUEST):
    pt = Stage2PageTable(40)
    assert pt.map(0, size, PHYS, s2fast.RW, memcache=MemCache(1 << 22), force_pte=True) == 0
    return pt


def build_1g(size=GUEST):
    pt = Stage2PageTable(40)
    assert pt.map(0, size, PHYS, s2fast.RW, memcache=MemCache(64)) == 0
    return pt


def test_build_4k(benchmark, sum_rate):
    pts = []

    def run():
        pts.append(build_4k())

    benchmark.pedantic(run, rounds=3, iterations=1)
    st = pts[-1].stats
    assert pts[-1].leaves().shape[0] == GUEST // 4096
    record(benchmark, st.visits, sum_rate)


def test_build_1g_blocks(benchmark, sum_rate):
    pt = benchmark(build_1g)
    assert pt.stats.callbacks_level_1 == 64
    record(benchmark, pt.stats.visits, sum_rate)


@pytest.fixture(scope="module")
def guest_4k():
    return build_4k()


def test_count_leaf_walk_4k(benchmark, guest_4k, sum_rate):
    cv = s2fast.CountVisitor()

    def run():
        cv.reset()
        guest_4k.reset_stats()
        return guest_4k.walk(0, GUEST, cv, WalkFlags.LEAF)

    assert benchmark(run) == 0
    assert cv.valid == {3: GUEST // 4096}
    record(benchmark, guest_4k.stats.visits, sum_rate)


def test_wrprotect_4k(benchmark, sum_rate):
    # A fresh guest per round, so every round clears W on every page.
    state = {}

    def setup():
        state["pt"] = build_4k()
        state["pt"].reset_stats()

    benchmark.pedantic(lambda: state["pt"].wrprotect(0, GUEST), setup=setup, rounds=3, iterations=1)
    pt = state["pt"]
    assert pt.get_leaf(0)[1] & (1 << 7) == 0
    record(benchmark, pt.stats.visits, sum_rate)


def test_split_1g_force_pte(benchmark, sum_rate):
    state = {}

    def setup():
        state["pt"] = build_1g()
        state["pt"].reset_stats()

    benchmark.pedantic(lambda: state["pt"].split(0, GUEST, MemCache(1 << 20)), setup=setup, rounds=3,
                       iterations=1)
    pt = state["pt"]
    assert pt.leaves().shape[0] == GUEST // 4096
    record(benchmark, pt.stats.visits, sum_rate)


def test_python_callback_leaf_walk_1g(benchmark, guest_4k, sum_rate):
    def visitor(ctx, visit):
        return 0

    def run():
        guest_4k.reset_stats()
        return guest_4k.walk(0, GiB, visitor, WalkFlags.LEAF)

    assert benchmark(run) == 0
    st = guest_4k.stats
    benchmark.extra_info["visits_per_s"] = st.visits / benchmark.stats.stats.min
    record(benchmark, st.visits, sum_rate)


# VmHWM, not ru_maxrss: after a fork the child's ru_maxrss can start from the
# parent's (pytest's) high-water mark.
PEAK_SCRIPT = """
import s2fast
pt = s2fast.Stage2PageTable(40)
assert pt.map(0, 512 << 30, 1 << 40, s2fast.RW, memcache=s2fast.MemCache(1 << 20), force_pte=True) == 0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(pt.pages_live * pt.granule, int(hwm) * 1024)
"""


def test_peak_memory_512g_4k(benchmark):
    """Peak RSS of a process that builds a 512 GiB 4 KiB-mapped guest, against
    the bytes of its descriptor pages (target: within 1.1x)."""
    def run():
        return [int(x) for x in run_child(PEAK_SCRIPT).split()]

    desc_bytes, peak = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["descriptor_bytes"] = desc_bytes
    benchmark.extra_info["peak_rss_bytes"] = peak
    benchmark.extra_info["peak_over_descriptors"] = peak / desc_bytes
    assert desc_bytes == (512 * 512 + 512 + 2) * 4096  # L3 + L2 tables + 2 PGD pages
