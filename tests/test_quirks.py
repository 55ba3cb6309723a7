"""One test per kernel quirk of tests/data/kernel/FORMAT.md section 7, plus the
cheap granule-specific facts of tests/data/kernel/granules/FORMAT.md sections 3-7.

Every expected number comes from the quirk text, from the kernel source
(arch/arm64/kvm/hyp/pgtable.c, quoted where used) or from a golden file; the
comment above each step names the golden scenario and operation index ("#n")
the numbers were taken from. Each operation is preceded by reset_stats(), so
the counters checked are those of that one operation, as in the goldens.

``check()`` compares the named counters exactly and, unless a test names them,
also requires the side-effect counters (TLBIs, CMOs, page allocations and
frees, memory-cache use, warnings) to be zero: an engine that issued an extra
TLBI or freed a page it should not have fails.
"""
from __future__ import annotations

import numpy as np
import pytest

import s2fast
from s2fast import (EAGAIN, EINVAL, ENOMEM, ERANGE, RW, RWX, TLBI_TTL_UNKNOWN, MemCache,
                    Stage2PageTable)
from s2fast import Prot as P
from s2fast import WalkFlags as F

TTL = TLBI_TTL_UNKNOWN
R, W, X, PX, UX = int(P.R), int(P.W), int(P.X), int(P.PX), int(P.UX)
DEVICE, NC = int(P.DEVICE), int(P.NC)
SW0, SW1, SW2, SW3 = int(P.SW0), int(P.SW1), int(P.SW2), int(P.SW3)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# Leaf attribute bits of FORMAT.md section 5 (normal memory, AF, SH inner).
PAGE_RW = 0x400000000007FF      # R+W page = P | 0x400000000007ff
BLOCK_RW = 0x400000000007FD     # R+W block = P | 0x400000000007fd
PAGE_RX = 0x77F                 # R+X page = P | 0x77f

# Counters that must stay at zero unless a test says otherwise.
SIDE_EFFECTS = {
    "tlbi_log": [], "tlbi_log_total": 0, "tlbi_range_pages": 0,
    "cmo_log": [], "cmo_log_total": 0,
    "pages_alloc": 0, "pages_free": 0, "mc_used": 0, "mc_exhausted": 0,
    "unlinked_tables_freed": 0, "warnings": 0,
}
CALLBACK_KEYS = {"leaf": "callbacks_leaf", "pre": "callbacks_table_pre", "post": "callbacks_table_post"}


def check(pt: Stage2PageTable, **expected) -> None:
    """Compare the counters of the last operation with ``expected``.

    ``leaf``/``pre``/``post`` are the callback counts; ``tlbi_log`` and
    ``cmo_log`` are lists of tuples; the *_log_total counts default to the
    length of the given log."""
    s = pt.stats.as_dict()
    want = dict(SIDE_EFFECTS)
    for k, v in expected.items():
        want[CALLBACK_KEYS.get(k, k)] = v
    if "tlbi_log" in expected and "tlbi_log_total" not in expected:
        want["tlbi_log_total"] = len(expected["tlbi_log"])
    if "cmo_log" in expected and "cmo_log_total" not in expected:
        want["cmo_log_total"] = len(expected["cmo_log"])
    got = {k: s[k] for k in want}
    got["tlbi_log"] = [tuple(e) for e in got["tlbi_log"]]
    got["cmo_log"] = [tuple(e) for e in got["cmo_log"]]
    assert got == want


def op(pt: Stage2PageTable, name: str, *args, **kwargs):
    """Run one operation with fresh counters."""
    pt.reset_stats()
    return getattr(pt, name)(*args, **kwargs)


def leaves(pt: Stage2PageTable) -> list[tuple[int, int, int]]:
    return [(int(r["ipa"]), int(r["level"]), int(r["pte"])) for r in pt.leaves()]


def leaf_levels(pt: Stage2PageTable) -> dict[int, int]:
    lv, n = np.unique(pt.leaves()["level"], return_counts=True)
    return {int(a): int(b) for a, b in zip(lv, n)}


def mc(n: int = 10000) -> MemCache:
    return MemCache(n)


# ---------------------------------------------------------------------------
# Quirk 1

def test_quirk01_identical_remap_eagain_swallowed_unless_handle_fault():
    # map_partial_eagain (ia_bits 40)
    pt = Stage2PageTable(40)
    m = mc()
    assert op(pt, "map", 0x40002000, 0x1000, 0x8000002000, RW, memcache=m) == 0  # #0
    assert m.nobjs == 9998

    # #1: page 2 is already identical: -EAGAIN stops the walk there.
    m = mc()
    ret = op(pt, "map", 0x40000000, 0x4000, 0x8000000000, RW, memcache=m, flags=F.HANDLE_FAULT)
    assert ret == EAGAIN == -11
    assert m.nobjs == 10000
    check(pt, visits=5, reloads=5, entries_read=10, leaf=3, pre=2, post=0,
          cmo_log=[("dcache", 0x8000000000, 0x1000), ("dcache", 0x8000001000, 0x1000)])
    # #2 dump: the page after the identical one stays unmapped.
    assert leaves(pt) == [(0x40000000, 3, 0x8000000000 | PAGE_RW),
                          (0x40001000, 3, 0x8000001000 | PAGE_RW),
                          (0x40002000, 3, 0x8000002000 | PAGE_RW)]
    assert pt.get_leaf(0x40003000) == (0, 0, 3)

    # #3, #4: the same without HANDLE_FAULT: -EAGAIN swallowed, pages 3 and 4 mapped.
    assert op(pt, "map", 0x50002000, 0x1000, 0x8000002000, RW, memcache=mc()) == 0
    m = mc()
    assert op(pt, "map", 0x50000000, 0x4000, 0x8000000000, RW, memcache=m) == 0
    check(pt, visits=6, reloads=6, leaf=4, pre=2,
          cmo_log=[("dcache", 0x8000000000, 0x1000), ("dcache", 0x8000001000, 0x1000),
                   ("dcache", 0x8000003000, 0x1000)])
    assert [lf for lf in leaves(pt) if lf[0] >= 0x50000000] == [
        (0x50000000 + i * 0x1000, 3, (0x8000000000 + i * 0x1000) | PAGE_RW) for i in range(4)]

    # #6, #7: a permission-only difference behaves the same: -EAGAIN with
    # HANDLE_FAULT, the R-only page is not upgraded and the walk stops.
    assert op(pt, "map", 0x60002000, 0x1000, 0x8000002000, R, memcache=mc()) == 0
    ret = op(pt, "map", 0x60000000, 0x4000, 0x8000000000, RW, memcache=mc(), flags=F.HANDLE_FAULT)
    assert ret == EAGAIN
    check(pt, visits=5, reloads=5, leaf=3, pre=2,
          cmo_log=[("dcache", 0x8000000000, 0x1000), ("dcache", 0x8000001000, 0x1000)])
    # #8 dump
    assert [lf for lf in leaves(pt) if lf[0] >= 0x60000000] == [
        (0x60000000, 3, 0x400080000007FF), (0x60001000, 3, 0x400080000017FF),
        (0x60002000, 3, 0x4000800000277F)]

    # map_remap #2 / #4: identical and permission-only remaps of a block
    # without HANDLE_FAULT return 0 and change nothing at all.
    pt = Stage2PageTable(40)
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    before = pt.descriptors.copy()
    for prot in (RW, R):
        m = mc()
        assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, prot, memcache=m) == 0
        check(pt, visits=2, reloads=2, leaf=1, pre=1)
        assert m.nobjs == 10000
        assert np.array_equal(pt.descriptors, before)
    # map_remap #3 / #5: the same with HANDLE_FAULT
    for prot in (RW, R | X):
        assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, prot, memcache=mc(),
                  flags=F.HANDLE_FAULT) == EAGAIN
        check(pt, visits=2, reloads=2, leaf=1, pre=1)
    # map_remap #6
    assert pt.get_leaf(0x40000000) == (0, 0x8000000000 | BLOCK_RW, 2)


# ---------------------------------------------------------------------------
# Quirk 2

