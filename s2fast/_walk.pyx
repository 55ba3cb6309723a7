# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The s2fast engine: a stage-2 page table in a pool of uint64 pages, the
kernel's depth-first walker, and the stage-2 visitors of pgtable.c.

Shape follows arch/arm64/kvm/hyp/pgtable.c so that kernel readers can map
every function here to its counterpart; counters are bumped exactly where the
kernel performs the counted action (a READ_ONCE of an entry, a visitor call, a
TLBI, a CMO, a page allocation).
"""

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "sys/mman.h":
    int MAP_NORESERVE

cdef extern from *:
    void __builtin_prefetch(const void *addr) nogil

# ---------------------------------------------------------------------------
# Constants (kvm_pgtable.h)

cdef u64 PTE_VALID = 1
cdef u64 PTE_TYPE = 1 << 1
cdef u64 ATTR_LO = 0xFFC                 # GENMASK(11, 2)
cdef u64 ATTR_HI = 0xFFFC000000000000    # GENMASK(63, 50)
cdef u64 ATTR_HI_SW = 0x0780000000000000 # GENMASK(58, 55)
cdef u64 S2_MEMATTR = 0x3C               # GENMASK(5, 2)
cdef u64 S2AP_R = 1 << 6
cdef u64 S2AP_W = 1 << 7
cdef u64 S2_SH_IS = 3 << 8
cdef u64 S2_AF = 1 << 10
cdef u64 S2_XN = 3ULL << 53
cdef u64 S2_PERMS = (1 << 6) | (1 << 7) | (3ULL << 53)
cdef u64 INVALID_PTE_OWNER_MASK = 0x3FC  # GENMASK(9, 2)
cdef u64 INVALID_PTE_LOCKED = 1 << 10
cdef u64 ADDR_51_48 = 0xF000             # GENMASK(15, 12)

# Stage-2 MemAttr encodings (PAGE_S2_MEMATTR), without and with FWB.
cdef u64 MEMATTR_NORMAL = 0xF << 2
cdef u64 MEMATTR_NORMAL_FWB = 0x6 << 2
cdef u64 MEMATTR_DEVICE = 0x1 << 2
cdef u64 MEMATTR_NC = 0x5 << 2

cdef u64 PROT_PX = 1 << 0
cdef u64 PROT_UX = 1 << 1
cdef u64 PROT_X = 3
cdef u64 PROT_W = 1 << 2
cdef u64 PROT_R = 1 << 3
cdef u64 PROT_DEVICE = 1 << 4
cdef u64 PROT_NC = 1 << 5

cdef int EAGAIN = 11
cdef int ENOMEM = 12
cdef int EINVAL = 22
cdef int ERANGE = 34
cdef int E2BIG = 7

cdef s64 TTL_UNKNOWN = 0x7FFFFFFF
cdef s64 LEVEL_UNINIT = -0x80000000
cdef u64 MAX_TLBI_RANGE_PAGES = 1 << 21

# Where pool pages live in the simulated physical address space.
TABLE_PA_BASE = 1 << 46
cdef u64 C_TABLE_PA_BASE = 1ULL << 46

# WARN sites (the index is what the counters log).
WARN_SITES = (
    "kvm_mmu_memory_cache_alloc:0 WARN_ON(!mc->nobjs)",
    "pgtable.c:stage2_try_break_pte WARN_ON(!kvm_pgtable_walk_shared(ctx))",
    "pgtable.c:stage2_make_pte WARN_ON(!stage2_pte_is_locked(*ctx->ptep))",
    "pgtable.c:stage2_map_walker_try_leaf WARN_ON_ONCE(!stage2_try_set_pte(ctx, new))",
    "pgtable.c:stage2_map_walk_leaf WARN_ON(ctx->level == KVM_PGTABLE_LAST_LEVEL)",
    "pgtable.c:kvm_pgtable_stage2_test_clear_young WARN_ON(kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_destroy_range WARN_ON(kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_free_unlinked WARN_ON(__kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_free_unlinked WARN_ON(mm_ops->page_count(pgtable) != 1)",
    "pgtable.c:__kvm_pgtable_walk WARN_ON_ONCE(level < KVM_PGTABLE_FIRST_LEVEL || level > KVM_PGTABLE_LAST_LEVEL)",
    "pgtable.c:stage2_block_get_nr_page_tables WARN_ON_ONCE(level < KVM_PGTABLE_MIN_BLOCK_LEVEL || level > KVM_PGTABLE_LAST_LEVEL)",
)
cdef enum:
    W_MC_ALLOC = 0
    W_BREAK_LOCKED = 1
    W_MAKE_NOT_LOCKED = 2
    W_TRY_SET = 3
    W_MAP_LAST_LEVEL = 4
    W_CLEAR_YOUNG = 5
    W_DESTROY_RANGE = 6
    W_FREE_UNLINKED_WALK = 7
    W_FREE_UNLINKED_COUNT = 8
    W_WALK_LEVEL = 9
    W_NR_PAGE_TABLES = 10

# Error kinds stored in PT.err_kind.
cdef enum:
    ERR_NONE = 0
    ERR_CORRUPT = 1
    ERR_NOPOOL = 2
    ERR_OUTSIDE = 3     # an image descriptor points outside its physical memory

# ---------------------------------------------------------------------------
# Geometry helpers

# Per-granule specialisation: the walker's hot functions take a NULL pointer
# of one of these tag types, so Cython emits one copy per granule in which
# shifts, masks and PTRS_PER_PTE are compile-time constants. The run-time
# Geom is used only outside those loops.
cdef struct G4K:
    char unused
cdef struct G16K:
    char unused
cdef struct G64K:
    char unused
ctypedef fused Gran:
    G4K
    G16K
    G64K

cdef inline int g_page_shift(Gran *t) noexcept nogil:
    if Gran is G4K:
        return 12
    elif Gran is G16K:
        return 14
    else:
        return 16

cdef inline int g_table_shift(Gran *t) noexcept nogil:
    return g_page_shift(t) - 3

cdef inline u64 g_ptrs(Gran *t) noexcept nogil:
    return (<u64>1) << g_table_shift(t)

cdef inline int g_level_shift(Gran *t, int level) noexcept nogil:
    # ARM64_HW_PGTABLE_LEVEL_SHIFT(level)
    return g_table_shift(t) * (4 - level) + 3

cdef inline u64 g_level_size(Gran *t, int level) noexcept nogil:
    return (<u64>1) << g_level_shift(t, level)

cdef inline u64 g_pte_to_phys(Gran *t, u64 pte) noexcept nogil:
    cdef u64 pa = pte & ((((<u64>1) << 48) - 1) & ~(((<u64>1) << g_page_shift(t)) - 1))
    if Gran is G64K:
        pa |= (pte & ADDR_51_48) << 36
    return pa

cdef inline int granule_shift(const Geom *g, int level) noexcept nogil:
    # ARM64_HW_PGTABLE_LEVEL_SHIFT(level)
    return g.table_shift * (4 - level) + 3

cdef inline u64 granule_size(const Geom *g, int level) noexcept nogil:
    return (<u64>1) << granule_shift(g, level)

cdef inline bint pte_valid(u64 pte) noexcept nogil:
    return (pte & PTE_VALID) != 0

cdef inline bint pte_table(u64 pte, int level) noexcept nogil:
    if level == LAST_LEVEL:
        return False
    return (pte & 3) == 3

cdef inline u64 pte_to_phys(const Geom *g, u64 pte) noexcept nogil:
    cdef u64 pa = pte & g.addr_mask
    if g.pa_51_48:
        pa |= ((pte & ADDR_51_48) >> 12) << 48
    return pa

cdef inline u64 phys_to_pte(const Geom *g, u64 pa) noexcept nogil:
    cdef u64 pte = pa & g.addr_mask
    if g.pa_51_48:
        pte |= ((pa >> 48) & 0xF) << 12
    return pte

cdef inline u64 align_down(u64 x, u64 a) noexcept nogil:
    return x & ~(a - 1)

cdef inline bint pte_is_counted(u64 pte) noexcept nogil:
    return pte != 0

cdef inline bint pte_is_locked(u64 pte) noexcept nogil:
    return (pte & (PTE_VALID | INVALID_PTE_LOCKED)) == INVALID_PTE_LOCKED

cdef inline bint walk_shared(const Ctx *ctx) noexcept nogil:
    return (ctx.flags & F_SHARED) != 0

cdef inline u64 memattr_normal(PT *pt) noexcept nogil:
    return MEMATTR_NORMAL_FWB if pt.fwb else MEMATTR_NORMAL

cdef inline bint pte_cacheable(PT *pt, u64 pte) noexcept nogil:
    return pte_valid(pte) and (pte & S2_MEMATTR) == memattr_normal(pt)

cdef inline bint pte_executable(u64 pte) noexcept nogil:
    return pte_valid(pte) and not (pte & S2_XN)

# ---------------------------------------------------------------------------
# Events

cdef inline void warn(PT *pt, int site) noexcept nogil:
    pt.c.warnings += 1
    if pt.c.warn_log_n < LOG_MAX:
        pt.c.warn_log[pt.c.warn_log_n] = site
        pt.c.warn_log_n += 1

cdef inline void log_tlbi(PT *pt, int kind, u64 a, s64 b) noexcept nogil:
    pt.c.tlbi_log_total += 1
    if pt.c.tlbi_log_n < LOG_MAX:
        pt.c.tlbi_log[pt.c.tlbi_log_n].kind = kind
        pt.c.tlbi_log[pt.c.tlbi_log_n].a = a
        pt.c.tlbi_log[pt.c.tlbi_log_n].b = b
        pt.c.tlbi_log_n += 1

cdef inline void tlbi_vmid_ipa(PT *pt, u64 addr, s64 level) noexcept nogil:
    pt.c.tlbi_ipa += 1
    log_tlbi(pt, TLBI_IPA, addr, level)

cdef inline void tlbi_vmid_ipa_nsh(PT *pt, u64 addr, s64 level) noexcept nogil:
    pt.c.tlbi_ipa_nsh += 1
    log_tlbi(pt, TLBI_IPA_NSH, addr, level)

cdef void tlb_flush_vmid_range(PT *pt, u64 addr, u64 size) noexcept nogil:
    # kvm_tlb_flush_vmid_range(): a range TLBI in chunks when available,
    # otherwise one flush of the whole VMID.
    cdef u64 pages, inval
    if not pt.tlb_range:
        pt.c.tlbi_vmid += 1
        log_tlbi(pt, TLBI_VMID, 0, 0)
        return
    pages = size >> pt.g.page_shift
    while pages > 0:
        inval = pages if pages < MAX_TLBI_RANGE_PAGES else MAX_TLBI_RANGE_PAGES
        pt.c.tlbi_range += 1
        pt.c.tlbi_range_pages += inval
        log_tlbi(pt, TLBI_RANGE, addr, <s64>inval)
        addr += inval << pt.g.page_shift
        pages -= inval

cdef inline void log_cmo(PT *pt, int kind, u64 pa, u64 nbytes) noexcept nogil:
    pt.c.cmo_log_total += 1
    if pt.c.cmo_log_n < LOG_MAX:
        pt.c.cmo_log[pt.c.cmo_log_n].kind = kind
        pt.c.cmo_log[pt.c.cmo_log_n].pa = pa
        pt.c.cmo_log[pt.c.cmo_log_n].nbytes = nbytes
        pt.c.cmo_log_n += 1

cdef inline void dcache_clean_inval_poc(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    pt.c.dcache_calls += 1
    pt.c.dcache_bytes += nbytes
    log_cmo(pt, CMO_DCACHE, pa, nbytes)

cdef inline void icache_inval_pou(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    pt.c.icache_calls += 1
    pt.c.icache_bytes += nbytes
    log_cmo(pt, CMO_ICACHE, pa, nbytes)

# ---------------------------------------------------------------------------
# The page pool (mm_ops)

cdef inline void set_error(PT *pt, int kind, u64 ipa, int level, u64 desc) noexcept nogil:
    if pt.err_kind == ERR_NONE:
        pt.err_kind = kind
        pt.err_ipa = ipa
        pt.err_level = level
        pt.err_desc = desc

cdef inline s64 page_of_pa(PT *pt, u64 pa) noexcept nogil:
    """Pool page index of a table PA, or -1 if it is not a live pool page."""
    cdef u64 off, idx
    if pa < C_TABLE_PA_BASE:
        return -1
    off = pa - C_TABLE_PA_BASE
    if off & ((<u64>1 << pt.g.page_shift) - 1):
        return -1
    idx = off >> pt.g.page_shift
    if idx >= pt.pool.n_pages or pt.pool.refcnt[idx] <= 0:
        return -1
    return <s64>idx

cdef inline u64 page_pa(PT *pt, u64 page) noexcept nogil:
    return C_TABLE_PA_BASE + (page << pt.g.page_shift)

cdef u64 *image_table(PT *pt, u64 pa) noexcept nogil:
    """The host address of the table page at pa in external memory, or NULL
    if the page is not wholly inside one segment (a read outside memory)."""
    if pa & (((<u64>1) << pt.g.page_shift) - 1):
        return NULL
    return image_ptr(pt, pa, (<u64>1) << pt.g.page_shift)

cdef u64 *image_ptr(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    """The host address of [pa, pa + nbytes) if one segment holds it all and
    pa is 8-byte aligned, else NULL."""
    cdef int lo = 0, hi = pt.nsegs, mid
    cdef u64 gsz = nbytes
    if pa & 7:
        return NULL
    # Segments are sorted by PA and disjoint: find the last one starting at or below pa.
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if pt.segs[mid].pa <= pa:
            lo = mid
        else:
            hi = mid
    if pt.nsegs == 0 or pa < pt.segs[lo].pa or pa - pt.segs[lo].pa > pt.segs[lo].size - gsz \
            or pt.segs[lo].size < gsz:
        return NULL
    return pt.segs[lo].host + ((pa - pt.segs[lo].pa) >> 3)

cdef inline u64 *table_at(PT *pt, u64 pa) noexcept nogil:
    """The table page at physical address pa: a live pool page, or a page of
    external memory for an image. NULL when there is none."""
    cdef s64 page
    if pt.image:
        return image_table(pt, pa)
    page = page_of_pa(pt, pa)
    if page < 0:
        return NULL
    return pt.pool.mem + (<u64>page << pt.g.table_shift)

cdef inline u64 page_index(PT *pt, const u64 *ptep) noexcept nogil:
    """Pool page index of the page holding ptep (pool tables only)."""
    return (<u64>(ptep - pt.pool.mem)) >> pt.g.table_shift

cdef inline u64 *follow_pa(PT *pt, Ctx *ctx, u64 pa) noexcept nogil:
    """The child table at pa (ctx's descriptor's address), or NULL with the
    corruption recorded when the descriptor leads nowhere valid."""
    cdef u64 *child = table_at(pt, pa)
    if child == NULL:
        set_error(pt, ERR_OUTSIDE if pt.image else ERR_CORRUPT, ctx.addr, ctx.level, ctx.old)
    return child

cdef inline u64 *follow(PT *pt, Ctx *ctx, u64 pte) noexcept nogil:
    """kvm_pte_follow() with the simulator's check (see follow_pa)."""
    return follow_pa(pt, ctx, pte_to_phys(&pt.g, pte))

