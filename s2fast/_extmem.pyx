# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""External memory as an mm_ops backend: tables that live in someone else's
memory (segments of (PA, bytes)), read in place and never written."""

from libc.stdlib cimport calloc, free

from ._types cimport MmOps, MC, MM_OTHER, ERR_OUTSIDE, mm_attach, root_entries_in_ia


cdef u64 *extmem_ptr(const ExtMem *m, u64 pa, u64 nbytes) noexcept nogil:
    """The host address of [pa, pa + nbytes) if one segment holds it all and
    pa is 8-byte aligned, else NULL."""
    cdef int lo = 0, hi = m.nsegs, mid
    if pa & 7:
        return NULL
    # Segments are sorted by PA and disjoint: find the last one starting at or below pa.
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if m.segs[mid].pa <= pa:
            lo = mid
        else:
            hi = mid
    if m.nsegs == 0 or pa < m.segs[lo].pa or m.segs[lo].size < nbytes \
            or pa - m.segs[lo].pa > m.segs[lo].size - nbytes:
        return NULL
    return m.segs[lo].host + ((pa - m.segs[lo].pa) >> 3)


cdef u64 *ext_phys_to_virt(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    return extmem_ptr(<ExtMem *>pt.mm, pa, nbytes)


cdef u64 ext_virt_to_phys(PT *pt, const u64 *addr) noexcept nogil:
    cdef ExtMem *m = <ExtMem *>pt.mm
    cdef int i
    cdef u64 off
    for i in range(m.nsegs):
        off = <u64>(<const char *>addr - <const char *>m.segs[i].host)
        if off < m.segs[i].size:
            return m.segs[i].pa + off
    return 0


# The tables are read-only (the core refuses every writing operation), so the
# reference and allocation operations are never reached; they answer as an
# exhausted, unchanging memory would.
cdef u64 *ext_zalloc_page(PT *pt, MC *mc) noexcept nogil:
    return NULL


cdef void ext_get_page(PT *pt, u64 *addr) noexcept nogil:
    pass


cdef bint ext_put_page(PT *pt, u64 *addr) noexcept nogil:
    return True


cdef int ext_page_count(PT *pt, u64 *addr) noexcept nogil:
    return 1


cdef void ext_release(PT *pt) noexcept nogil:
    free(pt.mm)         # the segment array is part of the block


cdef MmOps EXTMEM_OPS = MmOps(
    writable=False, bad_pa_err=ERR_OUTSIDE, zalloc_page=ext_zalloc_page,
    get_page=ext_get_page, put_page=ext_put_page, page_count=ext_page_count,
    phys_to_virt=ext_phys_to_virt, virt_to_phys=ext_virt_to_phys, release=ext_release)


cdef int extmem_attach(PT *pt, list segments) except -1:
    """Make segments ((pa, uint8 array) pairs, sorted by PA and disjoint)
    pt's backend, and find pt's root (at pt.root_pa) in them. The caller
    keeps the arrays alive."""
    cdef const unsigned char[::1] mv
    cdef Py_ssize_t i, n = len(segments)
    cdef u64 pa, size
    cdef size_t host
    cdef ExtMem *m = <ExtMem *>calloc(1, sizeof(ExtMem) + <size_t>n * sizeof(Seg))
    if m == NULL:
        raise MemoryError()
    m.segs = <Seg *>(m + 1)
    mm_attach(pt, m, &EXTMEM_OPS, MM_OTHER)
    for i in range(n):
        pa, arr = segments[i]
        mv = arr
        size = mv.shape[0]
        host = <size_t>&mv[0] if size else 0
        if pa & 7 or host & 7:
            raise ValueError(f"segment at PA {pa:#x} is not 8-byte aligned (in PA or in host "
                             "memory); copy it into an aligned array")
        if i and pa < m.segs[i - 1].pa + m.segs[i - 1].size:
            raise ValueError(f"segment at PA {pa:#x} overlaps the one before it")
        m.segs[i].pa = pa
        m.segs[i].size = size
        m.segs[i].host = <u64 *>host
    m.nsegs = <int>n
    # The root: pt.root_pa's pages, of which a table with few IPA bits uses
    # (and so needs in memory) only the first root_len entries.
    pt.root_len = root_entries_in_ia(&pt.g)
    for i in range(<Py_ssize_t>pt.g.pgd_pages):
        pt.pgd[i] = extmem_ptr(m, pt.root_pa + (<u64>i << pt.g.page_shift),
                               pt.root_len * 8)
    return 0