def test_quirk02_sw_bits_only_change_in_place_unless_shared():
    # map_remap #0, #1, #7-#10
    pt = Stage2PageTable(40)
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000200000, RW, memcache=mc()) == 0
    live = pt.pages_live

    # #7: software-bit-only change on a non-shared walk: stored in place,
    # no TLBI, no CMO.
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000200000, RW | SW1, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2)
    assert pt.get_leaf(0x50000000) == (0, 0x1400080002007FF, 3)  # #8

    # #9: the same kind of change on a SHARED walk: full break-before-make.
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000200000, RW | SW2, memcache=mc(),
              flags=F.SHARED) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2,
          tlbi_log=[("vmid_ipa", 0x50000000, 3)], cmo_log=[("dcache", 0x8000200000, 0x1000)])
    assert pt.get_leaf(0x50000000) == (0, 0x2400080002007FF, 3)  # #10
    assert pt.pages_live == live


# ---------------------------------------------------------------------------
# Quirk 3

def test_quirk03_other_leaf_change_break_before_make():
    # map_remap #0, #1, #11-#16
    pt = Stage2PageTable(40)
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000200000, RW, memcache=mc()) == 0

    # #11: new PA: TLBI vmid_ipa(ctx->addr, level) and a dcache clean of the new page.
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000800000, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2,
          tlbi_log=[("vmid_ipa", 0x50000000, 3)], cmo_log=[("dcache", 0x8000800000, 0x1000)])
    assert pt.get_leaf(0x50000000) == (0, 0x400080008007FF, 3)  # #12

    # #13: new memory type (device): TLBI, no CMO (not cacheable, not executable).
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000800000, RW | DEVICE, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2, tlbi_log=[("vmid_ipa", 0x50000000, 3)])
    assert pt.get_leaf(0x50000000) == (0, 0x400080008007C7, 3)  # #14

    # #15: new PA for the block with SKIP_BBM_TLBI|SKIP_CMO: neither is issued.
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000400000, RW, memcache=mc(),
              flags=F.SKIP_BBM_TLBI | F.SKIP_CMO) == 0
    check(pt, visits=2, reloads=2, leaf=1, pre=1)
    assert pt.get_leaf(0x40000000) == (0, 0x8000400000 | BLOCK_RW, 2)  # #16

    # Quirk text: "icache CMO if executable". Remapping the device page as
    # normal R+X memory (R+X page = P|0x77f, FORMAT.md section 5) cleans the
    # dcache and invalidates the icache, in pgtable.c's order.
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000A00000, R | X, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2, tlbi_log=[("vmid_ipa", 0x50000000, 3)],
          cmo_log=[("dcache", 0x8000A00000, 0x1000), ("icache", 0x8000A00000, 0x1000)])
    assert pt.get_leaf(0x50000000) == (0, 0x8000A00000 | PAGE_RX, 3)
    # ... and with SKIP_CMO only the TLBI stays.
    assert op(pt, "map", 0x50000000, 0x1000, 0x8000C00000, R | X, memcache=mc(),
              flags=F.SKIP_CMO) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2, tlbi_log=[("vmid_ipa", 0x50000000, 3)])
    assert pt.get_leaf(0x50000000) == (0, 0x8000C00000 | PAGE_RX, 3)


# ---------------------------------------------------------------------------
# Quirk 4

def test_quirk04_map_inside_block_replaces_whole_block():
    # map_into_block #0-#9
    pt = Stage2PageTable(40)
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    # #1: 4 KiB into the 2 MiB block. The TLBI is at ctx->addr (inside the
    # block, not aligned to it) with the block's level.
    m = mc()
    assert op(pt, "map", 0x40005000, 0x1000, 0x8001000000, R, memcache=m) == 0
    assert m.nobjs == 9999
    check(pt, visits=3, reloads=3, leaf=2, pre=1, tlbi_log=[("vmid_ipa", 0x40005000, 2)],
          cmo_log=[("dcache", 0x8001000000, 0x1000)], pages_alloc=1, mc_used=1)
    # #2-#4: only the requested page is mapped; the rest of the block is gone.
    assert pt.get_leaf(0x40000000) == (0, 0, 3)
    assert pt.get_leaf(0x40005000) == (0, 0x4000800100077F, 3)
    assert pt.get_leaf(0x40100000) == (0, 0, 3)
    assert leaves(pt) == [(0x40005000, 3, 0x4000800100077F)]

    # #5: a 1 GiB block, #6: 2 MiB inside it -> an L2 table with one block.
    assert op(pt, "map", 0x80000000, GiB, 0x8040000000, RW, memcache=mc()) == 0
    check(pt, visits=1, reloads=1, leaf=1, cmo_log=[("dcache", 0x8040000000, 0x40000000)])
    assert op(pt, "map", 0x80600000, 2 * MiB, 0x8002000000, R, memcache=mc()) == 0
    check(pt, visits=2, reloads=2, leaf=2, tlbi_log=[("vmid_ipa", 0x80600000, 1)],
          cmo_log=[("dcache", 0x8002000000, 0x200000)], pages_alloc=1, mc_used=1)
    assert pt.get_leaf(0x80000000) == (0, 0, 2)                       # #7
    assert pt.get_leaf(0x80600000) == (0, 0x4000800200077D, 2)      # #8
    assert pt.get_leaf(0x80800000) == (0, 0, 2)                       # #9
    assert leaves(pt) == [(0x40005000, 3, 0x4000800100077F), (0x80600000, 2, 0x4000800200077D)]


# ---------------------------------------------------------------------------
# Quirk 5

def _map_into_block_state() -> Stage2PageTable:
    """map_into_block #0, #1, #5, #6, #10: two page tables under blocks."""
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.map(0x40005000, 0x1000, 0x8001000000, R, memcache=mc()) == 0
    assert pt.map(0x80000000, GiB, 0x8040000000, RW, memcache=mc()) == 0
    assert pt.map(0x80600000, 2 * MiB, 0x8002000000, R, memcache=mc()) == 0
    assert pt.map(0x80607000, 0x1000, 0x8004000000, RW, memcache=mc()) == 0
    return pt


def test_quirk05_block_over_table_replaces_table_and_frees_subtree():
    pt = _map_into_block_state()
    # map_into_block #11 dump
    assert leaves(pt) == [(0x40005000, 3, 0x4000800100077F), (0x80607000, 3, 0x400080040007FF)]
    assert pt.table_pages() == 6 and pt.pages_live == 6

    # #12: a 2 MiB block over an L3 table: TABLE_PRE installs the block, one
    # flush of the VMID (no range TLBI), the table is freed by a nested walk
    # of its 512 entries.
    m = mc()
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8008000000, RW, memcache=m) == 0
    assert m.nobjs == 10000
    check(pt, visits=514, reloads=514, leaf=512, pre=2, post=0, tlbi_log=[("vmid", 0, 0)],
          cmo_log=[("dcache", 0x8008000000, 0x200000)], pages_free=1, unlinked_tables_freed=1)

    # #13: a 1 GiB block over a two-level subtree: both tables freed.
    assert op(pt, "map", 0x80000000, GiB, 0x8080000000, RW, memcache=mc()) == 0
    check(pt, visits=1025, reloads=1024, leaf=1023, pre=1, post=1, tlbi_log=[("vmid", 0, 0)],
          cmo_log=[("dcache", 0x8080000000, 0x40000000)], pages_free=2, unlinked_tables_freed=1,
          callbacks_level_1=1, callbacks_level_2=512, callbacks_level_3=512)
    # #14 dump
    assert leaves(pt) == [(0x40000000, 2, 0x400080080007FD), (0x80000000, 1, 0x400080800007FD)]
    assert pt.table_pages() == 3 and pt.pages_live == 3

    # With range TLBI the table's break-before-make is
    # kvm_tlb_flush_vmid_range(ALIGN_DOWN(addr, 2 MiB), 2 MiB): one call of
    # 2 MiB >> PAGE_SHIFT = 512 pages (stage2_try_break_pte, FORMAT.md section 6).
    pt = Stage2PageTable(40, tlb_range=True)
    assert pt.map(0x40000000, 0x1000, 0x8000000000, RW, memcache=mc()) == 0
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    check(pt, visits=514, reloads=514, leaf=512, pre=2, tlbi_log=[("vmid_range", 0x40000000, 512)],
          tlbi_range_pages=512, cmo_log=[("dcache", 0x8000000000, 0x200000)], pages_free=1,
          unlinked_tables_freed=1)
    assert leaves(pt) == [(0x40000000, 2, 0x8000000000 | BLOCK_RW)]


# ---------------------------------------------------------------------------
# Quirk 6

