# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The page pool backend of mm_ops, and the memory cache (struct
kvm_mmu_memory_cache) that hands its pages to pgtable.c."""

from cpython.ref cimport Py_INCREF
from libc.stdlib cimport calloc, realloc, free
from libc.string cimport memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

import numpy as np
cimport numpy as cnp

from ._types cimport MM_POOL, ERR_NOPOOL, ERR_CORRUPT, mm_attach
from ._events cimport warn, W_MC_ALLOC

cnp.import_array()

TABLE_PA_BASE = POOL_PA_BASE

cdef extern from "sys/mman.h":
    int MAP_NORESERVE


cdef int pool_release_page(PT *pt, u64 page) noexcept nogil:
    cdef Pool *p = pool_of(pt)
    cdef u64 *ns
    if p.free_n == p.free_cap:
        ns = <u64 *>realloc(p.free_stack, (p.free_cap * 2 + 64) * sizeof(u64))
        if ns == NULL:
            return -1
        p.free_stack = ns
        p.free_cap = p.free_cap * 2 + 64
    p.free_stack[p.free_n] = page
    p.free_n += 1
    p.live -= 1
    pt.c.pages_free += 1
    return 0


cdef s64 pool_new_page(PT *pt) noexcept nogil:
    """A zeroed page with refcount 1, or -1 when the reservation is full."""
    cdef Pool *p = pool_of(pt)
    cdef u64 page
    cdef int32_t *nr
    cdef u64 cap
    if p.free_n > 0:
        p.free_n -= 1
        page = p.free_stack[p.free_n]
        memset(pool_page(pt, page), 0, sizeof(u64) << pt.g.table_shift)
    else:
        if p.n_pages >= p.reserved_pages:
            set_error(pt, ERR_NOPOOL, 0, 0, 0)
            return -1
        if p.n_pages >= p.refcap:
            cap = p.refcap * 2 + 1024
            nr = <int32_t *>realloc(p.refcnt, cap * sizeof(int32_t))
            if nr == NULL:
                set_error(pt, ERR_NOPOOL, 0, 0, 0)
                return -1
            p.refcnt = nr
            p.refcap = cap
        page = p.n_pages
        p.n_pages += 1
        # Fresh mmap memory is already zero; write it once now so the first
        # access (the walker reads a new table before writing it) does not
        # map the shared zero page only for the first write to fault again.
        pool_page(pt, page)[0] = 0
    p.refcnt[page] = 1
    p.live += 1
    pt.c.pages_alloc += 1
    return <s64>page


cdef u64 *pool_zalloc_page(PT *pt, MC *mc) noexcept nogil:
    """mm_ops->zalloc_page(memcache): the new page, or NULL. An empty cache
    refuses, or (on_empty="allocate") warns and allocates anyway, as
    kvm_mmu_memory_cache_alloc() does."""
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
    return pool_page(pt, <u64>page)


cdef void pool_release(PT *pt) noexcept nogil:
    cdef Pool *p = pool_of(pt)
    if p.mem != NULL:
        munmap(p.mem, p.reserved_bytes)
    free(p.refcnt)
    free(p.free_stack)
    free(p)


cdef MmOps POOL_OPS = MmOps(
    writable=True, bad_pa_err=ERR_CORRUPT, zalloc_page=pool_zalloc_page,
    get_page=pool_get_page, put_page=pool_put_page, page_count=pool_page_count,
    phys_to_virt=pool_phys_to_virt, virt_to_phys=pool_virt_to_phys, release=pool_release)


cdef int pool_attach(PT *pt, size_t reserve_bytes) except -1:
    """Make a fresh pool pt's backend and allocate its root pages."""
    cdef Pool *p = <Pool *>calloc(1, sizeof(Pool))
    cdef void *m = MAP_FAILED
    cdef size_t size = reserve_bytes
    cdef u64 i
    if p == NULL:
        raise MemoryError()
    mm_attach(pt, p, &POOL_OPS, MM_POOL)
    # Reserve address space once so pages never move (numpy views stay
    # valid) and only touched pages cost memory.
    while size >= (<size_t>pt.g.pgd_pages << pt.g.page_shift) and size >= 4096:
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if m != MAP_FAILED:
            break
        size //= 2
    if m == MAP_FAILED:
        raise MemoryError("cannot reserve memory for the descriptor pool")
    p.mem = <u64 *>m
    p.reserved_bytes = size
    p.reserved_pages = size >> pt.g.page_shift
    for i in range(pt.g.pgd_pages):
        if pool_new_page(pt) < 0:
            raise MemoryError("descriptor pool too small for the PGD")
        pt.pgd[i] = pool_page(pt, i)
    pt.root_pa = POOL_PA_BASE
    pt.root_len = pt.g.ptrs
    return 0


