# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""mmu.c's stage-2 fault path, for guest accesses in bulk: the MMU's walk of
each access (_translate), and for one that faults, user_mem_abort()'s choice
of kvm_pgtable_stage2_relax_perms() or kvm_pgtable_stage2_map() (_pgtable),
retried on -EAGAIN, then mark_page_dirty_in_slot(). The loop holds no GIL
and makes no Python object per access: a dirty_log_perf_test iteration is
one pass over every page of the guest.

The VM's state (memslots, the vCPU's memory cache, its counters) belongs to
s2fast.mmu, which hands it in through guest_accesses(); the core holds the
table's busy flag around the call."""

from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free

from ._types cimport (u64, s64, PT, MC, PTE_VALID, PROT_R, PROT_W, EAGAIN, ERR_NONE,
                      VISITOR_RET_MIN, g_level_size)
from ._walk cimport F_HANDLE_FAULT, F_SHARED
from ._pgtable cimport kvm_pgtable_stage2_map, kvm_pgtable_stage2_relax_perms
from ._translate cimport TRow, TCfg, ACCESS_READ, tcfg_init, translate_ipa

#: names of the counters the fault path bumps, in the order of _mmu.pxd's C_* enum
FAULT_COUNTERS = (
    "guest_writes", "writes_no_fault", "guest_reads", "reads_no_fault", "faults_read",
    "faults_perm", "faults_perm_block", "faults_translation", "fault_retries", "fault_errors",
    "vcpu_cache_topups", "vcpu_cache_topup_pages", "pages_marked_dirty")
assert len(FAULT_COUNTERS) == N_FAULT_COUNTERS
#: the walk flags of user_mem_abort()'s pgtable.c calls
FAULT_FLAGS = UMA_FLAGS

cdef enum:
    UMA_FLAGS = F_HANDLE_FAULT | F_SHARED       # user_mem_abort() walks shared, handling a fault
    MAX_ATTEMPTS = 4                            # a guest retries an access that got -EAGAIN
    KIND_PMD = 1


cdef inline u64 memslot_phys(const Host *h, const Slot *s, u64 ipa) noexcept nogil:
    """The host PA behind ipa (s2fast.memslot.Memslot.phys)."""
    cdef bint pmd = s.kinds[(ipa - s.base) >> h.unit_shift] == KIND_PMD
    return h.phys_offset + ipa + (h.pmd_size if pmd else 0)


cdef int user_mem_abort(PT *pt, MC *mc, const Host *h, const Slot *s, u64 ipa, int level, u64 pte,
                        bint write, u64 *counts) noexcept nogil:
    """A fault on page ipa whose walk ended at level with pte (0 when
    invalid: a translation fault, else a permission fault): top the vCPU's
    cache up unless a permission fault needs no table (the kernel's
    topup_memcache rule), then relax_perms() when pte is a leaf of the size
    to map, else map() that size (pages while logging, else the backing's).
    A read maps a logging slot's page read-only: only a write fault makes it
    writable."""
    cdef u64 size, fipa, prot
    cdef bint topup = not pte or (s.logging and write)
    if topup and mc.nobjs < h.min_pages:
        counts[C_VCPU_CACHE_TOPUPS] += 1
        counts[C_VCPU_CACHE_TOPUP_PAGES] += h.cache_capacity - mc.nobjs
        mc.nobjs = h.cache_capacity
    size = h.kind_size[0] if s.logging else h.kind_size[s.kinds[(ipa - s.base) >> h.unit_shift]]
    if pte and size == g_level_size(&pt.g, level):
        counts[C_FAULTS_PERM] += 1
        return kvm_pgtable_stage2_relax_perms(pt, ipa, PROT_R | PROT_W, UMA_FLAGS)
    counts[C_FAULTS_PERM_BLOCK if pte else C_FAULTS_TRANSLATION] += 1
    if not write:
        counts[C_FAULTS_READ] += 1
    fipa = ipa & ~(size - 1)
    prot = PROT_R | PROT_W if write or not s.logging else PROT_R
    return kvm_pgtable_stage2_map(pt, fipa, size, memslot_phys(h, s, fipa), prot, mc, UMA_FLAGS, False)


cdef int guest_access(PT *pt, MC *mc, const Host *h, const Slot *s, TCfg *cfg, u64 ipa, bint write,
                      u64 *counts) noexcept nogil:
    """One access of page ipa: free when the MMU's walk finds it mapped
    (writable, for a write), else a stage-2 fault, retried while it returns
    -EAGAIN; a write that lands on a logging slot marks the page dirty."""
    cdef TRow r
    cdef int attempt, ret = -EAGAIN
    cdef u64 off
    counts[C_GUEST_WRITES if write else C_GUEST_READS] += 1
    for attempt in range(MAX_ATTEMPTS):
        translate_ipa(pt, cfg, ipa, &r)
        if r.ok and (r.writable or not write):
            if attempt == 0:
                counts[C_WRITES_NO_FAULT if write else C_READS_NO_FAULT] += 1
            return 0
        # The handler may free or replace the tables the walk cache points into.
        cfg.cached = False
        ret = user_mem_abort(pt, mc, h, s, ipa, r.level, r.desc if r.desc & PTE_VALID else 0, write, counts)
        if ret != -EAGAIN:
            break
        counts[C_FAULT_RETRIES] += 1
    if ret:
        counts[C_FAULT_ERRORS] += 1
        return ret
    if s.logging and write:
        off = (ipa - s.base) >> pt.g.page_shift
        s.dirty_bitmap[off >> 6] |= (<u64>1) << (off & 63)
        counts[C_PAGES_MARKED_DIRTY] += 1
    return 0


