# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Stage2Core: the C page table's Python shell. It owns the table's lifetime
(geometry, the mm_ops backend), keeps one operation at a time (the busy
flag), releases the GIL around the C operations of _pgtable.pyx, and turns
their internal results into exceptions. Input checks live in
s2fast.Stage2PageTable."""

from libc.string cimport memset

import numpy as np
cimport numpy as cnp

from ._types cimport (u64, s64, PT, MC, Walker, Counters, Geom, G4K, G16K, G64K, g_addr_mask, LAST_LEVEL, MM_POOL, ERR_NONE,
                      ERR_CORRUPT, ERR_OUTSIDE, ERR_NOPOOL, S2_EROFS, VISITOR_RET_MIN)
from ._walk cimport kvm_pgtable_walk, F_LEAF
from ._mm cimport MM_ANY, mm_table, mm_virt_to_phys
from ._pool cimport (Pool, pool_attach, pool_descriptors, pool_refcounts, pool_load_pages, mc_ptr)
from ._extmem cimport extmem_attach
from ._events cimport counters_dict
from ._pgtable cimport (kvm_pgtable_get_leaf, kvm_pgtable_stage2_map, kvm_pgtable_stage2_set_owner,
                        kvm_pgtable_stage2_unmap, kvm_pgtable_stage2_wrprotect,
                        kvm_pgtable_stage2_mkyoung, kvm_pgtable_stage2_relax_perms,
                        kvm_pgtable_stage2_test_clear_young, kvm_pgtable_stage2_flush,
                        kvm_pgtable_stage2_split, kvm_pgtable_stage2_create_unlinked,
                        kvm_pgtable_stage2_free_unlinked, kvm_pgtable_stage2_destroy)
from ._visitors cimport BuiltinVisitor, PyVisit, bind_visitor
from ._translate cimport translate_out, translate_ipas
from ._ptdump cimport count_table_pages, collect_entries, table_view
from ._mmu cimport guest_accesses

cnp.import_array()


cdef int set_geometry(PT *pt, int page_shift, int ia_bits, int start_level, u64 pgd_pages,
                      bint fwb, bint xnx) except -1:
    cdef Geom *g = &pt.g
    if pt.mm_ops != NULL:
        raise RuntimeError("Stage2Core is already initialised")
    g.page_shift = page_shift
    g.table_shift = page_shift - 3
    g.ptrs = (<u64>1) << (page_shift - 3)
    g.start_level = start_level
    g.ia_bits = ia_bits
    g.pgd_pages = pgd_pages
    g.min_block_level = 1 if page_shift == 12 else 2
    g.addr_mask = g_addr_mask(<G4K *>NULL) if page_shift == 12 else (
        g_addr_mask(<G16K *>NULL) if page_shift == 14 else g_addr_mask(<G64K *>NULL))
    pt.fwb = fwb
    pt.xnx = xnx
    return 0


cdef int raise_error(PT *pt, object corrupt_exc_type) except -1:
    """Raise (and clear) the first error of the operation that just ended."""
    kind = pt.err_kind
    pt.err_kind = ERR_NONE
    if kind == ERR_CORRUPT:
        raise corrupt_exc_type(pt.err_ipa, pt.err_level, pt.err_desc)
    if kind == ERR_OUTSIDE:
        from .errors import OutsideMemoryError
        raise OutsideMemoryError(pt.err_ipa, pt.err_level, pt.err_desc)
    if kind == ERR_NOPOOL:
        raise MemoryError(f"the descriptor pool reservation ({(<Pool *>pt.mm).reserved_bytes} bytes) is full")
    return 0


cdef class TableShell:
    """A C page table's lifetime (geometry, the mm_ops backend), its busy
    flag (one operation at a time) and the exceptions its operations end in."""
    cdef PT pt
    cdef bint busy
    cdef readonly object corrupt_exc_type
    cdef object _image_keep

    def __cinit__(self):
        memset(&self.pt, 0, sizeof(PT))

    def __init__(self, int page_shift, int ia_bits, int start_level, u64 pgd_pages,
                 bint fwb, bint xnx, bint tlb_range, u64 reserve_bytes, object corrupt_exc_type):
        if page_shift not in (12, 14, 16) or not 32 <= ia_bits <= 48 or not -1 <= start_level <= 3 \
                or not 1 <= pgd_pages <= 16:
            raise ValueError("inconsistent page-table geometry")
        set_geometry(&self.pt, page_shift, ia_bits, start_level, pgd_pages, fwb, xnx)
        self.corrupt_exc_type = corrupt_exc_type
        self.pt.tlb_range = tlb_range
        pool_attach(&self.pt, reserve_bytes)
        self.pt.ps_bits = 48
        self.pt.ha = True
        self.pt.has_pgd = True

    def init_image(self, int page_shift, int ia_bits, int start_level, u64 pgd_pages, u64 root_pa,
                   bint fwb, bint xnx, int ps_bits, bint ha, list segments, object corrupt_exc_type):
        """Tables in external memory (read-only). segments: (pa, uint8 array)
        pairs, sorted by PA and disjoint; the arrays are kept alive here."""
        if page_shift not in (12, 14, 16) or not 25 <= ia_bits <= 48 or not 0 <= start_level <= 3 \
                or not 1 <= pgd_pages <= 16 or ps_bits not in (32, 36, 40, 42, 44, 48, 52):
            raise ValueError("inconsistent page-table geometry")
        set_geometry(&self.pt, page_shift, ia_bits, start_level, pgd_pages, fwb, xnx)
        self.corrupt_exc_type = corrupt_exc_type
        self.pt.ps_bits = ps_bits
        self.pt.ha = ha
        self.pt.root_pa = root_pa
        try:
            extmem_attach(&self.pt, segments)
        except BaseException:
            self._detach()      # a bad segment list: the core may be initialised again
            raise
        self._image_keep = list(segments)
        self.pt.has_pgd = True

    cdef void _detach(self) noexcept:
        if self.pt.mm_ops != NULL:
            self.pt.mm_ops.release(&self.pt)
            self.pt.mm_ops = NULL
            self.pt.mm = NULL

    def __dealloc__(self):
        self._detach()

    # -- plumbing ---------------------------------------------------------

    cdef int _check_idle(self) except -1:
        if self.busy:
            raise RuntimeError("this page table is being walked; read it after the walk")
        return 0

    cdef int _enter(self) except -1:
        if self.busy:
            raise RuntimeError("this page table is being walked; operations cannot nest")
        self.busy = True
        self.pt.err_kind = ERR_NONE
        return 0

    cdef int _check_writable(self) except -1:
        if not self.pt.mm_ops.writable:
            from .errors import ReadOnlyTableError
            raise ReadOnlyTableError("this page table lives in an external image and is "
                                     "read-only; copy() it into a pool to change it")
        return 0

    cdef int _enter_write(self) except -1:
        self._check_writable()
        return self._enter()

    cdef object _leave(self, int ret, PyVisit pv=None):
        self.busy = False
        if pv is not None and pv.exc is not None:
            exc = pv.exc
            pv.exc = None
            raise exc
        if ret == S2_EROFS:
            self._check_writable()
        if self.pt.err_kind != ERR_NONE:
            raise_error(&self.pt, self.corrupt_exc_type)
        return ret

    cdef int _hold(self) except -1:
        # A view or translation: the table must not change while the GIL is released.
        self._check_idle()
        self.busy = True
        return 0

    cdef Pool *_pool(self) noexcept:
        """The pool backend's state, or NULL for any other backend."""
        return <Pool *>self.pt.mm if self.pt.mm_kind == MM_POOL else NULL



