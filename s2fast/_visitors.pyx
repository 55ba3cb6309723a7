# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Visitors for walk(): Python callables with their visit context, and the
built-in count and collect visitors, whose per-entry code is their walker
function (the last-level run is visit_leaves() with it)."""

from cpython.ref cimport PyObject
from libc.stdlib cimport realloc, free
from libc.string cimport memset

import numpy as np

from ._types cimport MC, Ctx, u64, pte_valid, pte_table, LAST_LEVEL, PTE_VALID, ENOMEM, S2_EPYEXC, VISITOR_RET_MIN, align_down, g_level_size
from ._mm cimport MM_ANY, mm_virt_to_phys
from ._walk cimport visit_leaves, F_LEAF, F_TABLE_PRE
from ._pool cimport mc_ptr
from ._pgtable cimport stage2_split_walker

LEAF_DTYPE = np.dtype([("ipa", "<u8"), ("level", "i1"), ("pte", "<u8")])

# ---------------------------------------------------------------------------
# Collected leaves

cdef bint collect_push(CollectData *data, u64 ipa, int level, u64 pte) noexcept nogil:
    cdef u64 cap
    cdef void *p
    if data.n == data.cap:
        cap = data.cap * 2 + 1024
        p = realloc(data.ipa, cap * sizeof(u64))
        if p == NULL:
            data.failed = True
            return False
        data.ipa = <u64 *>p
        p = realloc(data.pte, cap * sizeof(u64))
        if p == NULL:
            data.failed = True
            return False
        data.pte = <u64 *>p
        p = realloc(data.level, cap)
        if p == NULL:
            data.failed = True
            return False
        data.level = <signed char *>p
        data.cap = cap
    data.ipa[data.n] = ipa
    data.pte[data.n] = pte
    data.level[data.n] = level
    data.n += 1
    return True


cdef object collected_array(CollectData *data):
    """The collected leaves as a LEAF_DTYPE array (a copy)."""
    cdef u64 n = data.n
    out = np.empty(n, dtype=LEAF_DTYPE)
    if n:
        out["ipa"] = np.asarray(<u64[:n]>data.ipa)
        out["level"] = np.asarray(<signed char[:n]>data.level)
        out["pte"] = np.asarray(<u64[:n]>data.pte)
    return out


cdef void collect_free(CollectData *data) noexcept:
    free(data.ipa)
    free(data.pte)
    free(data.level)

# ---------------------------------------------------------------------------
# Python visitors

cdef Ctx ctx_layout      # only its field addresses are used: offsets into struct Ctx


cdef class CtxField:
    """A read-only field of the visit context, read from the live struct
    Ctx at its offset: one descriptor serves them all, and each read checks
    that the context is still live."""
    cdef Py_ssize_t offset
    cdef bint is_int
    cdef readonly str __doc__

    def __init__(self, Py_ssize_t offset, bint is_int, str doc):
        if not 0 <= offset <= <Py_ssize_t>sizeof(Ctx) - (<Py_ssize_t>sizeof(int) if is_int else 8):
            raise ValueError(f"offset {offset} is not a field of the visit context")
        self.offset = offset
        self.is_int = is_int
        self.__doc__ = doc

    def __get__(self, VisitCtx ctx, owner):
        cdef const char *p
        if ctx is None:
            return self
        ctx._check()
        p = <const char *>ctx.c + self.offset
        return (<const int *>p)[0] if self.is_int else (<const u64 *>p)[0]


cdef Py_ssize_t field_offset(const void *field) noexcept:
    return <const char *>field - <const char *>&ctx_layout


cdef class VisitCtx:
    """The visit context passed to a Python visitor (struct
    kvm_pgtable_visit_ctx). Valid only during the callback."""

    addr = CtxField(field_offset(&ctx_layout.addr), False, "The address visited (ctx->addr).")
    start = CtxField(field_offset(&ctx_layout.start), False, "Where the walk started (ctx->start).")
    end = CtxField(field_offset(&ctx_layout.end), False, "Where the walk ends (ctx->end).")
    level = CtxField(field_offset(&ctx_layout.level), True, "The entry's level (ctx->level).")
    old = CtxField(field_offset(&ctx_layout.old), False, "The entry as the walker read it (ctx->old).")
    flags = CtxField(field_offset(&ctx_layout.flags), True, "The walk's flags (ctx->flags).")

    @property
    def ptep(self):
        """The physical address of the entry (where *ctx->ptep lives)."""
        self._check()
        return mm_virt_to_phys(MM_ANY, self.pt, self.c.ptep)

    @property
    def arg(self):
        return self._arg

    cdef int _check(self) except -1:
        if self.c == NULL:
            raise RuntimeError("a visit context is only valid during its callback")
        return 0

    cdef int _check_writable(self, str what) except -1:
        if not self.pt.mm_ops.writable:
            from .errors import ReadOnlyTableError
            raise ReadOnlyTableError(f"ctx.{what}() on a table in an external image")
        return 0

    def set(self, new):
        """Write the entry (a WRITE_ONCE of *ctx->ptep; no refcounting)."""
        self._check()
        if isinstance(new, bool) or not isinstance(new, int):
            raise TypeError(f"ctx.set() takes an int descriptor, not {type(new).__name__} {new!r}")
        if new < 0 or new >= (1 << 64):
            raise ValueError(f"descriptor {new!r} is not a uint64")
        self._check_writable("set")
        self.c.ptep[0] = <u64>new
        self.c.writes += 1     # the walker adds it to pt.c after the callback

    def split(self, memcache):
        """Split this entry as the kernel's stage2_split_walker() does, with
        ``memcache`` as the split cache: a block becomes a table of pages
        (or, with too few pages cached, of next-level blocks), through
        create_unlinked(), break-before-make and the new table entry. Returns
        the walker's result (0, -ENOMEM, -EAGAIN ...); 0 for an entry that
        is not a valid block (a table, an invalid entry, a page). What a
        Python split visitor calls for the entries it chooses to split; the
        walk then descends into the new table as it would after the
        kernel's visitor."""
        cdef MC *mc
        cdef void *saved
        cdef int ret
        self._check()
        if memcache is None:
            raise TypeError("ctx.split() needs the split cache (a MemCache; ctx.arg.memcache in a split)")
        mc = mc_ptr(memcache)
        self._check_writable("split")
        if self.c.ptep[0] != self.c.old:
            # ctx.old is what the split would replace: a second split (or one
            # after ctx.set()) would build a table from a block no longer there
            raise RuntimeError("ctx.split(): the entry changed since the walker read it (ctx.set() or an "
                               "earlier split in this callback)")
        # The kernel runs its split visitor on LEAF visits only, which never
        # see a table entry.
        if not pte_valid(self.c.old) or pte_table(self.c.old, self.c.level):
            return 0
        # ctx.arg is the walk's (this Python visitor); the kernel's visitor
        # finds its cache there, for the length of the call.
        saved = self.c.arg
        self.c.arg = <void *>mc
        ret = stage2_split_walker(self.pt, self.c, F_LEAF)
        self.c.arg = saved
        return ret

    def __repr__(self):
        if self.c == NULL:
            return "VisitCtx(<expired>)"
        return (f"VisitCtx(addr={self.c.addr:#x}, level={self.c.level}, old={self.c.old:#x}, "
                f"ptep={mm_virt_to_phys(MM_ANY, self.pt, self.c.ptep):#x})")