def test_quirk06_enomem_keeps_partial_build():
    # map_mc_small #0-#8
    pt = Stage2PageTable(40)
    m = mc(1)
    # #0: needs an L2 and an L3 table, one page: the L2 table stays, empty.
    assert op(pt, "map", 0x1000, 0x1000, 0x8000000000, RW, memcache=m) == ENOMEM == -12
    assert m.nobjs == 0
    check(pt, visits=2, reloads=2, leaf=2, pages_alloc=1, mc_used=1, mc_exhausted=1)
    assert leaves(pt) == []                                          # #1 dump
    assert pt.table_pages() == 3 and pt.pages_live == 3
    # #2: the L2 table now exists, one page is enough.
    m = mc(1)
    assert op(pt, "map", 0x1000, 0x1000, 0x8000000000, RW, memcache=m) == 0
    assert m.nobjs == 0
    check(pt, visits=3, reloads=3, leaf=2, pre=1, cmo_log=[("dcache", 0x8000000000, 0x1000)],
          pages_alloc=1, mc_used=1)
    # #3: empty cache, #4: NULL memcache (no allocation attempted at all).
    assert op(pt, "map", 0x40000000, 0x1000, 0x8000000000, RW, memcache=mc(0)) == ENOMEM
    check(pt, visits=1, reloads=1, leaf=1, mc_exhausted=1)
    assert op(pt, "map", 0x40000000, 0x1000, 0x8000000000, RW, memcache=None) == ENOMEM
    check(pt, visits=1, reloads=1, leaf=1)
    # #5: a 2 MiB block needs the L2 table.
    assert op(pt, "map", 0x80000000, 2 * MiB, 0x8000000000, RW, memcache=mc(0)) == ENOMEM
    check(pt, visits=1, reloads=1, leaf=1, mc_exhausted=1)
    # #6: a 1 GiB-aligned 1 GiB map needs no table at all.
    m = mc(0)
    assert op(pt, "map", 0x80000000, GiB, 0x8000000000, RW, memcache=m) == 0
    check(pt, visits=1, reloads=1, leaf=1, cmo_log=[("dcache", 0x8000000000, 0x40000000)])
    assert pt.get_leaf(0x80000000) == (0, 0x8000000000 | BLOCK_RW, 1)
    # #7: 4 L3 tables + 1 L2 table needed, 3 available: 2 L3 tables get
    # filled (1024 pages) before -ENOMEM, and they stay.
    m = mc(3)
    assert op(pt, "map", 0x100000000, 8 * MiB, 0x8000001000, RW, memcache=m) == ENOMEM
    assert m.nobjs == 0
    s = pt.stats
    assert (s.visits, s.reloads, s.callbacks_leaf, s.callbacks_table_pre) == (1028, 1028, 1028, 0)
    assert (s.dcache_calls, s.dcache_bytes, s.cmo_log_total) == (1024, 4 * MiB, 1024)
    assert (s.pages_alloc, s.mc_used, s.mc_exhausted, s.pages_free) == (3, 3, 1, 0)
    assert s.tlbi_log_total == 0
    # #8 dump
    assert leaf_levels(pt) == {1: 1, 3: 1025}
    assert pt.table_pages() == 7 and pt.pages_live == 7
    assert [lf for lf in leaves(pt) if lf[0] >= 0x100000000] == [
        (0x100000000 + i * 0x1000, 3, (0x8000001000 + i * 0x1000) | PAGE_RW) for i in range(1024)]


# ---------------------------------------------------------------------------
# Quirk 7

def test_quirk07_unaligned_ranges_round_to_pages():
    # map_unaligned_range #0-#7
    pt = Stage2PageTable(40)
    # #0: page + 2 blocks + page
    assert op(pt, "map", 0x1FF000, 0x402000, 0x80001FF000, RW, memcache=mc()) == 0
    check(pt, visits=7, reloads=7, leaf=7, pages_alloc=3, mc_used=3,
          cmo_log=[("dcache", 0x80001FF000, 0x1000), ("dcache", 0x8000200000, 0x200000),
                   ("dcache", 0x8000400000, 0x200000), ("dcache", 0x8000600000, 0x1000)])
    # #1: unaligned ipa: starts at ALIGN_DOWN(ipa), ends at PAGE_ALIGN(start + size): one page.
    assert op(pt, "map", 0x10001800, 0x1000, 0x8000000000, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=2, pre=1, cmo_log=[("dcache", 0x8000000000, 0x1000)],
          pages_alloc=1, mc_used=1)
    # #2: one byte more: two pages.
    assert op(pt, "map", 0x20001800, 0x1001, 0x8000010000, RW, memcache=mc()) == 0
    check(pt, visits=4, reloads=4, leaf=3, pre=1, pages_alloc=1, mc_used=1,
          cmo_log=[("dcache", 0x8000010000, 0x1000), ("dcache", 0x8000011000, 0x1000)])
    # #3: a sub-page size maps one page.
    assert op(pt, "map", 0x30000000, 0x800, 0x8000020000, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=2, pre=1, cmo_log=[("dcache", 0x8000020000, 0x1000)],
          pages_alloc=1, mc_used=1)
    # #4: size 0 is a no-op returning 0.
    before = pt.descriptors.copy()
    m = mc()
    assert op(pt, "map", 0x31000000, 0, 0x8000030000, RW, memcache=m) == 0
    check(pt, visits=0, reloads=0, leaf=0, pre=0)
    assert m.nobjs == 10000 and np.array_equal(pt.descriptors, before)
    # #5: phys is aligned down.
    assert op(pt, "map", 0x32000000, 0x1000, 0x8000040123, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=2, pre=1, cmo_log=[("dcache", 0x8000040000, 0x1000)],
          pages_alloc=1, mc_used=1)
    # #6: the sub-page ipa offset is dropped, the size is not extended: one 2 MiB block.
    m = mc()
    assert op(pt, "map", 0x33000123, 2 * MiB, 0x8000200000, RW, memcache=m) == 0
    assert m.nobjs == 10000
    check(pt, visits=2, reloads=2, leaf=1, pre=1, cmo_log=[("dcache", 0x8000200000, 0x200000)])
    # #7 dump
    assert leaves(pt) == [
        (0x1FF000, 3, 0x400080001FF7FF), (0x200000, 2, 0x400080002007FD),
        (0x400000, 2, 0x400080004007FD), (0x600000, 3, 0x400080006007FF),
        (0x10001000, 3, 0x400080000007FF), (0x20001000, 3, 0x400080000107FF),
        (0x20002000, 3, 0x400080000117FF), (0x30000000, 3, 0x400080000207FF),
        (0x32000000, 3, 0x400080000407FF), (0x33000000, 2, 0x400080002007FD)]
    assert pt.table_pages() == 9


# ---------------------------------------------------------------------------
# Quirk 8

def test_quirk08_range_check_against_ia_bits():
    # map_range_limit #0-#4
    pt = Stage2PageTable(40)
    limit = 1 << 40
    for ipa, size in ((limit, 0x1000), (0xFFFFFFF000, 0x2000), (0x10140000000, 0x1000)):
        m = mc()
        assert op(pt, "map", ipa, size, 0x8000000000, RW, memcache=m) == ERANGE == -34
        check(pt, visits=0, reloads=0, leaf=0)
        assert m.nobjs == 10000
    assert leaves(pt) == [] and pt.pages_live == 2
    # #2: the last page is fine.
    assert op(pt, "map", 0xFFFFFFF000, 0x1000, 0x8000000000, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=3, cmo_log=[("dcache", 0x8000000000, 0x1000)],
          pages_alloc=2, mc_used=2)
    # #3: start == 2^ia_bits with size 0 returns 0.
    assert op(pt, "map", limit, 0, 0x8000000000, RW, memcache=mc()) == 0
    check(pt, visits=0)

    # The check is on the aligned start and PAGE_ALIGN(start + size)
    # (_kvm_pgtable_walk: "if (data->addr > limit || data->end > limit)"):
    before = pt.descriptors.copy()
    # a sub-page ipa offset past the limit with size 0: aligned start == limit -> 0
    assert op(pt, "map", limit + 0x800, 0, 0x8000000000, RW, memcache=mc()) == 0
    # end = PAGE_ALIGN(limit - 0x1000 + 0x1001) = limit + 0x1000 -> -ERANGE
    assert op(pt, "map", limit - 0x1000, 0x1001, 0x9000000000, RW, memcache=mc()) == ERANGE
    # sub-page tail that rounds up exactly to the limit -> allowed (identical remap)
    assert op(pt, "map", limit - 0x800, 0x800, 0x8000000000, RW, memcache=mc()) == 0
    check(pt, visits=3, reloads=3, leaf=1, pre=2)
    assert np.array_equal(pt.descriptors, before)
    # The same check guards every walker: walk, unmap and relax_perms
    # (attr_relax_perms #16).
    assert op(pt, "walk", limit, 0x1000, lambda ctx, v: 0) == ERANGE
    assert op(pt, "unmap", 0xFFFFFFF000, 0x2000) == ERANGE
    check(pt, visits=0)
    assert op(pt, "relax_perms", limit, R) == ERANGE
    check(pt, visits=0)
    assert leaves(pt) == [(0xFFFFFFF000, 3, 0x8000000000 | PAGE_RW)]


