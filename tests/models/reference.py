"""Pure-Python reference model of the arm64 KVM stage-2 page-table code.

This module re-states the behaviour of ``arch/arm64/kvm/hyp/pgtable.c`` (and
the helpers it uses from ``kvm_pgtable.h`` / ``stage2_pgtable.h``) in plain
Python, function by function, so that the tests can check the fast engine
against something whose faithfulness can be read off directly.  It is used
only by tests; speed is a secondary concern.

Layout
------
* Public constants and types (``WalkFlags``, ``Prot``, errno values, WARN
  site strings, ``CorruptTableError``, ``MemCache``).
* ``_MmOps``: the userspace harness the kernel code runs against: the page
  pool with refcounts (``struct kvm_pgtable_mm_ops``), the hypervisor TLB
  maintenance entry points, the cache-maintenance hooks and all counters.
* The kernel's functions, written as module-level functions with the
  kernel's names and the kernel's argument order.  A ``kvm_pgtable`` is a
  ``Stage2PageTable`` object; a ``kvm_pte_t *`` is an integer index into the
  flat descriptor pool (``_MmOps.mem``).
* ``Stage2PageTable``: the public API (argument checking, then one call of
  the matching kernel function) plus inspection helpers.

Memory model (shared bit-for-bit with the engine)
-------------------------------------------------
The pool is a flat array of 64-bit entries made of pages of PTRS_PER_PTE
entries.  Pool page ``i`` lives at physical address
``TABLE_PA_BASE + i * granule``; an entry pointer ``p`` (global entry index)
therefore has physical address ``TABLE_PA_BASE + 8 * p``.  The PGD pages are
pool pages ``0 .. pgd_pages-1``.  Allocation pops the most recently freed page
(and zeroes it) or takes the next never-used index.  Each page has a struct
page-like refcount (1 when allocated, freed at 0).

Modelling notes (choices the kernel source leaves to the harness)
----------------------------------------------------------------
* Every table descriptor is checked before it is followed (walker descent,
  map TABLE_PRE, unmap and free TABLE_POST): the target must be the start of
  a live pool page, else ``CorruptTableError(ipa=ctx.addr, level, desc)``.
  The map TABLE_PRE check sits where the kernel computes ``childp`` (before
  anything is changed).  ``leaves()``/``annotations()``/``table_pages()`` use
  the same check.
* ``zalloc_page(NULL)`` (``create_unlinked`` without a cache) returns NULL
  without counting anything; ``map``/``set_owner`` test for a NULL cache
  first, as the kernel does.
* After ``destroy()`` the PGD is NULL, so walks return -EINVAL; operations
  that do not walk the PGD behave as in the kernel (``flush`` with FWB
  returns 0; ``create_unlinked``/``free_unlinked`` still work).  A second
  ``destroy()`` WARNs in destroy_range and frees nothing.
* A visitor's return value must fit a C ``int``.
"""
from __future__ import annotations

import enum
import operator
from array import array
from typing import Any, Callable

import numpy as np

# ---- Public flags, errno values, constants ---------------------------------


# Restated from kvm_pgtable.h on purpose, not imported from s2fast.flags: an
# oracle that shared the engine's constants would share a wrong bit too.
# tests/test_differential.py checks both against the kernel's literal values.
class WalkFlags(enum.IntFlag):
    LEAF = 1 << 0
    TABLE_PRE = 1 << 1
    TABLE_POST = 1 << 2
    SHARED = 1 << 3
    HANDLE_FAULT = 1 << 4
    SKIP_BBM_TLBI = 1 << 5
    SKIP_CMO = 1 << 6
    # Walker variants of the 2026 SKIP RFC and its review (not upstream).
    SKIP_LEVEL3 = 1 << 7
    SKIP_LEVEL2 = 1 << 8
    SKIP_LEVEL1 = 1 << 9
    SKIP_NEW_TABLE = 1 << 10
    SKIP_LEVEL0 = 1 << 11
    PAGE = 1 << 12
    BLOCK = 1 << 13


# Visitor return hints: positive results made only of these bits.
SKIP_CHILDREN = 1 << 28
SKIP_SIBLINGS = 1 << 29
_HINTS = SKIP_CHILDREN | SKIP_SIBLINGS
_SKIP_LEVEL = {0: 1 << 11, 1: 1 << 9, 2: 1 << 8, 3: 1 << 7}
_VARIANT_FLAGS = 0x3F80


class Prot(enum.IntFlag):
    PX = 1 << 0
    UX = 1 << 1
    X = PX | UX
    W = 1 << 2
    R = 1 << 3
    DEVICE = 1 << 4
    NC = 1 << 5
    SW0 = 1 << 55
    SW1 = 1 << 56
    SW2 = 1 << 57
    SW3 = 1 << 58


E2BIG = -7
EAGAIN = -11
ENOMEM = -12
EINVAL = -22
ERANGE = -34

TLBI_TTL_UNKNOWN = 0x7FFFFFFF
TABLE_PA_BASE = 1 << 46
MAX_TLBI_RANGE_PAGES = 1 << 21
LOG_LIMIT = 64  # tlbi_log / cmo_log / warning_sites keep the first 64 entries

_LEAF, _TABLE_PRE, _TABLE_POST = 1, 2, 4
_SHARED, _HANDLE_FAULT, _SKIP_BBM_TLBI, _SKIP_CMO = 8, 16, 32, 64
_ALL_WALK_FLAGS = 0x3FFF
_ALL_PROT = int(Prot.X | Prot.W | Prot.R | Prot.DEVICE | Prot.NC
                | Prot.SW0 | Prot.SW1 | Prot.SW2 | Prot.SW3)

# WARN sites: "pgtable.c:<function> <condition>" (the harness's own WARN for
# an empty memory cache uses the mmu.c function name and line 0).
WARN_MC_EMPTY = "kvm_mmu_memory_cache_alloc:0 WARN_ON(!mc->nobjs)"
WARN_BREAK_LOCKED = "pgtable.c:stage2_try_break_pte WARN_ON(!kvm_pgtable_walk_shared(ctx))"
WARN_DESTROY_RANGE = "pgtable.c:kvm_pgtable_stage2_destroy_range WARN_ON(kvm_pgtable_walk(...))"
WARN_TEST_CLEAR_YOUNG = ("pgtable.c:kvm_pgtable_stage2_test_clear_young "
                         "WARN_ON(kvm_pgtable_walk(...))")
WARN_WALK_LEVEL = ("pgtable.c:__kvm_pgtable_walk WARN_ON_ONCE(level < KVM_PGTABLE_FIRST_LEVEL"
                   " || level > KVM_PGTABLE_LAST_LEVEL)")
WARN_NR_PAGE_TABLES = ("pgtable.c:stage2_block_get_nr_page_tables WARN_ON_ONCE(level < "
                       "KVM_PGTABLE_MIN_BLOCK_LEVEL || level > KVM_PGTABLE_LAST_LEVEL)")
WARN_MAKE_PTE = "pgtable.c:stage2_make_pte WARN_ON(!stage2_pte_is_locked(*ctx->ptep))"
WARN_MAP_LAST_LEVEL = "pgtable.c:stage2_map_walk_leaf WARN_ON(ctx->level == KVM_PGTABLE_LAST_LEVEL)"
WARN_FREE_UNLINKED_WALK = ("pgtable.c:kvm_pgtable_stage2_free_unlinked "
                           "WARN_ON(__kvm_pgtable_walk(...))")
WARN_FREE_UNLINKED_COUNT = ("pgtable.c:kvm_pgtable_stage2_free_unlinked "
                            "WARN_ON(mm_ops->page_count(pgtable) != 1)")
WARN_TRY_SET_PTE = ("pgtable.c:stage2_map_walker_try_leaf "
                    "WARN_ON_ONCE(!stage2_try_set_pte(ctx, new))")

# ---- Descriptor layout (kvm_pgtable.h) and memory attributes ---------------

MASK64 = (1 << 64) - 1


