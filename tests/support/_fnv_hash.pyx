# cython: language_level=3, boundscheck=False, wraparound=False
"""FNV-1a-64 loops for fnv.py (compiled on first import by pyximport:
the conformance data hashes up to 67 million leaves)."""

from libc.stdint cimport uint64_t, int64_t

cdef uint64_t FNV_PRIME = 0x100000001B3


cdef inline uint64_t fnv_u64(uint64_t h, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        h = (h ^ ((v >> (8 * i)) & 0xFF)) * FNV_PRIME
    return h


def fnv1a_columns(uint64_t h, const uint64_t[::1] ipa, const signed char[::1] level,
                  const uint64_t[::1] pte):
    cdef Py_ssize_t i
    with nogil:
        for i in range(ipa.shape[0]):
            h = fnv_u64(h, ipa[i])
            h = fnv_u64(h, <uint64_t>(<int64_t>level[i]))
            h = fnv_u64(h, pte[i])
    return h
