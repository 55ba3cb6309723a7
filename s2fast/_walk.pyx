# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The kernel's depth-first page-table walker (arch/arm64/kvm/hyp/pgtable.c:
kvm_pgtable_walk, _kvm_pgtable_walk, __kvm_pgtable_walk, __kvm_pgtable_visit).

The walker never knows where pages live: it reaches a child table through
mm_ops (_mm.pxd). Counters are bumped exactly where the kernel performs the
counted action (a READ_ONCE of an entry, a visitor call).
"""

from ._types cimport (s64, WalkData, Gran, G4K, G16K, G64K, NLEVELS, ERANGE, EINVAL, S2_ECORRUPT,
                      ERR_OUTSIDE, HINT_SKIP_CHILDREN, HINT_SKIP_SIBLINGS, set_error, align_down,
                      pte_table, g_level_shift, g_level_size, g_page_shift, g_table_shift, g_ptrs,
                      g_pte_to_phys)
from ._events cimport warn, W_WALK_LEVEL
from ._mm cimport MM_ANY, follow_pa
from ._pool cimport POOL_PA_BASE

# s2fast._pool.TABLE_PA_BASE, also under the name tests and tools have always
# imported from here (a constant only: the walker reaches pages through mm_ops).
TABLE_PA_BASE = POOL_PA_BASE


cdef inline int visitor_cb(PT *pt, Walker *w, Ctx *ctx, int visit) noexcept nogil:
    cdef int ret
    if visit == F_LEAF:
        pt.c.cb_leaf += 1
    elif visit == F_TABLE_PRE:
        pt.c.cb_pre += 1
    else:
        pt.c.cb_post += 1
    pt.c.cb_level[ctx.level + 1] += 1
    ret = w.cb(pt, ctx, visit)
    flush_visit_counts(pt, ctx)
    return ret


cdef inline void init_ctx(Ctx *ctx, const WalkData *d, int level) noexcept nogil:
    # The visit context of an entry at d.addr (ptep and old are the caller's).
    ctx.arg = d.walker.arg
    ctx.start = d.start
    ctx.addr = d.addr
    ctx.end = d.end
    ctx.level = level
    ctx.flags = d.walker.flags
    ctx.writes = 0
    ctx.cmpxchg = 0


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


cdef int __kvm_pgtable_visit(Gran *t, PT *pt, WalkData *d, u64 *ptep, int level) noexcept nogil:
    cdef Walker *w = d.walker
    cdef Ctx ctx
    cdef int ret = 0
    cdef int hint = 0
    cdef int li = level + 1
    cdef bint reload = False
    cdef bint table, was_table
    cdef u64 *child
    cdef u64 gs
    init_ctx(&ctx, d, level)
    ctx.ptep = ptep
    ctx.old = ptep[0]
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

    if not kvm_pgtable_walk_continue(w.flags, ret):
        return ret

    gs = g_level_size(t, level)
    if not table:
        d.addr = align_down(d.addr, gs) + gs
    elif not should_enter(w, level, was_table, hint):
        # Not entered: move past everything the table maps.
        d.addr = align_down(d.addr, gs) + gs
    else:
        child = follow_pa(MM_ANY, pt, &ctx, g_pte_to_phys(t, ctx.old))
        if child == NULL:
            return S2_ECORRUPT
        ret = __kvm_pgtable_walk(t, pt, d, child, level + 1)
        if not kvm_pgtable_walk_continue(w.flags, ret):
            return ret

    if table and w.post_on[li]:
        ret = visitor_cb(pt, w, &ctx, F_TABLE_POST)
        if is_hint(ret):
            hint |= ret
            ret = 0

    if hint & HINT_SKIP_SIBLINGS:
        d.skip_siblings = True
    if kvm_pgtable_walk_continue(w.flags, ret):
        return 0
    return ret


cdef int visit_leaves_shared(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done,
                             visitor_fn cb) noexcept nogil:
    # visit_leaves() with cb called through the pointer (see
    # visit_leaves_fold_shared()).
    return visit_leaves(pt, ctx, ptep0, n, done, cb)


cdef int walk_last_level(Gran *t, PT *pt, WalkData *d, u64 *table, u64 idx) noexcept nogil:
    """The last level visited a whole run at a time by the walker's run
    function (visit_leaves() with the visitor's callback): nothing there is a
    table, so each entry is one read, one LEAF callback and one reload, and
    the counters are bumped in bulk."""
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
    init_ctx(&ctx, d, LAST_LEVEL)
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


cdef int __kvm_pgtable_walk(Gran *t, PT *pt, WalkData *d, u64 *table, int level) noexcept nogil:
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
        ret = __kvm_pgtable_visit(t, pt, d, table + idx, level)
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


cdef int _kvm_pgtable_walk(Gran *t, PT *pt, WalkData *d) noexcept nogil:
    # The concatenated root pages, one after the other.
    cdef int shift = g_level_shift(&pt.g, pt.g.start_level - 1)
    cdef u64 idx = 0
    cdef int ret = 0
    if shift < 64:
        idx = (d.addr & (((<u64>1) << pt.g.ia_bits) - 1)) >> shift
    while d.addr < d.end:
        if pt.pgd[idx] == NULL:
            # A root page outside memory (an image only).
            set_error(pt, ERR_OUTSIDE, d.addr, pt.g.start_level, pt.root_pa + (idx << pt.g.page_shift))
            return S2_ECORRUPT
        ret = __kvm_pgtable_walk(t, pt, d, pt.pgd[idx], pt.g.start_level)
        if ret:
            break
        idx += 1
    return ret


cdef int kvm_pgtable_walk(PT *pt, u64 addr, u64 size, Walker *w) noexcept nogil:
    cdef WalkData d
    cdef u64 limit = (<u64>1) << pt.g.ia_bits
    cdef u64 psize = (<u64>1) << pt.g.page_shift
    d.walker = w
    d.skip_siblings = False
    prepare_walker(w)
    d.start = align_down(addr, psize)
    d.addr = d.start
    d.end = align_down(d.start + size + psize - 1, psize)
    if d.addr > limit or d.end > limit:
        return -ERANGE
    if not pt.has_pgd:
        return -EINVAL
    if pt.g.page_shift == 12:
        return _kvm_pgtable_walk(<G4K *>NULL, pt, &d)
    if pt.g.page_shift == 14:
        return _kvm_pgtable_walk(<G16K *>NULL, pt, &d)
    return _kvm_pgtable_walk(<G64K *>NULL, pt, &d)


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
        return __kvm_pgtable_walk(<G4K *>NULL, pt, &d, table, level)
    if pt.g.page_shift == 14:
        return __kvm_pgtable_walk(<G16K *>NULL, pt, &d, table, level)
    return __kvm_pgtable_walk(<G64K *>NULL, pt, &d, table, level)