cdef inline void get_page(PT *pt, u64 *ptep) noexcept nogil:
    pt.pool.refcnt[page_index(pt, ptep)] += 1

cdef int release_page(PT *pt, u64 page) noexcept nogil:
    cdef u64 *ns
    if pt.pool.free_n == pt.pool.free_cap:
        ns = <u64 *>realloc(pt.pool.free_stack, (pt.pool.free_cap * 2 + 64) * sizeof(u64))
        if ns == NULL:
            return -1
        pt.pool.free_stack = ns
        pt.pool.free_cap = pt.pool.free_cap * 2 + 64
    pt.pool.free_stack[pt.pool.free_n] = page
    pt.pool.free_n += 1
    pt.pool.live -= 1
    pt.c.pages_free += 1
    return 0

cdef inline bint put_page(PT *pt, u64 *ptep) noexcept nogil:
    """Drop a reference on the page holding ptep; False on a refcount
    underflow (a corrupt table), which is recorded."""
    cdef u64 page = page_index(pt, ptep)
    if pt.pool.refcnt[page] <= 0:
        set_error(pt, ERR_CORRUPT, 0, -2, page_pa(pt, page))
        return False
    pt.pool.refcnt[page] -= 1
    if pt.pool.refcnt[page] == 0:
        release_page(pt, page)
    return True

cdef inline bint put_entry(PT *pt, Ctx *ctx, u64 *ptep) noexcept nogil:
    """put_page() of the reference an entry holds on its table page. In a
    consistent table this never frees the page (the table's own reference
    stays), so going below 1 means a visitor wrote a descriptor without its
    reference: recorded as corruption, and the page is left alone."""
    cdef u64 page = page_index(pt, ptep)
    if pt.pool.refcnt[page] <= 1:
        set_error(pt, ERR_CORRUPT, ctx.addr, ctx.level, ctx.old)
        return False
    pt.pool.refcnt[page] -= 1
    return True

cdef inline int page_count(PT *pt, u64 *ptep) noexcept nogil:
    return pt.pool.refcnt[page_index(pt, ptep)]

cdef s64 pool_new_page(PT *pt) noexcept nogil:
    """A zeroed page with refcount 1, or -1 when the reservation is full."""
    cdef u64 page
    cdef int32_t *nr
    cdef u64 cap
    if pt.pool.free_n > 0:
        pt.pool.free_n -= 1
        page = pt.pool.free_stack[pt.pool.free_n]
        memset(pt.pool.mem + (page << pt.g.table_shift), 0, sizeof(u64) << pt.g.table_shift)
    else:
        if pt.pool.n_pages >= pt.pool.reserved_pages:
            set_error(pt, ERR_NOPOOL, 0, 0, 0)
            return -1
        if pt.pool.n_pages >= pt.pool.refcap:
            cap = pt.pool.refcap * 2 + 1024
            nr = <int32_t *>realloc(pt.pool.refcnt, cap * sizeof(int32_t))
            if nr == NULL:
                set_error(pt, ERR_NOPOOL, 0, 0, 0)
                return -1
            pt.pool.refcnt = nr
            pt.pool.refcap = cap
        page = pt.pool.n_pages
        pt.pool.n_pages += 1      # fresh mmap memory is already zero
    pt.pool.refcnt[page] = 1
    pt.pool.live += 1
    pt.c.pages_alloc += 1
    return <s64>page

cdef u64 *zalloc_page(PT *pt, MC *mc) noexcept nogil:
    """mm_ops->zalloc_page(memcache): the new page, or NULL. An empty cache refuses, or (on_empty="allocate") warns and
    allocates anyway, as kvm_mmu_memory_cache_alloc() does."""
    cdef s64 page
    if mc == NULL:
        return NULL     # zalloc_page(NULL): no cache, no page
    if mc.nobjs <= 0:
        pt.c.mc_exhausted += 1
        if not mc.allocate_on_empty:
            return NULL
        warn(pt, W_MC_ALLOC)
        page = pool_new_page(pt)
    else:
        page = pool_new_page(pt)
        if page >= 0:
            mc.nobjs -= 1
            pt.c.mc_used += 1
    if page < 0:
        return NULL
    return pt.pool.mem + (<u64>page << pt.g.table_shift)

# ---------------------------------------------------------------------------
# The walker (kvm_pgtable_walk and friends)

cdef inline bint walk_continue(const Walker *w, int r) noexcept nogil:
    # -EAGAIN means "retry the fault": only a fault handler stops on it.
    if r == -EAGAIN:
        return not (w.flags & F_HANDLE_FAULT)
    return r == 0

cdef inline int visitor_cb(PT *pt, Walker *w, Ctx *ctx, int visit) noexcept nogil:
    if visit == F_LEAF:
        pt.c.cb_leaf += 1
    elif visit == F_TABLE_PRE:
        pt.c.cb_pre += 1
    else:
        pt.c.cb_post += 1
    pt.c.cb_level[ctx.level + 1] += 1
    return w.cb(pt, ctx, visit)

cdef inline bint is_hint(int r) noexcept nogil:
    return r > 0 and (r & ~(HINT_SKIP_CHILDREN | HINT_SKIP_SIBLINGS)) == 0

cdef void prepare_walker(Walker *w) noexcept nogil:
    """The one place that decides which visits happen at each level and
    whether the walker may enter a table: it enters only if some visit below
    is possible under the flags and max level. Walks with only the kernel's
    flags are left exactly as the kernel walks (every table entered)."""
    cdef int lv, i
    cdef int f = w.flags
    cdef bint on, later = False
    cdef bint prune = (f & (F_PAGE | F_BLOCK | F_SKIP_LEVEL0 | F_SKIP_LEVEL1 | F_SKIP_LEVEL2
                            | F_SKIP_LEVEL3 | F_SKIP_NEW_TABLE)) != 0 or w.max_level < LAST_LEVEL
    for lv in range(LAST_LEVEL, -2, -1):
        i = lv + 1
        on = lv <= w.max_level and not (
            (lv == 0 and f & F_SKIP_LEVEL0) or (lv == 1 and f & F_SKIP_LEVEL1)
            or (lv == 2 and f & F_SKIP_LEVEL2) or (lv == 3 and f & F_SKIP_LEVEL3))
        w.pre_on[i] = on and (f & F_TABLE_PRE) != 0
        w.post_on[i] = on and (f & F_TABLE_POST) != 0
        if lv == LAST_LEVEL:
            w.leaf_on[i] = on and (f & (F_LEAF | F_PAGE)) != 0
        else:
            w.leaf_on[i] = on and (f & (F_LEAF | F_BLOCK)) != 0
        # A table here has children at lv + 1: enter it if anything at a
        # deeper level can still be visited.
        w.enter[i] = (not prune) or (later and lv < w.max_level)
        later = later or w.leaf_on[i] or (lv < LAST_LEVEL and (w.pre_on[i] or w.post_on[i]))

cdef inline bint should_enter(const Walker *w, int level, bint was_table, int hint) noexcept nogil:
    """The walker's one descend-or-skip decision for a table entry at level:
    the static rule prepare_walker() derived from the flags and max level,
    then the two dynamic cases (a SKIP_CHILDREN hint, or a table that the
    callback has just created while SKIP_NEW_TABLE is set)."""
    if not w.enter[level + 1]:
        return False
    if hint & HINT_SKIP_CHILDREN:
        return False
    return was_table or not (w.flags & F_SKIP_NEW_TABLE)

cdef int visit_entry(Gran *t, PT *pt, WalkData *d, u64 *ptep, int level) noexcept nogil:
    # __kvm_pgtable_visit()
    cdef Walker *w = d.walker
    cdef Ctx ctx
    cdef int ret = 0
    cdef int hint = 0
    cdef int li = level + 1
    cdef bint reload = False
    cdef bint table, was_table
    cdef u64 *child
    cdef u64 gs
    ctx.ptep = ptep
    ctx.old = ptep[0]
    ctx.arg = w.arg
    ctx.start = d.start
    ctx.addr = d.addr
    ctx.end = d.end
    ctx.level = level
    ctx.flags = w.flags
    pt.c.visits += 1
    table = pte_table(ctx.old, level)
    was_table = table

    if table and w.pre_on[li]:
        ret = visitor_cb(pt, w, &ctx, F_TABLE_PRE)
        reload = True
    if (not table) and w.leaf_on[li]:
        ret = visitor_cb(pt, w, &ctx, F_LEAF)
        reload = True
    if is_hint(ret):
        hint = ret
        ret = 0

    # Re-read after the callback so the walk descends into a table that the
    # callback just installed.
    if reload:
        ctx.old = ptep[0]
        pt.c.reloads += 1
        table = pte_table(ctx.old, level)

    if not walk_continue(w, ret):
        return ret

    gs = g_level_size(t, level)
    if not table:
        d.addr = align_down(d.addr, gs) + gs
    elif not should_enter(w, level, was_table, hint):
        # Not entered: move past everything the table maps.
        d.addr = align_down(d.addr, gs) + gs
    else:
        child = follow_pa(pt, &ctx, g_pte_to_phys(t, ctx.old))
        if child == NULL:
            return S2_ECORRUPT
        ret = walk_table(t, pt, d, child, level + 1)
        if not walk_continue(w, ret):
            return ret

    if table and w.post_on[li]:
        ret = visitor_cb(pt, w, &ctx, F_TABLE_POST)
        if is_hint(ret):
            hint |= ret
            ret = 0

    if hint & HINT_SKIP_SIBLINGS:
        d.skip_siblings = True
    if walk_continue(w, ret):
        return 0
    return ret

cdef int walk_last_level(Gran *t, PT *pt, WalkData *d, u64 *table, u64 idx) noexcept nogil:
    """The last level visited a whole run at a time: nothing there is a table,
    so each entry is one read, one LEAF callback and one reload, and the
    counters can be bumped in bulk. Only used with a built-in run function."""
    cdef Walker *w = d.walker
    cdef int shift = g_page_shift(t)
    cdef u64 gs = (<u64>1) << shift
    cdef u64 addr = align_down(d.addr, gs)
    cdef u64 n = g_ptrs(t) - idx
    cdef u64 left = (d.end - addr + gs - 1) >> shift
    cdef u64 done = 0
    cdef int ret = 0
    cdef Ctx ctx
    if d.addr >= d.end:
        return 0
    if left < n:
        n = left
    if not w.leaf_on[LAST_LEVEL + 1]:
        pt.c.visits += n
        d.addr = addr + (n << shift)
        return 0
    ctx.arg = w.arg
    ctx.start = d.start
    ctx.addr = d.addr
    ctx.end = d.end
    ctx.level = LAST_LEVEL
    ctx.flags = w.flags
    # Built-in run functions never return hints (no table lives at the last
    # level, and the built-in visitors hint only above it).
    ret = w.run(pt, &ctx, table + idx, n, &done)
    pt.c.visits += done
    pt.c.reloads += done
    pt.c.cb_leaf += done
    pt.c.cb_level[LAST_LEVEL + 1] += done
    if ret != 0:
        # The stopping entry was visited, but the address stays on it.
        d.addr = addr + ((done - 1) << shift)
        return ret
    d.addr = addr + (done << shift)
    return 0

