# cython: language_level=3
# Architectural stage-2 translation (what the MMU, and the kernel's nested.c
# and at.c walkers, do with the same tables).

from ._types cimport u64, PT

cdef object translate_out(Py_ssize_t n, int access, object out)
cdef void translate_ipas(PT *pt, int access, bint ha, bint xnx, const u64 *ipas, object out,
                         Py_ssize_t n) noexcept