cdef class Stage2Core(TableShell):
    """The C page table. Use s2fast.Stage2PageTable, which validates input."""

    # -- state ------------------------------------------------------------

    @property
    def is_image(self):
        return not self.pt.mm_ops.writable

    @property
    def root_pa(self):
        return self.pt.root_pa

    @property
    def ps_bits(self):
        return self.pt.ps_bits

    @property
    def ha(self):
        return bool(self.pt.ha)

    @property
    def has_pgd(self):
        return bool(self.pt.has_pgd)

    @property
    def descriptors(self):
        if self._pool() == NULL:
            raise TypeError("a table in an external image has no descriptor pool; "
                            "read its memory through the PhysMem it was opened on")
        # The view keeps the table (and so the mapping) alive.
        return pool_descriptors(&self.pt, self)

    @property
    def refcounts(self):
        self._check_idle()
        return pool_refcounts(&self.pt) if self._pool() != NULL else np.zeros(0, dtype=np.int32)

    @property
    def pages_live(self):
        return self._pool().live if self._pool() != NULL else 0

    @property
    def n_pages(self):
        return self._pool().n_pages if self._pool() != NULL else 0

    def reset_stats(self):
        memset(&self.pt.c, 0, sizeof(Counters))

    def cost_counts(self):
        """Descriptor stores and shared-walk cmpxchg attempts since the last
        reset_stats(): events for the cost model, outside stats_dict()."""
        return self.pt.c.writes, self.pt.c.cmpxchg

    def stats_dict(self):
        return counters_dict(&self.pt.c, self.pages_live)

    def load_pages(self, const u64[:, ::1] pages):
        """Fill a fresh pool from a [N, PTRS_PER_PTE] array: rows 0..pgd_pages-1
        are the root, row i becomes pool page i (PA TABLE_PA_BASE + i *
        granule). Each page's refcount is the kernel's: 1 + its non-zero entries."""
        self._check_writable()
        self._check_idle()
        pool_load_pages(&self.pt, pages)

    def read_table(self, u64 pa, u64 entries=0):
        """A read-only uint64 view of the table page at pa (pool or image),
        or None when no table page is there. entries (images only): read just
        that many entries, at 8-byte alignment (a root smaller than a page)."""
        return table_view(&self.pt, pa, entries, self)

    # -- whole-table views (no walker, no counters) -----------------------

    def table_pages(self):
        """Distinct pages reachable from the root, root pages included."""
        self._check_idle()
        return count_table_pages(&self.pt)

    def entries(self, bint valid, bint skip_unreadable=False):
        """Every valid leaf (valid=True) or every non-zero invalid entry
        (valid=False), in IPA order, as a structured array."""
        self._hold()
        try:
            return collect_entries(&self.pt, valid, skip_unreadable)
        finally:
            self.busy = False

    def translate(self, const u64[::1] ipas, int access, bint ha, bint xnx, object out=None):
        """Architectural stage-2 translation of every IPA: a TRANSLATE_DTYPE
        array, written into ``out`` when given."""
        cdef Py_ssize_t n = ipas.shape[0]
        out = translate_out(n, access, out)
        if n == 0:
            return out
        if not self.pt.has_pgd:
            self._check_idle()
            raise ValueError("this page table has been destroyed")
        self._hold()
        try:
            translate_ipas(&self.pt, access, ha, xnx, &ipas[0], out, n)
        finally:
            self.busy = False
        return out

    # -- walks and the kvm_pgtable_stage2_* operations ---------------------

    def walk(self, u64 addr, u64 size, object visitor, int flags, object arg=None, int max_level=3):
        cdef Walker w
        cdef int ret
        cdef BuiltinVisitor bv
        if not -1 <= max_level <= LAST_LEVEL:
            raise ValueError(f"max_level {max_level} is outside -1..3")
        w.flags = flags
        w.max_level = max_level
        pv = bind_visitor(visitor, arg, &self.pt, &w)
        self._enter()
        if pv is not None:
            # A Python visitor: the walk holds the GIL for its calls.
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
            return self._leave(ret, pv)
        bv = <BuiltinVisitor>visitor
        bv.in_use = True
        with nogil:
            ret = kvm_pgtable_walk(&self.pt, addr, size, &w)
        bv.in_use = False
        return self._leave(ret)

    def get_leaf(self, u64 addr):
        cdef u64 pte
        cdef s64 level
        self._enter()
        ret = self._leave(kvm_pgtable_get_leaf(&self.pt, addr, &pte, &level))
        if ret:
            return ret, None, None
        return 0, pte, level

    def map(self, u64 addr, u64 size, u64 phys, u64 prot, object memcache, int flags,
            bint force_pte=False):
        cdef MC *mc = mc_ptr(memcache)
        cdef int ret
        self._enter()       # the operation checks its arguments, then writability
        with nogil: ret = kvm_pgtable_stage2_map(&self.pt, addr, size, phys, prot, mc, flags, force_pte)
        return self._leave(ret)

    def set_owner(self, u64 addr, u64 size, object memcache, u64 owner_id):
        cdef MC *mc = mc_ptr(memcache)
        cdef int ret
        self._enter()       # the operation checks its arguments, then writability
        with nogil: ret = kvm_pgtable_stage2_set_owner(&self.pt, addr, size, mc, owner_id)
        return self._leave(ret)

    def unmap(self, u64 addr, u64 size):
        cdef int ret
        self._enter_write()
        with nogil: ret = kvm_pgtable_stage2_unmap(&self.pt, addr, size)
        return self._leave(ret)

    def wrprotect(self, u64 addr, u64 size):
        cdef int ret
        self._enter_write()
        with nogil: ret = kvm_pgtable_stage2_wrprotect(&self.pt, addr, size)
        return self._leave(ret)

    def mkyoung(self, u64 addr, int flags):
        cdef int ret
        self._enter_write()
        with nogil: ret = kvm_pgtable_stage2_mkyoung(&self.pt, addr, flags)
        self._leave(ret)
        return None

    def relax_perms(self, u64 addr, u64 prot, int flags):
        cdef int ret
        self._enter()       # the operation checks its arguments, then writability
        with nogil: ret = kvm_pgtable_stage2_relax_perms(&self.pt, addr, prot, flags)
        return self._leave(ret)

    def test_clear_young(self, u64 addr, u64 size, bint mkold):
        cdef bint young = False
        cdef int ret
        if mkold:
            self._enter_write()
        else:
            self._enter()
        with nogil: ret = kvm_pgtable_stage2_test_clear_young(&self.pt, addr, size, mkold, &young)
        self._leave(ret)
        return bool(young)

    def flush(self, u64 addr, u64 size):
        cdef int ret
        if self.pt.fwb:
            return 0
        self._enter()
        with nogil: ret = kvm_pgtable_stage2_flush(&self.pt, addr, size)
        return self._leave(ret)

    def split(self, u64 addr, u64 size, object memcache, int flags=F_LEAF, int max_level=3,
              bint skip_return=False):
        """kvm_pgtable_stage2_split(); flags, max_level and skip_return select
        the walker variant (the kernel's is LEAF, 3, False)."""
        cdef int ret
        if memcache is None:
            raise TypeError("split needs a MemCache (the kernel's split_page_cache)")
        if not -1 <= max_level <= LAST_LEVEL:
            raise ValueError(f"max_level {max_level} is outside -1..3")
        cdef MC *mc = mc_ptr(memcache)
        self._enter_write()
        with nogil: ret = kvm_pgtable_stage2_split(&self.pt, addr, size, mc, flags, max_level, skip_return)
        return self._leave(ret)

    def create_unlinked(self, u64 phys, int level, u64 prot, object memcache, bint force_pte):
        cdef int err = 0
        cdef u64 *base
        cdef MC *mc = mc_ptr(memcache)
        if level < -1 or level > LAST_LEVEL:
            raise ValueError(f"level {level} is outside -1..3")
        self._enter_write()
        with nogil:
            base = kvm_pgtable_stage2_create_unlinked(&self.pt, phys, level, prot, mc, force_pte, &err)
        self._leave(err if err > VISITOR_RET_MIN else 0)
        if base == NULL:
            return err, None
        return 0, mm_virt_to_phys(MM_ANY, &self.pt, base)

    def free_unlinked(self, u64 table_pa, int level):
        cdef u64 *table
        self._check_idle()
        self._check_writable()
        if level < -1 or level > LAST_LEVEL:
            raise ValueError(f"level {level} is outside -1..3")
        table = mm_table(MM_ANY, &self.pt, table_pa)
        if table == NULL:
            raise ValueError(f"{table_pa:#x} is not a live table page of this page table")
        self._enter()
        with nogil:
            kvm_pgtable_stage2_free_unlinked(&self.pt, table, level)
        self._leave(0)

    def guest_accesses(self, object memcache, tuple host, list slots, const u64[::1] ipas,
                       const unsigned char[::1] writes, u64[::1] counts):
        """Guest accesses through mmu.c's fault path (_mmu.pyx; the VM's side
        is s2fast.mmu): returns (accesses made, last fault error or 0)."""
        cdef MC *mc = mc_ptr(memcache)
        if mc == NULL:
            raise TypeError("guest accesses need the vCPU's MemCache")
        self._enter_write()
        try:
            res = guest_accesses(&self.pt, mc, host, slots, ipas, writes, counts)
        except BaseException:
            self.busy = False
            raise
        self._leave(0)
        return res

    def destroy(self):
        self._enter_write()
        with nogil:
            kvm_pgtable_stage2_destroy(&self.pt)
        self._leave(0)