def GENMASK(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


KVM_PGTABLE_FIRST_LEVEL = -1
KVM_PGTABLE_LAST_LEVEL = 3

PTE_VALID = 1 << 0
PTE_TYPE = 1 << 1                     # page / table = 1, block = 0
ATTR_LO = GENMASK(11, 2)
ATTR_HI = GENMASK(63, 50)
S2_MEMATTR = GENMASK(5, 2)
S2AP_R = 1 << 6
S2AP_W = 1 << 7
S2_SH_SHIFT, SH_IS = 8, 3
S2_AF = 1 << 10
ATTR_HI_SW = GENMASK(58, 55)
S2_XN_SHIFT = 53
S2_XN = GENMASK(54, 53)
S2_PERMS = S2AP_R | S2AP_W | S2_XN
INVALID_OWNER_MASK = GENMASK(9, 2)
KVM_MAX_OWNER_ID = 1
INVALID_PTE_LOCKED = 1 << 10
ADDR_51_48 = GENMASK(15, 12)

# MemAttr[3:0] values: (without FWB, with FWB)
MT_S2 = {"NORMAL": (0xF, 0x6), "NORMAL_NC": (0x5, 0x5), "DEVICE_nGnRE": (0x1, 0x1)}

# Per-granule configuration: PAGE_SHIFT, KVM_PGTABLE_MIN_BLOCK_LEVEL,
# VTCR_EL2_TGRAN_SL0_BASE and the VTCR_EL2.TG0 encoding.
GRANULES = {4096: (12, 1, 2, 0b00), 16384: (14, 2, 3, 0b10), 65536: (16, 2, 3, 0b01)}

# VTCR_EL2 fields (kvm_arm.h)
VTCR_T0SZ_MASK = 0x3F
VTCR_SL0_SHIFT, VTCR_SL0_MASK = 6, 0x3 << 6
VTCR_IRGN0_WBWA = 1 << 8
VTCR_ORGN0_WBWA = 1 << 10
VTCR_SH0_INNER = 3 << 12
VTCR_TG0_SHIFT = 14
VTCR_PS_SHIFT = 16
VTCR_VS_16BIT = 1 << 19
VTCR_HA = 1 << 21
VTCR_RES1 = 1 << 31
MMFR0 = 5          # PARange = 48 bits
MMFR1 = 0x20       # VMIDBits = 16
PARANGE_48 = 5


class CorruptTableError(Exception):
    """A table descriptor (or a refcount) that cannot be followed safely."""

    def __init__(self, ipa: int, level: int, desc: int, why: str = "bad table descriptor"):
        super().__init__(f"{why}: ipa=0x{ipa:x} level={level} desc=0x{desc:016x}")
        self.ipa, self.level, self.desc = ipa, level, desc


class MemCache:
    """A kvm_mmu_memory_cache holding ``pages`` pre-zeroed pages.

    ``on_empty="fail"``: an allocation from an empty cache returns NULL.
    ``on_empty="allocate"``: like kvm_mmu_memory_cache_alloc(): WARN, then
    allocate a fresh page anyway.
    """

    def __init__(self, pages: int, on_empty: str = "fail"):
        pages = _as_int("pages", pages)
        if pages < 0:
            raise ValueError(f"pages must be >= 0, got {pages!r}")
        if on_empty not in ("fail", "allocate"):
            raise ValueError(f"on_empty must be 'fail' or 'allocate', got {on_empty!r}")
        self.nobjs = pages
        self.on_empty = on_empty

    def __repr__(self) -> str:
        return f"MemCache(nobjs={self.nobjs}, on_empty={self.on_empty!r})"


# ---- Counters --------------------------------------------------------------

_COUNTERS = (
    "visits", "reloads", "callbacks_leaf", "callbacks_table_pre", "callbacks_table_post",
    "tlbi_vmid_ipa", "tlbi_vmid_ipa_nsh", "tlbi_vmid_range", "tlbi_vmid",
    "tlbi_range_pages", "tlbi_log_total", "cmo_calls", "cmo_bytes", "dcache_calls",
    "dcache_bytes", "icache_calls", "icache_bytes", "cmo_log_total", "pages_alloc",
    "pages_free", "mc_used", "mc_exhausted", "unlinked_tables_freed", "warnings",
)


class _Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.by_level = [0, 0, 0, 0]
        self.tlbi_log: list = []
        self.cmo_log: list = []
        self.warning_sites: list = []


class Stats:
    """Snapshot of the counters since the last ``reset_stats()``."""

    def __init__(self, values: dict):
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"Stats({self._values!r})"


# ---- The harness: mm_ops, hypervisor TLBI entry points, CMO hooks ----------


class _MmOps:
    """struct kvm_pgtable_mm_ops of the userspace harness, plus the TLBI and
    CMO recorders and the WARN counter.  Pointers into page-table memory are
    global entry indices into ``mem``."""

    def __init__(self, granule: int):
        page_shift, min_block_level, _, _ = GRANULES[granule]
        self.page_shift = page_shift
        self.page_size = granule
        self.ptrs_per_pte = 1 << (page_shift - 3)
        self.min_block_level = min_block_level
        # kvm_granule_shift(level) = ARM64_HW_PGTABLE_LEVEL_SHIFT(level)
        self.level_shift = {lv: (page_shift - 3) * (4 - lv) + 3
                            for lv in range(KVM_PGTABLE_FIRST_LEVEL, KVM_PGTABLE_LAST_LEVEL + 2)}
        self.mem = array("Q")
        self.refs: list[int] = []          # refcount per pool page
        self.free_stack: list[int] = []    # freed pages, most recent last
        self.live = 0
        self.stats = _Counters()
        self._zero_page = array("Q", bytes(8 * self.ptrs_per_pte))

    # -- kvm_pte_t <-> physical address (no LPA2) --------------------------
    def kvm_phys_to_pte(self, pa: int) -> int:
        pte = pa & GENMASK(47, self.page_shift)
        if self.page_shift == 16:
            pte |= ((pa & GENMASK(51, 48)) >> 48) << 12
        return pte

    def kvm_pte_to_phys(self, pte: int) -> int:
        pa = pte & GENMASK(47, self.page_shift)
        if self.page_shift == 16:
            pa |= ((pte & ADDR_51_48) >> 12) << 48
        return pa

    def virt_to_phys(self, p: int) -> int:
        return TABLE_PA_BASE + 8 * p

    def follow_table(self, pte: int, ipa: int, level: int) -> int:
        """kvm_pte_follow() of a table descriptor, refusing anything that is
        not the start of a live pool page."""
        off = self.kvm_pte_to_phys(pte) - TABLE_PA_BASE
        page = off // self.page_size if off >= 0 else -1
        if off < 0 or off % self.page_size or page >= len(self.refs) or self.refs[page] <= 0:
            raise CorruptTableError(ipa, level, pte)
        return page * self.ptrs_per_pte

    # -- page allocation and refcounts -------------------------------------
    def _new_page(self) -> int:
        ptrs = self.ptrs_per_pte
        if self.free_stack:
            page = self.free_stack.pop()
            self.mem[page * ptrs:(page + 1) * ptrs] = self._zero_page
        else:
            page = len(self.refs)
            self.mem.extend(self._zero_page)
            self.refs.append(0)
        self.refs[page] = 1
        self.live += 1
        self.stats.pages_alloc += 1
        return page * ptrs

    def zalloc_page(self, mc: MemCache | None) -> int | None:
        if mc is None:                      # NULL memcache: nothing to take from
            return None
        if mc.nobjs <= 0:
            self.stats.mc_exhausted += 1
            if mc.on_empty == "fail":
                return None
            self.warn(WARN_MC_EMPTY)        # kvm_mmu_memory_cache_alloc()
            return self._new_page()
        mc.nobjs -= 1
        self.stats.mc_used += 1
        return self._new_page()

    def zalloc_pages_exact(self, size: int) -> int:
        first = self._new_page()
        for _ in range(1, -(-size // self.page_size)):
            self._new_page()
        return first

    def free_pages_exact(self, p: int, size: int) -> None:
        for i in range(-(-size // self.page_size)):
            self.put_page(p + i * self.ptrs_per_pte)

    def get_page(self, p: int) -> None:
        self.refs[p // self.ptrs_per_pte] += 1

    def put_page(self, p: int, ctx: "VisitCtx | None" = None) -> None:
        page = p // self.ptrs_per_pte
        if self.refs[page] <= 0:
            ipa, level, desc = (ctx.addr, ctx.level, ctx.old) if ctx else (0, 0, 0)
            raise CorruptTableError(ipa, level, desc, f"put_page of free pool page {page}")
        self.refs[page] -= 1
        if self.refs[page] == 0:
            self.free_stack.append(page)
            self.live -= 1
            self.stats.pages_free += 1

    def put_entry(self, p: int, ctx: "VisitCtx") -> None:
        """put_page() for the reference an entry holds on its table page. In a
        consistent table that never frees the page (the table's own reference
        stays): below 1 means a descriptor was written without its reference."""
        page = p // self.ptrs_per_pte
        if self.refs[page] <= 1:
            raise CorruptTableError(ctx.addr, ctx.level, ctx.old,
                                    f"entry reference dropped below the table's own on page {page}")
        self.refs[page] -= 1

    def page_count(self, p: int) -> int:
        return self.refs[p // self.ptrs_per_pte]

    def free_unlinked_table(self, childp: int, level: int) -> None:
        # The kernel defers this with call_rcu; single threaded, at once.
        kvm_pgtable_stage2_free_unlinked(self, childp, level)

    # -- cache maintenance (the harness records the guest PA) ----------------
    def dcache_clean_inval_poc(self, pa: int, size: int) -> None:
        s = self.stats
        s.dcache_calls += 1
        s.dcache_bytes += size
        self._cmo("dcache", pa, size)

    def icache_inval_pou(self, pa: int, size: int) -> None:
        s = self.stats
        s.icache_calls += 1
        s.icache_bytes += size
        self._cmo("icache", pa, size)

    def _cmo(self, name: str, pa: int, size: int) -> None:
        s = self.stats
        s.cmo_calls += 1
        s.cmo_bytes += size
        s.cmo_log_total += 1
        if len(s.cmo_log) < LOG_LIMIT:
            s.cmo_log.append((name, pa, size))

    # -- hypervisor TLB maintenance -------------------------------------------
    def tlbi(self, name: str, a: int, b: int | None) -> None:
        s = self.stats
        counter = "tlbi_" + name
        setattr(s, counter, getattr(s, counter) + 1)
        s.tlbi_log_total += 1
        if len(s.tlbi_log) < LOG_LIMIT:
            s.tlbi_log.append((name, a, b))

    def warn(self, site: str) -> bool:
        s = self.stats
        s.warnings += 1
        if len(s.warning_sites) < LOG_LIMIT:
            s.warning_sites.append(site)
        return True


def hyp_tlb_flush_vmid_ipa(mmu: "_S2Mmu", ipa: int, level: int) -> None:
    mmu.pgt.mm_ops.tlbi("vmid_ipa", ipa, level)


def hyp_tlb_flush_vmid_ipa_nsh(mmu: "_S2Mmu", ipa: int, level: int | None) -> None:
    mmu.pgt.mm_ops.tlbi("vmid_ipa_nsh", ipa, level)


def hyp_tlb_flush_vmid_range(mmu: "_S2Mmu", start: int, pages: int) -> None:
    mmu.pgt.mm_ops.stats.tlbi_range_pages += pages
    mmu.pgt.mm_ops.tlbi("vmid_range", start, pages)


def hyp_tlb_flush_vmid(mmu: "_S2Mmu") -> None:
    mmu.pgt.mm_ops.tlbi("vmid", 0, 0)


class _S2Mmu:
    """struct kvm_s2_mmu: the back pointer to the page table and the split
    page cache."""

    def __init__(self, pgt: "Stage2PageTable"):
        self.pgt = pgt
        self.split_page_cache: MemCache | None = None


# ---- The walker (pgtable.c) ------------------------------------------------


class VisitCtx:
    """struct kvm_pgtable_visit_ctx.  ``ptep`` is a global entry index."""

    __slots__ = ("ptep", "old", "arg", "mm_ops", "start", "addr", "end", "level", "flags")

    def __init__(self, ptep, old, arg, mm_ops, start, addr, end, level, flags):
        self.ptep = ptep
        self.old = old
        self.arg = arg
        self.mm_ops = mm_ops
        self.start = start
        self.addr = addr
        self.end = end
        self.level = level
        self.flags = flags

    def set(self, new: int) -> None:
        """WRITE_ONCE(*ctx->ptep, new): raw store, no refcounting."""
        self.mm_ops.mem[self.ptep] = _as_u64("ctx.set() value", new)


class _Walker:
    """struct kvm_pgtable_walker"""

    __slots__ = ("cb", "arg", "flags", "max_level", "_visits", "_enter")

    def __init__(self, cb: Callable, arg: Any, flags: int, max_level: int = 3):
        self.cb, self.arg, self.flags, self.max_level = cb, arg, flags, max_level
        levels = range(KVM_PGTABLE_FIRST_LEVEL, KVM_PGTABLE_LAST_LEVEL + 2)
        self._visits = {(lv, k): self._visits_at(lv, k) for lv in levels for k in (1, 2, 4)}
        self._enter = {lv: self._may_enter(lv) for lv in levels}

    def visits_at(self, level: int, kind: int) -> bool:
        return self._visits[level, kind]

    def may_enter(self, child_level: int) -> bool:
        return self._enter[child_level]

    # The variants' visit rules, straight from their definitions.
    def _visits_at(self, level: int, kind: int) -> bool:
        """Would a visit of this kind happen at this level?"""
        if level > self.max_level or self.flags & _SKIP_LEVEL.get(level, 0):
            return False
        if kind == _LEAF:   # a non-table entry
            want = _LEAF | (WalkFlags.PAGE if level == KVM_PGTABLE_LAST_LEVEL else WalkFlags.BLOCK)
            return bool(self.flags & want)
        return bool(self.flags & kind)

    def _may_enter(self, child_level: int) -> bool:
        """Enter a table whose entries are at child_level? Kernel-only flags
        always do; with a variant in force, only if a visit is still possible
        at child_level or below, and never below max_level."""
        if not (self.flags & _VARIANT_FLAGS) and self.max_level >= KVM_PGTABLE_LAST_LEVEL:
            return True
        for lv in range(child_level, KVM_PGTABLE_LAST_LEVEL + 1):
            if self._visits_at(lv, _LEAF):
                return True
            if lv < KVM_PGTABLE_LAST_LEVEL and (self._visits_at(lv, _TABLE_PRE)
                                                or self._visits_at(lv, _TABLE_POST)):
                return True
        return False


class _WalkData:
    """struct kvm_pgtable_walk_data"""

    __slots__ = ("walker", "start", "addr", "end", "skip_siblings")

    def __init__(self, walker: _Walker, start: int, addr: int, end: int):
        self.walker, self.start, self.addr, self.end = walker, start, addr, end
        self.skip_siblings = False


def kvm_granule_shift(mm_ops: _MmOps, level: int) -> int:
    return mm_ops.level_shift[level]


def kvm_granule_size(mm_ops: _MmOps, level: int) -> int:
    return 1 << mm_ops.level_shift[level]


def kvm_pte_valid(pte: int) -> bool:
    return bool(pte & PTE_VALID)


def kvm_pte_table(pte: int, level: int) -> bool:
    return level != KVM_PGTABLE_LAST_LEVEL and (pte & 3) == 3


def kvm_pgtable_walk_shared(ctx: VisitCtx) -> bool:
    return bool(ctx.flags & _SHARED)


def kvm_pgtable_walk_skip_bbm_tlbi(ctx: VisitCtx) -> bool:
    return bool(ctx.flags & _SKIP_BBM_TLBI)


def kvm_pgtable_walk_skip_cmo(ctx: VisitCtx) -> bool:
    return bool(ctx.flags & _SKIP_CMO)


def kvm_pgtable_visitor_cb(data: _WalkData, ctx: VisitCtx, visit: int) -> int:
    # The lock-held WARN cannot fire: SHARED walks take the (modelled) RCU lock.
    s = ctx.mm_ops.stats
    if visit == _LEAF:
        s.callbacks_leaf += 1
    elif visit == _TABLE_PRE:
        s.callbacks_table_pre += 1
    else:
        s.callbacks_table_post += 1
    if ctx.level >= 0:
        s.by_level[ctx.level] += 1
    return data.walker.cb(ctx, visit)


def kvm_pgtable_walk_continue(walker: _Walker, r: int) -> bool:
    # -EAGAIN means "retry the fault": only a fault handler stops on it.
    if r == EAGAIN:
        return not (walker.flags & _HANDLE_FAULT)
    return not r


def __kvm_pgtable_visit(data: _WalkData, mm_ops: _MmOps, ptep: int, level: int) -> int:
    walker = data.walker
    flags = walker.flags
    mem = mm_ops.mem
    ctx = VisitCtx(ptep, mem[ptep], walker.arg, mm_ops, data.start, data.addr, data.end,
                   level, flags)
    stats = mm_ops.stats
    stats.visits += 1
    ret = 0
    hint = 0
    reload = False
    table = kvm_pte_table(ctx.old, level)
    was_table = table

    if table and walker.visits_at(level, _TABLE_PRE):
        ret = kvm_pgtable_visitor_cb(data, ctx, _TABLE_PRE)
        reload = True
    if not table and walker.visits_at(level, _LEAF):
        ret = kvm_pgtable_visitor_cb(data, ctx, _LEAF)
        reload = True
    if ret > 0 and not ret & ~_HINTS:       # a hint, never an error
        hint, ret = ret, 0

    # The callback may have installed or replaced a table: read the entry again.
    if reload:
        ctx.old = mem[ptep]
        stats.reloads += 1
        table = kvm_pte_table(ctx.old, level)

    if kvm_pgtable_walk_continue(walker, ret):
        size = kvm_granule_size(mm_ops, level)
        skip = (hint & SKIP_CHILDREN or not walker.may_enter(level + 1)
                or (not was_table and flags & WalkFlags.SKIP_NEW_TABLE))
        if not table or skip:
            data.addr = (data.addr & ~(size - 1)) + size
        else:
            childp = mm_ops.follow_table(ctx.old, ctx.addr, level)
            ret = __kvm_pgtable_walk(data, mm_ops, childp, level + 1)
        if table and kvm_pgtable_walk_continue(walker, ret) \
                and walker.visits_at(level, _TABLE_POST):
            ret = kvm_pgtable_visitor_cb(data, ctx, _TABLE_POST)
            if ret > 0 and not ret & ~_HINTS:
                hint, ret = hint | ret, 0
        if hint & SKIP_SIBLINGS:
            data.skip_siblings = True

    return 0 if kvm_pgtable_walk_continue(walker, ret) else ret


def __kvm_pgtable_walk(data: _WalkData, mm_ops: _MmOps, pgtable: int, level: int) -> int:
    if level < KVM_PGTABLE_FIRST_LEVEL or level > KVM_PGTABLE_LAST_LEVEL:
        mm_ops.warn(WARN_WALK_LEVEL)
        return EINVAL
    ptrs = mm_ops.ptrs_per_pte
    idx = (data.addr >> kvm_granule_shift(mm_ops, level)) & (ptrs - 1)
    ret = 0
    while idx < ptrs:
        if data.addr >= data.end:
            break
        entry_addr = data.addr
        ret = __kvm_pgtable_visit(data, mm_ops, pgtable + idx, level)
        if ret:
            break
        if data.skip_siblings:
            data.skip_siblings = False
            span = kvm_granule_size(mm_ops, level) * ptrs
            data.addr = min((entry_addr // span + 1) * span, data.end)
            break
        idx += 1
    return ret


def kvm_pgd_page_idx(pgt: "Stage2PageTable", addr: int) -> int:
    # start_level - 1 may be -1 (4K, start level 0): shift 48 then.
    shift = kvm_granule_shift(pgt.mm_ops, pgt.start_level - 1)
    return (addr & ((1 << pgt.ia_bits) - 1)) >> shift


def _kvm_pgtable_walk(pgt: "Stage2PageTable", data: _WalkData) -> int:
    limit = 1 << pgt.ia_bits
    if data.addr > limit or data.end > limit:
        return ERANGE
    if pgt.pgd is None:
        return EINVAL
    ptrs = pgt.mm_ops.ptrs_per_pte
    idx = kvm_pgd_page_idx(pgt, data.addr)
    ret = 0
    while data.addr < data.end:
        ret = __kvm_pgtable_walk(data, pgt.mm_ops, pgt.pgd + idx * ptrs, pgt.start_level)
        if ret:
            break
        idx += 1
    return ret


def kvm_pgtable_walk(pgt: "Stage2PageTable", addr: int, size: int, walker: _Walker) -> int:
    page = pgt.mm_ops.page_size
    start = addr & ~(page - 1)
    end = (start + size + page - 1) & ~(page - 1) & MASK64   # u64 arithmetic
    # kvm_pgtable_walk_begin/end only take the RCU read lock for SHARED walks.
    return _kvm_pgtable_walk(pgt, _WalkData(walker, start, start, end))


# -- get_leaf ------------------------------------------------------------------


class _LeafWalkData:
    __slots__ = ("pte", "level")

    def __init__(self) -> None:
        self.pte, self.level = 0, 0


def leaf_walker(ctx: VisitCtx, visit: int) -> int:
    data = ctx.arg
    data.pte = ctx.old
    data.level = ctx.level
    return 0


def kvm_pgtable_get_leaf(pgt: "Stage2PageTable", addr: int) -> tuple[int, int, int]:
    data = _LeafWalkData()
    walker = _Walker(leaf_walker, data, _LEAF)
    page = pgt.mm_ops.page_size
    ret = kvm_pgtable_walk(pgt, addr & ~(page - 1), page, walker)
    return ret, data.pte, data.level


# ---- Stage-2 configuration: VTCR and geometry ------------------------------


def arm64_hw_pgtable_levels(page_shift: int, va_bits: int) -> int:
    return (va_bits - 4) // (page_shift - 3)


def stage2_pgtable_levels(page_shift: int, ipa: int) -> int:
    # Up to 16 concatenated tables at the entry level resolve 4 extra bits.
    return arm64_hw_pgtable_levels(page_shift, ipa - 4)


def kvm_get_vtcr(granule: int, mmfr0: int, mmfr1: int, phys_shift: int) -> int:
    page_shift, _, sl0_base, tg0 = GRANULES[granule]
    vtcr = VTCR_RES1 | VTCR_SH0_INNER | VTCR_ORGN0_WBWA | VTCR_IRGN0_WBWA
    vtcr |= tg0 << VTCR_TG0_SHIFT
    vtcr |= min(mmfr0 & 0xF, PARANGE_48) << VTCR_PS_SHIFT
    vtcr |= (64 - phys_shift) & VTCR_T0SZ_MASK
    lvls = max(stage2_pgtable_levels(page_shift, phys_shift), 2)
    sl0 = sl0_base - (4 - lvls)
    if not 0 <= sl0 <= 3:
        raise ValueError(f"ia_bits={phys_shift}: {lvls} levels cannot be encoded in VTCR.SL0")
    vtcr |= sl0 << VTCR_SL0_SHIFT
    vtcr |= VTCR_HA                              # CONFIG_ARM64_HW_AFDBM
    if (mmfr1 >> 4) & 0xF == 2:                  # 16-bit VMIDs
        vtcr |= VTCR_VS_16BIT
    return vtcr


def kvm_pgd_pages(pgt: "Stage2PageTable", ia_bits: int, start_level: int) -> int:
    shift = kvm_granule_shift(pgt.mm_ops, start_level - 1)
    return ((MASK64 & ((1 << ia_bits) - 1)) >> shift) + 1


# ---- Stage-2 attributes ----------------------------------------------------


def stage2_has_fwb(pgt: "Stage2PageTable") -> bool:
    return pgt.fwb            # pgt->flags never carries KVM_PGTABLE_S2_NOFWB here


def KVM_S2_MEMATTR(pgt: "Stage2PageTable", attr: str) -> int:
    return MT_S2[attr][1 if stage2_has_fwb(pgt) else 0] << 2


def kvm_tlb_flush_vmid_range(mmu: _S2Mmu, addr: int, size: int) -> None:
    mm_ops = mmu.pgt.mm_ops
    if not mmu.pgt.tlb_range:
        hyp_tlb_flush_vmid(mmu)
        return
    pages = (size & MASK64) >> mm_ops.page_shift
    while pages > 0:
        inval_pages = min(pages, MAX_TLBI_RANGE_PAGES)
        hyp_tlb_flush_vmid_range(mmu, addr, inval_pages)
        addr = (addr + (inval_pages << mm_ops.page_shift)) & MASK64
        pages -= inval_pages
        if len(mm_ops.stats.tlbi_log) >= LOG_LIMIT and pages > MAX_TLBI_RANGE_PAGES:
            # Shortcut for absurd sizes: the remaining full-size calls only
            # bump counters (the log is full); then finish the loop normally.
            n = pages // MAX_TLBI_RANGE_PAGES - 1
            s = mm_ops.stats
            s.tlbi_vmid_range += n
            s.tlbi_log_total += n
            s.tlbi_range_pages += n * MAX_TLBI_RANGE_PAGES
            addr = (addr + ((n * MAX_TLBI_RANGE_PAGES) << mm_ops.page_shift)) & MASK64
            pages -= n * MAX_TLBI_RANGE_PAGES


def stage2_set_xn_attr(pgt: "Stage2PageTable", prot: int, attr: int) -> tuple[int, int]:
    px = bool(prot & Prot.PX)
    ux = bool(prot & Prot.UX)
    if not pgt.xnx and px != ux:
        return EINVAL, attr
    if px and ux:
        xn = 0b00
    elif ux:
        xn = 0b01
    elif not px:
        xn = 0b10
    else:
        xn = 0b11
    return 0, (attr & ~S2_XN) | (xn << S2_XN_SHIFT)


def stage2_set_prot_attr(pgt: "Stage2PageTable", prot: int) -> tuple[int, int]:
    kind = prot & (Prot.DEVICE | Prot.NC)
    if kind == Prot.DEVICE | Prot.NC:
        return EINVAL, 0
    if kind == Prot.DEVICE:
        if prot & Prot.X:
            return EINVAL, 0
        attr = KVM_S2_MEMATTR(pgt, "DEVICE_nGnRE")
    elif kind == Prot.NC:
        if prot & Prot.X:
            return EINVAL, 0
        attr = KVM_S2_MEMATTR(pgt, "NORMAL_NC")
    else:
        attr = KVM_S2_MEMATTR(pgt, "NORMAL")

    r, attr = stage2_set_xn_attr(pgt, prot, attr)
    if r:
        return r, 0
    if prot & Prot.R:
        attr |= S2AP_R
    if prot & Prot.W:
        attr |= S2AP_W
    attr |= SH_IS << S2_SH_SHIFT               # no LPA2
    attr |= S2_AF
    attr |= prot & ATTR_HI_SW
    return 0, attr


def pte_prot(pte: int) -> int:
    """kvm_pgtable_stage2_pte_prot()"""
    pte = _as_u64("pte", pte)
    prot = pte & ATTR_HI_SW
    if not kvm_pte_valid(pte):
        return prot
    if pte & S2AP_R:
        prot |= Prot.R
    if pte & S2AP_W:
        prot |= Prot.W
    xn = (pte & S2_XN) >> S2_XN_SHIFT
    if xn == 0b00:
        prot |= Prot.PX | Prot.UX
    elif xn == 0b01:
        prot |= Prot.UX
    elif xn == 0b11:
        prot |= Prot.PX
    return int(prot)


kvm_pgtable_stage2_pte_prot = pte_prot


def stage2_pte_needs_update(old: int, new: int) -> bool:
    if not kvm_pte_valid(old) or not kvm_pte_valid(new):
        return True
    return bool((old ^ new) & ~S2_PERMS)


def stage2_pte_is_counted(pte: int) -> bool:
    # Valid entries and non-zero (owner) annotations hold a page reference.
    return pte != 0


def stage2_pte_is_locked(pte: int) -> bool:
    return not kvm_pte_valid(pte) and bool(pte & INVALID_PTE_LOCKED)


def stage2_pte_cacheable(pgt: "Stage2PageTable", pte: int) -> bool:
    return kvm_pte_valid(pte) and (pte & S2_MEMATTR) == KVM_S2_MEMATTR(pgt, "NORMAL")


def stage2_pte_executable(pte: int) -> bool:
    return kvm_pte_valid(pte) and not (pte & S2_XN)


def kvm_init_table_pte(childp: int, mm_ops: _MmOps) -> int:
    return mm_ops.kvm_phys_to_pte(mm_ops.virt_to_phys(childp)) | PTE_TYPE | PTE_VALID


def kvm_init_valid_leaf_pte(mm_ops: _MmOps, pa: int, attr: int, level: int) -> int:
    pte = mm_ops.kvm_phys_to_pte(pa)
    pte |= attr & (ATTR_LO | ATTR_HI)
    if level == KVM_PGTABLE_LAST_LEVEL:
        pte |= PTE_TYPE
    return pte | PTE_VALID


def kvm_init_invalid_leaf_owner(owner_id: int) -> int:
    return (owner_id << 2) & INVALID_OWNER_MASK


def kvm_block_mapping_supported(ctx: VisitCtx, phys: int) -> bool:
    granule = kvm_granule_size(ctx.mm_ops, ctx.level)
    if ctx.level < ctx.mm_ops.min_block_level:
        return False
    if granule > ((ctx.end - ctx.addr) & MASK64):
        return False
    if phys & (granule - 1):
        return False
    return not (ctx.addr & (granule - 1))


# ---- Break-before-make -----------------------------------------------------


def stage2_try_set_pte(ctx: VisitCtx, new: int) -> bool:
    mem = ctx.mm_ops.mem
    if not kvm_pgtable_walk_shared(ctx):
        mem[ctx.ptep] = new
        return True
    # cmpxchg: single threaded, it fails only if the entry moved under us.
    if mem[ctx.ptep] != ctx.old:
        return False
    mem[ctx.ptep] = new
    return True


def stage2_try_break_pte(ctx: VisitCtx, mmu: _S2Mmu) -> bool:
    mm_ops = ctx.mm_ops
    if stage2_pte_is_locked(ctx.old):
        # Another walker is mid-update; impossible for an exclusive walker.
        if not kvm_pgtable_walk_shared(ctx):
            mm_ops.warn(WARN_BREAK_LOCKED)
        return False
    if not stage2_try_set_pte(ctx, INVALID_PTE_LOCKED):
        return False
    if not kvm_pgtable_walk_skip_bbm_tlbi(ctx):
        if kvm_pte_table(ctx.old, ctx.level):
            size = kvm_granule_size(mm_ops, ctx.level)
            kvm_tlb_flush_vmid_range(mmu, ctx.addr & ~(size - 1), size)
        elif kvm_pte_valid(ctx.old):
            hyp_tlb_flush_vmid_ipa(mmu, ctx.addr, ctx.level)
    if stage2_pte_is_counted(ctx.old):
        mm_ops.put_entry(ctx.ptep, ctx)
    return True


def stage2_make_pte(ctx: VisitCtx, new: int) -> None:
    mm_ops = ctx.mm_ops
    if not stage2_pte_is_locked(mm_ops.mem[ctx.ptep]):
        mm_ops.warn(WARN_MAKE_PTE)
    if stage2_pte_is_counted(new):
        mm_ops.get_page(ctx.ptep)
    mm_ops.mem[ctx.ptep] = new


# ---- Map / set_owner -------------------------------------------------------


class _Stage2MapData:
    """struct stage2_map_data"""

    __slots__ = ("phys", "attr", "owner_id", "mmu", "memcache", "force_pte", "annotation")

    def __init__(self, mmu, memcache, phys=0, owner_id=0, force_pte=False, annotation=False):
        self.phys = phys
        self.attr = 0
        self.owner_id = owner_id
        self.mmu = mmu
        self.memcache = memcache
        self.force_pte = force_pte
        self.annotation = annotation


def stage2_map_walker_phys_addr(ctx: VisitCtx, data: _Stage2MapData) -> int:
    # How far the walk has got decides the output address.
    return (data.phys + (ctx.addr - ctx.start)) & MASK64


def stage2_leaf_mapping_allowed(ctx: VisitCtx, data: _Stage2MapData) -> bool:
    phys = stage2_map_walker_phys_addr(ctx, data)
    if data.force_pte and ctx.level < KVM_PGTABLE_LAST_LEVEL:
        return False
    if data.annotation:
        return True
    return kvm_block_mapping_supported(ctx, phys)


def stage2_map_walker_try_leaf(ctx: VisitCtx, data: _Stage2MapData) -> int:
    mm_ops = ctx.mm_ops
    phys = stage2_map_walker_phys_addr(ctx, data)
    granule = kvm_granule_size(mm_ops, ctx.level)
    pgt = data.mmu.pgt

    if not stage2_leaf_mapping_allowed(ctx, data):
        return E2BIG

    if not data.annotation:
        new = kvm_init_valid_leaf_pte(mm_ops, phys, data.attr, ctx.level)
    else:
        new = kvm_init_invalid_leaf_owner(data.owner_id)

    # Same mapping, or a permission-only change: leave it to relax_perms.
    if not stage2_pte_needs_update(ctx.old, new):
        return EAGAIN

    # Software bits only (exclusive walk): store in place, no BBM.
    if not kvm_pgtable_walk_shared(ctx) and not ((ctx.old ^ new) & ~ATTR_HI_SW):
        old_is_counted = stage2_pte_is_counted(ctx.old)
        if old_is_counted != stage2_pte_is_counted(new):
            if old_is_counted:
                mm_ops.put_entry(ctx.ptep, ctx)
            else:
                mm_ops.get_page(ctx.ptep)
        if not stage2_try_set_pte(ctx, new):
            mm_ops.warn(WARN_TRY_SET_PTE)
        return 0

    if not stage2_try_break_pte(ctx, data.mmu):
        return EAGAIN

    # Cache maintenance happens before the new entry becomes visible.
    if not kvm_pgtable_walk_skip_cmo(ctx) and stage2_pte_cacheable(pgt, new):
        mm_ops.dcache_clean_inval_poc(mm_ops.kvm_pte_to_phys(new), granule)
    if not kvm_pgtable_walk_skip_cmo(ctx) and stage2_pte_executable(new):
        mm_ops.icache_inval_pou(mm_ops.kvm_pte_to_phys(new), granule)

    stage2_make_pte(ctx, new)
    return 0


def stage2_map_walk_table_pre(ctx: VisitCtx, data: _Stage2MapData) -> int:
    mm_ops = ctx.mm_ops
    childp = mm_ops.follow_table(ctx.old, ctx.addr, ctx.level)
    if not stage2_leaf_mapping_allowed(ctx, data):
        return 0
    ret = stage2_map_walker_try_leaf(ctx, data)
    if ret:
        return ret
    # The block replaced the table: tear down the detached subtree.
    mm_ops.free_unlinked_table(childp, ctx.level)
    return 0


def stage2_map_walk_leaf(ctx: VisitCtx, data: _Stage2MapData) -> int:
    mm_ops = ctx.mm_ops
    ret = stage2_map_walker_try_leaf(ctx, data)
    if ret != E2BIG:
        return ret
    if ctx.level == KVM_PGTABLE_LAST_LEVEL:
        mm_ops.warn(WARN_MAP_LAST_LEVEL)
        return EINVAL
    if data.memcache is None:
        return ENOMEM
    childp = mm_ops.zalloc_page(data.memcache)
    if childp is None:
        return ENOMEM
    if not stage2_try_break_pte(ctx, data.mmu):
        mm_ops.put_page(childp, ctx)
        return EAGAIN
    # An existing block (if any) becomes an empty table; whatever it mapped
    # outside [addr, end) is faulted back lazily.
    stage2_make_pte(ctx, kvm_init_table_pte(childp, mm_ops))
    return 0


def stage2_map_walker(ctx: VisitCtx, visit: int) -> int:
    data = ctx.arg
    if visit == _TABLE_PRE:
        return stage2_map_walk_table_pre(ctx, data)
    if visit == _LEAF:
        return stage2_map_walk_leaf(ctx, data)
    return EINVAL


def kvm_pgtable_stage2_map(pgt, addr, size, phys, prot, mc, flags) -> int:
    page = pgt.mm_ops.page_size
    # force_pte_cb is NULL, and the IDMAP flag is never set.
    map_data = _Stage2MapData(pgt.mmu, mc, phys=phys & ~(page - 1))
    walker = _Walker(stage2_map_walker, map_data, flags | _TABLE_PRE | _LEAF)
    ret, map_data.attr = stage2_set_prot_attr(pgt, prot)
    if ret:
        return ret
    return kvm_pgtable_walk(pgt, addr, size, walker)


def kvm_pgtable_stage2_set_owner(pgt, addr, size, mc, owner_id) -> int:
    map_data = _Stage2MapData(pgt.mmu, mc, owner_id=owner_id, force_pte=True, annotation=True)
    walker = _Walker(stage2_map_walker, map_data, _TABLE_PRE | _LEAF)
    if owner_id > KVM_MAX_OWNER_ID:
        return EINVAL
    return kvm_pgtable_walk(pgt, addr, size, walker)


# ---- Unmap -----------------------------------------------------------------


def stage2_unmap_defer_tlb_flush(pgt) -> bool:
    # Leaf TLBIs become one range TLBI at the end, but only when no CMO is
    # needed per leaf (FWB) and range TLBIs exist.
    return pgt.tlb_range and stage2_has_fwb(pgt)


def stage2_unmap_put_pte(ctx: VisitCtx, mmu: _S2Mmu, mm_ops: _MmOps) -> None:
    pgt = ctx.arg
    if kvm_pte_valid(ctx.old):
        mm_ops.mem[ctx.ptep] = 0
        if kvm_pte_table(ctx.old, ctx.level):
            hyp_tlb_flush_vmid_ipa(mmu, ctx.addr, TLBI_TTL_UNKNOWN)
        elif not stage2_unmap_defer_tlb_flush(pgt):
            hyp_tlb_flush_vmid_ipa(mmu, ctx.addr, ctx.level)
    mm_ops.put_entry(ctx.ptep, ctx)


def stage2_unmap_walker(ctx: VisitCtx, visit: int) -> int:
    pgt = ctx.arg
    mmu = pgt.mmu
    mm_ops = ctx.mm_ops
    childp = None
    need_flush = False

    if not kvm_pte_valid(ctx.old):
        if stage2_pte_is_counted(ctx.old):      # drop an annotation
            mm_ops.mem[ctx.ptep] = 0
            mm_ops.put_entry(ctx.ptep, ctx)
        return 0

    if kvm_pte_table(ctx.old, ctx.level):
        childp = mm_ops.follow_table(ctx.old, ctx.addr, ctx.level)
        if mm_ops.page_count(childp) != 1:      # table still has entries
            return 0
    elif stage2_pte_cacheable(pgt, ctx.old):
        need_flush = not stage2_has_fwb(pgt)

    # A partially covered block goes away entirely (refaulted lazily).
    stage2_unmap_put_pte(ctx, mmu, mm_ops)

    if need_flush:
        mm_ops.dcache_clean_inval_poc(mm_ops.kvm_pte_to_phys(ctx.old),
                                      kvm_granule_size(mm_ops, ctx.level))
    if childp is not None:
        mm_ops.put_page(childp, ctx)
    return 0


def kvm_pgtable_stage2_unmap(pgt, addr, size) -> int:
    walker = _Walker(stage2_unmap_walker, pgt, _LEAF | _TABLE_POST)
    ret = kvm_pgtable_walk(pgt, addr, size, walker)
    if stage2_unmap_defer_tlb_flush(pgt):
        kvm_tlb_flush_vmid_range(pgt.mmu, addr, size)
    return ret


# ---- Attribute updates: wrprotect, mkyoung, relax_perms, test_clear_young, flush ---


class _Stage2AttrData:
    __slots__ = ("attr_set", "attr_clr", "pte", "level")

    def __init__(self, attr_set: int, attr_clr: int):
        self.attr_set, self.attr_clr = attr_set, attr_clr
        self.pte, self.level = 0, 0


def stage2_attr_walker(ctx: VisitCtx, visit: int) -> int:
    data = ctx.arg
    mm_ops = ctx.mm_ops
    if not kvm_pte_valid(ctx.old):
        return EAGAIN
    data.level = ctx.level
    data.pte = ctx.old
    pte = (ctx.old & ~data.attr_clr) | data.attr_set
    if data.pte != pte:
        # Granting execute needs the I-cache invalidated first.
        if stage2_pte_executable(pte) and not stage2_pte_executable(ctx.old):
            mm_ops.icache_inval_pou(mm_ops.kvm_pte_to_phys(pte),
                                    kvm_granule_size(mm_ops, ctx.level))
        if not stage2_try_set_pte(ctx, pte):
            return EAGAIN
    return 0


def stage2_update_leaf_attrs(pgt, addr, size, attr_set, attr_clr, flags):
    """Returns (ret, orig_pte, level); the last two only mean something when
    ret == 0 (the kernel leaves its out-parameters untouched otherwise)."""
    mask = ATTR_LO | ATTR_HI
    data = _Stage2AttrData(attr_set & mask, attr_clr & mask)
    walker = _Walker(stage2_attr_walker, data, flags | _LEAF)
    ret = kvm_pgtable_walk(pgt, addr, size, walker)
    if ret:
        return ret, None, None
    return 0, data.pte, data.level


def kvm_pgtable_stage2_wrprotect(pgt, addr, size) -> int:
    return stage2_update_leaf_attrs(pgt, addr, size, 0, S2AP_W, 0)[0]


def kvm_pgtable_stage2_mkyoung(pgt, addr, flags) -> None:
    stage2_update_leaf_attrs(pgt, addr, 1, S2_AF, 0, flags)


class _Stage2AgeData:
    __slots__ = ("mkold", "young")

    def __init__(self, mkold: bool):
        self.mkold, self.young = mkold, False


def stage2_age_walker(ctx: VisitCtx, visit: int) -> int:
    new = ctx.old & ~S2_AF
    data = ctx.arg
    if not kvm_pte_valid(ctx.old) or new == ctx.old:
        return 0
    data.young = True
    if data.mkold and not stage2_try_set_pte(ctx, new):
        return EAGAIN
    # No TLBI here: the caller (MMU notifier) does it.
    return 0


def kvm_pgtable_stage2_test_clear_young(pgt, addr, size, mkold) -> bool:
    data = _Stage2AgeData(mkold)
    walker = _Walker(stage2_age_walker, data, _LEAF)
    if kvm_pgtable_walk(pgt, addr, size, walker):
        pgt.mm_ops.warn(WARN_TEST_CLEAR_YOUNG)
    return data.young


def kvm_pgtable_stage2_relax_perms(pgt, addr, prot, flags) -> int:
    if prot & ATTR_HI_SW:
        return EINVAL
    attr_set = 0
    if prot & Prot.R:
        attr_set |= S2AP_R
    if prot & Prot.W:
        attr_set |= S2AP_W
    ret, xn = stage2_set_xn_attr(pgt, prot, 0)
    if ret:
        return ret
    attr_set |= xn & S2_XN
    attr_clr = ~xn & S2_XN
    ret, _, level = stage2_update_leaf_attrs(pgt, addr, 1, attr_set, attr_clr, flags)
    if ret == 0 or ret == EAGAIN:
        # On -EAGAIN the kernel passes its uninitialised 'level': None.
        hyp_tlb_flush_vmid_ipa_nsh(pgt.mmu, addr, level)
    return ret


def stage2_flush_walker(ctx: VisitCtx, visit: int) -> int:
    pgt = ctx.arg
    mm_ops = pgt.mm_ops
    if not stage2_pte_cacheable(pgt, ctx.old):
        return 0
    mm_ops.dcache_clean_inval_poc(mm_ops.kvm_pte_to_phys(ctx.old),
                                  kvm_granule_size(mm_ops, ctx.level))
    return 0


def kvm_pgtable_stage2_flush(pgt, addr, size) -> int:
    walker = _Walker(stage2_flush_walker, pgt, _LEAF)
    if stage2_has_fwb(pgt):
        return 0
    return kvm_pgtable_walk(pgt, addr, size, walker)


# ---- Unlinked tables and split ---------------------------------------------


def kvm_pgtable_stage2_create_unlinked(pgt, phys, level, prot, mc, force_pte):
    """Returns (0, pgtable) or (negative errno, None) for ERR_PTR()."""
    mm_ops = pgt.mm_ops
    map_data = _Stage2MapData(pgt.mmu, mc, phys=phys, force_pte=force_pte)
    walker = _Walker(stage2_map_walker, map_data, _LEAF | _SKIP_BBM_TLBI | _SKIP_CMO)
    # The IA range of an unlinked table is arbitrary: [0, granule(level)).
    data = _WalkData(walker, 0, 0, kvm_granule_size(mm_ops, level))

    if phys & (kvm_granule_size(mm_ops, level) - 1):
        return EINVAL, None
    ret, map_data.attr = stage2_set_prot_attr(pgt, prot)
    if ret:
        return ret, None
    pgtable = mm_ops.zalloc_page(mc)
    if pgtable is None:
        return ENOMEM, None
    ret = __kvm_pgtable_walk(data, mm_ops, pgtable, level + 1)
    if ret:
        kvm_pgtable_stage2_free_unlinked(mm_ops, pgtable, level)
        return ret, None
    return 0, pgtable


def stage2_block_get_nr_page_tables(mm_ops: _MmOps, level: int) -> int:
    # Pages for a subtree fully populated down to the last level.
    if level == 1:
        return mm_ops.ptrs_per_pte + 1
    if level == 2:
        return 1
    if level == 3:
        return 0
    if level < mm_ops.min_block_level or level > KVM_PGTABLE_LAST_LEVEL:
        mm_ops.warn(WARN_NR_PAGE_TABLES)
    return EINVAL


def stage2_split_walker(ctx: VisitCtx, visit: int) -> int:
    mm_ops = ctx.mm_ops
    # The kernel passes &mmu->split_page_cache and recovers the mmu with
    # container_of(); here the mmu is passed and the cache read from it.
    mmu = ctx.arg
    mc = mmu.split_page_cache
    pte = ctx.old
    level = ctx.level

    if level == KVM_PGTABLE_LAST_LEVEL:      # pages cannot be split
        return 0
    if not kvm_pte_valid(pte):               # only valid blocks are split
        return 0

    nr_pages = stage2_block_get_nr_page_tables(mm_ops, level)
    if nr_pages < 0:
        return nr_pages
    if mc.nobjs >= nr_pages:
        force_pte = True                     # build the whole subtree now
    else:
        # One table of next-level blocks; the walk then descends into it
        # and splits those blocks in turn.
        force_pte = False
        nr_pages = 1
    if mc.nobjs < nr_pages:
        return ENOMEM

    phys = mm_ops.kvm_pte_to_phys(pte)
    prot = kvm_pgtable_stage2_pte_prot(pte)
    ret, childp = kvm_pgtable_stage2_create_unlinked(mmu.pgt, phys, level, prot, mc, force_pte)
    if ret:
        return ret

    if not stage2_try_break_pte(ctx, mmu):
        kvm_pgtable_stage2_free_unlinked(mm_ops, childp, level)
        return EAGAIN
    stage2_make_pte(ctx, kvm_init_table_pte(childp, mm_ops))
    return 0


def stage2_split_skip_walker(ctx: VisitCtx, visit: int) -> int:
    """RFC patch 1's split visitor: hint SKIP_CHILDREN for a table of pages
    and after a full page-level subtree was built."""
    if visit == _TABLE_PRE:
        return SKIP_CHILDREN if ctx.level + 1 == KVM_PGTABLE_LAST_LEVEL else 0
    mc = ctx.arg.split_page_cache
    full = (kvm_pte_valid(ctx.old) and ctx.mm_ops.min_block_level <= ctx.level < KVM_PGTABLE_LAST_LEVEL
            and mc.nobjs >= (ctx.mm_ops.ptrs_per_pte + 1 if ctx.level == 1 else 1))
    ret = stage2_split_walker(ctx, visit)
    return SKIP_CHILDREN if ret == 0 and full else ret


# name -> (walk flags, max level, visitor returns hints)
SPLIT_STRATEGIES = {
    "KERNEL": (_LEAF, 3, False),
    "SKIP_RETURN": (_LEAF | _TABLE_PRE, 3, True),
    "PAGE_BLOCK": (int(WalkFlags.BLOCK), 3, False),
    "MAX_LEVEL": (_LEAF, 2, False),
    "SKIP_LEVEL": (_LEAF | int(WalkFlags.SKIP_LEVEL3), 3, False),
    "SKIP_LEVEL_NEW_TABLE": (_LEAF | int(WalkFlags.SKIP_LEVEL3 | WalkFlags.SKIP_NEW_TABLE), 3, False),
}


def kvm_pgtable_stage2_split(pgt, addr, size, mc, flags=_LEAF, max_level=3, skip_return=False) -> int:
    pgt.mmu.split_page_cache = mc
    cb = stage2_split_skip_walker if skip_return else stage2_split_walker
    walker = _Walker(cb, pgt.mmu, flags, max_level)
    return kvm_pgtable_walk(pgt, addr, size, walker)


# ---- Freeing: free_unlinked, destroy ---------------------------------------


def stage2_free_leaf(ctx: VisitCtx) -> int:
    ctx.mm_ops.put_entry(ctx.ptep, ctx)
    return 0


def stage2_free_table_post(ctx: VisitCtx) -> int:
    mm_ops = ctx.mm_ops
    childp = mm_ops.follow_table(ctx.old, ctx.addr, ctx.level)
    if mm_ops.page_count(childp) != 1:
        return 0
    # Drop both references and clear the entry so nothing walks the freed page.
    mm_ops.put_entry(ctx.ptep, ctx)
    mm_ops.put_page(childp, ctx)
    mm_ops.mem[ctx.ptep] = 0
    return 0


def stage2_free_walker(ctx: VisitCtx, visit: int) -> int:
    if not stage2_pte_is_counted(ctx.old):
        return 0
    if visit == _LEAF:
        return stage2_free_leaf(ctx)
    if visit == _TABLE_POST:
        return stage2_free_table_post(ctx)
    return EINVAL


def kvm_pgtable_stage2_free_unlinked(mm_ops: _MmOps, pgtable: int, level: int) -> None:
    mm_ops.stats.unlinked_tables_freed += 1
    walker = _Walker(stage2_free_walker, None, _LEAF | _TABLE_POST)
    data = _WalkData(walker, 0, 0, kvm_granule_size(mm_ops, level))
    if __kvm_pgtable_walk(data, mm_ops, pgtable, level + 1):
        mm_ops.warn(WARN_FREE_UNLINKED_WALK)
    if mm_ops.page_count(pgtable) != 1:
        mm_ops.warn(WARN_FREE_UNLINKED_COUNT)
    mm_ops.put_page(pgtable)


def kvm_pgtable_stage2_destroy_range(pgt, addr, size) -> None:
    walker = _Walker(stage2_free_walker, None, _LEAF | _TABLE_POST)
    if kvm_pgtable_walk(pgt, addr, size, walker):
        pgt.mm_ops.warn(WARN_DESTROY_RANGE)


def kvm_pgtable_stage2_destroy_pgd(pgt) -> None:
    if pgt.pgd is None:         # a second destroy: nothing left to free
        return
    pgd_sz = kvm_pgd_pages(pgt, pgt.ia_bits, pgt.start_level) * pgt.mm_ops.page_size
    pgt.mm_ops.free_pages_exact(pgt.pgd, pgd_sz)
    pgt.pgd = None


def kvm_pgtable_stage2_destroy(pgt) -> None:
    kvm_pgtable_stage2_destroy_range(pgt, 0, 1 << pgt.ia_bits)
    kvm_pgtable_stage2_destroy_pgd(pgt)


# ---- Argument checking for the public API ----------------------------------


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {v!r}") from None


def _as_u64(name: str, v: Any) -> int:
    v = _as_int(name, v)
    if not 0 <= v <= MASK64:
        raise ValueError(f"{name} must be in [0, 2^64), got {v!r}")
    return v


def _as_prot(v: Any) -> int:
    v = _as_u64("prot", v)
    if v & ~_ALL_PROT:
        raise ValueError(f"prot has unknown bits: 0x{v & ~_ALL_PROT:x} (prot={v!r})")
    return v


def _as_flags(v: Any) -> int:
    v = _as_u64("flags", v)
    if v & ~_ALL_WALK_FLAGS:
        raise ValueError(f"flags has unknown bits: 0x{v & ~_ALL_WALK_FLAGS:x} (flags={v!r})")
    return v


def _as_memcache(v: Any, allow_none: bool = True) -> MemCache | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, MemCache):
        raise TypeError(f"memcache must be a MemCache{' or None' if allow_none else ''}, got {v!r}")
    return v


LEAF_DTYPE = np.dtype([("ipa", "<u8"), ("level", "<i1"), ("pte", "<u8")])


# ---- The page table --------------------------------------------------------


class Stage2PageTable:
    """A guest stage-2 page table (struct kvm_pgtable + its kvm_s2_mmu)."""

    def __init__(self, ia_bits: int, *, granule: int = 4096, fwb: bool = False,
                 xnx: bool = False, tlb_range: bool = False):
        ia_bits = _as_int("ia_bits", ia_bits)
        granule = _as_int("granule", granule)
        if granule not in GRANULES:
            raise ValueError(f"granule must be 4096, 16384 or 65536, got {granule!r}")
        if not 32 <= ia_bits <= 48:
            raise ValueError(f"ia_bits must be in 32..48, got {ia_bits!r}")
        self.granule = granule
        self.fwb, self.xnx, self.tlb_range = bool(fwb), bool(xnx), bool(tlb_range)
        self.mm_ops = _MmOps(granule)
        self.mmu = _S2Mmu(self)
        self.pgd: int | None = None

        # kvm_get_vtcr(), then __kvm_pgtable_stage2_init() reading it back.
        self.vtcr = kvm_get_vtcr(granule, MMFR0, MMFR1, ia_bits)
        sl0_base = GRANULES[granule][2]
        self.ia_bits = 64 - (self.vtcr & VTCR_T0SZ_MASK)
        self.start_level = sl0_base - ((self.vtcr & VTCR_SL0_MASK) >> VTCR_SL0_SHIFT)
        if self.start_level < 0:
            raise ValueError(f"ia_bits={ia_bits} needs a start level below 0 (LPA2 only)")
        self.pgd_pages = kvm_pgd_pages(self, self.ia_bits, self.start_level)
        if self.pgd_pages > 16:
            raise ValueError(f"ia_bits={ia_bits} needs {self.pgd_pages} concatenated PGD pages")
        self.pgd = self.mm_ops.zalloc_pages_exact(self.pgd_pages * granule)

    def __repr__(self) -> str:
        return (f"Stage2PageTable(ia_bits={self.ia_bits}, granule={self.granule}, "
                f"start_level={self.start_level}, pgd_pages={self.pgd_pages})")

    # -- operations --------------------------------------------------------
    def map(self, ipa: int, size: int, phys: int, prot: int, *,
            memcache: MemCache | None = None, flags: int = 0) -> int:
        ipa, size, phys = _as_u64("ipa", ipa), _as_u64("size", size), _as_u64("phys", phys)
        prot, flags = _as_prot(prot), _as_flags(flags)
        memcache = _as_memcache(memcache)
        return kvm_pgtable_stage2_map(self, ipa, size, phys, prot, memcache, flags)

    def unmap(self, ipa: int, size: int) -> int:
        return kvm_pgtable_stage2_unmap(self, _as_u64("ipa", ipa), _as_u64("size", size))

    def wrprotect(self, ipa: int, size: int) -> int:
        return kvm_pgtable_stage2_wrprotect(self, _as_u64("ipa", ipa), _as_u64("size", size))

    def relax_perms(self, ipa: int, prot: int, flags: int = 0) -> int:
        ipa, prot, flags = _as_u64("ipa", ipa), _as_prot(prot), _as_flags(flags)
        return kvm_pgtable_stage2_relax_perms(self, ipa, prot, flags)

    def mkyoung(self, ipa: int, flags: int = 0) -> None:
        kvm_pgtable_stage2_mkyoung(self, _as_u64("ipa", ipa), _as_flags(flags))

    def test_clear_young(self, ipa: int, size: int, mkold: bool) -> bool:
        ipa, size = _as_u64("ipa", ipa), _as_u64("size", size)
        return kvm_pgtable_stage2_test_clear_young(self, ipa, size, bool(mkold))

    def get_leaf(self, ipa: int) -> tuple[int, int | None, int | None]:
        ret, pte, level = kvm_pgtable_get_leaf(self, _as_u64("ipa", ipa))
        return (ret, None, None) if ret else (0, pte, level)

    def split(self, ipa: int, size: int, memcache: MemCache, *, strategy: Any = None, flags: int = 0,
              max_level: int | None = None) -> int:
        """``strategy``: a name from SPLIT_STRATEGIES or anything with ``.name``."""
        ipa, size = _as_u64("ipa", ipa), _as_u64("size", size)
        memcache = _as_memcache(memcache, allow_none=False)
        name = "KERNEL" if strategy is None else getattr(strategy, "name", strategy)
        walk_flags, level, skip_return = SPLIT_STRATEGIES[name]
        walk_flags |= _as_flags(flags)
        if max_level is not None:
            level = self._check_max_level(max_level)
        return kvm_pgtable_stage2_split(self, ipa, size, memcache, walk_flags, level, skip_return)

    def _check_max_level(self, v: Any) -> int:
        v = _as_int("max_level", v)
        if not self.start_level <= v <= KVM_PGTABLE_LAST_LEVEL:
            raise ValueError(f"max_level {v!r} is outside {self.start_level}..3")
        return v

    def flush(self, ipa: int, size: int) -> int:
        return kvm_pgtable_stage2_flush(self, _as_u64("ipa", ipa), _as_u64("size", size))

    def set_owner(self, ipa: int, size: int, owner: int, memcache: MemCache | None) -> int:
        ipa, size = _as_u64("ipa", ipa), _as_u64("size", size)
        owner = _as_int("owner", owner)
        if not 0 <= owner <= 0xFF:
            raise ValueError(f"owner must fit in a u8, got {owner!r}")
        memcache = _as_memcache(memcache)
        return kvm_pgtable_stage2_set_owner(self, ipa, size, memcache, owner)

    def _check_level(self, level: Any) -> int:
        level = _as_int("level", level)
        if not KVM_PGTABLE_FIRST_LEVEL <= level <= KVM_PGTABLE_LAST_LEVEL \
                or self.mm_ops.level_shift[level] >= 64:
            raise ValueError(f"level {level!r} is not a usable level for this granule")
        return level

    def create_unlinked(self, phys: int, level: int, prot: int, memcache: MemCache | None,
                        force_pte: bool = False) -> tuple[int, int | None]:
        phys, level, prot = _as_u64("phys", phys), self._check_level(level), _as_prot(prot)
        memcache = _as_memcache(memcache)
        ret, pgtable = kvm_pgtable_stage2_create_unlinked(self, phys, level, prot, memcache,
                                                          bool(force_pte))
        return (ret, None) if ret else (0, self.mm_ops.virt_to_phys(pgtable))

    def free_unlinked(self, table_pa: int, level: int) -> None:
        table_pa, level = _as_u64("table_pa", table_pa), self._check_level(level)
        mm = self.mm_ops
        off = table_pa - TABLE_PA_BASE
        if off < 0 or off % mm.page_size or off // mm.page_size >= len(mm.refs) \
                or mm.refs[off // mm.page_size] <= 0:
            raise ValueError(f"table_pa 0x{table_pa:x} is not a live page-table page")
        kvm_pgtable_stage2_free_unlinked(mm, off // 8, level)

    def destroy(self) -> None:
        kvm_pgtable_stage2_destroy(self)

    def walk(self, ipa: int, size: int, visitor: Callable, flags: int, *, arg: Any = None,
             max_level: int = 3) -> int:
        ipa, size, flags = _as_u64("ipa", ipa), _as_u64("size", size), _as_flags(flags)
        max_level = self._check_max_level(max_level)
        if not callable(visitor):
            raise TypeError(f"visitor must be callable, got {visitor!r}")

        def cb(ctx: VisitCtx, visit: int) -> int:
            r = visitor(ctx, visit)
            if r is None:
                return 0
            try:
                r = operator.index(r)
            except TypeError:
                raise TypeError(f"visitor must return an int or None, got {r!r}") from None
            if not -(1 << 31) <= r < (1 << 31):
                raise ValueError(f"visitor return value does not fit a C int: {r!r}")
            return r

        return kvm_pgtable_walk(self, ipa, size, _Walker(cb, arg, flags, max_level))

    # -- counters ----------------------------------------------------------
    @property
    def stats(self) -> Stats:
        s = self.mm_ops.stats
        d = {name: getattr(s, name) for name in _COUNTERS}
        d["entries_read"] = s.visits + s.reloads
        for lv in range(4):
            d[f"callbacks_level_{lv}"] = s.by_level[lv]
        d["tlbi_log"] = list(s.tlbi_log)
        d["cmo_log"] = list(s.cmo_log)
        d["warning_sites"] = list(s.warning_sites)
        d["pages_live"] = self.mm_ops.live
        return Stats(d)

    def reset_stats(self) -> None:
        self.mm_ops.stats.reset()

    # -- inspection --------------------------------------------------------
    @property
    def pages_live(self) -> int:
        return self.mm_ops.live

    @property
    def descriptors(self) -> np.ndarray:
        view = np.frombuffer(self.mm_ops.mem, dtype=np.uint64).copy()
        view.setflags(write=False)
        return view

    def _entries(self):
        """Yield (ipa, level, pte, ptep) for every non-zero entry reachable
        from the root, in IPA order; table entries are yielded before their
        children."""
        if self.pgd is None:
            return
        mm = self.mm_ops
        mem, ptrs = mm.mem, mm.ptrs_per_pte

        def table(base: int, ipa: int, level: int, n: int = ptrs):
            shift = mm.level_shift[level]
            for i in range(n):
                pte = mem[base + i]
                if not pte:
                    continue
                addr = ipa + (i << shift)
                yield addr, level, pte, base + i
                if kvm_pte_table(pte, level):
                    yield from table(mm.follow_table(pte, addr, level), addr, level + 1)

        # A root page's entries beyond the IPA space are reached by no walk
        # (kvm_pgtable_walk() stops at BIT(ia_bits)), so they are not listed.
        span = mm.level_shift[self.start_level - 1]
        used = min(ptrs, 1 << max(0, self.ia_bits - mm.level_shift[self.start_level]))
        for p in range(self.pgd_pages):
            yield from table(self.pgd + p * ptrs, p << span, self.start_level, used)

    def _dump(self, want_valid: bool) -> np.ndarray:
        ipas, levels, ptes = array("Q"), array("b"), array("Q")
        for ipa, lv, pte, _ in self._entries():
            if not kvm_pte_table(pte, lv) and kvm_pte_valid(pte) == want_valid:
                ipas.append(ipa)
                levels.append(lv)
                ptes.append(pte)
        out = np.empty(len(ipas), dtype=LEAF_DTYPE)
        out["ipa"], out["level"], out["pte"] = ipas, levels, ptes
        return out

    def leaves(self) -> np.ndarray:
        """Every valid leaf, in IPA order."""
        return self._dump(True)

    def annotations(self) -> np.ndarray:
        """Every non-zero invalid entry (owner annotations, locked entries)."""
        return self._dump(False)

    def table_pages(self) -> int:
        """Pages reachable from the root, root pages included."""
        if self.pgd is None:
            return 0
        ptrs = self.mm_ops.ptrs_per_pte
        pages = {self.pgd // ptrs + p for p in range(self.pgd_pages)}
        for ipa, lv, pte, _ in self._entries():
            if kvm_pte_table(pte, lv):
                pages.add(self.mm_ops.follow_table(pte, ipa, lv) // ptrs)
        return len(pages)

