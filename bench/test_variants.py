"""Split under every walker strategy (the RFC's variants) on a 256 GiB guest
backed by 1 GiB blocks, 2 MiB blocks, or memory already split to 4 KiB; and on
64 KiB granules, one full level-1 span (8192 blocks of 512 MiB).

extra_info holds entries read, callbacks and visits for each run, so
`python bench/summarize.py FILE.json` can print the per-strategy table with
speed-ups over KERNEL measured in the same run."""
import pytest

import s2fast
from s2fast import MemCache, Stage2PageTable, Strategy

GiB, MiB = 1 << 30, 1 << 20
GUEST = 256 * GiB
PHYS = 1 << 40
STRATEGIES = list(Strategy)


def build(backing, granule=4096):
    if granule != 4096:
        pt = Stage2PageTable(48, granule=granule)
        span = pt.geometry.level_size(1)
        assert pt.map(span, span, PHYS, s2fast.RW, memcache=MemCache(4)) == 0
        return pt, span, span
    pt = Stage2PageTable(40)
    if backing == "1g":
        assert pt.map(0, GUEST, PHYS, s2fast.RW, memcache=MemCache(16)) == 0
    elif backing == "2m":
        assert pt.map(0, GUEST, PHYS + 2 * MiB, s2fast.RW, memcache=MemCache(1 << 12)) == 0
    else:
        assert pt.map(0, GUEST, PHYS, s2fast.RW, memcache=MemCache(1 << 20), force_pte=True) == 0
    return pt, 0, GUEST


def run_split(benchmark, backing, strategy, granule=4096):
    state = {}

    def setup():
        state["pt"], state["ipa"], state["size"] = build(backing, granule)
        state["pt"].reset_stats()

    def split():
        state["ret"] = state["pt"].split(state["ipa"], state["size"], MemCache(1 << 22), strategy=strategy)

    benchmark.pedantic(split, setup=setup, rounds=2, iterations=1)
    s = state["pt"].stats
    assert state["ret"] == 0
    benchmark.extra_info.update(
        backing=backing, granule=granule, strategy=strategy.name, visits=s.visits,
        entries_read=s.entries_read, callbacks=s.callbacks_leaf + s.callbacks_table_pre + s.callbacks_table_post,
        tlbi=s.tlbi_vmid_ipa, pages_alloc=s.pages_alloc)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
@pytest.mark.parametrize("backing", ["1g", "2m", "4k"])
def test_split_256g(benchmark, backing, strategy):
    run_split(benchmark, backing, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_split_64k_full_level1_span(benchmark, strategy):
    run_split(benchmark, "512m", strategy, granule=65536)
