# cython: language_level=3
# The page pool: the mm_ops backend of a table the simulator owns. Pages live
# in one reserved (mmap) region and never move; a page's PA is
# POOL_PA_BASE + index * granule. The per-page operations are inline so that
# _mm.pxd can call them without the indirection (see there).

from libc.stdint cimport int32_t
from ._types cimport u64, s64, PT, MC, MmOps, Geom, set_error, ERR_CORRUPT

cdef extern from *:
    # Where pool pages live in the simulated PA space (a 64-bit C constant, as in _types.pxd).
    const u64 POOL_PA_BASE "(1ULL << 46)"

cdef struct Pool:
    u64 *mem                # reserved (mmap) region; pages never move
    size_t reserved_bytes
    u64 reserved_pages
    u64 n_pages             # pages ever handed out (high-water mark)
    u64 live                # pages allocated and not yet freed
    int32_t *refcnt
    u64 refcap
    u64 *free_stack
    u64 free_n
    u64 free_cap

cdef inline Pool *pool_of(PT *pt) noexcept nogil:
    return <Pool *>pt.mm

cdef inline u64 pool_index(PT *pt, const u64 *addr) noexcept nogil:
    """Pool page index of the page holding addr."""
    return (<u64>(addr - pool_of(pt).mem)) >> pt.g.table_shift

cdef inline u64 *pool_page(PT *pt, u64 index) noexcept nogil:
    return pool_of(pt).mem + (index << pt.g.table_shift)

cdef inline s64 pool_page_of_pa(PT *pt, u64 pa) noexcept nogil:
    """Pool page index of the live page holding pa, or -1."""
    cdef u64 idx
    if pa < POOL_PA_BASE:
        return -1
    idx = (pa - POOL_PA_BASE) >> pt.g.page_shift
    if idx >= pool_of(pt).n_pages or pool_of(pt).refcnt[idx] <= 0:
        return -1
    return <s64>idx

cdef inline u64 *pool_table(PT *pt, u64 pa) noexcept nogil:
    """The live table page at pa (page-aligned), or NULL."""
    cdef s64 page
    if pa & ((<u64>1 << pt.g.page_shift) - 1):
        return NULL
    page = pool_page_of_pa(pt, pa)
    return NULL if page < 0 else pool_page(pt, <u64>page)

cdef inline u64 *pool_phys_to_virt(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    cdef s64 page = pool_page_of_pa(pt, pa)
    cdef u64 off = (pa - POOL_PA_BASE) & ((<u64>1 << pt.g.page_shift) - 1)
    if page < 0 or (off & 7) or nbytes > ((<u64>1 << pt.g.page_shift) - off):
        return NULL
    return pool_page(pt, <u64>page) + (off >> 3)

cdef inline u64 pool_virt_to_phys(PT *pt, const u64 *addr) noexcept nogil:
    return POOL_PA_BASE + ((<u64>(addr - pool_of(pt).mem)) << 3)

cdef inline void pool_get_page(PT *pt, u64 *addr) noexcept nogil:
    pool_of(pt).refcnt[pool_index(pt, addr)] += 1

cdef inline int pool_page_count(PT *pt, u64 *addr) noexcept nogil:
    return pool_of(pt).refcnt[pool_index(pt, addr)]

cdef int pool_release_page(PT *pt, u64 page) noexcept nogil

cdef inline bint pool_put_page(PT *pt, u64 *addr) noexcept nogil:
    cdef u64 page = pool_index(pt, addr)
    if pool_of(pt).refcnt[page] <= 0:
        set_error(pt, ERR_CORRUPT, 0, -2, POOL_PA_BASE + (page << pt.g.page_shift))
        return False
    pool_of(pt).refcnt[page] -= 1
    if pool_of(pt).refcnt[page] == 0:
        pool_release_page(pt, page)
    return True

cdef u64 *pool_zalloc_page(PT *pt, MC *mc) noexcept nogil

cdef int pool_attach(PT *pt, size_t reserve_bytes) except -1
cdef object pool_descriptors(PT *pt, object owner)
cdef object pool_refcounts(PT *pt)
cdef int pool_load_pages(PT *pt, const u64[:, ::1] pages) except -1

cdef class MemCache:
    cdef MC mc

cdef MC *mc_ptr(object mc) except? NULL
