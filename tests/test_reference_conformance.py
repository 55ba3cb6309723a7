"""The pure-Python reference model (tests/models/reference.py) against the kernel's
own results in tests/data/kernel, for all three granules.

A few scenarios make tens or hundreds of millions of page-table visits; they
are marked ``slow`` and skipped unless S2FAST_RUN_SLOW=1 is set.
"""
import os

import pytest

from support import kernel_driver
from models import reference

# (granule, scenario) -> why it is slow for pure Python
SLOW = {
    (65536, "split_l1_range_full"): "134M page-table visits, far too slow for pure Python",
    (16384, "split_l1_range_full"): "8.4M visits: about a minute of pure Python",
    (16384, "map_range_limit"): "4096 level-2 tables of 2048 blocks: one to two minutes of pure Python",
}
RUN_SLOW = os.environ.get("S2FAST_RUN_SLOW") == "1"


def _cases():
    for g in (4096, 16384, 65536):
        for name in kernel_driver.scenario_names(g):
            marks = []
            if (g, name) in SLOW:
                marks = [pytest.mark.slow,
                         pytest.mark.skipif(not RUN_SLOW, reason=f"{SLOW[g, name]}; "
                                            "set S2FAST_RUN_SLOW=1 to run")]
            yield pytest.param(g, name, marks=marks, id=f"{g // 1024}k-{name}")


def test_catalogue_is_complete():
    assert len(kernel_driver.scenario_names(4096)) == 47
    assert len(kernel_driver.scenario_names(16384)) == 59
    assert len(kernel_driver.scenario_names(65536)) == 59


@pytest.mark.parametrize("granule,name", list(_cases()))
def test_reference_matches_kernel(granule, name):
    problems = kernel_driver.compare(reference, granule, name)
    assert problems == [], "\n".join(problems)


# --- a few behaviours the golden data does not reach ------------------------

# (granule, ia_bits) -> (start level, PGD pages, VTCR), from the FORMAT.md tables
GEOMETRY = {
    (4096, 32): (2, 4, 0x802d3520), (4096, 36): (1, 1, 0x802d355c),
    (4096, 40): (1, 2, 0x802d3558), (4096, 42): (1, 8, 0x802d3556),
    (4096, 44): (0, 1, 0x802d3594), (4096, 48): (0, 1, 0x802d3590),
    (16384, 32): (2, 1, 0x802db560), (16384, 36): (2, 1, 0x802db55c),
    (16384, 37): (2, 2, 0x802db55b), (16384, 38): (2, 4, 0x802db55a),
    (16384, 39): (2, 8, 0x802db559), (16384, 40): (2, 16, 0x802db558),
    (16384, 42): (1, 1, 0x802db596), (16384, 44): (1, 1, 0x802db594),
    (16384, 48): (1, 2, 0x802db590),
    (65536, 32): (2, 1, 0x802d7560), (65536, 36): (2, 1, 0x802d755c),
    (65536, 40): (2, 1, 0x802d7558), (65536, 42): (2, 1, 0x802d7556),
    (65536, 43): (2, 2, 0x802d7555), (65536, 44): (2, 4, 0x802d7554),
    (65536, 45): (2, 8, 0x802d7553), (65536, 46): (2, 16, 0x802d7552),
    (65536, 48): (1, 1, 0x802d7590),
}


def test_geometry_tables():
    for (g, ia), want in GEOMETRY.items():
        pt = reference.Stage2PageTable(ia, granule=g)
        assert (pt.start_level, pt.pgd_pages, pt.vtcr) == want, (g, ia)


def test_geometry_all_ia_bits():
    for g in (4096, 16384, 65536):
        for ia in range(32, 49):
            pt = reference.Stage2PageTable(ia, granule=g)
            assert 1 <= pt.pgd_pages <= 16 and 0 <= pt.start_level <= 2
            assert pt.table_pages() == pt.pgd_pages == pt.pages_live
        for ia in (31, 49):
            with pytest.raises(ValueError):
                reference.Stage2PageTable(ia, granule=g)


def test_bad_inputs_are_rejected_before_any_change():
    pt = reference.Stage2PageTable(40)
    mc = reference.MemCache(10)
    for args in [(-1, 4096, 0, 12), (0, 1 << 64, 0, 12), (0, 4096, 0, 1 << 6), (0, 4096, "0", 12)]:
        with pytest.raises((TypeError, ValueError)):
            pt.map(*args, memcache=mc)
    with pytest.raises(TypeError):
        pt.walk(0, 4096, 42, reference.WalkFlags.LEAF)
    assert mc.nobjs == 10 and len(pt.leaves()) == 0 and pt.stats.visits == 0


def test_warn_sites():
    R = int(reference.Prot.R)
    pt = reference.Stage2PageTable(40)
    pt.reset_stats()
    # create_unlinked at the last level walks level 4, then frees what it made.
    ret, pa = pt.create_unlinked(0, 3, R, reference.MemCache(1))
    assert (ret, pa) == (reference.EINVAL, None)
    s = pt.stats
    assert s.warning_sites == [reference.WARN_WALK_LEVEL, reference.WARN_WALK_LEVEL,
                               reference.WARN_FREE_UNLINKED_WALK]
    assert s.pages_alloc == s.pages_free == 1 and s.unlinked_tables_freed == 1
    # A locked entry met by an exclusive walker.
    pt.map(0, 4096, 0x8000000000, R, memcache=reference.MemCache(10))
    def lock(ctx, visit):
        if ctx.level == 3:
            ctx.set(reference.INVALID_PTE_LOCKED)
    pt.walk(0, 4096, lock, reference.WalkFlags.LEAF)
    pt.reset_stats()
    assert pt.map(0, 4096, 0x9000000000, R, memcache=reference.MemCache(10)) == 0
    assert pt.stats.warning_sites == [reference.WARN_BREAK_LOCKED]
    # test_clear_young outside the IPA space.
    pt.reset_stats()
    assert pt.test_clear_young(1 << 41, 4096, True) is False
    assert pt.stats.warning_sites == [reference.WARN_TEST_CLEAR_YOUNG]


def test_corrupt_table_descriptor():
    pt = reference.Stage2PageTable(40)
    assert pt.map(0, 4096, 0x8000000000, int(reference.Prot.R),
                  memcache=reference.MemCache(10)) == 0
    bad = (reference.TABLE_PA_BASE + 99 * 4096) | 3     # never-allocated page

    def corrupt(ctx, visit):
        if ctx.level == 1:
            ctx.set(bad)
    # The walker reloads the entry after TABLE_PRE and refuses to descend.
    with pytest.raises(reference.CorruptTableError) as e:
        pt.walk(0, 4096, corrupt, reference.WalkFlags.TABLE_PRE)
    assert (e.value.ipa, e.value.level, e.value.desc) == (0, 1, bad)
    with pytest.raises(reference.CorruptTableError):
        pt.get_leaf(0)