# ---------------------------------------------------------------------------
# Quirk 9

def test_quirk09_unmap_removes_whole_block_and_frees_empty_tables():
    # unmap_basic #0-#15
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 4 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.map(0x50000000, 0x8000, 0x8000800000, RW, memcache=mc()) == 0
    assert pt.map(0x80000000, GiB, 0x8040000000, RW, memcache=mc()) == 0
    # #3: a whole block.
    assert op(pt, "unmap", 0x40000000, 2 * MiB) == 0
    check(pt, visits=2, reloads=1, leaf=1, post=1, tlbi_log=[("vmid_ipa", 0x40000000, 2)],
          cmo_log=[("dcache", 0x8000000000, 0x200000)])
    # #5: 4 KiB of a block removes the whole block (TLBI at ctx->addr, dcache of all of it).
    assert op(pt, "unmap", 0x40205000, 0x1000) == 0
    check(pt, visits=2, reloads=1, leaf=1, post=1, tlbi_log=[("vmid_ipa", 0x40205000, 2)],
          cmo_log=[("dcache", 0x8000200000, 0x200000)])
    assert pt.get_leaf(0x40200000) == (0, 0, 2)
    # #7: two pages, the table keeps its other pages.
    assert op(pt, "unmap", 0x50002000, 0x2000) == 0
    check(pt, visits=4, reloads=2, leaf=2, post=2,
          tlbi_log=[("vmid_ipa", 0x50002000, 3), ("vmid_ipa", 0x50003000, 3)],
          cmo_log=[("dcache", 0x8000802000, 0x1000), ("dcache", 0x8000803000, 0x1000)])
    assert pt.pages_live == 4
    # #9: the rest: the L3 and then the L2 table come back to refcount 1 and
    # are freed in TABLE_POST, each with a TLBI at the table entry's
    # ctx->addr and TTL unknown.
    assert op(pt, "unmap", 0x50000000, 0x8000) == 0
    pages = [0x50000000, 0x50001000, 0x50004000, 0x50005000, 0x50006000, 0x50007000]
    check(pt, visits=10, reloads=8, leaf=8, post=2, pages_free=2,
          tlbi_log=[("vmid_ipa", a, 3) for a in pages]
          + [("vmid_ipa", 0x50000000, TTL), ("vmid_ipa", 0x50000000, TTL)],
          cmo_log=[("dcache", 0x8000800000 + (a - 0x50000000), 0x1000) for a in pages])
    assert pt.table_pages() == 2 and pt.pages_live == 2                      # #10
    # #11: 4 KiB of a 1 GiB block removes the 1 GiB block.
    assert op(pt, "unmap", 0x80E00000, 0x1000) == 0
    check(pt, visits=1, reloads=1, leaf=1, tlbi_log=[("vmid_ipa", 0x80E00000, 1)],
          cmo_log=[("dcache", 0x8040000000, 0x40000000)])
    assert leaves(pt) == []
    # #13, #14: unmapping empty space returns 0 and does nothing.
    assert op(pt, "unmap", 0x70000000, GiB) == 0
    check(pt, visits=2, reloads=2, leaf=2)
    assert op(pt, "unmap", 0x70001000, 0) == 0
    check(pt, visits=0)

    # unmap_span_tables #0, #1, #3, #5: the table TLBI uses the table entry's
    # ctx->addr, which is the walk's current address (0x30000000 for the
    # first level-1 entry), not the entry's aligned IPA.
    pt = Stage2PageTable(40)
    assert pt.map(0x3FE00000, 8 * MiB, 0x8000001000, RW, memcache=mc()) == 0
    assert pt.map(0x7FFFD000, 0x6000, 0x8000003000, RW, memcache=mc()) == 0
    assert pt.unmap(0x3FE01000, 0x7FE000) == 0
    assert pt.pages_live == 9                                                 # #4 dump
    assert op(pt, "unmap", 0x30000000, 0x80000000) == 0
    check(pt, visits=3075, reloads=3068, leaf=3068, post=7, pages_free=7,
          tlbi_log=[("vmid_ipa", 0x3FE00000, 3), ("vmid_ipa", 0x3FE00000, TTL),
                    ("vmid_ipa", 0x30000000, TTL), ("vmid_ipa", 0x405FF000, 3),
                    ("vmid_ipa", 0x40400000, TTL), ("vmid_ipa", 0x7FFFD000, 3),
                    ("vmid_ipa", 0x7FFFE000, 3), ("vmid_ipa", 0x7FFFF000, 3),
                    ("vmid_ipa", 0x7FE00000, TTL), ("vmid_ipa", 0x40000000, TTL),
                    ("vmid_ipa", 0x80000000, 3), ("vmid_ipa", 0x80001000, 3),
                    ("vmid_ipa", 0x80002000, 3), ("vmid_ipa", 0x80000000, TTL),
                    ("vmid_ipa", 0x80000000, TTL)],
          cmo_log=[("dcache", pa, 0x1000) for pa in (
              0x8000001000, 0x8000800000, 0x8000003000, 0x8000004000, 0x8000005000,
              0x8000006000, 0x8000007000, 0x8000008000)])
    assert leaves(pt) == [] and pt.table_pages() == 2 and pt.pages_live == 2  # #6 dump


# ---------------------------------------------------------------------------
# Quirk 10