cdef int walk_table(Gran *t, PT *pt, WalkData *d, u64 *table, int level) noexcept nogil:
    # __kvm_pgtable_walk()
    cdef u64 idx, entry_addr, span
    cdef int ret = 0
    if level < -1 or level > LAST_LEVEL:
        warn(pt, W_WALK_LEVEL)
        return -EINVAL
    idx = (d.addr >> g_level_shift(t, level)) & (g_ptrs(t) - 1)
    if level == LAST_LEVEL and d.walker.run != NULL:
        return walk_last_level(t, pt, d, table, idx)
    while idx < g_ptrs(t):
        if d.addr >= d.end:
            break
        entry_addr = d.addr
        ret = visit_entry(t, pt, d, table + idx, level)
        if ret:
            break
        if d.skip_siblings:
            # The rest of this table is skipped: go to the end of its span.
            d.skip_siblings = False
            span = g_level_size(t, level) << g_table_shift(t)
            entry_addr = align_down(entry_addr, span) + span
            d.addr = entry_addr if entry_addr < d.end else d.end
            break
        idx += 1
    return ret

cdef inline u64 pgd_page_idx(PT *pt, u64 addr) noexcept nogil:
    cdef int shift = granule_shift(&pt.g, pt.g.start_level - 1)
    cdef u64 mask = ((<u64>1) << pt.g.ia_bits) - 1
    if shift >= 64:
        return 0
    return (addr & mask) >> shift

cdef int kvm_pgtable_walk(PT *pt, u64 addr, u64 size, Walker *w) noexcept nogil:
    cdef WalkData d
    cdef u64 limit = (<u64>1) << pt.g.ia_bits
    cdef u64 psize = (<u64>1) << pt.g.page_shift
    cdef u64 idx
    cdef int ret = 0
    d.walker = w
    d.skip_siblings = False
    prepare_walker(w)
    d.start = align_down(addr, psize)
    d.addr = d.start
    d.end = align_down(d.start + size + psize - 1, psize)
    # _kvm_pgtable_walk()
    if d.addr > limit or d.end > limit:
        return -ERANGE
    if not pt.has_pgd:
        return -EINVAL
    if pt.g.page_shift == 12:
        return walk_root(<G4K *>NULL, pt, &d)
    if pt.g.page_shift == 14:
        return walk_root(<G16K *>NULL, pt, &d)
    return walk_root(<G64K *>NULL, pt, &d)

cdef int walk_root(Gran *t, PT *pt, WalkData *d) noexcept nogil:
    # The concatenated root pages, one after the other.
    cdef u64 idx = pgd_page_idx(pt, d.addr)
    cdef int ret = 0
    while d.addr < d.end:
        if pt.pgd[idx] == NULL:
            # A root page outside memory (an image only).
            set_error(pt, ERR_OUTSIDE, d.addr, pt.g.start_level, pt.root_pa + (idx << pt.g.page_shift))
            return S2_ECORRUPT
        ret = walk_table(t, pt, d, pt.pgd[idx], pt.g.start_level)
        if ret:
            break
        idx += 1
    return ret

cdef int walk_unlinked(PT *pt, Walker *w, u64 *table, int level, u64 end) noexcept nogil:
    # __kvm_pgtable_walk() over a detached table covering [0, end).
    cdef WalkData d
    d.walker = w
    d.skip_siblings = False
    prepare_walker(w)
    d.start = 0
    d.addr = 0
    d.end = end
    if pt.g.page_shift == 12:
        return walk_table(<G4K *>NULL, pt, &d, table, level)
    if pt.g.page_shift == 14:
        return walk_table(<G16K *>NULL, pt, &d, table, level)
    return walk_table(<G64K *>NULL, pt, &d, table, level)

# ---------------------------------------------------------------------------
# Descriptor construction

cdef inline u64 init_table_pte(PT *pt, u64 *child) noexcept nogil:
    return phys_to_pte(&pt.g, page_pa(pt, page_index(pt, child))) | PTE_TYPE | PTE_VALID

cdef inline u64 init_valid_leaf_pte(PT *pt, u64 pa, u64 attr, int level) noexcept nogil:
    cdef u64 pte = phys_to_pte(&pt.g, pa)
    pte |= attr & (ATTR_LO | ATTR_HI)
    if level == LAST_LEVEL:
        pte |= PTE_TYPE
    return pte | PTE_VALID

cdef int set_xn_attr(PT *pt, u64 prot, u64 *attr) noexcept nogil:
    cdef bint px = (prot & PROT_PX) != 0
    cdef bint ux = (prot & PROT_UX) != 0
    cdef u64 xn
    if not pt.xnx and px != ux:
        return -EINVAL
    if px and ux:
        xn = 0
    elif ux:
        xn = 1
    elif not px:
        xn = 2
    else:
        xn = 3
    attr[0] = (attr[0] & ~S2_XN) | (xn << 53)
    return 0

cdef int set_prot_attr(PT *pt, u64 prot, u64 *out) noexcept nogil:
    # stage2_set_prot_attr()
    cdef u64 attr
    cdef int r
    cdef u64 kind = prot & (PROT_DEVICE | PROT_NC)
    if kind == (PROT_DEVICE | PROT_NC):
        return -EINVAL
    elif kind == PROT_DEVICE:
        if prot & PROT_X:
            return -EINVAL
        attr = MEMATTR_DEVICE
    elif kind == PROT_NC:
        if prot & PROT_X:
            return -EINVAL
        attr = MEMATTR_NC
    else:
        attr = memattr_normal(pt)
    r = set_xn_attr(pt, prot, &attr)
    if r:
        return r
    if prot & PROT_R:
        attr |= S2AP_R
    if prot & PROT_W:
        attr |= S2AP_W
    attr |= S2_SH_IS
    attr |= S2_AF
    attr |= prot & ATTR_HI_SW
    out[0] = attr
    return 0

cdef u64 c_pte_prot(u64 pte) noexcept nogil:
    # kvm_pgtable_stage2_pte_prot()
    cdef u64 prot = pte & ATTR_HI_SW
    cdef u64 xn
    if not pte_valid(pte):
        return prot
    if pte & S2AP_R:
        prot |= PROT_R
    if pte & S2AP_W:
        prot |= PROT_W
    xn = (pte >> 53) & 3
    if xn == 0:
        prot |= PROT_PX | PROT_UX
    elif xn == 1:
        prot |= PROT_UX
    elif xn == 3:
        prot |= PROT_PX
    return prot

def pte_prot(pte):
    """kvm_pgtable_stage2_pte_prot(): the prot bits a descriptor grants."""
    return c_pte_prot(<u64>pte)

# ---------------------------------------------------------------------------
# Break-before-make

cdef inline bint try_set_pte(PT *pt, Ctx *ctx, u64 new) noexcept nogil:
    if not walk_shared(ctx):
        ctx.ptep[0] = new
        pt.c.writes += 1
        return True
    pt.c.cmpxchg += 1
    if ctx.ptep[0] == ctx.old:   # cmpxchg
        ctx.ptep[0] = new
        pt.c.writes += 1
        return True
    return False

cdef bint try_break_pte(PT *pt, Ctx *ctx) noexcept nogil:
    cdef u64 size
    if pte_is_locked(ctx.old):
        if not walk_shared(ctx):
            warn(pt, W_BREAK_LOCKED)
        return False
    if not try_set_pte(pt, ctx, INVALID_PTE_LOCKED):
        return False
    if not (ctx.flags & F_SKIP_BBM_TLBI):
        if pte_table(ctx.old, ctx.level):
            size = granule_size(&pt.g, ctx.level)
            tlb_flush_vmid_range(pt, align_down(ctx.addr, size), size)
        elif pte_valid(ctx.old):
            tlbi_vmid_ipa(pt, ctx.addr, ctx.level)
    if pte_is_counted(ctx.old):
        put_entry(pt, ctx, ctx.ptep)
    return True

cdef inline void make_pte(PT *pt, Ctx *ctx, u64 new) noexcept nogil:
    if not pte_is_locked(ctx.ptep[0]):
        warn(pt, W_MAKE_NOT_LOCKED)
    if pte_is_counted(new):
        get_page(pt, ctx.ptep)
    ctx.ptep[0] = new
    pt.c.writes += 1

# ---------------------------------------------------------------------------
# Unlinked tables

cdef struct FreeArg:
    int unused

cdef int free_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    # stage2_free_walker()
    cdef u64 *child
    if not pte_is_counted(ctx.old):
        return 0
    if visit == F_LEAF:
        return 0 if put_entry(pt, ctx, ctx.ptep) else S2_ECORRUPT
    if visit == F_TABLE_POST:
        child = follow(pt, ctx, ctx.old)
        if child == NULL:
            return S2_ECORRUPT
        if page_count(pt, child) != 1:
            return 0
        put_entry(pt, ctx, ctx.ptep)
        put_page(pt, child)
        ctx.ptep[0] = 0
        pt.c.writes += 1
        return 0
    return -EINVAL

cdef int free_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    # Last-level entries of a table being freed: one put_page per counted one.
    cdef u64 i
    cdef u64 *mem = ptep0
    cdef u64 gs = (<u64>1) << pt.g.page_shift
    cdef u64 addr0 = align_down(ctx.addr, gs)
    for i in range(n):
        if mem[i] != 0:
            ctx.ptep = ptep0 + i
            ctx.old = mem[i]
            ctx.addr = addr0 + i * gs
            if not put_entry(pt, ctx, ptep0 + i):
                done[0] = i + 1
                return S2_ECORRUPT
    done[0] = n
    return 0

cdef void free_unlinked(PT *pt, u64 *base, int level) noexcept nogil:
    # kvm_pgtable_stage2_free_unlinked()
    cdef Walker w
    w.cb = free_walker
    w.run = free_run
    w.arg = NULL
    w.flags = F_LEAF | F_TABLE_POST
    w.max_level = LAST_LEVEL
    pt.c.unlinked_freed += 1
    if walk_unlinked(pt, &w, base, level + 1, granule_size(&pt.g, level)):
        warn(pt, W_FREE_UNLINKED_WALK)
    if page_count(pt, base) != 1:
        warn(pt, W_FREE_UNLINKED_COUNT)
    put_page(pt, base)

# ---------------------------------------------------------------------------
# Map (stage2_map_walker)

cdef struct MapData:
    u64 phys
    u64 attr
    u64 owner_id
    MC *memcache
    bint force_pte
    bint annotation

cdef inline bint block_mapping_supported(PT *pt, Ctx *ctx, u64 phys) noexcept nogil:
    cdef u64 gs = granule_size(&pt.g, ctx.level)
    if ctx.level < pt.g.min_block_level:
        return False
    if gs > ctx.end - ctx.addr:
        return False
    if phys & (gs - 1):
        return False
    return (ctx.addr & (gs - 1)) == 0

cdef inline bint leaf_mapping_allowed(PT *pt, Ctx *ctx, MapData *data) noexcept nogil:
    cdef u64 phys = data.phys + (ctx.addr - ctx.start)
    if data.force_pte and ctx.level < LAST_LEVEL:
        return False
    if data.annotation:
        return True
    return block_mapping_supported(pt, ctx, phys)

cdef inline bint pte_needs_update(u64 old, u64 new) noexcept nogil:
    if not pte_valid(old) or not pte_valid(new):
        return True
    return ((old ^ new) & ~S2_PERMS) != 0

cdef int map_try_leaf(PT *pt, Ctx *ctx, MapData *data) noexcept nogil:
    # stage2_map_walker_try_leaf()
    cdef u64 new
    cdef u64 phys = data.phys + (ctx.addr - ctx.start)
    cdef u64 gs = granule_size(&pt.g, ctx.level)
    cdef bint old_counted
    if not leaf_mapping_allowed(pt, ctx, data):
        return -E2BIG
    if not data.annotation:
        new = init_valid_leaf_pte(pt, phys, data.attr, ctx.level)
    else:
        new = (data.owner_id << 2) & INVALID_PTE_OWNER_MASK
    # Same mapping, or permissions only: leave it to the permission fault.
    if not pte_needs_update(ctx.old, new):
        return -EAGAIN
    # Software bits only: written in place.
    if not walk_shared(ctx) and not ((ctx.old ^ new) & ~ATTR_HI_SW):
        old_counted = pte_is_counted(ctx.old)
        if old_counted != pte_is_counted(new):
            if old_counted:
                put_entry(pt, ctx, ctx.ptep)
            else:
                get_page(pt, ctx.ptep)
        if not try_set_pte(pt, ctx, new):
            warn(pt, W_TRY_SET)
        return 0
    if not try_break_pte(pt, ctx):
        return -EAGAIN
    if not (ctx.flags & F_SKIP_CMO) and pte_cacheable(pt, new):
        dcache_clean_inval_poc(pt, pte_to_phys(&pt.g, new), gs)
    if not (ctx.flags & F_SKIP_CMO) and pte_executable(new):
        icache_inval_pou(pt, pte_to_phys(&pt.g, new), gs)
    make_pte(pt, ctx, new)
    return 0