cdef class PyVisit:
    pass


cdef int py_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    with gil:
        return py_call(<PyVisit>(<PyObject *>ctx.arg), ctx, visit)


cdef int py_call(PyVisit pv, Ctx *ctx, int visit) noexcept:
    cdef object r
    cdef long v
    pv.ctx.c = ctx
    try:
        r = pv.fn(pv.ctx, visit)
        if r is None:
            return 0
        if isinstance(r, bool) or not isinstance(r, int):
            if not isinstance(r, np.integer):     # numpy scalars are ints (np.bool_ is not one)
                raise TypeError(f"a visitor must return an int or None, not {type(r).__name__} {r!r}")
            r = int(r)
        if r < VISITOR_RET_MIN or r > 2147483647:
            raise ValueError(f"visitor result {r!r} is outside the int range the walker accepts")
        v = r
        return <int>v
    except BaseException as e:
        pv.exc = e
        return S2_EPYEXC
    finally:
        pv.ctx.c = NULL

cdef PyVisit bind_visitor(object visitor, object arg, PT *pt, Walker *w):
    """Set w's callbacks for visitor: a PyVisit for a Python callable (the
    walk must hold the GIL), None for a built-in visitor (checked usable)."""
    cdef BuiltinVisitor bv
    cdef PyVisit pv
    if isinstance(visitor, BuiltinVisitor):
        bv = <BuiltinVisitor>visitor
        if bv.cb == NULL:
            raise TypeError(f"{type(visitor).__name__} is not a usable built-in visitor; "
                            "use CountVisitor or CollectVisitor")
        if bv.in_use:
            raise RuntimeError(f"this {type(visitor).__name__} is already in a walk")
        w.cb = bv.cb
        w.run = bv.run
        w.arg = bv.arg_ptr
        return None
    pv = PyVisit()
    pv.fn = visitor
    pv.ctx = VisitCtx()
    pv.ctx.pt = pt
    pv.ctx._arg = arg
    w.cb = py_walker
    w.run = NULL
    w.arg = <void *>pv
    return pv