def _unmap_tlb_state(fwb: bool, tlb_range: bool) -> Stage2PageTable:
    """unmap_tlb_* #0-#2"""
    pt = Stage2PageTable(40, fwb=fwb, tlb_range=tlb_range)
    assert pt.map(0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.map(0x40200000, 0x4000, 0x8000200000, RW, memcache=mc()) == 0
    assert pt.map(0x80000000, GiB, 0x8040000000, R | X, memcache=mc()) == 0
    return pt


def test_quirk10_fwb_with_range_tlbi_defers_leaf_tlbis():
    # unmap_tlb_fwb1_range1 #3-#5: leaf TLBIs deferred to one range flush of
    # the requested range; table TLBIs stay immediate; no CMO with FWB.
    pt = _unmap_tlb_state(True, True)
    assert op(pt, "unmap", 0x40000000, 8 * MiB) == 0
    check(pt, visits=517, reloads=515, leaf=515, post=2, pages_free=2,
          tlbi_log=[("vmid_ipa", 0x40200000, TTL), ("vmid_ipa", 0x40000000, TTL),
                    ("vmid_range", 0x40000000, 0x800)], tlbi_range_pages=2048)
    # #4: 2 MiB of a 1 GiB block: the whole block goes, the flush covers only
    # the requested 2 MiB.
    assert op(pt, "unmap", 0x80A00000, 2 * MiB) == 0
    check(pt, visits=1, reloads=1, leaf=1, tlbi_log=[("vmid_range", 0x80A00000, 0x200)],
          tlbi_range_pages=512)
    assert pt.get_leaf(0x80000000) == (0, 0, 1)
    # #5: nothing mapped there: still one range flush.
    assert op(pt, "unmap", 0xC0000000, 2 * GiB) == 0
    check(pt, visits=2, reloads=2, leaf=2, tlbi_log=[("vmid_range", 0xC0000000, 0x80000)],
          tlbi_range_pages=0x80000)
    assert leaves(pt) == [] and pt.pages_live == 2

    # unmap_tlb_fwb0_range1 #3-#5: without FWB every leaf gets its own TLBI
    # and every cacheable leaf a dcache clean of its whole granule.
    pt = _unmap_tlb_state(False, True)
    assert op(pt, "unmap", 0x40000000, 8 * MiB) == 0
    check(pt, visits=517, reloads=515, leaf=515, post=2, pages_free=2,
          tlbi_log=[("vmid_ipa", 0x40000000, 2), ("vmid_ipa", 0x40200000, 3),
                    ("vmid_ipa", 0x40201000, 3), ("vmid_ipa", 0x40202000, 3),
                    ("vmid_ipa", 0x40203000, 3), ("vmid_ipa", 0x40200000, TTL),
                    ("vmid_ipa", 0x40000000, TTL)],
          cmo_log=[("dcache", 0x8000000000, 0x200000), ("dcache", 0x8000200000, 0x1000),
                   ("dcache", 0x8000201000, 0x1000), ("dcache", 0x8000202000, 0x1000),
                   ("dcache", 0x8000203000, 0x1000)])
    assert op(pt, "unmap", 0x80A00000, 2 * MiB) == 0
    check(pt, visits=1, reloads=1, leaf=1, tlbi_log=[("vmid_ipa", 0x80A00000, 1)],
          cmo_log=[("dcache", 0x8040000000, 0x40000000)])
    assert op(pt, "unmap", 0xC0000000, 2 * GiB) == 0
    check(pt, visits=2, reloads=2, leaf=2)

    # unmap_tlb_fwb1_range0 #3-#5: FWB without range TLBI: per-leaf TLBIs, no CMO.
    pt = _unmap_tlb_state(True, False)
    assert op(pt, "unmap", 0x40000000, 8 * MiB) == 0
    check(pt, visits=517, reloads=515, leaf=515, post=2, pages_free=2,
          tlbi_log=[("vmid_ipa", 0x40000000, 2), ("vmid_ipa", 0x40200000, 3),
                    ("vmid_ipa", 0x40201000, 3), ("vmid_ipa", 0x40202000, 3),
                    ("vmid_ipa", 0x40203000, 3), ("vmid_ipa", 0x40200000, TTL),
                    ("vmid_ipa", 0x40000000, TTL)])
    assert op(pt, "unmap", 0x80A00000, 2 * MiB) == 0
    check(pt, visits=1, reloads=1, leaf=1, tlbi_log=[("vmid_ipa", 0x80A00000, 1)])


# ---------------------------------------------------------------------------
# Quirk 11

def _attr_relax_perms_state(xnx: bool = False) -> Stage2PageTable:
    """attr_relax_perms #0-#2"""
    pt = Stage2PageTable(40, xnx=xnx)
    assert pt.map(0x40000000, 0x1000, 0x8000000000, R, memcache=mc()) == 0
    assert pt.map(0x40200000, 2 * MiB, 0x8000200000, R, memcache=mc()) == 0
    assert pt.map(0x40400000, 0x1000, 0x8000400000, R | X, memcache=mc()) == 0
    return pt


def test_quirk11_attr_ops_on_invalid_entry_eagain_swallowed():
    pt = _attr_relax_perms_state()
    before = pt.descriptors.copy()
    # attr_relax_perms #13: -EAGAIN swallowed: ret 0, and the TLBI is still
    # issued, with the zero-initialised level 0.
    assert op(pt, "relax_perms", 0x50000000, RW) == 0
    check(pt, visits=2, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x50000000, 0)])
    # #14: HANDLE_FAULT: -EAGAIN returned, TLBI with the uninitialised level (None).
    assert op(pt, "relax_perms", 0x50000000, RW, F.HANDLE_FAULT) == EAGAIN
    check(pt, visits=2, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x50000000, None)])
    assert np.array_equal(pt.descriptors, before)

    # attr_young #19, #20: mkyoung on an invalid entry returns nothing either way.
    for flags in (0, F.HANDLE_FAULT):
        assert op(pt, "mkyoung", 0x70000000, flags) is None
        check(pt, visits=2, reloads=1, leaf=1)
    assert np.array_equal(pt.descriptors, before)

    # wrprotect (flags 0): an invalid entry in the middle of the range does
    # not stop the walk; the pages after it are still write-protected
    # (visit counts as attr_wrprotect #11, pte values as its #12 dump).
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 0x4000, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.unmap(0x40001000, 0x1000) == 0
    assert op(pt, "wrprotect", 0x40000000, 0x4000) == 0
    check(pt, visits=6, reloads=4, leaf=4)
    assert leaves(pt) == [(0x40000000, 3, 0x4000800000077F), (0x40002000, 3, 0x4000800000277F),
                          (0x40003000, 3, 0x4000800000377F)]
    # ... and an invalid level-1 entry before the mapped range does not either
    # (counted from the walker: the empty level-1 entry gets a LEAF callback
    # and a reload, the two tables are entered without callbacks, then 4 LEAFs).
    assert pt.map(0x40000000, 0x4000, 0x8000000000, RW, memcache=mc()) == 0
    assert op(pt, "wrprotect", 0x3FFFF000, 0x5000) == 0
    check(pt, visits=7, reloads=5, leaf=5, callbacks_level_1=1, callbacks_level_3=4)
    assert leaves(pt) == [(0x40000000 + i * 0x1000, 3, (0x8000000000 + i * 0x1000) | 0x4000000000077F)
                          for i in range(4)]
    # attr_wrprotect #10: a wholly invalid range.
    assert op(pt, "wrprotect", 0x70000000, 2 * MiB) == 0
    check(pt, visits=2, reloads=1, leaf=1)


# ---------------------------------------------------------------------------
# Quirk 12

def test_quirk12_relax_perms_sets_exact_xn_and_only_adds_s2ap():
    # attr_relax_perms #3-#12
    pt = _attr_relax_perms_state()
    # #3: R page + W
    assert op(pt, "relax_perms", 0x40000000, W) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40000000, 3)])
    assert pt.get_leaf(0x40000000) == (0, 0x400080000007FF, 3)            # #4
    # #5: RWX: XN cleared, icache invalidated.
    assert op(pt, "relax_perms", 0x40000000, RWX) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40000000, 3)],
          cmo_log=[("icache", 0x8000000000, 0x1000)])
    assert pt.get_leaf(0x40000000) == (0, 0x80000007FF, 3)                # #6
    # #7: the TLBI uses the unaligned addr argument (inside a 2 MiB block).
    assert op(pt, "relax_perms", 0x40209000, R | X) == 0
    check(pt, visits=2, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40209000, 2)],
          cmo_log=[("icache", 0x8000200000, 0x200000)])
    assert pt.get_leaf(0x40200000) == (0, 0x800020077D, 2)                # #8
    # #9: relax_perms(R) on an executable page makes it non-executable.
    assert op(pt, "relax_perms", 0x40400000, R) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40400000, 3)])
    assert pt.get_leaf(0x40400000) == (0, 0x4000800040077F, 3)            # #10
    # A sub-page addr is passed to the TLBI unchanged too (kvm_call_hyp(
    # __kvm_tlb_flush_vmid_ipa_nsh, pgt->mmu, addr, level)).
    assert op(pt, "relax_perms", 0x40400800, R | X) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40400800, 3)],
          cmo_log=[("icache", 0x8000400000, 0x1000)])
    assert pt.get_leaf(0x40400000) == (0, 0x8000400000 | PAGE_RX, 3)
    # #11, #12: SW bits, or PX without UX (no XNX): -EINVAL before any walk.
    before = pt.descriptors.copy()
    for prot in (R | SW0, R | PX):
        assert op(pt, "relax_perms", 0x40000000, prot) == EINVAL
        check(pt, visits=0)
    assert np.array_equal(pt.descriptors, before)
    # S2AP bits are only ever added (stage2_relax_perms only clears XN):
    # relax_perms(R) on the RWX page keeps W and sets XN = 0b10.
    assert op(pt, "relax_perms", 0x40000000, R) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40000000, 3)])
    assert pt.get_leaf(0x40000000) == (0, 0x8000000000 | PAGE_RW, 3)

    # attr_relax_perms_xnx #0-#10: with XNX, PX-only <-> UX-only.
    pt = Stage2PageTable(40, xnx=True)
    assert pt.map(0x40000000, 0x1000, 0x8000000000, R | PX, memcache=mc()) == 0
    assert pt.map(0x40001000, 0x1000, 0x8000001000, R | UX, memcache=mc()) == 0
    assert pt.map(0x40002000, 0x1000, 0x8000002000, R, memcache=mc()) == 0
    assert op(pt, "relax_perms", 0x40000000, R | UX) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40000000, 3)])
    assert pt.get_leaf(0x40000000) == (0, 0x2000800000077F, 3)            # XN 0b01
    assert op(pt, "relax_perms", 0x40001000, R | PX) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40001000, 3)])
    assert pt.get_leaf(0x40001000) == (0, 0x6000800000177F, 3)            # XN 0b11
    assert op(pt, "relax_perms", 0x40002000, R | PX | UX) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40002000, 3)],
          cmo_log=[("icache", 0x8000002000, 0x1000)])
    assert pt.get_leaf(0x40002000) == (0, 0x800000277F, 3)                # XN 0b00
    assert op(pt, "relax_perms", 0x40002000, R) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x40002000, 3)])
    assert pt.get_leaf(0x40002000) == (0, 0x4000800000277F, 3)            # XN 0b10