cdef const Slot *find_slot(const Slot *slots, int n, u64 ipa) noexcept nogil:
    cdef int lo = 0, hi = n, mid
    while lo < hi:              # slots are sorted by base and disjoint
        mid = (lo + hi) >> 1
        if ipa < slots[mid].base:
            hi = mid
        elif ipa >= slots[mid].end:
            lo = mid + 1
        else:
            return &slots[mid]
    return NULL


cdef Py_ssize_t first_outside(const Slot *slots, int nslots, const u64 *ipas, Py_ssize_t n) noexcept nogil:
    """The index of the first IPA outside every memslot, or -1."""
    cdef const Slot *s = NULL
    cdef Py_ssize_t i
    for i in range(n):
        if s == NULL or not (s.base <= ipas[i] < s.end):
            s = find_slot(slots, nslots, ipas[i])
            if s == NULL:
                return i
    return -1


cdef Py_ssize_t access_loop(PT *pt, MC *mc, const Host *h, const Slot *slots, int nslots, const u64 *ipas,
                            const uint8_t *writes, Py_ssize_t n, u64 *counts, int *last_err) noexcept nogil:
    """The accesses in order; returns how many were made (n, unless the
    table turned out corrupt; first_outside() has checked the slots)."""
    cdef TCfg cfg
    cdef const Slot *s = NULL
    cdef u64 ipa, page_mask = ~(((<u64>1) << pt.g.page_shift) - 1)
    cdef Py_ssize_t i
    cdef int ret
    # VTCR.HA set: the access flag never faults, as in KVM with FEAT_HAFDBS.
    tcfg_init(pt, &cfg, ACCESS_READ, True, False)
    for i in range(n):
        ipa = ipas[i] & page_mask
        if s == NULL or not (s.base <= ipa < s.end):
            s = find_slot(slots, nslots, ipa)
            if s == NULL:
                return i
        ret = guest_access(pt, mc, h, s, &cfg, ipa, writes[i] != 0, counts)
        if ret:
            if ret <= VISITOR_RET_MIN or pt.err_kind != ERR_NONE:
                return i
            last_err[0] = ret
    return n


cdef tuple guest_accesses(PT *pt, MC *mc, tuple host, list slots, const u64[::1] ipas,
                          const uint8_t[::1] writes, u64[::1] counts):
    """Run the accesses (ipas[i], a write when writes[i]) with the GIL
    released. host: (PMD_SIZE, leaf size per backing kind (3), PHYS_OFFSET,
    kvm_mmu_cache_min_pages, cache capacity); slots: (base, end, logging,
    kinds uint8 array, dirty bitmap uint64 array or None) sorted by base;
    counts: FAULT_COUNTERS, added to. Returns (accesses made, the last
    error a fault returned or 0); raises ValueError, having made none, when
    an IPA lies outside every memslot."""
    cdef Host h
    cdef Slot *sl
    cdef const uint8_t[::1] kinds
    cdef u64[::1] bitmap
    cdef Py_ssize_t n = ipas.shape[0], done, i
    cdef int last_err = 0
    cdef int nslots = len(slots)
    if writes.shape[0] != n or counts.shape[0] != N_FAULT_COUNTERS:
        raise ValueError("guest_accesses: writes must match ipas and counts hold FAULT_COUNTERS")
    pmd, sizes, h.phys_offset, h.min_pages, h.cache_capacity = host
    h.pmd_size = pmd
    h.unit_shift = int(pmd).bit_length() - 1
    for i in range(3):
        h.kind_size[i] = sizes[i]
    sl = <Slot *>malloc(max(nslots, 1) * sizeof(Slot))
    if sl == NULL:
        raise MemoryError()
    try:
        for i, (base, end, logging, kinds, bitmap) in enumerate(slots):
            sl[i].base = base
            sl[i].end = end
            sl[i].logging = logging
            sl[i].kinds = &kinds[0]
            sl[i].dirty_bitmap = &bitmap[0] if bitmap is not None else NULL
            if logging and bitmap is None:
                raise ValueError(f"memslot at {base:#x} is logging without a dirty bitmap")
        if n == 0:
            return 0, 0
        # Every IPA is checked before any access, so a bad batch changes nothing.
        with nogil:
            done = first_outside(sl, nslots, &ipas[0], n)
        if done >= 0:
            raise ValueError(f"IPA {ipas[done]:#x} is outside every memslot")
        with nogil:
            done = access_loop(pt, mc, &h, sl, nslots, &ipas[0], &writes[0], n, &counts[0], &last_err)
    finally:
        free(sl)
    return done, last_err
