# cython: language_level=3
# Visitors for users of walk(): a Python callable (one call per visit), or a
# built-in visitor that runs in C (count, collect).

from ._types cimport u64, cnt_t, PT, Ctx, Walker, visitor_fn, leaf_run_fn, NLEVELS

cdef struct CollectData:
    u64 *ipa
    u64 *pte
    signed char *level
    u64 n
    u64 cap
    bint failed

cdef bint collect_push(CollectData *data, u64 ipa, int level, u64 pte) noexcept nogil
cdef object collected_array(CollectData *data)
cdef void collect_free(CollectData *data) noexcept

cdef class VisitCtx:
    cdef Ctx *c
    cdef PT *pt
    cdef object _arg
    cdef int _check(self) except -1
    cdef int _check_writable(self, str what) except -1

cdef class PyVisit:
    # A Python visitor during one walk; exc is what it raised.
    cdef object fn
    cdef VisitCtx ctx
    cdef object exc

cdef int py_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil
cdef PyVisit bind_visitor(object visitor, object arg, PT *pt, Walker *w)

cdef class BuiltinVisitor:
    cdef visitor_fn cb
    cdef leaf_run_fn run
    cdef void *arg_ptr
    cdef bint in_use
    cdef int _check_idle(self) except -1
    cdef void _bind(self, visitor_fn cb, leaf_run_fn run, void *data, size_t size) noexcept

cdef struct CountData:
    # cnt_t, not u64: see _types.pxd (the counting loop then vectorises)
    cnt_t valid[NLEVELS]
    cnt_t leaves[NLEVELS]   # LEAF visits; invalid entries = leaves - valid
    cnt_t tables[NLEVELS]

cdef class CountVisitor(BuiltinVisitor):
    cdef CountData data

cdef class CollectVisitor(BuiltinVisitor):
    cdef CollectData data