# ---------------------------------------------------------------------------
# Quirk 13

def test_quirk13_split_whole_blocks_with_page_budget():
    # split_1g_mc1 #0-#9
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, GiB, 0x8000000000, RW, memcache=mc()) == 0
    # #1: mc=1 on a 1 GiB block: one L2 table of 2 MiB blocks (no force-PTE),
    # then the walk descends and fails on the first new 2 MiB block.
    m = mc(1)
    assert op(pt, "split", 0x40000000, GiB, m) == ENOMEM
    assert m.nobjs == 0
    check(pt, visits=514, reloads=514, leaf=514, tlbi_log=[("vmid_ipa", 0x40000000, 1)],
          pages_alloc=1, mc_used=1, callbacks_level_1=1, callbacks_level_2=513)
    assert pt.get_leaf(0x40000000) == (0, 0x8000000000 | BLOCK_RW, 2)     # #2
    assert pt.get_leaf(0x40200000) == (0, 0x8000200000 | BLOCK_RW, 2)     # #3
    assert leaves(pt) == [(0x40000000 + i * 2 * MiB, 2, (0x8000000000 + i * 2 * MiB) | BLOCK_RW)
                          for i in range(512)]                             # #4
    assert pt.pages_live == 3
    # #5: mc=1 again: the first 2 MiB block is split to pages, the second fails.
    m = mc(1)
    assert op(pt, "split", 0x40000000, GiB, m) == ENOMEM
    check(pt, visits=1027, reloads=1026, leaf=1026, tlbi_log=[("vmid_ipa", 0x40000000, 2)],
          pages_alloc=1, mc_used=1)
    assert pt.get_leaf(0x40200000) == (0, 0x8000200000 | BLOCK_RW, 2)     # #6
    assert leaf_levels(pt) == {2: 511, 3: 512}                            # #7
    # #8: 4 MiB range, mc=3: two blocks split, one page left.
    m = mc(3)
    assert op(pt, "split", 0x40800000, 4 * MiB, m) == 0
    assert m.nobjs == 1
    check(pt, visits=2051, reloads=2050, leaf=2050, pages_alloc=2, mc_used=2,
          tlbi_log=[("vmid_ipa", 0x40800000, 2), ("vmid_ipa", 0x40A00000, 2)])
    assert leaf_levels(pt) == {2: 509, 3: 1536} and pt.pages_live == 6   # #9

    # split_mc0_and_exact #0-#8
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, GiB, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.map(0xC0000000, GiB, 0x8040000000, RW, memcache=mc()) == 0
    assert pt.map(0x10000000, 4 * MiB, 0x8080000000, RW, memcache=mc()) == 0
    before = pt.descriptors.copy()
    # #3: mc=0 returns -ENOMEM at once.
    assert op(pt, "split", 0x40000000, GiB, mc(0)) == ENOMEM
    check(pt, visits=1, reloads=1, leaf=1)
    assert np.array_equal(pt.descriptors, before)
    # #5: exactly 513 pages: the L1 block is split down to pages in one go.
    m = mc(513)
    assert op(pt, "split", 0xC0000000, GiB, m) == 0
    assert m.nobjs == 0
    check(pt, visits=525313, reloads=524801, leaf=524801, callbacks_level_1=1,
          callbacks_level_2=512, callbacks_level_3=524288,
          tlbi_log=[("vmid_ipa", 0xC0000000, 1)], pages_alloc=513, mc_used=513)
    assert leaf_levels(pt) == {1: 1, 2: 2, 3: 262144} and pt.table_pages() == 516   # #6
    # #7: one page short: one L2 table of blocks, then 511 blocks split, -ENOMEM.
    m = mc(512)
    assert op(pt, "split", 0x40000000, GiB, m) == ENOMEM
    assert m.nobjs == 0
    s = pt.stats
    assert (s.visits, s.reloads, s.callbacks_leaf) == (524289, 524289, 524289)
    assert (s.callbacks_level_1, s.callbacks_level_2, s.callbacks_level_3) == (1, 1024, 523264)
    assert (s.pages_alloc, s.mc_used, s.tlbi_vmid_ipa, s.tlbi_log_total) == (512, 512, 512, 512)
    assert s.tlbi_log[:3] == [("vmid_ipa", 0x40000000, 1), ("vmid_ipa", 0x40000000, 2),
                              ("vmid_ipa", 0x40200000, 2)]
    assert leaf_levels(pt) == {2: 3, 3: 523776} and pt.table_pages() == 1028        # #8

    # split_2m_blocks #0-#4: a 4 KiB range inside a 2 MiB block splits the
    # whole block, with one TLBI at ctx->addr; no CMO.
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 8 * MiB, 0x8000000000, R | X, memcache=mc()) == 0
    m = mc(1)
    assert op(pt, "split", 0x40205000, 0x1000, m) == 0
    assert m.nobjs == 0
    check(pt, visits=515, reloads=514, leaf=514, tlbi_log=[("vmid_ipa", 0x40205000, 2)],
          pages_alloc=1, mc_used=1)
    lv = leaves(pt)
    assert lv[0] == (0x40000000, 2, 0x800000077D)
    assert lv[1:513] == [(0x40200000 + i * 0x1000, 3, (0x8000200000 + i * 0x1000) | PAGE_RX)
                         for i in range(512)]
    assert leaf_levels(pt) == {2: 3, 3: 512}
    # #3: the already-split block is a no-op that is still visited.
    m = mc(10)
    assert op(pt, "split", 0x40000000, 8 * MiB, m) == 0
    assert m.nobjs == 7
    check(pt, visits=3589, reloads=3587, leaf=3587, pages_alloc=3, mc_used=3,
          tlbi_log=[("vmid_ipa", 0x40000000, 2), ("vmid_ipa", 0x40400000, 2),
                    ("vmid_ipa", 0x40600000, 2)])
    assert leaf_levels(pt) == {3: 2048} and pt.pages_live == 7             # #4


# ---------------------------------------------------------------------------
# Quirk 14

