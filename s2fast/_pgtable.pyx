# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""What arch/arm64/kvm/hyp/pgtable.c holds for stage 2, under its names: the
descriptor builders, break-before-make, the stage2_*_walker visitors and the
kvm_pgtable_stage2_* operations that walk with them.

Each visitor's per-entry behaviour is written once, in its walker function;
its run function (the walker's last-level loop) is visit_leaves() with that
walker. Pages are reached only through mm_ops (_mm.pxd)."""

from ._types cimport (Ctx, MM_POOL, Walker, visitor_fn, leaf_run_fn, LAST_LEVEL, PTE_VALID, PTE_TYPE, ATTR_LO, ATTR_HI, ATTR_HI_SW,
                      S2AP_R, S2AP_W, S2_SH_IS, S2_AF, S2_XN, S2_PERMS, INVALID_PTE_OWNER_MASK,
                      INVALID_PTE_LOCKED, MEMATTR_DEVICE, MEMATTR_NC, PROT_PX, PROT_UX, PROT_X, PROT_W,
                      PROT_R, PROT_DEVICE, PROT_NC, TTL_UNKNOWN, LEVEL_UNINIT, E2BIG, EAGAIN, ENOMEM,
                      EINVAL, HINT_SKIP_CHILDREN, S2_ECORRUPT, S2_ENOPOOL, S2_EROFS, align_down, pte_valid,
                      pte_table, pte_is_counted, pte_is_locked, pte_cacheable, pte_executable,
                      memattr_normal, g_level_size, g_pte_to_phys, g_phys_to_pte)
from ._events cimport (warn, tlbi_vmid_ipa, tlbi_vmid_ipa_nsh, kvm_tlb_flush_vmid_range,
                       dcache_clean_inval_poc, icache_inval_pou, W_BREAK_LOCKED, W_MAKE_NOT_LOCKED,
                       W_TRY_SET, W_MAP_LAST_LEVEL, W_CLEAR_YOUNG, W_DESTROY_RANGE,
                       W_FREE_UNLINKED_WALK, W_FREE_UNLINKED_COUNT, W_NR_PAGE_TABLES)
from ._mm cimport (Mm, MM_ANY, MM_POOL_TAG, mm_zalloc_page, mm_get_page, mm_put_page, mm_page_count, mm_virt_to_phys,
                   kvm_pte_follow, put_entry)
from ._walk cimport (kvm_pgtable_walk, walk_unlinked, visit_leaves, visit_leaves_fold_shared,
                     kvm_pgtable_walk_shared,
                     kvm_pgtable_walk_continue, F_LEAF, F_TABLE_PRE, F_TABLE_POST, F_SHARED,
                     F_HANDLE_FAULT, F_SKIP_BBM_TLBI, F_SKIP_CMO)


cdef inline u64 granule(PT *pt, int level) noexcept nogil:
    return g_level_size(&pt.g, level)


cdef inline int walk(PT *pt, u64 addr, u64 size, visitor_fn cb, leaf_run_fn run, void *arg,
                     int flags) noexcept nogil:
    # A kvm_pgtable_walker on the stack, and the walk (every stage-2
    # operation walks to the last level).
    cdef Walker w
    w.cb = cb
    w.run = run
    w.arg = arg
    w.flags = flags
    w.max_level = LAST_LEVEL
    return kvm_pgtable_walk(pt, addr, size, &w)

# ---------------------------------------------------------------------------
# Descriptors

cdef inline u64 kvm_init_table_pte(const Mm *b, PT *pt, u64 *childp) noexcept nogil:
    return g_phys_to_pte(&pt.g, mm_virt_to_phys(b, pt, childp)) | PTE_TYPE | PTE_VALID


cdef inline u64 kvm_init_valid_leaf_pte(PT *pt, u64 pa, u64 attr, int level) noexcept nogil:
    cdef u64 pte = g_phys_to_pte(&pt.g, pa)
    pte |= attr & (ATTR_LO | ATTR_HI)
    if level == LAST_LEVEL:
        pte |= PTE_TYPE
    return pte | PTE_VALID


cdef int stage2_set_xn_attr(PT *pt, u64 prot, u64 *attr) noexcept nogil:
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


cdef int stage2_set_prot_attr(PT *pt, u64 prot, u64 *out) noexcept nogil:
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
    r = stage2_set_xn_attr(pt, prot, &attr)
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


cdef u64 kvm_pgtable_stage2_pte_prot(u64 pte) noexcept nogil:
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
    return kvm_pgtable_stage2_pte_prot(<u64>pte)

# ---------------------------------------------------------------------------
# Break-before-make

cdef inline void write_pte(Ctx *ctx, u64 new) noexcept nogil:
    # WRITE_ONCE(*ctx->ptep, new): every descriptor store pgtable.c makes goes
    # through here, so the cost model's store count cannot miss one (counted
    # in the visit context; the walker adds it to pt.c, see Ctx).
    ctx.ptep[0] = new
    ctx.writes += 1


cdef inline bint stage2_try_set_pte(PT *pt, Ctx *ctx, u64 new) noexcept nogil:
    if not kvm_pgtable_walk_shared(ctx):
        write_pte(ctx, new)
        return True
    ctx.cmpxchg += 1
    if ctx.ptep[0] == ctx.old:   # cmpxchg
        write_pte(ctx, new)
        return True
    return False


cdef inline bint stage2_try_break_pte(const Mm *b, PT *pt, Ctx *ctx) noexcept nogil:
    cdef u64 size
    if pte_is_locked(ctx.old):
        if not kvm_pgtable_walk_shared(ctx):
            warn(pt, W_BREAK_LOCKED)
        return False
    if not stage2_try_set_pte(pt, ctx, INVALID_PTE_LOCKED):
        return False
    # Invalid first: a table or block is valid, and an empty entry (a table
    # being filled) needs no TLBI.
    if pte_valid(ctx.old) and not (ctx.flags & F_SKIP_BBM_TLBI):
        if pte_table(ctx.old, ctx.level):
            size = granule(pt, ctx.level)
            kvm_tlb_flush_vmid_range(pt, align_down(ctx.addr, size), size)
        else:
            tlbi_vmid_ipa(pt, ctx.addr, ctx.level)
    if pte_is_counted(ctx.old):
        put_entry(b, pt, ctx, ctx.ptep)
    return True


cdef inline void stage2_make_pte(const Mm *b, PT *pt, Ctx *ctx, u64 new) noexcept nogil:
    if not pte_is_locked(ctx.ptep[0]):
        warn(pt, W_MAKE_NOT_LOCKED)
    if pte_is_counted(new):
        mm_get_page(b, pt, ctx.ptep)
    write_pte(ctx, new)

# ---------------------------------------------------------------------------
# Unlinked tables (stage2_free_walker)

cdef int stage2_free_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef u64 *childp
    if not pte_is_counted(ctx.old):
        return 0
    if visit == F_LEAF:
        return 0 if put_entry(MM_ANY, pt, ctx, ctx.ptep) else S2_ECORRUPT
    if visit == F_TABLE_POST:
        childp = kvm_pte_follow(MM_ANY, pt, ctx, ctx.old)
        if childp == NULL:
            return S2_ECORRUPT
        if mm_page_count(MM_ANY, pt, childp) != 1:
            return 0
        put_entry(MM_ANY, pt, ctx, ctx.ptep)
        mm_put_page(MM_ANY, pt, childp)
        write_pte(ctx, 0)
        return 0
    return -EINVAL


cdef int stage2_free_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves(pt, ctx, ptep0, n, done, stage2_free_walker)


cdef void kvm_pgtable_stage2_free_unlinked(PT *pt, u64 *pgtable, int level) noexcept nogil:
    cdef Walker w
    w.cb = stage2_free_walker
    w.run = stage2_free_run
    w.arg = NULL
    w.flags = F_LEAF | F_TABLE_POST
    w.max_level = LAST_LEVEL
    pt.c.unlinked_freed += 1
    if walk_unlinked(pt, &w, pgtable, level + 1, granule(pt, level)):
        warn(pt, W_FREE_UNLINKED_WALK)
    if mm_page_count(MM_ANY, pt, pgtable) != 1:
        warn(pt, W_FREE_UNLINKED_COUNT)
    mm_put_page(MM_ANY, pt, pgtable)

# ---------------------------------------------------------------------------
# Map (stage2_map_walker)

cdef struct stage2_map_data:
    u64 phys
    u64 attr
    u64 owner_id
    MC *memcache
    bint force_pte
    bint annotation


cdef inline int stage2_map_data_init(PT *pt, stage2_map_data *data, u64 phys, u64 prot, MC *mc,
                                     bint force_pte) noexcept nogil:
    # The map data of a mapping (not an annotation); the prot check's result.
    data.phys = phys
    data.owner_id = 0
    data.memcache = mc
    data.force_pte = force_pte
    data.annotation = False
    return stage2_set_prot_attr(pt, prot, &data.attr)


cdef inline bint kvm_block_mapping_supported(PT *pt, Ctx *ctx, u64 phys) noexcept nogil:
    cdef u64 gs = granule(pt, ctx.level)
    if ctx.level < pt.g.min_block_level:
        return False
    if gs > ctx.end - ctx.addr:
        return False
    if phys & (gs - 1):
        return False
    return (ctx.addr & (gs - 1)) == 0


cdef inline bint stage2_leaf_mapping_allowed(PT *pt, Ctx *ctx, stage2_map_data *data) noexcept nogil:
    cdef u64 phys = data.phys + (ctx.addr - ctx.start)
    if data.force_pte and ctx.level < LAST_LEVEL:
        return False
    if data.annotation:
        return True
    return kvm_block_mapping_supported(pt, ctx, phys)


cdef inline bint stage2_pte_needs_update(u64 old, u64 new) noexcept nogil:
    if not pte_valid(old) or not pte_valid(new):
        return True
    return ((old ^ new) & ~S2_PERMS) != 0


cdef inline int stage2_map_walker_try_leaf(const Mm *b, PT *pt, Ctx *ctx, stage2_map_data *data) noexcept nogil:
    cdef u64 new
    cdef u64 phys = data.phys + (ctx.addr - ctx.start)
    cdef u64 gs = granule(pt, ctx.level)
    cdef bint old_counted
    if not stage2_leaf_mapping_allowed(pt, ctx, data):
        return -E2BIG
    if not data.annotation:
        new = kvm_init_valid_leaf_pte(pt, phys, data.attr, ctx.level)
    else:
        new = (data.owner_id << 2) & INVALID_PTE_OWNER_MASK
    # Same mapping, or permissions only: leave it to the permission fault.
    if not stage2_pte_needs_update(ctx.old, new):
        return -EAGAIN
    # Software bits only: written in place.
    if not kvm_pgtable_walk_shared(ctx) and not ((ctx.old ^ new) & ~ATTR_HI_SW):
        old_counted = pte_is_counted(ctx.old)
        if old_counted != pte_is_counted(new):
            if old_counted:
                put_entry(b, pt, ctx, ctx.ptep)
            else:
                mm_get_page(b, pt, ctx.ptep)
        if not stage2_try_set_pte(pt, ctx, new):
            warn(pt, W_TRY_SET)
        return 0
    if not stage2_try_break_pte(b, pt, ctx):
        return -EAGAIN
    if not (ctx.flags & F_SKIP_CMO) and pte_cacheable(pt, new):
        dcache_clean_inval_poc(pt, g_pte_to_phys(&pt.g, new), gs)
    if not (ctx.flags & F_SKIP_CMO) and pte_executable(new):
        icache_inval_pou(pt, g_pte_to_phys(&pt.g, new), gs)
    stage2_make_pte(b, pt, ctx, new)
    return 0


cdef int stage2_map_walk_table_pre(const Mm *b, PT *pt, Ctx *ctx, stage2_map_data *data) noexcept nogil:
    # Replace a table by a block if we can.
    cdef int ret
    cdef u64 *childp = kvm_pte_follow(b, pt, ctx, ctx.old)
    if childp == NULL:
        return S2_ECORRUPT
    if not stage2_leaf_mapping_allowed(pt, ctx, data):
        return 0
    ret = stage2_map_walker_try_leaf(b, pt, ctx, data)
    if ret:
        return ret
    kvm_pgtable_stage2_free_unlinked(pt, childp, ctx.level)
    if pt.err_kind:
        return S2_ECORRUPT
    return 0


cdef inline int stage2_map_walk_leaf(const Mm *b, PT *pt, Ctx *ctx, stage2_map_data *data) noexcept nogil:
    cdef int ret = stage2_map_walker_try_leaf(b, pt, ctx, data)
    cdef u64 *childp
    if ret != -E2BIG:
        return ret
    if ctx.level == LAST_LEVEL:
        warn(pt, W_MAP_LAST_LEVEL)
        return -EINVAL
    if data.memcache == NULL:
        return -ENOMEM
    childp = mm_zalloc_page(b, pt, data.memcache)
    if childp == NULL:
        return S2_ENOPOOL if pt.err_kind else -ENOMEM
    if not stage2_try_break_pte(b, pt, ctx):
        mm_put_page(b, pt, childp)
        return -EAGAIN
    # A block met on the way becomes a table; the rest of it refaults.
    stage2_make_pte(b, pt, ctx, kvm_init_table_pte(b, pt, childp))
    return 0


cdef inline int stage2_map_walker(const Mm *b, PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef stage2_map_data *data = <stage2_map_data *>ctx.arg
    if visit == F_TABLE_PRE:
        return stage2_map_walk_table_pre(b, pt, ctx, data)
    if visit == F_LEAF:
        return stage2_map_walk_leaf(b, pt, ctx, data)
    return -EINVAL


cdef int stage2_map_cb(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    # The walk's callback (table visits, shared walks, other backends).
    return stage2_map_walker(MM_ANY, pt, ctx, visit)


cdef int stage2_map_pool_cb(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    return stage2_map_walker(MM_POOL_TAG, pt, ctx, visit)


cdef int stage2_map_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    # A run of last-level entries (every page of a 4K build or a split) on
    # the pool, not shared, takes the loop's copy with the pool's page
    # operations inline (see _mm.pxd) and kvm_pgtable_walk_shared() folded
    # out: both are tested once per run, not per entry. Shared walks (the
    # fault path: a page or a few) take the other copy.
    if pt.mm_kind == MM_POOL and not (ctx.flags & F_SHARED):
        return visit_leaves(pt, ctx, ptep0, n, done, stage2_map_pool_cb)
    return visit_leaves(pt, ctx, ptep0, n, done, stage2_map_cb)


cdef int kvm_pgtable_stage2_map(PT *pt, u64 addr, u64 size, u64 phys, u64 prot, MC *mc,
                                int flags, bint force_pte) noexcept nogil:
    cdef stage2_map_data data
    cdef int ret = stage2_map_data_init(pt, &data, align_down(phys, (<u64>1) << pt.g.page_shift), prot,
                                        mc, force_pte)
    if ret:
        return ret
    if not pt.mm_ops.writable:
        return S2_EROFS
    return walk(pt, addr, size, stage2_map_cb, stage2_map_run, &data, flags | F_TABLE_PRE | F_LEAF)


cdef int kvm_pgtable_stage2_set_owner(PT *pt, u64 addr, u64 size, MC *mc, u64 owner_id) noexcept nogil:
    cdef stage2_map_data data
    if owner_id > 1:
        return -EINVAL
    if not pt.mm_ops.writable:
        return S2_EROFS
    data.phys = 0
    data.attr = 0
    data.owner_id = owner_id
    data.memcache = mc
    data.force_pte = True
    data.annotation = True
    return walk(pt, addr, size, stage2_map_cb, stage2_map_run, &data, F_TABLE_PRE | F_LEAF)

# ---------------------------------------------------------------------------
# Unmap (stage2_unmap_walker)

cdef inline bint stage2_unmap_defer_tlb_flush(PT *pt) noexcept nogil:
    return pt.tlb_range and pt.fwb


cdef int stage2_unmap_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef u64 *childp = NULL
    cdef bint need_flush = False
    if not pte_valid(ctx.old):
        if pte_is_counted(ctx.old):
            write_pte(ctx, 0)
            put_entry(MM_ANY, pt, ctx, ctx.ptep)
        return 0
    if pte_table(ctx.old, ctx.level):
        childp = kvm_pte_follow(MM_ANY, pt, ctx, ctx.old)
        if childp == NULL:
            return S2_ECORRUPT
        if mm_page_count(MM_ANY, pt, childp) != 1:
            return 0
    elif pte_cacheable(pt, ctx.old):
        need_flush = not pt.fwb
    # stage2_unmap_put_pte(): the whole block goes, the rest refaults.
    write_pte(ctx, 0)
    if childp != NULL:
        tlbi_vmid_ipa(pt, ctx.addr, TTL_UNKNOWN)
    elif not stage2_unmap_defer_tlb_flush(pt):
        tlbi_vmid_ipa(pt, ctx.addr, ctx.level)
    put_entry(MM_ANY, pt, ctx, ctx.ptep)
    if need_flush:
        dcache_clean_inval_poc(pt, g_pte_to_phys(&pt.g, ctx.old), granule(pt, ctx.level))
    if childp != NULL:
        mm_put_page(MM_ANY, pt, childp)
    return 0


cdef int stage2_unmap_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves(pt, ctx, ptep0, n, done, stage2_unmap_walker)


cdef int kvm_pgtable_stage2_unmap(PT *pt, u64 addr, u64 size) noexcept nogil:
    cdef int ret = walk(pt, addr, size, stage2_unmap_walker, stage2_unmap_run, NULL,
                        F_LEAF | F_TABLE_POST)
    if stage2_unmap_defer_tlb_flush(pt):
        kvm_tlb_flush_vmid_range(pt, addr, size)
    return ret

# ---------------------------------------------------------------------------
# Attributes (stage2_attr_walker): wrprotect, mkyoung, relax_perms

cdef struct stage2_attr_data:
    u64 attr_set
    u64 attr_clr
    u64 pte
    s64 level


cdef int stage2_attr_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef stage2_attr_data *data = <stage2_attr_data *>ctx.arg
    cdef u64 pte = ctx.old
    if not pte_valid(pte):
        return -EAGAIN
    data.level = ctx.level
    data.pte = pte
    pte = (pte & ~data.attr_clr) | data.attr_set
    if data.pte != pte:
        if pte_executable(pte) and not pte_executable(ctx.old):
            icache_inval_pou(pt, g_pte_to_phys(&pt.g, pte), granule(pt, ctx.level))
        if not stage2_try_set_pte(pt, ctx, pte):
            return -EAGAIN
    return 0


cdef int stage2_attr_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves_fold_shared(pt, ctx, ptep0, n, done, stage2_attr_walker)


cdef int stage2_update_leaf_attrs(PT *pt, u64 addr, u64 size, u64 attr_set, u64 attr_clr,
                                  stage2_attr_data *data, int flags) noexcept nogil:
    cdef u64 mask = ATTR_LO | ATTR_HI
    data.attr_set = attr_set & mask
    data.attr_clr = attr_clr & mask
    data.pte = 0
    data.level = 0
    return walk(pt, addr, size, stage2_attr_walker, stage2_attr_run, data, flags | F_LEAF)


cdef int kvm_pgtable_stage2_wrprotect(PT *pt, u64 addr, u64 size) noexcept nogil:
    cdef stage2_attr_data data
    return stage2_update_leaf_attrs(pt, addr, size, 0, S2AP_W, &data, 0)


cdef int kvm_pgtable_stage2_mkyoung(PT *pt, u64 addr, int flags) noexcept nogil:
    cdef stage2_attr_data data
    return stage2_update_leaf_attrs(pt, addr, 1, S2_AF, 0, &data, flags)


cdef int kvm_pgtable_stage2_relax_perms(PT *pt, u64 addr, u64 prot, int flags) noexcept nogil:
    cdef stage2_attr_data data
    cdef u64 xn = 0, set_ = 0, clr = 0
    cdef int ret
    cdef s64 level
    if prot & ATTR_HI_SW:
        return -EINVAL
    if prot & PROT_R:
        set_ |= S2AP_R
    if prot & PROT_W:
        set_ |= S2AP_W
    ret = stage2_set_xn_attr(pt, prot, &xn)
    if ret:
        return ret
    set_ |= xn & S2_XN
    clr |= ~xn & S2_XN
    if not pt.mm_ops.writable:
        return S2_EROFS
    ret = stage2_update_leaf_attrs(pt, addr, 1, set_, clr, &data, flags)
    # The level is only written back on success; on -EAGAIN the kernel
    # passes an uninitialised variable to the TLBI.
    level = data.level if ret == 0 else LEVEL_UNINIT
    if ret == 0 or ret == -EAGAIN:
        tlbi_vmid_ipa_nsh(pt, addr, level)
    return ret

# ---------------------------------------------------------------------------
# Ageing, flush, get_leaf

cdef struct stage2_age_data:
    bint mkold
    bint young


cdef int stage2_age_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef stage2_age_data *data = <stage2_age_data *>ctx.arg
    cdef u64 new = ctx.old & ~S2_AF
    if not pte_valid(ctx.old) or new == ctx.old:
        return 0
    data.young = True
    if data.mkold and not stage2_try_set_pte(pt, ctx, new):
        return -EAGAIN
    return 0


cdef int stage2_age_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves_fold_shared(pt, ctx, ptep0, n, done, stage2_age_walker)


cdef int kvm_pgtable_stage2_test_clear_young(PT *pt, u64 addr, u64 size, bint mkold,
                                             bint *young) noexcept nogil:
    cdef stage2_age_data data
    cdef int ret
    data.mkold = mkold
    data.young = False
    ret = walk(pt, addr, size, stage2_age_walker, stage2_age_run, &data, F_LEAF)
    if ret:
        warn(pt, W_CLEAR_YOUNG)
    young[0] = data.young
    return ret


cdef int stage2_flush_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    if not pte_cacheable(pt, ctx.old):
        return 0
    dcache_clean_inval_poc(pt, g_pte_to_phys(&pt.g, ctx.old), granule(pt, ctx.level))
    return 0


cdef int stage2_flush_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves(pt, ctx, ptep0, n, done, stage2_flush_walker)


cdef int kvm_pgtable_stage2_flush(PT *pt, u64 addr, u64 size) noexcept nogil:
    if pt.fwb:
        return 0
    return walk(pt, addr, size, stage2_flush_walker, stage2_flush_run, NULL, F_LEAF)


cdef struct leaf_walk_data:
    u64 pte
    s64 level


cdef int leaf_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef leaf_walk_data *data = <leaf_walk_data *>ctx.arg
    data.pte = ctx.old
    data.level = ctx.level
    return 0


cdef int kvm_pgtable_get_leaf(PT *pt, u64 addr, u64 *ptep, s64 *level) noexcept nogil:
    cdef leaf_walk_data data
    cdef u64 psize = (<u64>1) << pt.g.page_shift
    cdef int ret
    data.pte = 0
    data.level = 0
    ret = walk(pt, align_down(addr, psize), psize, leaf_walker, NULL, &data, F_LEAF)
    ptep[0] = data.pte
    level[0] = data.level
    return ret

# ---------------------------------------------------------------------------
# Split (stage2_split_walker) and create_unlinked

cdef int stage2_block_get_nr_page_tables(PT *pt, int level) noexcept nogil:
    if level == 1:
        return <int>pt.g.ptrs + 1
    if level == 2:
        return 1
    if level == 3:
        return 0
    warn(pt, W_NR_PAGE_TABLES)
    return -EINVAL


cdef u64 *kvm_pgtable_stage2_create_unlinked(PT *pt, u64 phys, int level, u64 prot, MC *mc,
                                             bint force_pte, int *err) noexcept nogil:
    # A detached subtree mapping one level-`level` granule at phys, walked
    # once to fill it.
    cdef stage2_map_data data
    cdef Walker w
    cdef u64 *pgtable
    cdef int ret
    err[0] = 0
    if phys & (granule(pt, level) - 1):
        err[0] = -EINVAL
        return NULL
    ret = stage2_map_data_init(pt, &data, phys, prot, mc, force_pte)
    if ret:
        err[0] = ret
        return NULL
    pgtable = mm_zalloc_page(MM_ANY, pt, mc)
    if pgtable == NULL:
        err[0] = S2_ENOPOOL if pt.err_kind else -ENOMEM
        return NULL
    w.cb = stage2_map_cb
    w.run = stage2_map_run
    w.arg = &data
    w.flags = F_LEAF | F_SKIP_BBM_TLBI | F_SKIP_CMO
    w.max_level = LAST_LEVEL
    ret = walk_unlinked(pt, &w, pgtable, level + 1, granule(pt, level))
    if ret:
        kvm_pgtable_stage2_free_unlinked(pt, pgtable, level)
        err[0] = ret
        return NULL
    return pgtable


cdef int stage2_split_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
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
    nr_pages = stage2_block_get_nr_page_tables(pt, level)
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
    childp = kvm_pgtable_stage2_create_unlinked(pt, g_pte_to_phys(&pt.g, pte), level,
                                                kvm_pgtable_stage2_pte_prot(pte), mc, force_pte, &err)
    if childp == NULL:
        return err
    if not stage2_try_break_pte(MM_ANY, pt, ctx):
        kvm_pgtable_stage2_free_unlinked(pt, childp, level)
        return -EAGAIN
    stage2_make_pte(MM_ANY, pt, ctx, kvm_init_table_pte(MM_ANY, pt, childp))
    return 0


cdef int stage2_split_skip_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
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
    ret = stage2_split_walker(pt, ctx, visit)
    if ret == 0 and full:
        return HINT_SKIP_CHILDREN
    return ret


cdef int stage2_split_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    # stage2_split_walker() returns 0 at the last level without looking.
    done[0] = n
    return 0


cdef int kvm_pgtable_stage2_split(PT *pt, u64 addr, u64 size, MC *mc, int flags, int max_level,
                                  bint skip_return) noexcept nogil:
    # flags, max_level and skip_return select the walker variant (the
    # kernel's is LEAF, 3, False).
    cdef Walker w
    w.cb = stage2_split_skip_walker if skip_return else stage2_split_walker
    w.run = stage2_split_run
    w.arg = mc
    w.flags = flags
    w.max_level = max_level
    return kvm_pgtable_walk(pt, addr, size, &w)

# ---------------------------------------------------------------------------
# Destroy

cdef void kvm_pgtable_stage2_destroy(PT *pt) noexcept nogil:
    # kvm_pgtable_stage2_destroy_range() then kvm_pgtable_stage2_destroy_pgd()
    cdef u64 i
    if walk(pt, 0, (<u64>1) << pt.g.ia_bits, stage2_free_walker, stage2_free_run, NULL,
            F_LEAF | F_TABLE_POST):
        warn(pt, W_DESTROY_RANGE)
    if pt.has_pgd:
        for i in range(pt.g.pgd_pages):
            mm_put_page(MM_ANY, pt, pt.pgd[i])
        pt.has_pgd = False