# ---------------------------------------------------------------------------
# Built-in visitors

cdef class BuiltinVisitor:
    """Base of the visitors that run in C with no Python call per entry.
    One instance serves one walk at a time (its results live in C)."""

    cdef void _bind(self, visitor_fn cb, leaf_run_fn run, void *data, size_t size) noexcept:
        """The subclass's walker, last-level run and (zeroed) data."""
        self.cb = cb
        self.run = run
        self.arg_ptr = data
        memset(data, 0, size)

    cdef int _check_idle(self) except -1:
        if self.in_use:
            raise RuntimeError(f"this {type(self).__name__} is in a walk")
        return 0


cdef int count_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef CountData *data = <CountData *>ctx.arg
    if visit == F_LEAF:
        # One sum per entry (the leaf count folds into the loop's length).
        data.valid[ctx.level + 1] += ctx.old & PTE_VALID
        data.leaves[ctx.level + 1] += 1
    elif visit == F_TABLE_PRE:
        data.tables[ctx.level + 1] += 1
    return 0


cdef int count_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves(pt, ctx, ptep0, n, done, count_walker)


cdef dict per_level(list counts):
    """Counts stored at index level + 1 -> {level: count}, zeros left out."""
    return {i - 1: n for i, n in enumerate(counts) if n}


cdef class CountVisitor(BuiltinVisitor):
    """Counts entries by kind and level: valid leaves, invalid entries
    (LEAF visits) and tables (TABLE_PRE visits)."""

    def __cinit__(self):
        self._bind(count_walker, count_run, &self.data, sizeof(CountData))

    def reset(self):
        self._check_idle()
        memset(&self.data, 0, sizeof(CountData))

    @property
    def valid(self):
        """Valid leaves seen, per level (dict level -> count)."""
        return per_level([self.data.valid[i] for i in range(NLEVELS)])

    @property
    def invalid(self):
        """Invalid entries seen (LEAF visits), per level."""
        d = self.data
        return per_level([d.leaves[i] - d.valid[i] for i in range(NLEVELS)])

    @property
    def tables(self):
        """Table entries seen (TABLE_PRE visits), per level."""
        return per_level([self.data.tables[i] for i in range(NLEVELS)])

    @property
    def total_valid(self):
        return sum(self.data.valid[i] for i in range(NLEVELS))


cdef int collect_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil:
    cdef CollectData *data = <CollectData *>ctx.arg
    if visit == F_LEAF and (ctx.old & PTE_VALID):
        if not collect_push(data, align_down(ctx.addr, g_level_size(&pt.g, ctx.level)), ctx.level, ctx.old):
            return -ENOMEM
    return 0


cdef int collect_run(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil:
    return visit_leaves(pt, ctx, ptep0, n, done, collect_walker)


cdef class CollectVisitor(BuiltinVisitor):
    """Collects every valid leaf the walk visits (IPA aligned to the leaf)."""

    def __cinit__(self):
        self._bind(collect_walker, collect_run, &self.data, sizeof(CollectData))

    def __dealloc__(self):
        collect_free(&self.data)

    def result(self):
        """The collected leaves as a structured array (ipa, level, pte)."""
        self._check_idle()
        # Held while copying: numpy may release the GIL, and a walk in another
        # thread must not realloc the buffers meanwhile.
        self.in_use = True
        try:
            return collected_array(&self.data)
        finally:
            self.in_use = False

    def reset(self):
        self._check_idle()
        self.data.n = 0