def test_quirk14_split_rebuilds_attributes_through_pte_prot():
    # split_attr_roundtrip #0-#17
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 2 * MiB, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.test_clear_young(0x40000000, 2 * MiB, True) is True
    assert pt.get_leaf(0x40000000) == (0, 0x400080000003FD, 2)            # #2: AF clear
    assert op(pt, "split", 0x40000000, 2 * MiB, mc(1)) == 0
    check(pt, visits=1026, reloads=1025, leaf=1025, tlbi_log=[("vmid_ipa", 0x40000000, 2)],
          pages_alloc=1, mc_used=1)
    # #4, #5: AF is set again on every page.
    assert pt.get_leaf(0x40000000) == (0, 0x400080000007FF, 3)
    assert pt.get_leaf(0x401FF000) == (0, 0x400080001FF7FF, 3)
    # #6-#8: R+X with SW0|SW2: XN encoding and SW bits survive.
    assert pt.map(0x40200000, 2 * MiB, 0x8000200000, R | X | SW0 | SW2, memcache=mc()) == 0
    assert op(pt, "split", 0x40200000, 2 * MiB, mc(1)) == 0
    assert pt.get_leaf(0x40200000) == (0, 0x28000800020077F, 3)
    # #9-#14: a write-protected DEVICE 1 GiB block becomes Normal-WB 2 MiB
    # blocks (mc=1: no force-PTE, -ENOMEM on the first new block).
    assert pt.map(0x80000000, GiB, 0x8040000000, RW | DEVICE, memcache=mc()) == 0
    assert pt.wrprotect(0x80000000, GiB) == 0
    assert pt.get_leaf(0x80000000) == (0, 0x40008040000745, 1)            # #11
    assert op(pt, "split", 0x80000000, GiB, mc(1)) == ENOMEM
    check(pt, visits=514, reloads=514, leaf=514, tlbi_log=[("vmid_ipa", 0x80000000, 1)],
          pages_alloc=1, mc_used=1)
    assert pt.get_leaf(0x80000000) == (0, 0x4000804000077D, 2)            # #13
    assert pt.get_leaf(0x80200000) == (0, 0x4000804020077D, 2)            # #14
    # #15-#17: W-only NC block with SW3 -> Normal-WB pages, SW3 kept.
    assert pt.map(0x40400000, 2 * MiB, 0x8000400000, W | NC | SW3, memcache=mc()) == 0
    assert op(pt, "split", 0x40400000, 2 * MiB, mc(1)) == 0
    assert pt.get_leaf(0x40400000) == (0, 0x4400080004007BF, 3)
    assert leaf_levels(pt) == {2: 512, 3: 1536} and pt.pages_live == 7    # #18

    # split_device #0-#4
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 2 * MiB, 0x100000000, RW | DEVICE, memcache=mc()) == 0
    assert pt.map(0x40200000, 2 * MiB, 0x100200000, R | NC | SW3, memcache=mc()) == 0
    assert op(pt, "split", 0x40000000, 4 * MiB, mc(2)) == 0
    check(pt, visits=2051, reloads=2050, leaf=2050, pages_alloc=2, mc_used=2,
          tlbi_log=[("vmid_ipa", 0x40000000, 2), ("vmid_ipa", 0x40200000, 2)])
    assert pt.get_leaf(0x40000000) == (0, 0x400001000007FF, 3)
    assert pt.get_leaf(0x40200000) == (0, 0x44000010020077F, 3)
    assert leaf_levels(pt) == {3: 1024} and pt.pages_live == 5


# ---------------------------------------------------------------------------
# Quirk 15

def test_quirk15_counters_include_nested_walks():
    # split_1g_force_pte #0-#6: create_unlinked builds and walks the subtree
    # (262,657 visits), then the split walk descends into it again.
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, GiB, 0x8000000000, RWX, memcache=mc()) == 0
    m = mc(600)
    assert op(pt, "split", 0x40000000, GiB, m) == 0
    assert m.nobjs == 87
    check(pt, visits=525313, reloads=524801, leaf=524801, pre=0, post=0,
          callbacks_level_1=1, callbacks_level_2=512, callbacks_level_3=524288,
          tlbi_log=[("vmid_ipa", 0x40000000, 1)], pages_alloc=513, mc_used=513)
    assert pt.get_leaf(0x40000000) == (0, 0x80000007FF, 3)                # #2
    assert pt.get_leaf(0x7FFFF000) == (0, 0x803FFFF7FF, 3)                # #3
    assert leaf_levels(pt) == {3: 262144}                                 # #4
    assert pt.table_pages() == 515 and pt.pages_live == 515
    # #5: already split: no nested walk, no page used.
    m = mc(600)
    assert op(pt, "split", 0x40000000, GiB, m) == 0
    assert m.nobjs == 600
    check(pt, visits=262657, reloads=262144, leaf=262144)
    # #6: destroy walks everything.
    op(pt, "destroy")
    check(pt, visits=263680, reloads=263167, leaf=263167, post=513, pages_free=515)
    assert pt.pages_live == 0

    # map_into_block #12: free_unlinked_table's walk is counted in map's events
    # (checked in quirk 5 too): 2 visits of map + 512 of the nested free walk.
    pt = _map_into_block_state()
    assert op(pt, "map", 0x40000000, 2 * MiB, 0x8008000000, RW, memcache=mc()) == 0
    s = pt.stats
    assert (s.visits, s.callbacks_leaf, s.callbacks_level_3, s.unlinked_tables_freed) == (514, 512, 512, 1)


# ---------------------------------------------------------------------------
# Quirk 16

