# cython: language_level=3
# The mm_ops seam (struct kvm_pgtable_mm_ops): the only way the walker and
# the visitors reach a page. pgtable.c calls mm_ops->op(); here each mm_op()
# does the same, except that the pool -- the backend of every table the
# simulator builds, and the one on every hot path -- is called inline rather
# than through the pointer (a devirtualised call: the same functions, the
# pool's MmOps holds them too). Any other backend needs no change here.
#
# Each mm_op() takes the backend as a compile-time tag, as the geometry
# helpers take the granule (_types.pxd): MM_ANY tests pt.mm_kind on each
# call; a loop that runs long over one table (a last-level run, a batch of
# translations) makes that test once and passes MM_POOL_TAG (its copy calls
# the pool inline, with no test and no other backend's opaque call on its
# path, after which the compiler would reload everything it holds) or
# MM_OTHER (through pt.mm_ops).

from ._types cimport u64, PT, MC, Ctx, MM_POOL, ERR_CORRUPT, set_error, g_pte_to_phys
from ._pool cimport (pool_zalloc_page, pool_get_page, pool_put_page, pool_page_count,
                     pool_phys_to_virt, pool_virt_to_phys, pool_table)

cdef struct MmPool:         # the backend is the pool
    char unused
cdef struct MmOther:        # it is not: through pt.mm_ops
    char unused
cdef struct MmAny:          # either: pt.mm_kind says which
    char unused

ctypedef fused Mm:
    MmPool
    MmOther
    MmAny

cdef extern from *:
    const MmPool *MM_POOL_TAG "NULL"
    const MmOther *MM_OTHER "NULL"
    const MmAny *MM_ANY "NULL"

cdef inline bint is_pool(const Mm *b, const PT *pt) noexcept nogil:
    if Mm is MmAny:
        return pt.mm_kind == MM_POOL
    else:
        return Mm is MmPool

cdef inline u64 *mm_zalloc_page(const Mm *b, PT *pt, MC *mc) noexcept nogil:
    if is_pool(b, pt):
        return pool_zalloc_page(pt, mc)
    return pt.mm_ops.zalloc_page(pt, mc)

cdef inline void mm_get_page(const Mm *b, PT *pt, u64 *addr) noexcept nogil:
    if is_pool(b, pt):
        pool_get_page(pt, addr)
    else:
        pt.mm_ops.get_page(pt, addr)

cdef inline bint mm_put_page(const Mm *b, PT *pt, u64 *addr) noexcept nogil:
    if is_pool(b, pt):
        return pool_put_page(pt, addr)
    return pt.mm_ops.put_page(pt, addr)

cdef inline int mm_page_count(const Mm *b, PT *pt, u64 *addr) noexcept nogil:
    if is_pool(b, pt):
        return pool_page_count(pt, addr)
    return pt.mm_ops.page_count(pt, addr)

cdef inline u64 *mm_phys_to_virt(const Mm *b, PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    if is_pool(b, pt):
        return pool_phys_to_virt(pt, pa, nbytes)
    return pt.mm_ops.phys_to_virt(pt, pa, nbytes)

cdef inline u64 mm_virt_to_phys(const Mm *b, PT *pt, const u64 *addr) noexcept nogil:
    if is_pool(b, pt):
        return pool_virt_to_phys(pt, addr)
    return pt.mm_ops.virt_to_phys(pt, addr)

cdef inline u64 *mm_table(const Mm *b, PT *pt, u64 pa) noexcept nogil:
    """The table page at pa, or NULL when there is none (phys_to_virt of a
    whole page; the pool's form of it is the walker's per-table lookup)."""
    if is_pool(b, pt):
        return pool_table(pt, pa)
    return pt.mm_ops.phys_to_virt(pt, pa, (<u64>1) << pt.g.page_shift)

cdef inline u64 *follow_pa(const Mm *b, PT *pt, Ctx *ctx, u64 pa) noexcept nogil:
    """The child table at pa (ctx's descriptor's address), or NULL with the
    corruption recorded when the descriptor leads nowhere valid."""
    cdef u64 *child = mm_table(b, pt, pa)
    if child == NULL:
        set_error(pt, pt.mm_ops.bad_pa_err, ctx.addr, ctx.level, ctx.old)
    return child

cdef inline u64 *kvm_pte_follow(const Mm *b, PT *pt, Ctx *ctx, u64 pte) noexcept nogil:
    """kvm_pte_follow() with the simulator's check (see follow_pa)."""
    return follow_pa(b, pt, ctx, g_pte_to_phys(&pt.g, pte))

cdef inline bint put_entry(const Mm *b, PT *pt, Ctx *ctx, u64 *ptep) noexcept nogil:
    """put_page() of the reference an entry holds on its table page. In a
    consistent table this never frees the page (the table's own reference
    stays), so going below 1 means a visitor wrote a descriptor without its
    reference: recorded as corruption, and the page is left alone."""
    if mm_page_count(b, pt, ptep) <= 1:
        set_error(pt, ERR_CORRUPT, ctx.addr, ctx.level, ctx.old)
        return False
    return mm_put_page(b, pt, ptep)
