# cython: language_level=3
# The walker (kvm_pgtable_walk and friends, pgtable.c): its flags, the walk
# entry points, and visit_leaves(), the one last-level loop every built-in
# visitor's run function is made from.

from ._types cimport u64, PT, Ctx, Walker, visitor_fn, LAST_LEVEL, EAGAIN

# enum kvm_pgtable_walk_flags: the one home of the values; s2fast.flags builds
# the Python WalkFlags from this enum.
cpdef enum WalkFlag:
    F_LEAF = 1 << 0
    F_TABLE_PRE = 1 << 1
    F_TABLE_POST = 1 << 2
    F_SHARED = 1 << 3
    F_HANDLE_FAULT = 1 << 4
    F_SKIP_BBM_TLBI = 1 << 5
    F_SKIP_CMO = 1 << 6
    # Walker variants from the May 2026 RFC "KVM: arm64: Introduce S2 walker
    # SKIP return options" and its review; none is upstream. SKIP_LEVEL3..1
    # and SKIP_NEW_TABLE are the series' BIT(7)..BIT(10); SKIP_LEVEL0 (later
    # revisions), PAGE and BLOCK (review) take free bits.
    F_SKIP_LEVEL3 = 1 << 7
    F_SKIP_LEVEL2 = 1 << 8
    F_SKIP_LEVEL1 = 1 << 9
    F_SKIP_NEW_TABLE = 1 << 10
    F_SKIP_LEVEL0 = 1 << 11
    F_PAGE = 1 << 12
    F_BLOCK = 1 << 13

cdef inline bint kvm_pgtable_walk_shared(const Ctx *ctx) noexcept nogil:
    return (ctx.flags & F_SHARED) != 0

cdef inline bint kvm_pgtable_walk_continue(int flags, int r) noexcept nogil:
    # -EAGAIN means "retry the fault": only a fault handler stops on it.
    if r == -EAGAIN:
        return not (flags & F_HANDLE_FAULT)
    return r == 0

cdef inline void flush_visit_counts(PT *pt, Ctx *ctx) noexcept nogil:
    # The visit's cost-model events into the table's counters (see Ctx).
    pt.c.writes += ctx.writes
    pt.c.cmpxchg += ctx.cmpxchg
    ctx.writes = 0
    ctx.cmpxchg = 0

cdef inline int visit_leaves(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done,
                             visitor_fn cb) noexcept nogil:
    """The last-level loop of __kvm_pgtable_walk() for a built-in visitor:
    nothing there is a table, so each entry is one read and one LEAF call of
    cb (the walker bumps the counters in bulk). A visitor's run function is
    this loop with its own cb, a constant: the C compiler inlines cb into its
    copy, so the visitor's per-entry code is written once, in cb. The context
    is a local copy, which the compiler keeps in registers once cb is inlined."""
    cdef u64 i
    cdef int ret
    cdef u64 gs = (<u64>1) << pt.g.page_shift
    cdef Ctx c = ctx[0]
    # A constant level lets the compiler fold every level test in cb.
    c.level = LAST_LEVEL
    c.writes = 0
    c.cmpxchg = 0
    for i in range(n):
        c.ptep = ptep0 + i
        c.old = ptep0[i]
        ret = cb(pt, &c, F_LEAF)
        if not kvm_pgtable_walk_continue(c.flags, ret):
            flush_visit_counts(pt, &c)
            done[0] = i + 1
            return ret
        c.addr = (c.addr & ~(gs - 1)) + gs
    flush_visit_counts(pt, &c)
    done[0] = n
    return 0

cdef int visit_leaves_shared(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done,
                             visitor_fn cb) noexcept nogil

cdef inline int visit_leaves_fold_shared(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done,
                                         visitor_fn cb) noexcept nogil:
    """visit_leaves() for a visitor whose common per-entry path asks
    kvm_pgtable_walk_shared() (stage2_try_set_pte()): past this test the
    compiler knows the answer and folds it out of the loop. Shared walks
    (the fault path: a page or a few) take the walker's out-of-line
    visit_leaves(), which calls cb through the pointer. (The map walker's
    run makes the same test together with its backend test, stage2_map_run:
    this extra level of inlining in front of its loop made GCC keep its
    context in memory.)"""
    if ctx.flags & F_SHARED:
        return visit_leaves_shared(pt, ctx, ptep0, n, done, cb)
    return visit_leaves(pt, ctx, ptep0, n, done, cb)

cdef int kvm_pgtable_walk(PT *pt, u64 addr, u64 size, Walker *w) noexcept nogil
cdef int walk_unlinked(PT *pt, Walker *w, u64 *table, int level, u64 end) noexcept nogil