cdef int map_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef MapData *data = <MapData *>ctx.arg
    cdef int ret
    cdef u64 *child
    cdef u64 new
    if visit == F_TABLE_PRE:
        # stage2_map_walk_table_pre(): replace a table by a block if we can.
        child = follow(pt, ctx, ctx.old)
        if child == NULL:
            return S2_ECORRUPT
        if not leaf_mapping_allowed(pt, ctx, data):
            return 0
        ret = map_try_leaf(pt, ctx, data)
        if ret:
            return ret
        free_unlinked(pt, child, ctx.level)
        if pt.err_kind:
            return S2_ECORRUPT
        return 0
    if visit == F_LEAF:
        # stage2_map_walk_leaf()
        ret = map_try_leaf(pt, ctx, data)
        if ret != -E2BIG:
            return ret
        if ctx.level == LAST_LEVEL:
            warn(pt, W_MAP_LAST_LEVEL)
            return -EINVAL
        if data.memcache == NULL:
            return -ENOMEM
        child = zalloc_page(pt, data.memcache)
        if child == NULL:
            return S2_ENOPOOL if pt.err_kind else -ENOMEM
        if not try_break_pte(pt, ctx):
            put_page(pt, child)
            return -EAGAIN
        # A block met on the way becomes a table; the rest of it refaults.
        make_pte(pt, ctx, init_table_pte(pt, child))
        return 0
    return -EINVAL

cdef int map_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    cdef u64 i, new
    cdef int ret
    cdef u64 gs = (<u64>1) << pt.g.page_shift
    cdef MapData *data = <MapData *>ctx.arg
    cdef bint cmo = not (ctx.flags & F_SKIP_CMO)
    cdef Walker w
    w.flags = ctx.flags
    w.max_level = LAST_LEVEL
    for i in range(n):
        ctx.ptep = ptep0 + i
        ctx.old = ctx.ptep[0]
        if ctx.old == 0 and not data.annotation and leaf_mapping_allowed(pt, ctx, data):
            # An empty entry (a table being filled): map_try_leaf() would
            # lock it (no TLBI: nothing was mapped), do the CMOs, then write
            # the page and take its reference. The same, without the detour.
            new = init_valid_leaf_pte(pt, data.phys + (ctx.addr - ctx.start), data.attr, LAST_LEVEL)
            if cmo and pte_cacheable(pt, new):
                dcache_clean_inval_poc(pt, pte_to_phys(&pt.g, new), gs)
            if cmo and pte_executable(new):
                icache_inval_pou(pt, pte_to_phys(&pt.g, new), gs)
            if pte_is_counted(new):
                get_page(pt, ctx.ptep)
            ctx.ptep[0] = new
            pt.c.writes += 1
            ctx.addr = align_down(ctx.addr, gs) + gs
            continue
        ret = map_walker(pt, ctx, F_LEAF)
        if not walk_continue(&w, ret):
            done[0] = i + 1
            return ret
        ctx.addr = align_down(ctx.addr, gs) + gs
    done[0] = n
    return 0

# ---------------------------------------------------------------------------
# Unmap (stage2_unmap_walker)

cdef inline bint unmap_defer_tlb_flush(PT *pt) noexcept nogil:
    return pt.tlb_range and pt.fwb

cdef int unmap_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef u64 *child = NULL
    cdef bint need_flush = False
    if not pte_valid(ctx.old):
        if pte_is_counted(ctx.old):
            ctx.ptep[0] = 0
            pt.c.writes += 1
            put_entry(pt, ctx, ctx.ptep)
        return 0
    if pte_table(ctx.old, ctx.level):
        child = follow(pt, ctx, ctx.old)
        if child == NULL:
            return S2_ECORRUPT
        if page_count(pt, child) != 1:
            return 0
    elif pte_cacheable(pt, ctx.old):
        need_flush = not pt.fwb
    # stage2_unmap_put_pte(): the whole block goes, the rest refaults.
    ctx.ptep[0] = 0
    pt.c.writes += 1
    if child != NULL:
        tlbi_vmid_ipa(pt, ctx.addr, TTL_UNKNOWN)
    elif not unmap_defer_tlb_flush(pt):
        tlbi_vmid_ipa(pt, ctx.addr, ctx.level)
    put_entry(pt, ctx, ctx.ptep)
    if need_flush:
        dcache_clean_inval_poc(pt, pte_to_phys(&pt.g, ctx.old), granule_size(&pt.g, ctx.level))
    if child != NULL:
        put_page(pt, child)
    return 0

cdef int generic_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done, visitor_fn cb) noexcept nogil:
    cdef u64 i
    cdef int ret
    cdef u64 gs = (<u64>1) << pt.g.page_shift
    cdef Walker w
    w.flags = ctx.flags
    w.max_level = LAST_LEVEL
    for i in range(n):
        ctx.ptep = ptep0 + i
        ctx.old = ctx.ptep[0]
        ret = cb(pt, ctx, F_LEAF)
        if not walk_continue(&w, ret):
            done[0] = i + 1
            return ret
        ctx.addr = align_down(ctx.addr, gs) + gs
    done[0] = n
    return 0

cdef int unmap_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return generic_run(pt, ctx, ptep0, n, done, unmap_walker)

# ---------------------------------------------------------------------------
# Attributes (stage2_attr_walker), ageing, flush, get_leaf

cdef struct AttrData:
    u64 attr_set
    u64 attr_clr
    u64 pte
    s64 level

cdef inline int attr_one(PT *pt, Ctx *ctx, AttrData *data) noexcept nogil:
    cdef u64 pte = ctx.old
    if not pte_valid(pte):
        return -EAGAIN
    data.level = ctx.level
    data.pte = pte
    pte = (pte & ~data.attr_clr) | data.attr_set
    if data.pte != pte:
        if pte_executable(pte) and not pte_executable(ctx.old):
            icache_inval_pou(pt, pte_to_phys(&pt.g, pte), granule_size(&pt.g, ctx.level))
        if not try_set_pte(pt, ctx, pte):
            return -EAGAIN
    return 0

cdef int attr_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    return attr_one(pt, ctx, <AttrData *>ctx.arg)

cdef int attr_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    # The write-protect hot loop: one read, a mask, maybe one write per entry.
    cdef AttrData *data = <AttrData *>ctx.arg
    cdef u64 *mem = ptep0
    cdef u64 i, old, new
    cdef bint stop_on_again = (ctx.flags & F_HANDLE_FAULT) != 0
    cdef int ret
    cdef u64 gs = (<u64>1) << pt.g.page_shift
    cdef u64 addr0 = ctx.addr
    cdef bint simple = not (data.attr_set & S2_XN) and not (data.attr_clr & S2_XN) and not (ctx.flags & F_SHARED)
    if simple:
        # No execute change and no cmpxchg: nothing but the mask can happen.
        for i in range(n):
            old = mem[i]
            if not (old & PTE_VALID):
                if stop_on_again:
                    done[0] = i + 1
                    return -EAGAIN
                continue
            new = (old & ~data.attr_clr) | data.attr_set
            data.level = LAST_LEVEL
            data.pte = old
            if new != old:
                if (new & PTE_VALID) and not (new & S2_XN) and (old & S2_XN):
                    icache_inval_pou(pt, pte_to_phys(&pt.g, new), gs)
                mem[i] = new
                pt.c.writes += 1
        done[0] = n
        return 0
    for i in range(n):
        ctx.ptep = ptep0 + i
        ctx.old = mem[i]
        ctx.addr = addr0 + i * gs
        ret = attr_one(pt, ctx, data)
        if ret != 0 and (ret != -EAGAIN or stop_on_again):
            done[0] = i + 1
            return ret
    done[0] = n
    return 0

cdef struct AgeData:
    bint mkold
    bint young

cdef int age_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef AgeData *data = <AgeData *>ctx.arg
    cdef u64 new = ctx.old & ~S2_AF
    if not pte_valid(ctx.old) or new == ctx.old:
        return 0
    data.young = True
    if data.mkold and not try_set_pte(pt, ctx, new):
        return -EAGAIN
    return 0

cdef int age_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return generic_run(pt, ctx, ptep0, n, done, age_walker)

cdef int flush_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    if not pte_cacheable(pt, ctx.old):
        return 0
    dcache_clean_inval_poc(pt, pte_to_phys(&pt.g, ctx.old), granule_size(&pt.g, ctx.level))
    return 0

cdef int flush_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return generic_run(pt, ctx, ptep0, n, done, flush_walker)

cdef struct LeafData:
    u64 pte
    s64 level

cdef int leaf_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef LeafData *data = <LeafData *>ctx.arg
    data.pte = ctx.old
    data.level = ctx.level
    return 0

# ---------------------------------------------------------------------------
# Split (stage2_split_walker) and create_unlinked

cdef int block_get_nr_page_tables(PT *pt, int level) noexcept nogil:
    if level == 1:
        return <int>pt.g.ptrs + 1
    if level == 2:
        return 1
    if level == 3:
        return 0
    warn(pt, W_NR_PAGE_TABLES)
    return -EINVAL

cdef u64 *create_unlinked(PT *pt, u64 phys, int level, u64 prot, MC *mc, bint force_pte, int *err) noexcept nogil:
    # kvm_pgtable_stage2_create_unlinked(): builds a detached subtree mapping
    # one level-`level` granule at phys, walking it once to fill it.
    cdef MapData data
    cdef Walker w
    cdef u64 *pgtable
    cdef int ret
    err[0] = 0
    if phys & (granule_size(&pt.g, level) - 1):
        err[0] = -EINVAL
        return NULL
    data.phys = phys
    data.owner_id = 0
    data.memcache = mc
    data.force_pte = force_pte
    data.annotation = False
    ret = set_prot_attr(pt, prot, &data.attr)
    if ret:
        err[0] = ret
        return NULL
    pgtable = zalloc_page(pt, mc)
    if pgtable == NULL:
        err[0] = S2_ENOPOOL if pt.err_kind else -ENOMEM
        return NULL
    w.cb = map_walker
    w.run = map_run
    w.arg = &data
    w.flags = F_LEAF | F_SKIP_BBM_TLBI | F_SKIP_CMO
    w.max_level = LAST_LEVEL
    ret = walk_unlinked(pt, &w, pgtable, level + 1, granule_size(&pt.g, level))
    if ret:
        free_unlinked(pt, pgtable, level)
        err[0] = ret
        return NULL
    return pgtable

cdef int split_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef MC *mc = <MC *>ctx.arg
    cdef u64 pte = ctx.old
    cdef int level = ctx.level
    cdef int nr_pages, err = 0
    cdef bint force_pte
    cdef u64 *childp
    if level == LAST_LEVEL:
        return 0
    if not pte_valid(pte):
        return 0
    nr_pages = block_get_nr_page_tables(pt, level)
    if nr_pages < 0:
        return nr_pages
    if mc.nobjs >= nr_pages:
        force_pte = True
    else:
        # One page only: the new table holds next-level blocks, which the
        # walk then meets and splits in turn.
        force_pte = False
        nr_pages = 1
    if mc.nobjs < nr_pages:
        return -ENOMEM
    childp = create_unlinked(pt, pte_to_phys(&pt.g, pte), level, c_pte_prot(pte), mc, force_pte, &err)
    if childp == NULL:
        return err
    if not try_break_pte(pt, ctx):
        free_unlinked(pt, childp, level)
        return -EAGAIN
    make_pte(pt, ctx, init_table_pte(pt, childp))
    return 0

cdef int split_skip_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    """The split visitor of the RFC's first patch: returns SKIP_CHILDREN for a
    table whose children are pages, and after building a full page-level
    subtree, so the walk never re-reads what cannot hold a block."""
    cdef MC *mc = <MC *>ctx.arg
    cdef int ret, nr
    cdef bint full
    if visit == F_TABLE_PRE:
        return HINT_SKIP_CHILDREN if ctx.level + 1 == LAST_LEVEL else 0
    full = False
    if ctx.level < LAST_LEVEL and pte_valid(ctx.old):
        if ctx.level == 1:
            nr = <int>pt.g.ptrs + 1
        else:
            nr = 1
        full = ctx.level >= pt.g.min_block_level and mc.nobjs >= nr
    ret = split_walker(pt, ctx, visit)
    if ret == 0 and full:
        return HINT_SKIP_CHILDREN
    return ret

cdef int noop_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    # A visitor that returns 0 at the last level without looking.
    done[0] = n
    return 0

# ---------------------------------------------------------------------------
# Built-in visitors for users: count and collect

cdef struct CountData:
    u64 valid[NLEVELS]
    u64 invalid[NLEVELS]
    u64 tables[NLEVELS]

