# cython: language_level=3
# The mm_ops seam (struct kvm_pgtable_mm_ops): the only way the walker and
# the visitors reach a page. pgtable.c calls mm_ops->op(); here each mm_op()
# does the same, except that the pool -- the backend of every table the
# simulator builds, and the one on every hot path -- is called inline rather
# than through the pointer (a devirtualised call: the same functions, the
# pool's MmOps holds them too). Any other backend needs no change here.
#
# A loop that runs long over one table (architectural translation) takes the
# backend as a compile-time tag instead, as it takes the granule (_types.pxd):
# one copy per tag, with the test made once per call rather than per page
# operation (where the other backend's opaque call would also make the
# compiler reload everything after it on the pool's path too).

from ._types cimport u64, PT, MC, Ctx, MM_POOL, ERR_CORRUPT, set_error, g_pte_to_phys
from ._pool cimport (pool_zalloc_page, pool_get_page, pool_put_page, pool_page_count,
                     pool_phys_to_virt, pool_virt_to_phys, pool_table)

cdef inline u64 *mm_zalloc_page(PT *pt, MC *mc) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return pool_zalloc_page(pt, mc)
    return pt.mm_ops.zalloc_page(pt, mc)

cdef inline void mm_get_page(PT *pt, u64 *addr) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        pool_get_page(pt, addr)
    else:
        pt.mm_ops.get_page(pt, addr)

cdef inline bint mm_put_page(PT *pt, u64 *addr) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return pool_put_page(pt, addr)
    return pt.mm_ops.put_page(pt, addr)

cdef inline int mm_page_count(PT *pt, u64 *addr) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return pool_page_count(pt, addr)
    return pt.mm_ops.page_count(pt, addr)

cdef inline u64 *mm_phys_to_virt(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return mm_phys_to_virt_of(<MmPool *>NULL, pt, pa, nbytes)
    return mm_phys_to_virt_of(<MmAny *>NULL, pt, pa, nbytes)

cdef inline u64 mm_virt_to_phys(PT *pt, const u64 *addr) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return pool_virt_to_phys(pt, addr)
    return pt.mm_ops.virt_to_phys(pt, addr)

cdef struct MmPool:         # the backend is the pool: called inline
    char unused
cdef struct MmAny:          # any backend: through pt.mm_ops
    char unused

ctypedef fused Mm:
    MmPool
    MmAny

cdef inline u64 *mm_table_of(const Mm *b, PT *pt, u64 pa) noexcept nogil:
    """The table page at pa, or NULL when there is none (phys_to_virt of a
    whole page; the pool's form of it is the walker's per-table lookup)."""
    if Mm is MmPool:
        return pool_table(pt, pa)
    else:
        return pt.mm_ops.phys_to_virt(pt, pa, (<u64>1) << pt.g.page_shift)

cdef inline u64 *mm_phys_to_virt_of(const Mm *b, PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    if Mm is MmPool:
        return pool_phys_to_virt(pt, pa, nbytes)
    else:
        return pt.mm_ops.phys_to_virt(pt, pa, nbytes)

cdef inline u64 *mm_table(PT *pt, u64 pa) noexcept nogil:
    if pt.mm_kind == MM_POOL:
        return mm_table_of(<MmPool *>NULL, pt, pa)
    return mm_table_of(<MmAny *>NULL, pt, pa)

cdef inline u64 *follow_pa(PT *pt, Ctx *ctx, u64 pa) noexcept nogil:
    """The child table at pa (ctx's descriptor's address), or NULL with the
    corruption recorded when the descriptor leads nowhere valid."""
    cdef u64 *child = mm_table(pt, pa)
    if child == NULL:
        set_error(pt, pt.mm_ops.bad_pa_err, ctx.addr, ctx.level, ctx.old)
    return child

cdef inline u64 *kvm_pte_follow(PT *pt, Ctx *ctx, u64 pte) noexcept nogil:
    """kvm_pte_follow() with the simulator's check (see follow_pa)."""
    return follow_pa(pt, ctx, g_pte_to_phys(&pt.g, pte))

cdef inline bint put_entry(PT *pt, Ctx *ctx, u64 *ptep) noexcept nogil:
    """put_page() of the reference an entry holds on its table page. In a
    consistent table this never frees the page (the table's own reference
    stays), so going below 1 means a visitor wrote a descriptor without its
    reference: recorded as corruption, and the page is left alone."""
    if mm_page_count(pt, ptep) <= 1:
        set_error(pt, ERR_CORRUPT, ctx.addr, ctx.level, ctx.old)
        return False
    return mm_put_page(pt, ptep)