cdef object pool_descriptors(PT *pt, object owner):
    """A read-only view of every page ever handed out; it keeps owner alive."""
    cdef cnp.npy_intp dims[1]
    dims[0] = <cnp.npy_intp>(pool_of(pt).n_pages << pt.g.table_shift)
    arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_UINT64, <void *>pool_of(pt).mem)
    Py_INCREF(owner)
    cnp.PyArray_SetBaseObject(arr, owner)
    arr.flags.writeable = False
    return arr


cdef object pool_refcounts(PT *pt):
    cdef u64 i, n = pool_of(pt).n_pages
    out = np.zeros(n, dtype=np.int32)
    cdef int[::1] o = out
    for i in range(n):
        o[i] = pool_of(pt).refcnt[i]
    return out


cdef int pool_load_pages(PT *pt, const u64[:, ::1] pages) except -1:
    """Fill a fresh pool from a [N, PTRS_PER_PTE] array: rows 0..pgd_pages-1
    are the root, row i becomes pool page i. Each page's refcount is the
    kernel's: 1 + its non-zero entries."""
    cdef Pool *p = pool_of(pt)
    cdef Py_ssize_t i, j, n = pages.shape[0]
    cdef u64 *dst
    cdef int32_t cnt
    if pages.shape[1] != <Py_ssize_t>pt.g.ptrs:
        raise ValueError(f"pages have {pages.shape[1]} entries, not {pt.g.ptrs}")
    if n < <Py_ssize_t>pt.g.pgd_pages:
        raise ValueError("fewer pages than the root has")
    if not pt.has_pgd or p.n_pages != pt.g.pgd_pages or p.live != pt.g.pgd_pages:
        raise RuntimeError("load_pages() needs a freshly created table")
    for i in range(n):
        if i >= <Py_ssize_t>pt.g.pgd_pages and pool_new_page(pt) != i:
            pt.err_kind = 0
            raise MemoryError("the descriptor pool reservation is too small")
        dst = pool_page(pt, <u64>i)
        cnt = 1
        for j in range(<Py_ssize_t>pt.g.ptrs):
            dst[j] = pages[i, j]
            cnt += pages[i, j] != 0
        p.refcnt[i] = cnt
    return 0


cdef class MemCache:
    """A memory cache of page-table pages (struct kvm_mmu_memory_cache).

    ``pages`` is how many pages it holds; ``on_empty="fail"`` makes an
    allocation from an empty cache fail (-ENOMEM), ``"allocate"`` mimics
    kvm_mmu_memory_cache_alloc(): it warns and allocates anyway."""

    def __init__(self, pages=0, on_empty="fail"):
        nobjs = _pages_arg("MemCache pages", pages)
        if on_empty not in ("fail", "allocate"):
            raise ValueError(f"on_empty must be 'fail' or 'allocate', got {on_empty!r}")
        self.mc.nobjs = nobjs
        self.mc.allocate_on_empty = on_empty == "allocate"

    @property
    def nobjs(self):
        return self.mc.nobjs

    @property
    def on_empty(self):
        return "allocate" if self.mc.allocate_on_empty else "fail"

    def topup(self, pages):
        """Top the cache up to at least ``pages`` (kvm_mmu_topup_memory_cache)."""
        pages = _pages_arg("topup pages", pages)
        if self.mc.nobjs < pages:
            self.mc.nobjs = pages

    def __repr__(self):
        return f"MemCache(pages={self.mc.nobjs}, on_empty={self.on_empty!r})"


def _pages_arg(what, pages):
    if isinstance(pages, (bool, np.bool_)) or not isinstance(pages, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(pages).__name__} {pages!r}")
    pages = int(pages)
    if pages < 0 or pages > (1 << 62):
        raise ValueError(f"{what} must be in 0..2**62, got {pages!r}")
    return pages


cdef MC *mc_ptr(object mc) except? NULL:
    if mc is None:
        return NULL
    return &(<MemCache?>mc).mc