cdef int count_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef CountData *data = <CountData *>ctx.arg
    if visit == F_LEAF:
        if ctx.old & PTE_VALID:
            data.valid[ctx.level + 1] += 1
        else:
            data.invalid[ctx.level + 1] += 1
    elif visit == F_TABLE_PRE:
        data.tables[ctx.level + 1] += 1
    return 0

cdef int count_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    cdef CountData *data = <CountData *>ctx.arg
    cdef u64 *mem = ptep0
    cdef u64 i, v = 0
    for i in range(n):
        v += mem[i] & PTE_VALID
    data.valid[LAST_LEVEL + 1] += v
    data.invalid[LAST_LEVEL + 1] += n - v
    done[0] = n
    return 0

cdef struct CollectData:
    u64 *ipa
    u64 *pte
    signed char *level
    u64 n
    u64 cap
    bint failed

cdef bint collect_push(CollectData *data, u64 ipa, int level, u64 pte) noexcept nogil:
    cdef u64 cap
    cdef void *p
    if data.n == data.cap:
        cap = data.cap * 2 + 1024
        p = realloc(data.ipa, cap * sizeof(u64))
        if p == NULL:
            data.failed = True
            return False
        data.ipa = <u64 *>p
        p = realloc(data.pte, cap * sizeof(u64))
        if p == NULL:
            data.failed = True
            return False
        data.pte = <u64 *>p
        p = realloc(data.level, cap)
        if p == NULL:
            data.failed = True
            return False
        data.level = <signed char *>p
        data.cap = cap
    data.ipa[data.n] = ipa
    data.pte[data.n] = pte
    data.level[data.n] = level
    data.n += 1
    return True

cdef int collect_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef CollectData *data = <CollectData *>ctx.arg
    if visit == F_LEAF and (ctx.old & PTE_VALID):
        if not collect_push(data, align_down(ctx.addr, granule_size(&pt.g, ctx.level)), ctx.level, ctx.old):
            return -ENOMEM
    return 0

cdef int collect_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    cdef CollectData *data = <CollectData *>ctx.arg
    cdef u64 *mem = ptep0
    cdef u64 i, pte
    cdef int shift = pt.g.page_shift
    cdef u64 addr = align_down(ctx.addr, (<u64>1) << shift)
    for i in range(n):
        pte = mem[i]
        if pte & PTE_VALID:
            if not collect_push(data, addr + (i << shift), LAST_LEVEL, pte):
                done[0] = i + 1
                return -ENOMEM
    done[0] = n
    return 0

# ---------------------------------------------------------------------------
# Architectural translation: what the MMU's stage-2 walk does with the same
# tables (not KVM's software walker). Fault kinds and ESR_ELx.FSC bases:

cdef enum:
    FAULT_NONE = 0
    FAULT_TRANSLATION = 1
    FAULT_ADDRESS_SIZE = 2
    FAULT_ACCESS_FLAG = 3
    FAULT_PERMISSION = 4
    FAULT_EXTERNAL = 5
    FSC_NONE = 0xFF

cdef enum:
    ACCESS_READ = 0
    ACCESS_WRITE = 1
    ACCESS_EXEC_EL1 = 2
    ACCESS_EXEC_EL0 = 3

cdef unsigned char FSC_BASE[6]
FSC_BASE[:] = [0xFF, 0x04, 0x00, 0x08, 0x0C, 0x14]

cdef struct TRow:
    # One row of TRANSLATE_DTYPE (numpy aligned layout; checked at import).
    u64 ipa
    unsigned char ok
    u64 pa
    signed char level
    u64 block_size
    u64 desc
    unsigned char readable
    unsigned char writable
    unsigned char exec_el1
    unsigned char exec_el0
    unsigned char fault
    signed char fault_level
    unsigned char fsc
    unsigned char af_updated   # VTCR.HA: the walk would have set AF in memory

TRANSLATE_DTYPE = np.dtype([
    ("ipa", "<u8"), ("ok", "?"), ("pa", "<u8"), ("level", "i1"), ("block_size", "<u8"),
    ("desc", "<u8"), ("readable", "?"), ("writable", "?"), ("exec_el1", "?"), ("exec_el0", "?"),
    ("fault", "u1"), ("fault_level", "i1"), ("fsc", "u1"), ("af_updated", "?")], align=True)
assert TRANSLATE_DTYPE.itemsize == sizeof(TRow)

cdef struct TCfg:
    int access
    bint ha
    bint xnx
    bint root_too_big       # VTTBR's base address is beyond PS
    # The last table the walk read from, for runs of nearby IPAs: IPAs with
    # the same tag take the same path down to that table.
    bint cached
    int c_level
    u64 c_tag
    u64 *c_table
    u64 c_tpa               # that table's PA
    u64 c_desc              # the descriptor that led to it (0 at the start level)

cdef inline bint oa_too_big(Gran *t, PT *pt, u64 desc) noexcept nogil:
    # The output (or next-table) address, 52-bit with 64 KiB, against PS.
    cdef u64 oa = g_pte_to_phys(t, desc)
    return pt.ps_bits < 52 and (oa >> pt.ps_bits) != 0

cdef inline bint arch_block_ok(Gran *t, PT *pt, int level) noexcept nogil:
    # A 64 KiB level-1 block (4 TiB) is valid on a CPU with 52-bit PAs
    # (FEAT_LPA); a table used with PS = 52 says the CPU has them.
    if Gran is G64K:
        if level == 1 and pt.ps_bits == 52:
            return True
    return level >= pt.g.min_block_level

cdef inline void t_fault(TRow *r, int kind, int level) noexcept nogil:
    r.fault = kind
    r.fault_level = level
    r.level = level
    r.fsc = FSC_BASE[kind] + level

cdef void translate_one(Gran *t, PT *pt, TCfg *cfg, u64 ipa, TRow *r) noexcept nogil:
    cdef int level = pt.g.start_level
    cdef int shift
    cdef u64 idx, desc = 0, bs, xn, tpa
    cdef u64 *table
    cdef u64 *entry
    cdef bint allowed
    memset(r, 0, sizeof(TRow))
    r.ipa = ipa
    r.fault_level = -1
    r.fsc = FSC_NONE
    if pt.g.ia_bits < 64 and (ipa >> pt.g.ia_bits) != 0:
        t_fault(r, FAULT_TRANSLATION, 0)
        return
    if cfg.root_too_big:
        # The architecture reports a base address beyond PS at level 0 (FSC
        # 0x00, "level 0 or translation table base register"), whatever the
        # start level; the kernel's nested walker reports the start level.
        t_fault(r, FAULT_ADDRESS_SIZE, 0)
        return
    shift = g_level_shift(t, level)
    if cfg.cached and (ipa >> (g_level_shift(t, cfg.c_level) + g_table_shift(t))) == cfg.c_tag:
        level = cfg.c_level
        table = cfg.c_table
        tpa = cfg.c_tpa
        desc = cfg.c_desc
        r.desc = desc
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    else:
        # The start level indexes the concatenated root pages as one table.
        idx = ipa >> shift if shift < 64 else 0
        table = pt.pgd[idx >> g_table_shift(t)]
        tpa = pt.root_pa + ((idx >> g_table_shift(t)) << g_page_shift(t))
        idx &= g_ptrs(t) - 1
    while True:
        cfg.cached = True
        cfg.c_level = level
        cfg.c_tag = ipa >> (shift + g_table_shift(t)) if shift + g_table_shift(t) < 64 else 0
        cfg.c_table = table
        cfg.c_tpa = tpa
        cfg.c_desc = desc
        if table != NULL:
            entry = table + idx
        elif pt.image:
            # The page is not wholly in memory: the MMU reads one descriptor,
            # which may still be there (an image cut short).
            entry = image_ptr(pt, tpa + idx * 8, 8)
        else:
            entry = NULL
        if entry == NULL:
            t_fault(r, FAULT_EXTERNAL, level)
            return
        desc = entry[0]
        r.desc = desc
        if not (desc & PTE_VALID) or (level == LAST_LEVEL and (desc & 3) == 1):
            t_fault(r, FAULT_TRANSLATION, level)
            return
        if level == LAST_LEVEL or (desc & 3) == 1:
            break
        if oa_too_big(t, pt, desc):
            t_fault(r, FAULT_ADDRESS_SIZE, level)
            return
        tpa = g_pte_to_phys(t, desc)
        table = table_at(pt, tpa)
        level += 1
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    if not arch_block_ok(t, pt, level):
        t_fault(r, FAULT_TRANSLATION, level)
        return
    if oa_too_big(t, pt, desc):
        t_fault(r, FAULT_ADDRESS_SIZE, level)
        return
    r.level = level
    bs = (<u64>1) << shift
    r.block_size = bs
    r.pa = (g_pte_to_phys(t, desc) & ~(bs - 1)) | (ipa & (bs - 1))
    r.readable = (desc & S2AP_R) != 0
    r.writable = (desc & S2AP_W) != 0
    xn = (desc >> 53) & 3
    if cfg.xnx:
        r.exec_el1 = xn == 0 or xn == 3
        r.exec_el0 = xn == 0 or xn == 1
    else:
        r.exec_el1 = (xn & 2) == 0
        r.exec_el0 = (xn & 2) == 0
    if not (desc & S2_AF) and not cfg.ha:
        t_fault(r, FAULT_ACCESS_FLAG, level)
        return
    if cfg.access == ACCESS_READ:
        allowed = r.readable
    elif cfg.access == ACCESS_WRITE:
        allowed = r.writable
    elif cfg.access == ACCESS_EXEC_EL1:
        allowed = r.exec_el1
    else:
        allowed = r.exec_el0
    if not allowed:
        t_fault(r, FAULT_PERMISSION, level)
        return
    if not (desc & S2_AF):
        # Hardware AF update (cfg.ha, else the AF fault above): only for an
        # access that does not fault, and the TLB holds the updated entry.
        r.desc = desc | S2_AF
        r.af_updated = True
    r.ok = True

# A batch of scattered IPAs is bound by one cache miss each, on the
# last-level entry. The table descriptors above it are few and stay cached,
# so following them for an IPA some way ahead and prefetching its entry
# overlaps those misses.
cdef enum:
    PREFETCH_AHEAD = 12

cdef inline void prefetch_entry(Gran *t, PT *pt, u64 ipa) noexcept nogil:
    cdef int level = pt.g.start_level
    cdef int shift = g_level_shift(t, level)
    cdef u64 idx, desc
    cdef u64 *table
    if pt.g.ia_bits < 64 and (ipa >> pt.g.ia_bits) != 0:
        return
    idx = ipa >> shift if shift < 64 else 0
    table = pt.pgd[idx >> g_table_shift(t)]
    idx &= g_ptrs(t) - 1
    while table != NULL and level < LAST_LEVEL:
        desc = table[idx]
        if (desc & 3) != 3:
            break
        table = table_at(pt, g_pte_to_phys(t, desc))
        level += 1
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    if table != NULL:
        __builtin_prefetch(table + idx)