def test_quirk16_destroy_visits_everything_then_einval():
    # destroy_empty #0-#4: every entry of the 2 PGD pages is visited.
    pt = Stage2PageTable(40)
    assert op(pt, "destroy") is None
    check(pt, visits=1024, reloads=1024, leaf=1024, callbacks_level_1=1024, pages_free=2)
    assert pt.pages_live == 0 and pt.table_pages() == 0 and leaves(pt) == []
    assert op(pt, "map", 0, 0x1000, 0x8000000000, RW, memcache=mc()) == EINVAL == -22
    check(pt, visits=0)
    assert op(pt, "get_leaf", 0) == (EINVAL, None, None)
    calls = []
    assert op(pt, "walk", 0, 0x1000, lambda ctx, v: calls.append(v), F.LEAF | F.TABLE_PRE | F.TABLE_POST) == EINVAL
    assert calls == []
    # "every op returns -EINVAL": the other walkers too (relax_perms issues
    # no TLBI since its result is neither 0 nor -EAGAIN).
    for name, args in (("unmap", (0, 0x1000)), ("wrprotect", (0, 0x1000)), ("flush", (0, 0x1000)),
                       ("relax_perms", (0, RW)), ("split", (0, 0x1000, mc())),
                       ("set_owner", (0, 0x1000, 1, mc()))):
        assert op(pt, name, *args) == EINVAL, name
        check(pt, visits=0)

    # attr_wrprotect #0-#2 then #13: tables are freed in TABLE_POST.
    pt = Stage2PageTable(40)
    assert pt.map(0x40000000, 0x4000, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.map(0x40200000, 2 * MiB, 0x8000200000, RW, memcache=mc()) == 0
    assert pt.map(0x80000000, GiB, 0x8040000000, RW, memcache=mc()) == 0
    assert pt.pages_live == 4
    op(pt, "destroy")
    check(pt, visits=2048, reloads=2046, leaf=2046, post=2, pages_free=4,
          callbacks_level_1=1024, callbacks_level_2=512, callbacks_level_3=512)
    assert pt.pages_live == 0
    assert op(pt, "unmap", 0x40000000, 0x1000) == EINVAL
    assert op(pt, "map", 0x40000000, 0x1000, 0x8000000000, RW, memcache=mc()) == EINVAL


# ---------------------------------------------------------------------------
# Granules (granules/FORMAT.md sections 3-7)

def test_granule64k_pa_bits_51_48_in_pte_bits_15_12():
    # 64k map_phys_above_pa48 #0-#10
    pt = Stage2PageTable(48, granule=65536)
    cases = [  # (ipa, size, phys, expected pte, level, expected CMO address)
        (0x400000000, 0x10000, 0x1008000000000, 0x400080000017FF, 3, 0x1008000000000),
        (0x400010000, 0x10000, 0xF008000010000, 0x4000800001F7FF, 3, 0xF008000010000),
        (0x400020000, 0x10000, 0x10008000020000, 0x400080000207FF, 3, 0x8000020000),   # bit 52 dropped
        (0x420000000, 0x20000000, 0x4008020000000, 0x400080200047FD, 2, 0x4008020000000),
    ]
    for ipa, size, phys, pte, level, cmo in cases:
        assert op(pt, "map", ipa, size, phys, RW, memcache=mc()) == 0
        assert pt.stats.cmo_log == [("dcache", cmo, size)]
        assert pt.get_leaf(ipa) == (0, pte, level)
    assert int(s2fast.pte_prot(0x4000800000F7FF)) == R | W                   # #8
    # #9: flush follows the PTE back to the full PA.
    assert op(pt, "flush", 0x400000000, GiB) == 0
    assert pt.stats.cmo_log == [("dcache", 0x1008000000000, 0x10000), ("dcache", 0xF008000010000, 0x10000),
                                ("dcache", 0x8000020000, 0x10000), ("dcache", 0x4008020000000, 0x20000000)]

    # 16k map_phys_above_pa48 #0-#7: every PA bit from 48 up is dropped.
    pt = Stage2PageTable(48, granule=16384)
    cases = [
        (0x40000000, 0x4000, 0x1008000000000, 0x400080000007FF, 3, 0x8000000000),
        (0x40004000, 0x4000, 0xF008000004000, 0x400080000047FF, 3, 0x8000004000),
        (0x40008000, 0x4000, 0x10008000008000, 0x400080000087FF, 3, 0x8000008000),
        (0x42000000, 0x2000000, 0x4008002000000, 0x400080020007FD, 2, 0x8002000000),
    ]
    for ipa, size, phys, pte, level, cmo in cases:
        assert op(pt, "map", ipa, size, phys, RW, memcache=mc()) == 0
        assert pt.stats.cmo_log == [("dcache", cmo, size)]
        assert pt.get_leaf(ipa) == (0, pte, level)


SPLIT_CASES = {  # granule: (block base, block size, PTRS_PER_PTE) from split_block_* goldens
    16384: (0x40000000, 32 * MiB, 2048),
    65536: (0x400000000, 512 * MiB, 8192),
}


@pytest.mark.parametrize("granule", [16384, 65536], ids=["16k", "64k"])
def test_granule_split_block_needs_one_page(granule):
    base, bs, ptrs = SPLIT_CASES[granule]
    page = granule
    # split_block_force_pte #0-#5
    pt = Stage2PageTable(48, granule=granule)
    assert pt.map(base, bs, 0x8000000000, RWX, memcache=mc()) == 0
    m = mc(2)
    assert op(pt, "split", base, bs, m) == 0
    assert m.nobjs == 1
    check(pt, visits=2 * ptrs + 2, reloads=2 * ptrs + 1, leaf=2 * ptrs + 1,
          tlbi_log=[("vmid_ipa", base, 2)], pages_alloc=1, mc_used=1)
    assert pt.get_leaf(base) == (0, 0x80000007FF, 3)
    assert pt.get_leaf(base + bs - page) == (0, (0x8000000000 + bs - page) | 0x7FF, 3)
    assert leaf_levels(pt) == {3: ptrs}
    m = mc(2)
    assert op(pt, "split", base, bs, m) == 0       # already split: no-op
    assert m.nobjs == 2
    check(pt, visits=ptrs + 2, reloads=ptrs, leaf=ptrs)

    # split_block_mc_exact #0-#8: mc=k over 3 blocks splits k of them.
    pt = Stage2PageTable(48, granule=granule)
    for i in range(3):
        assert pt.map(base + i * bs, bs, 0x8000000000 + i * bs, RW, memcache=mc()) == 0
    assert op(pt, "split", base, 3 * bs, mc(0)) == ENOMEM
    check(pt, visits=2, reloads=1, leaf=1)
    m = mc(2)
    assert op(pt, "split", base, 3 * bs, m) == ENOMEM
    assert m.nobjs == 0
    check(pt, visits=4 * ptrs + 4, reloads=4 * ptrs + 3, leaf=4 * ptrs + 3,
          tlbi_log=[("vmid_ipa", base, 2), ("vmid_ipa", base + bs, 2)], pages_alloc=2, mc_used=2)
    assert leaf_levels(pt) == {2: 1, 3: 2 * ptrs}
    assert op(pt, "split", base, 3 * bs, mc(1)) == 0
    check(pt, visits=4 * ptrs + 4, reloads=4 * ptrs + 1, leaf=4 * ptrs + 1,
          tlbi_log=[("vmid_ipa", base + 2 * bs, 2)], pages_alloc=1, mc_used=1)
    assert leaf_levels(pt) == {3: 3 * ptrs}


@pytest.mark.parametrize("granule,start,size,calls", [
    # unmap_tlb_fwb1_range1 #5 (16k: 128 GiB, 64k: 8 TiB of empty space)
    (16384, 0x3000000000, 128 * GiB, 4),
    (65536, 0xC0000000000, 8 * TiB, 64),
], ids=["16k", "64k"])
def test_granule_tlbi_range_chunks_count_granule_pages(granule, start, size, calls):
    pt = Stage2PageTable(48, granule=granule, fwb=True, tlb_range=True)
    chunk = (1 << 21) * granule   # MAX_TLBI_RANGE_PAGES granule pages
    assert op(pt, "unmap", start, size) == 0
    check(pt, visits=2, reloads=2, leaf=2, tlbi_range_pages=size // granule,
          tlbi_vmid_range=calls, tlbi_log_total=calls,
          tlbi_log=[("vmid_range", start + k * chunk, 1 << 21) for k in range(min(calls, 64))])


@pytest.mark.parametrize("granule,base,bs", [
    (4096, 0x40000000, 2 * MiB), (16384, 0x40000000, 32 * MiB), (65536, 0x400000000, 512 * MiB)],
    ids=["4k", "16k", "64k"])
def test_granule_block_over_table_range_flush_is_one_block(granule, base, bs):
    # granules/FORMAT.md section 7: a block replacing a table flushes
    # ALIGN_DOWN(addr, block) for one block: 512 / 2048 / 8192 pages.
    pt = Stage2PageTable(48, granule=granule, tlb_range=True)
    assert pt.map(base, granule, 0x8000000000, RW, memcache=mc()) == 0
    assert op(pt, "map", base, bs, 0x8000000000, RW, memcache=mc()) == 0
    assert pt.stats.tlbi_log == [("vmid_range", base, bs // granule)]
    assert pt.stats.pages_free == 1
    assert leaves(pt) == [(base, 2, 0x8000000000 | BLOCK_RW)]


def test_granule_l1_sized_map_needs_a_table_except_on_4k():
    # 4K: map_mc_small #6: a 1 GiB block needs no table.
    pt = Stage2PageTable(40)
    m = mc(0)
    assert op(pt, "map", 0x80000000, GiB, 0x8000000000, RW, memcache=m) == 0
    assert pt.stats.pages_alloc == 0 and pt.stats.mc_exhausted == 0
    assert leaves(pt) == [(0x80000000, 1, 0x8000000000 | BLOCK_RW)]

    # 16k / 64k: map_l1_range_no_l1_block #0, #1, #2
    for granule, e1, ptrs, blk in ((16384, 64 * GiB, 2048, 32 * MiB), (65536, 4 * TiB, 8192, 512 * MiB)):
        pt = Stage2PageTable(48, granule=granule)
        before = pt.descriptors.copy()
        assert op(pt, "map", e1, e1, 0x8000000000, RWX, memcache=mc(0)) == ENOMEM
        check(pt, visits=1, reloads=1, leaf=1, mc_exhausted=1)
        assert np.array_equal(pt.descriptors, before)
        m = mc(1)
        assert op(pt, "map", e1, e1, 0x8000000000, RWX, memcache=m) == 0
        assert m.nobjs == 0
        s = pt.stats
        assert (s.visits, s.callbacks_leaf, s.pages_alloc, s.mc_used) == (ptrs + 1, ptrs + 1, 1, 1)
        assert (s.dcache_calls, s.icache_calls) == (ptrs, ptrs)
        assert leaf_levels(pt) == {2: ptrs}
        assert pt.get_leaf(e1) == (0, 0x80000007FD, 2)
        assert pt.get_leaf(2 * e1 - granule) == (0, (0x8000000000 + e1 - blk) | 0x7FD, 2)


def test_granule64k_rounding_to_granule():
    # 64k map_unaligned_range #8 / #16: a 4 KiB map inside a granule maps the
    # whole granule, phys rounded down the same way.
    pt = Stage2PageTable(48, granule=65536)
    assert op(pt, "map", 0x6A0001000, 0x1000, 0x8060003000, RW, memcache=mc()) == 0
    assert pt.stats.cmo_log == [("dcache", 0x8060000000, 0x10000)]
    assert leaves(pt) == [(0x6A0000000, 3, 0x400080600007FF)]
    # #6: 4 KiB-aligned, not granule-aligned ipa and phys: one 512 MiB block.
    assert op(pt, "map", 0x660001000, 0x20000000, 0x8020001000, RW, memcache=mc()) == 0
    assert pt.get_leaf(0x660000000) == (0, 0x400080200007FD, 2)
    # 64k attr_relax_perms #0, #16: relax_perms acts on one granule but
    # passes the unaligned addr to the TLBI.
    pt = Stage2PageTable(48, granule=65536)
    assert pt.map(0x400000000, 0x10000, 0x8000000000, R, memcache=mc()) == 0
    assert op(pt, "relax_perms", 0x400001000, RW) == 0
    check(pt, visits=3, reloads=1, leaf=1, tlbi_log=[("vmid_ipa_nsh", 0x400001000, 3)])
    assert pt.get_leaf(0x400000000) == (0, 0x8000000000 | PAGE_RW, 3)
