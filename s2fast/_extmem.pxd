# cython: language_level=3
# External physical memory: the mm_ops backend of tables read from an image
# (a VM's memory dump, a vmcore). Read-only; pages are found by PA in sorted,
# disjoint segments.

from ._types cimport u64, PT

cdef struct Seg:
    u64 pa
    u64 size
    u64 *host               # host address of the byte at pa (8-byte aligned)

cdef struct ExtMem:
    Seg *segs               # nsegs entries, in the same allocation, after the struct
    int nsegs

cdef u64 *extmem_ptr(const ExtMem *m, u64 pa, u64 nbytes) noexcept nogil
cdef int extmem_attach(PT *pt, list segments) except -1