cdef void translate_all(Gran *t, PT *pt, TCfg *cfg, const u64 *ipas, TRow *rows, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int tag_shift = g_level_shift(t, LAST_LEVEL) + g_table_shift(t)
    cdef u64 ahead, last_tag = <u64>-1
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            # Sequential IPAs stay in one last-level table for long runs and
            # hit the walk cache in translate_one(): no prefetch needed there.
            ahead = ipas[i + PREFETCH_AHEAD]
            if (ahead >> tag_shift) != last_tag:
                last_tag = ahead >> tag_shift
                prefetch_entry(t, pt, ahead)
        translate_one(t, pt, cfg, ipas[i], &rows[i])

# ---------------------------------------------------------------------------
# Python visitors

cdef class VisitCtx:
    """The visit context passed to a Python visitor (struct
    kvm_pgtable_visit_ctx). Valid only during the callback."""

    cdef Ctx *c
    cdef PT *pt
    cdef object _arg

    @property
    def addr(self):
        self._check()
        return self.c.addr

    @property
    def start(self):
        self._check()
        return self.c.start

    @property
    def end(self):
        self._check()
        return self.c.end

    @property
    def level(self):
        self._check()
        return self.c.level

    @property
    def old(self):
        self._check()
        return self.c.old

    @property
    def flags(self):
        self._check()
        return self.c.flags

    @property
    def ptep(self):
        """The physical address of the entry (where *ctx->ptep lives)."""
        self._check()
        return entry_pa(self.pt, self.c.ptep)

    @property
    def arg(self):
        return self._arg

    cdef inline void _check(self) except *:
        if self.c == NULL:
            raise RuntimeError("a visit context is only valid during its callback")

    def set(self, new):
        """Write the entry (a WRITE_ONCE of *ctx->ptep; no refcounting)."""
        self._check()
        if isinstance(new, bool) or not isinstance(new, int):
            raise TypeError(f"ctx.set() takes an int descriptor, not {type(new).__name__} {new!r}")
        if new < 0 or new >= (1 << 64):
            raise ValueError(f"descriptor {new!r} is not a uint64")
        if self.pt.image:
            from .errors import ReadOnlyTableError
            raise ReadOnlyTableError("ctx.set() on a table in an external image")
        self.c.ptep[0] = <u64>new
        self.pt.c.writes += 1

    def __repr__(self):
        if self.c == NULL:
            return "VisitCtx(<expired>)"
        return (f"VisitCtx(addr={self.c.addr:#x}, level={self.c.level}, old={self.c.old:#x}, "
                f"ptep={entry_pa(self.pt, self.c.ptep):#x})")


cdef u64 entry_pa(PT *pt, const u64 *ptep) noexcept:
    """The physical address of an entry, from its host address."""
    cdef int i
    cdef u64 off
    if not pt.image:
        return C_TABLE_PA_BASE + ((<u64>(ptep - pt.pool.mem)) << 3)
    for i in range(pt.nsegs):
        off = <u64>(<const char *>ptep - <const char *>pt.segs[i].host)
        if off < pt.segs[i].size:
            return pt.segs[i].pa + off
    return 0


cdef class _PyVisit:
    cdef object fn
    cdef VisitCtx ctx
    cdef object exc


cdef int py_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    with gil:
        return py_call(<_PyVisit>(<PyObject *>ctx.arg), ctx, visit)

cdef int py_call(_PyVisit pv, Ctx *ctx, int visit) noexcept:
    cdef object r
    cdef long v
    pv.ctx.c = ctx
    try:
        r = pv.fn(pv.ctx, visit)
        if r is None:
            return 0
        if isinstance(r, bool) or not isinstance(r, int):
            if not isinstance(r, np.integer):     # numpy scalars are ints (np.bool_ is not one)
                raise TypeError(f"a visitor must return an int or None, not {type(r).__name__} {r!r}")
            r = int(r)
        if r < VISITOR_RET_MIN or r > 2147483647:
            raise ValueError(f"visitor result {r!r} is outside the int range the walker accepts")
        v = r
        return <int>v
    except BaseException as e:
        pv.exc = e
        return S2_EPYEXC
    finally:
        pv.ctx.c = NULL


# ---------------------------------------------------------------------------
# Built-in visitor objects usable with walk()

cdef class BuiltinVisitor:
    """Base of the visitors that run in C with no Python call per entry.
    One instance serves one walk at a time (its results live in C)."""
    cdef visitor_fn cb
    cdef leaf_run_fn run
    cdef void *arg_ptr
    cdef bint in_use

    cdef void _prepare(self):
        pass


cdef class CountVisitor(BuiltinVisitor):
    """Counts entries by kind and level: valid leaves, invalid entries
    (LEAF visits) and tables (TABLE_PRE visits)."""
    cdef CountData data

    def __cinit__(self):
        self.cb = count_walker
        self.run = count_run
        self.arg_ptr = &self.data
        memset(&self.data, 0, sizeof(CountData))

    def reset(self):
        if self.in_use:
            raise RuntimeError("this CountVisitor is in a walk")
        memset(&self.data, 0, sizeof(CountData))

    @property
    def valid(self):
        """Valid leaves seen, per level (dict level -> count)."""
        return {lv: self.data.valid[lv + 1] for lv in range(-1, 4) if self.data.valid[lv + 1]}

    @property
    def invalid(self):
        return {lv: self.data.invalid[lv + 1] for lv in range(-1, 4) if self.data.invalid[lv + 1]}

    @property
    def tables(self):
        return {lv: self.data.tables[lv + 1] for lv in range(-1, 4) if self.data.tables[lv + 1]}

    @property
    def total_valid(self):
        return sum(self.data.valid[i] for i in range(NLEVELS))


LEAF_DTYPE = np.dtype([("ipa", "<u8"), ("level", "i1"), ("pte", "<u8")])


cdef class CollectVisitor(BuiltinVisitor):
    """Collects every valid leaf the walk visits (IPA aligned to the leaf)."""
    cdef CollectData data

    def __cinit__(self):
        self.cb = collect_walker
        self.run = collect_run
        self.arg_ptr = &self.data
        memset(&self.data, 0, sizeof(CollectData))

    def __dealloc__(self):
        free(self.data.ipa)
        free(self.data.pte)
        free(self.data.level)

    def result(self):
        """The collected leaves as a structured array (ipa, level, pte)."""
        if self.in_use:
            raise RuntimeError("this CollectVisitor is in a walk")
        # Held while copying: numpy may release the GIL, and a walk in another
        # thread must not realloc the buffers meanwhile.
        self.in_use = True
        try:
            n = self.data.n
            out = np.empty(n, dtype=LEAF_DTYPE)
            if n:
                out["ipa"] = np.asarray(<u64[:self.data.n]>self.data.ipa)
                out["level"] = np.asarray(<signed char[:self.data.n]>self.data.level)
                out["pte"] = np.asarray(<u64[:self.data.n]>self.data.pte)
            return out
        finally:
            self.in_use = False

    def reset(self):
        if self.in_use:
            raise RuntimeError("this CollectVisitor is in a walk")
        self.data.n = 0


# ---------------------------------------------------------------------------
# The page table

cdef class MemCache:
    """A memory cache of page-table pages (struct kvm_mmu_memory_cache).

    ``pages`` is how many pages it holds; ``on_empty="fail"`` makes an
    allocation from an empty cache fail (-ENOMEM), ``"allocate"`` mimics
    kvm_mmu_memory_cache_alloc(): it warns and allocates anyway."""
    cdef MC mc

    def __init__(self, pages=0, on_empty="fail"):
        if isinstance(pages, (bool, np.bool_)) or not isinstance(pages, (int, np.integer)):
            raise TypeError(f"MemCache pages must be an int, not {type(pages).__name__} {pages!r}")
        pages = int(pages)
        if pages < 0 or pages > (1 << 62):
            raise ValueError(f"MemCache pages must be in 0..2**62, got {pages!r}")
        if on_empty not in ("fail", "allocate"):
            raise ValueError(f"on_empty must be 'fail' or 'allocate', got {on_empty!r}")
        self.mc.nobjs = pages
        self.mc.allocate_on_empty = on_empty == "allocate"

    @property
    def nobjs(self):
        return self.mc.nobjs

    @property
    def on_empty(self):
        return "allocate" if self.mc.allocate_on_empty else "fail"

    def topup(self, pages):
        """Top the cache up to at least ``pages`` (kvm_mmu_topup_memory_cache)."""
        if isinstance(pages, (bool, np.bool_)) or not isinstance(pages, (int, np.integer)):
            raise TypeError(f"topup pages must be an int, not {type(pages).__name__} {pages!r}")
        pages = int(pages)
        if pages < 0 or pages > (1 << 62):
            raise ValueError(f"topup pages must be in 0..2**62, got {pages!r}")
        if self.mc.nobjs < pages:
            self.mc.nobjs = pages

    def __repr__(self):
        return f"MemCache(pages={self.mc.nobjs}, on_empty={self.on_empty!r})"


cdef MC *mc_ptr(object mc) except? NULL:
    if mc is None:
        return NULL
    return &(<MemCache?>mc).mc


cdef void set_geometry(Geom *g, int page_shift, int ia_bits, int start_level,
                       u64 pgd_pages) noexcept:
    g.page_shift = page_shift
    g.table_shift = page_shift - 3
    g.ptrs = (<u64>1) << (page_shift - 3)
    g.start_level = start_level
    g.ia_bits = ia_bits
    g.pgd_pages = pgd_pages
    g.min_block_level = 1 if page_shift == 12 else 2
    g.addr_mask = (((<u64>1) << 48) - 1) & ~(((<u64>1) << page_shift) - 1)
    g.pa_51_48 = page_shift == 16


cdef class Stage2Core:
    """The C page table. Use s2fast.Stage2PageTable, which validates input."""
    cdef PT pt
    cdef size_t reserved_bytes
    cdef bint busy
    cdef readonly object corrupt_exc_type
    cdef object _image_keep

    def __cinit__(self):
        memset(&self.pt, 0, sizeof(PT))
        self.pt.pool.mem = NULL

    def __init__(self, int page_shift, int ia_bits, int start_level, u64 pgd_pages,
                 bint fwb, bint xnx, bint tlb_range, u64 reserve_bytes, object corrupt_exc_type):
        cdef void *p = MAP_FAILED
        cdef size_t size = reserve_bytes
        cdef u64 i
        cdef Geom *g = &self.pt.g
        if self.pt.pool.mem != NULL:
            raise RuntimeError("Stage2Core is already initialised")
        if page_shift not in (12, 14, 16) or not 32 <= ia_bits <= 48 or not -1 <= start_level <= 3 \
                or not 1 <= pgd_pages <= 16:
            raise ValueError("inconsistent page-table geometry")
        self.corrupt_exc_type = corrupt_exc_type
        set_geometry(g, page_shift, ia_bits, start_level, pgd_pages)
        self.pt.fwb = fwb
        self.pt.xnx = xnx
        self.pt.tlb_range = tlb_range
        # Reserve address space once so pages never move (numpy views stay
        # valid) and only touched pages cost memory.
        while size >= (<size_t>pgd_pages << page_shift) and size >= 4096:
            p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if p != MAP_FAILED:
                break
            size //= 2
        if p == MAP_FAILED:
            raise MemoryError("cannot reserve memory for the descriptor pool")
        self.reserved_bytes = size
        self.pt.pool.mem = <u64 *>p
        self.pt.pool.reserved_pages = size >> page_shift
        for i in range(pgd_pages):
            if pool_new_page(&self.pt) < 0:
                raise MemoryError("descriptor pool too small for the PGD")
            self.pt.pgd[i] = self.pt.pool.mem + (i << g.table_shift)
        self.pt.root_pa = C_TABLE_PA_BASE
        self.pt.ps_bits = 48
        self.pt.ha = True
        self.pt.has_pgd = True

    def init_image(self, int page_shift, int ia_bits, int start_level, u64 pgd_pages, u64 root_pa,
                   bint fwb, bint xnx, int ps_bits, bint ha, list segments, object corrupt_exc_type):
        """Tables in external memory (read-only). segments: (pa, uint8 array)
        pairs, sorted by PA and disjoint; the arrays are kept alive here."""
        cdef Geom *g = &self.pt.g
        cdef const unsigned char[::1] mv
        cdef Py_ssize_t i, n = len(segments)
        cdef u64 pa, size, gsz
        cdef size_t host
        if self.pt.pool.mem != NULL or self.pt.image:
            raise RuntimeError("Stage2Core is already initialised")
        if page_shift not in (12, 14, 16) or not 25 <= ia_bits <= 48 or not 0 <= start_level <= 3 \
                or not 1 <= pgd_pages <= 16 or ps_bits not in (32, 36, 40, 42, 44, 48, 52):
            raise ValueError("inconsistent page-table geometry")
        self.corrupt_exc_type = corrupt_exc_type
        set_geometry(g, page_shift, ia_bits, start_level, pgd_pages)
        self.pt.fwb = fwb
        self.pt.xnx = xnx
        self.pt.ps_bits = ps_bits
        self.pt.ha = ha
        self.pt.root_pa = root_pa
        free(self.pt.segs)          # a previous call that failed part-way
        self.pt.nsegs = 0
        self.pt.segs = <Seg *>malloc((n if n else 1) * sizeof(Seg))
        if self.pt.segs == NULL:
            raise MemoryError()
        for i in range(n):
            pa, arr = segments[i]
            mv = arr
            size = mv.shape[0]
            host = <size_t>&mv[0] if size else 0
            if pa & 7 or host & 7:
                raise ValueError(f"segment at PA {pa:#x} is not 8-byte aligned (in PA or in host "
                                 "memory); copy it into an aligned array")
            if i and pa < self.pt.segs[i - 1].pa + self.pt.segs[i - 1].size:
                raise ValueError(f"segment at PA {pa:#x} overlaps the one before it")
            self.pt.segs[i].pa = pa
            self.pt.segs[i].size = size
            self.pt.segs[i].host = <u64 *>host
        self.pt.nsegs = <int>n
        self._image_keep = list(segments)
        self.pt.image = True
        gsz = (<u64>1) << page_shift
        # A root smaller than a page (few IPA bits) need only be that big.
        for i in range(<Py_ssize_t>pgd_pages):
            self.pt.pgd[i] = image_ptr(&self.pt, root_pa + <u64>i * gsz,
                                       min(gsz, self._root_entries() * 8))
        self.pt.has_pgd = True

    def translate(self, const u64[::1] ipas, int access, bint ha, bint xnx, object out=None):
        """Architectural stage-2 translation of every IPA: a TRANSLATE_DTYPE
        array, written into ``out`` when given. translate_batch() explains a
        bad ``out`` in detail; the check here only keeps the C loop inside
        the buffer for any caller of the core."""
        cdef Py_ssize_t n = ipas.shape[0]
        cdef TCfg cfg
        cdef TRow *rows
        if not 0 <= access <= 3:
            raise ValueError(f"access {access} is outside 0..3")
        if out is None:
            out = np.empty(n, dtype=TRANSLATE_DTYPE)
        elif not (isinstance(out, np.ndarray) and out.dtype == TRANSLATE_DTYPE and out.shape == (n,)
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be a writable C-contiguous TRANSLATE_DTYPE array of len(ipas) rows")
        if n == 0:
            return out
        rows = <TRow *>cnp.PyArray_DATA(out)
        memset(&cfg, 0, sizeof(TCfg))
        cfg.access = access
        cfg.ha = ha
        cfg.xnx = xnx
        cfg.root_too_big = self.pt.ps_bits < 52 and (self.pt.root_pa >> self.pt.ps_bits) != 0
        self._check_idle()
        if not self.pt.has_pgd:
            raise ValueError("this page table has been destroyed")
        self.busy = True
        try:
            with nogil:
                if self.pt.g.page_shift == 12:
                    translate_all(<G4K *>NULL, &self.pt, &cfg, &ipas[0], rows, n)
                elif self.pt.g.page_shift == 14:
                    translate_all(<G16K *>NULL, &self.pt, &cfg, &ipas[0], rows, n)
                else:
                    translate_all(<G64K *>NULL, &self.pt, &cfg, &ipas[0], rows, n)
        finally:
            self.busy = False
        return out

    def load_pages(self, const u64[:, ::1] pages):
        """Fill a fresh pool from a [N, PTRS_PER_PTE] array: rows 0..pgd_pages-1
        are the root, row i becomes pool page i (PA TABLE_PA_BASE + i *
        granule). Each page's refcount is the kernel's: 1 + its non-zero entries."""
        cdef Py_ssize_t i, j, n = pages.shape[0]
        cdef s64 page
        cdef u64 *dst
        cdef int32_t cnt
        self._check_writable()
        self._check_idle()
        if pages.shape[1] != <Py_ssize_t>self.pt.g.ptrs:
            raise ValueError(f"pages have {pages.shape[1]} entries, not {self.pt.g.ptrs}")
        if n < <Py_ssize_t>self.pt.g.pgd_pages:
            raise ValueError("fewer pages than the root has")
        if not self.pt.has_pgd or self.pt.pool.n_pages != self.pt.g.pgd_pages \
                or self.pt.pool.live != self.pt.g.pgd_pages:
            raise RuntimeError("load_pages() needs a freshly created table")
        for i in range(n):
            if i >= <Py_ssize_t>self.pt.g.pgd_pages:
                page = pool_new_page(&self.pt)
                if page != i:
                    self.pt.err_kind = ERR_NONE
                    raise MemoryError("the descriptor pool reservation is too small")
            dst = self.pt.pool.mem + (<u64>i << self.pt.g.table_shift)
            cnt = 1
            for j in range(<Py_ssize_t>self.pt.g.ptrs):
                dst[j] = pages[i, j]
                cnt += pages[i, j] != 0
            self.pt.pool.refcnt[i] = cnt

    @property
    def is_image(self):
        return bool(self.pt.image)

    @property
    def root_pa(self):
        return self.pt.root_pa

    @property
    def ps_bits(self):
        return self.pt.ps_bits

    @property
    def ha(self):
        return bool(self.pt.ha)

    def read_table(self, u64 pa, u64 entries=0):
        """A read-only uint64 view of the table page at pa (pool or image),
        or None when no table page is there. entries (images only): read just
        that many entries, at 8-byte alignment (a root smaller than a page)."""
        cdef u64 *t
        cdef cnp.npy_intp dims[1]
        if entries and self.pt.image:
            if entries > self.pt.g.ptrs:
                raise ValueError(f"entries {entries} is more than a table holds")
            t = image_ptr(&self.pt, pa, entries * 8)
        else:
            t = table_at(&self.pt, pa)
            entries = self.pt.g.ptrs
        if t == NULL:
            return None
        dims[0] = <cnp.npy_intp>entries
        arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_UINT64, <void *>t)
        Py_INCREF(self)
        cnp.PyArray_SetBaseObject(arr, self)
        arr.flags.writeable = False
        return arr

    def __dealloc__(self):
        if self.pt.pool.mem != NULL:
            munmap(self.pt.pool.mem, self.reserved_bytes)
            self.pt.pool.mem = NULL
        free(self.pt.pool.refcnt)
        free(self.pt.pool.free_stack)
        free(self.pt.segs)

    # -- plumbing ---------------------------------------------------------

    cdef int _enter(self) except -1:
        if self.busy:
            raise RuntimeError("this page table is being walked; operations cannot nest")
        self.busy = True
        self.pt.err_kind = ERR_NONE
        return 0

    cdef int _check_writable(self) except -1:
        if self.pt.image:
            from .errors import ReadOnlyTableError
            raise ReadOnlyTableError("this page table lives in an external image and is "
                                     "read-only; copy() it into a pool to change it")
        return 0

    cdef int _enter_write(self) except -1:
        self._check_writable()
        return self._enter()

    cdef object _leave(self, int ret, _PyVisit pv=None):
        self.busy = False
        if pv is not None and pv.exc is not None:
            exc = pv.exc
            pv.exc = None
            raise exc
        if self.pt.err_kind == ERR_CORRUPT:
            self.pt.err_kind = ERR_NONE
            raise self.corrupt_exc_type(self.pt.err_ipa, self.pt.err_level, self.pt.err_desc)
        if self.pt.err_kind == ERR_OUTSIDE:
            self.pt.err_kind = ERR_NONE
            from .errors import OutsideMemoryError
            raise OutsideMemoryError(self.pt.err_ipa, self.pt.err_level, self.pt.err_desc)
        if self.pt.err_kind == ERR_NOPOOL:
            self.pt.err_kind = ERR_NONE
            raise MemoryError(f"the descriptor pool reservation ({self.reserved_bytes} bytes) is full")
        return ret

    @property
    def descriptors(self):
        if self.pt.image:
            raise TypeError("a table in an external image has no descriptor pool; "
                            "read its memory through the PhysMem it was opened on")
        cdef cnp.npy_intp dims[1]
        dims[0] = <cnp.npy_intp>(self.pt.pool.n_pages << self.pt.g.table_shift)
        arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_UINT64, <void *>self.pt.pool.mem)
        # The view keeps the table (and so the mapping) alive.
        Py_INCREF(self)
        cnp.PyArray_SetBaseObject(arr, self)
        arr.flags.writeable = False
        return arr

    @property
    def refcounts(self):
        self._check_idle()
        cdef u64 n = self.pt.pool.n_pages
        out = np.zeros(n, dtype=np.int32)
        cdef int[::1] o = out
        cdef u64 i
        for i in range(n):
            o[i] = self.pt.pool.refcnt[i]
        return out

    @property
    def pages_live(self):
        return self.pt.pool.live

    @property
    def n_pages(self):
        return self.pt.pool.n_pages

    cdef u64 _pages_live(self):
        return self.pt.pool.live

    @property
    def has_pgd(self):
        return bool(self.pt.has_pgd)

    def reset_stats(self):
        memset(&self.pt.c, 0, sizeof(Counters))

    def cost_counts(self):
        """Descriptor stores and shared-walk cmpxchg attempts since the last
        reset_stats(): events for the cost model, outside stats_dict()."""
        return self.pt.c.writes, self.pt.c.cmpxchg

    def stats_dict(self):
        c = &self.pt.c
        d = {
            "visits": c.visits,
            "reloads": c.reloads,
            "entries_read": c.visits + c.reloads,
            "callbacks_leaf": c.cb_leaf,
            "callbacks_table_pre": c.cb_pre,
            "callbacks_table_post": c.cb_post,
        }
        for lv in range(4):
            d[f"callbacks_level_{lv}"] = c.cb_level[lv + 1]
        d.update({
            "tlbi_vmid_ipa": c.tlbi_ipa,
            "tlbi_vmid_ipa_nsh": c.tlbi_ipa_nsh,
            "tlbi_vmid_range": c.tlbi_range,
            "tlbi_vmid": c.tlbi_vmid,
            "tlbi_range_pages": c.tlbi_range_pages,
            "cmo_calls": c.dcache_calls + c.icache_calls,
            "cmo_bytes": c.dcache_bytes + c.icache_bytes,
            "dcache_calls": c.dcache_calls,
            "dcache_bytes": c.dcache_bytes,
            "icache_calls": c.icache_calls,
            "icache_bytes": c.icache_bytes,
            "pages_alloc": c.pages_alloc,
            "pages_free": c.pages_free,
            "pages_live": self._pages_live(),
            "mc_used": c.mc_used,
            "mc_exhausted": c.mc_exhausted,
            "unlinked_tables_freed": c.unlinked_freed,
            "warnings": c.warnings,
            "tlbi_log_total": c.tlbi_log_total,
            "cmo_log_total": c.cmo_log_total,
        })
        names = ("vmid_ipa", "vmid_ipa_nsh", "vmid_range", "vmid")
        d["tlbi_log"] = [(names[c.tlbi_log[i].kind], c.tlbi_log[i].a,
                          None if c.tlbi_log[i].b == LEVEL_UNINIT else c.tlbi_log[i].b)
                         for i in range(c.tlbi_log_n)]
        d["cmo_log"] = [("dcache" if c.cmo_log[i].kind == CMO_DCACHE else "icache",
                         c.cmo_log[i].pa, c.cmo_log[i].nbytes) for i in range(c.cmo_log_n)]
        d["warning_sites"] = [WARN_SITES[c.warn_log[i]] for i in range(c.warn_log_n)]
        return d

    # -- walks ------------------------------------------------------------

    def walk(self, u64 addr, u64 size, object visitor, int flags, object arg=None, int max_level=3):
        cdef Walker w
        cdef int ret
        cdef _PyVisit pv = None
        cdef BuiltinVisitor bv
        if not -1 <= max_level <= LAST_LEVEL:
            raise ValueError(f"max_level {max_level} is outside -1..3")
        w.flags = flags
        w.max_level = max_level
        if isinstance(visitor, BuiltinVisitor):
            bv = <BuiltinVisitor>visitor
            if bv.cb == NULL:
                raise TypeError(f"{type(visitor).__name__} is not a usable built-in visitor; "
                                "use CountVisitor or CollectVisitor")
            if bv.in_use:
                raise RuntimeError(f"this {type(visitor).__name__} is already in a walk")
            bv._prepare()
            w.cb = bv.cb
            w.run = bv.run
            w.arg = bv.arg_ptr
            self._enter()
            bv.in_use = True
            with nogil:
                ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
            bv.in_use = False
            return self._leave(ret)
        pv = _PyVisit()
        pv.fn = visitor
        pv.ctx = VisitCtx()
        pv.ctx.pt = &self.pt
        pv.ctx._arg = arg
        w.cb = py_walker
        w.run = NULL
        w.arg = <void *>pv
        self._enter()
        ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret, pv)

    def get_leaf(self, u64 addr):
        cdef LeafData data
        cdef Walker w
        cdef u64 psize = (<u64>1) << self.pt.g.page_shift
        cdef int ret
        data.pte = 0
        data.level = 0
        w.cb = leaf_walker
        w.run = NULL
        w.arg = &data
        w.flags = F_LEAF
        w.max_level = LAST_LEVEL
        self._enter()
        ret = kvm_pgtable_walk(&self.pt, align_down(addr, psize), psize, &w)
        self._leave(ret)
        if ret:
            return ret, None, None
        return 0, data.pte, data.level

    def map(self, u64 addr, u64 size, u64 phys, u64 prot, object memcache, int flags,
            bint force_pte=False):
        cdef MapData data
        cdef Walker w
        cdef int ret
        cdef u64 psize = (<u64>1) << self.pt.g.page_shift
        data.phys = align_down(phys, psize)
        data.owner_id = 0
        data.memcache = mc_ptr(memcache)
        data.force_pte = force_pte
        data.annotation = False
        ret = set_prot_attr(&self.pt, prot, &data.attr)
        if ret:
            return ret
        w.cb = map_walker
        w.run = map_run
        w.arg = &data
        w.flags = flags | F_TABLE_PRE | F_LEAF
        w.max_level = LAST_LEVEL
        self._enter_write()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret)

    def set_owner(self, u64 addr, u64 size, object memcache, u64 owner_id):
        cdef MapData data
        cdef Walker w
        cdef int ret
        if owner_id > 1:
            return -EINVAL
        data.phys = 0
        data.attr = 0
        data.owner_id = owner_id
        data.memcache = mc_ptr(memcache)
        data.force_pte = True
        data.annotation = True
        w.cb = map_walker
        w.run = map_run
        w.arg = &data
        w.flags = F_TABLE_PRE | F_LEAF
        w.max_level = LAST_LEVEL
        self._enter_write()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret)

    def unmap(self, u64 addr, u64 size):
        cdef Walker w
        cdef int ret
        w.cb = unmap_walker
        w.run = unmap_run
        w.arg = NULL
        w.flags = F_LEAF | F_TABLE_POST
        w.max_level = LAST_LEVEL
        self._enter_write()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
            if unmap_defer_tlb_flush(&self.pt):
                tlb_flush_vmid_range(&self.pt, addr, size)
        return self._leave(ret)

    cdef int _update_leaf_attrs(self, u64 addr, u64 size, u64 attr_set, u64 attr_clr,
                                AttrData *data, int flags) except? -2147483644:
        cdef Walker w
        cdef int ret
        cdef u64 mask = ATTR_LO | ATTR_HI
        data.attr_set = attr_set & mask
        data.attr_clr = attr_clr & mask
        data.pte = 0
        data.level = 0
        w.cb = attr_walker
        w.run = attr_run
        w.arg = data
        w.flags = flags | F_LEAF
        w.max_level = LAST_LEVEL
        self._enter_write()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret)

    def wrprotect(self, u64 addr, u64 size):
        cdef AttrData data
        return self._update_leaf_attrs(addr, size, 0, S2AP_W, &data, 0)

    def mkyoung(self, u64 addr, int flags):
        cdef AttrData data
        self._update_leaf_attrs(addr, 1, S2_AF, 0, &data, flags)
        return None

    def relax_perms(self, u64 addr, u64 prot, int flags):
        cdef AttrData data
        cdef u64 xn = 0, set_ = 0, clr = 0
        cdef int ret
        cdef s64 level
        if prot & ATTR_HI_SW:
            return -EINVAL
        if prot & PROT_R:
            set_ |= S2AP_R
        if prot & PROT_W:
            set_ |= S2AP_W
        ret = set_xn_attr(&self.pt, prot, &xn)
        if ret:
            return ret
        set_ |= xn & S2_XN
        clr |= ~xn & S2_XN
        ret = self._update_leaf_attrs(addr, 1, set_, clr, &data, flags)
        # The level is only written back on success; on -EAGAIN the kernel
        # passes an uninitialised variable to the TLBI.
        level = data.level if ret == 0 else LEVEL_UNINIT
        if ret == 0 or ret == -EAGAIN:
            tlbi_vmid_ipa_nsh(&self.pt, addr, level)
        return ret

    def test_clear_young(self, u64 addr, u64 size, bint mkold):
        cdef AgeData data
        cdef Walker w
        cdef int ret
        data.mkold = mkold
        data.young = False
        w.cb = age_walker
        w.run = age_run
        w.arg = &data
        w.flags = F_LEAF
        w.max_level = LAST_LEVEL
        if mkold:
            self._enter_write()
        else:
            self._enter()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
            if ret:
                warn(&self.pt, W_CLEAR_YOUNG)
        self._leave(ret)
        return bool(data.young)

    def flush(self, u64 addr, u64 size):
        cdef Walker w
        cdef int ret
        if self.pt.fwb:
            return 0
        w.cb = flush_walker
        w.run = flush_run
        w.arg = NULL
        w.flags = F_LEAF
        w.max_level = LAST_LEVEL
        self._enter()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret)

    def split(self, u64 addr, u64 size, object memcache, int flags=F_LEAF, int max_level=3,
              bint skip_return=False):
        """kvm_pgtable_stage2_split(); flags, max_level and skip_return select
        the walker variant (the kernel's is LEAF, 3, False)."""
        cdef Walker w
        cdef int ret
        if memcache is None:
            raise TypeError("split needs a MemCache (the kernel's split_page_cache)")
        if not -1 <= max_level <= LAST_LEVEL:
            raise ValueError(f"max_level {max_level} is outside -1..3")
        w.cb = split_skip_walker if skip_return else split_walker
        w.run = noop_run
        w.arg = mc_ptr(memcache)
        w.flags = flags
        w.max_level = max_level
        self._enter_write()
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        return self._leave(ret)

    def create_unlinked(self, u64 phys, int level, u64 prot, object memcache, bint force_pte):
        cdef int err = 0
        cdef u64 *base
        cdef MC *mc = mc_ptr(memcache)
        if level < -1 or level > LAST_LEVEL:
            raise ValueError(f"level {level} is outside -1..3")
        self._enter_write()
        with nogil:
            base = create_unlinked(&self.pt, phys, level, prot, mc, force_pte, &err)
        self._leave(err if err > VISITOR_RET_MIN else 0)
        if base == NULL:
            return err, None
        return 0, page_pa(&self.pt, page_index(&self.pt, base))

    def free_unlinked(self, u64 table_pa, int level):
        self._check_idle()
        self._check_writable()
        if level < -1 or level > LAST_LEVEL:
            raise ValueError(f"level {level} is outside -1..3")
        cdef s64 page = page_of_pa(&self.pt, table_pa)
        if page < 0:
            raise ValueError(f"{table_pa:#x} is not a live table page of this page table")
        self._enter()
        with nogil:
            free_unlinked(&self.pt, self.pt.pool.mem + (<u64>page << self.pt.g.table_shift), level)
        self._leave(0)

    def destroy(self):
        cdef Walker w
        cdef int ret
        cdef u64 i
        w.cb = free_walker
        w.run = free_run
        w.arg = NULL
        w.flags = F_LEAF | F_TABLE_POST
        w.max_level = LAST_LEVEL
        self._enter_write()
        with nogil:
            # kvm_pgtable_stage2_destroy_range() then _destroy_pgd()
            ret = kvm_pgtable_walk(&self.pt, 0, (<u64>1) << self.pt.g.ia_bits, &w)
            if ret:
                warn(&self.pt, W_DESTROY_RANGE)
            if self.pt.has_pgd:
                for i in range(self.pt.g.pgd_pages):
                    put_page(&self.pt, self.pt.pgd[i])
                self.pt.has_pgd = False
        self._leave(0)

    # -- whole-table views (no walker, no counters) -----------------------

    cdef int _check_idle(self) except -1:
        if self.busy:
            raise RuntimeError("this page table is being walked; read it after the walk")
        return 0

    cdef u64 _root_entries(self) noexcept nogil:
        """Entries per root page that lie inside the IPA space."""
        cdef int used = self.pt.g.ia_bits - granule_shift(&self.pt.g, self.pt.g.start_level)
        if used >= self.pt.g.table_shift:
            return self.pt.g.ptrs
        return (<u64>1) << used

    def table_pages(self):
        """Distinct pages reachable from the root, root pages included."""
        cdef u64 i, n = 0
        cdef unsigned char[::1] seen
        cdef dict seen_pa
        self._check_idle()
        if not self.pt.has_pgd:
            return 0
        if self.pt.image:
            # Images: pages keyed by PA (the same bits as below).
            seen_pa = {}
            for i in range(self.pt.g.pgd_pages):
                if self.pt.pgd[i] != NULL:
                    seen_pa[self.pt.root_pa + (i << self.pt.g.page_shift)] = \
                        0x80 | (1 << (self.pt.g.start_level + 1))
                    n += 1
            for i in range(self.pt.g.pgd_pages):
                if self.pt.pgd[i] != NULL:
                    n += self._count_image_tables(self.pt.pgd[i], self.pt.g.start_level, seen_pa,
                                                  self._root_entries())
            return n
        # seen[page]: bit 7 once counted; bit level+1 once walked at that
        # level (a visitor may alias a page at several levels).
        seen = np.zeros(self.pt.pool.n_pages, dtype=np.uint8)
        for i in range(self.pt.g.pgd_pages):
            seen[i] |= 0x80 | (1 << (self.pt.g.start_level + 1))
            n += 1
        for i in range(self.pt.g.pgd_pages):
            n += self._count_tables(self.pt.pgd[i], self.pt.g.start_level, seen)
        return n

    cdef u64 _count_tables(self, u64 *table, int level, unsigned char[::1] seen):
        cdef u64 i, n = 0, pte
        cdef s64 page
        cdef unsigned char bit = 1 << (level + 2)
        if level >= LAST_LEVEL:
            return 0
        for i in range(self.pt.g.ptrs):
            pte = table[i]
            if pte_table(pte, level):
                page = page_of_pa(&self.pt, pte_to_phys(&self.pt.g, pte))
                if page < 0:
                    continue
                if not (seen[page] & 0x80):
                    seen[page] |= 0x80
                    n += 1
                if not (seen[page] & bit):
                    seen[page] |= bit
                    n += self._count_tables(self.pt.pool.mem + (<u64>page << self.pt.g.table_shift),
                                            level + 1, seen)
        return n

    cdef u64 _count_image_tables(self, u64 *table, int level, dict seen, u64 count):
        # count: entries of this table inside the IPA space (see _collect).
        cdef u64 i, n = 0, pte, pa
        cdef u64 *child
        cdef int bits, bit = 1 << (level + 2)
        if level >= LAST_LEVEL:
            return 0
        for i in range(count):
            pte = table[i]
            if pte_table(pte, level):
                pa = pte_to_phys(&self.pt.g, pte)
                child = image_table(&self.pt, pa)
                if child == NULL:
                    continue
                bits = seen.get(pa, 0)
                if not (bits & 0x80):
                    n += 1
                seen[pa] = bits | 0x80 | bit
                if not (bits & bit):
                    n += self._count_image_tables(child, level + 1, seen, self.pt.g.ptrs)
        return n

    def entries(self, bint valid, bint skip_unreadable=False):
        """Every valid leaf (valid=True) or every non-zero invalid entry
        (valid=False), in IPA order, as a structured array. In an image, a
        table outside memory raises OutsideMemoryError unless skip_unreadable
        (pool tables skip corrupt descriptors, which walks report)."""
        cdef CollectData data
        cdef u64 i, n
        cdef int sl = self.pt.g.start_level
        cdef u64 span = granule_size(&self.pt.g, sl) << self.pt.g.table_shift
        self._check_idle()
        memset(&data, 0, sizeof(CollectData))
        self.pt.err_kind = ERR_NONE
        try:
            if self.pt.image and not skip_unreadable:
                for i in range(self.pt.g.pgd_pages):
                    if self.pt.pgd[i] == NULL:
                        from .errors import OutsideMemoryError
                        raise OutsideMemoryError(i * span, sl, self.pt.root_pa + (i << self.pt.g.page_shift))
            if self.pt.has_pgd:
                # busy: no other thread may change the table while the GIL is released
                self.busy = True
                try:
                    with nogil:
                        for i in range(self.pt.g.pgd_pages):
                            if self.pt.pgd[i] != NULL:
                                self._collect(&data, self.pt.pgd[i], sl, i * span, valid,
                                              self._root_entries())
                finally:
                    self.busy = False
            if self.pt.err_kind == ERR_OUTSIDE:
                self.pt.err_kind = ERR_NONE
                if not skip_unreadable:
                    from .errors import OutsideMemoryError
                    raise OutsideMemoryError(self.pt.err_ipa, self.pt.err_level, self.pt.err_desc)
            if data.failed:
                raise MemoryError("out of memory collecting leaves")
            n = data.n
            out = np.empty(n, dtype=LEAF_DTYPE)
            if n:
                out["ipa"] = np.asarray(<u64[:n]>data.ipa)
                out["level"] = np.asarray(<signed char[:n]>data.level)
                out["pte"] = np.asarray(<u64[:n]>data.pte)
            return out
        finally:
            free(data.ipa)
            free(data.pte)
            free(data.level)

    cdef void _collect(self, CollectData *data, u64 *table, int level, u64 ipa, bint valid,
                       u64 count) noexcept nogil:
        # count: entries of this table inside the IPA space (a root page of
        # an image may be only partly used).
        cdef u64 i, pte
        cdef u64 *child
        cdef int shift = granule_shift(&self.pt.g, level)
        for i in range(count):
            pte = table[i]
            if pte == 0:
                continue
            if pte_table(pte, level):
                child = table_at(&self.pt, pte_to_phys(&self.pt.g, pte))
                if child != NULL:
                    self._collect(data, child, level + 1, ipa + (i << shift), valid, self.pt.g.ptrs)
                elif self.pt.image:
                    set_error(&self.pt, ERR_OUTSIDE, ipa + (i << shift), level, pte)
            elif (pte & PTE_VALID) == valid:
                collect_push(data, ipa + (i << shift), level, pte)


# ---------------------------------------------------------------------------
# FNV-1a-64, the hash the kernel conformance data uses for leaves and traces

cdef u64 FNV_PRIME = 0x100000001B3

cdef inline u64 fnv_u64(u64 h, u64 v) noexcept nogil:
    cdef int i
    for i in range(8):
        h = (h ^ ((v >> (8 * i)) & 0xFF)) * FNV_PRIME
    return h

def fnv1a_values(u64 h, *values):
    """Fold 64-bit values (little-endian bytes, negatives in two's complement)
    into an FNV-1a-64 hash."""
    for v in values:
        h = fnv_u64(h, <u64>(v & 0xFFFFFFFFFFFFFFFF))
    return h

def fnv1a_leaves(u64 h, leaves):
    """FNV-1a-64 over (ipa, level, pte) of every row of a leaves() array."""
    cdef const u64[::1] ipa = np.ascontiguousarray(leaves["ipa"], dtype=np.uint64)
    cdef const signed char[::1] level = np.ascontiguousarray(leaves["level"], dtype=np.int8)
    cdef const u64[::1] pte = np.ascontiguousarray(leaves["pte"], dtype=np.uint64)
    cdef Py_ssize_t i
    with nogil:
        for i in range(ipa.shape[0]):
            h = fnv_u64(h, ipa[i])
            h = fnv_u64(h, <u64>(<s64>level[i]))
            h = fnv_u64(h, pte[i])
    return h
