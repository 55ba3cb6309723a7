# cython: language_level=3
# Events: what the kernel does besides writing descriptors, counted where it
# does it (a WARN, a TLBI, a CMO). Inline, for the visitors' hot paths; the
# module body turns the counters into Python.

from ._types cimport u64, s64, cnt_t, PT, Counters, LogRec, LOG_MAX

# TLBI log kinds, CMO log kinds.
cdef enum:
    TLBI_IPA = 0
    TLBI_IPA_NSH = 1
    TLBI_RANGE = 2
    TLBI_VMID = 3
    CMO_DCACHE = 0
    CMO_ICACHE = 1

# WARN sites: the index is what the counters log (WARN_SITES in _events.pyx).
cdef enum:
    W_MC_ALLOC = 0
    W_BREAK_LOCKED = 1
    W_MAKE_NOT_LOCKED = 2
    W_TRY_SET = 3
    W_MAP_LAST_LEVEL = 4
    W_CLEAR_YOUNG = 5
    W_DESTROY_RANGE = 6
    W_FREE_UNLINKED_WALK = 7
    W_FREE_UNLINKED_COUNT = 8
    W_WALK_LEVEL = 9
    W_NR_PAGE_TABLES = 10

cdef inline void warn(PT *pt, int site) noexcept nogil:
    pt.c.warnings += 1
    if pt.c.warn_log_n < LOG_MAX:
        pt.c.warn_log[pt.c.warn_log_n] = site
        pt.c.warn_log_n += 1

cdef inline void log_event(LogRec *log, int *n, cnt_t *total, int kind, u64 a, s64 b) noexcept nogil:
    # Count an event and keep it in its log while the log has room.
    total[0] += 1
    if n[0] < LOG_MAX:
        log[n[0]].kind = kind
        log[n[0]].a = a
        log[n[0]].b = b
        n[0] += 1

cdef inline void log_tlbi(Counters *c, int kind, u64 a, s64 b) noexcept nogil:
    log_event(c.tlbi_log, &c.tlbi_log_n, &c.tlbi_log_total, kind, a, b)

cdef inline void tlbi_vmid_ipa(PT *pt, u64 addr, s64 level) noexcept nogil:
    # __kvm_tlb_flush_vmid_ipa()
    pt.c.tlbi_ipa += 1
    log_tlbi(&pt.c, TLBI_IPA, addr, level)

cdef inline void tlbi_vmid_ipa_nsh(PT *pt, u64 addr, s64 level) noexcept nogil:
    # __kvm_tlb_flush_vmid_ipa_nsh()
    pt.c.tlbi_ipa_nsh += 1
    log_tlbi(&pt.c, TLBI_IPA_NSH, addr, level)

cdef void tlb_flush_vmid_range(Counters *c, bint tlb_range, int page_shift, u64 addr,
                               u64 size) noexcept nogil

cdef inline void kvm_tlb_flush_vmid_range(PT *pt, u64 addr, u64 size) noexcept nogil:
    tlb_flush_vmid_range(&pt.c, pt.tlb_range, pt.g.page_shift, addr, size)

cdef inline void log_cmo(Counters *c, int kind, u64 pa, u64 nbytes) noexcept nogil:
    log_event(c.cmo_log, &c.cmo_log_n, &c.cmo_log_total, kind, pa, <s64>nbytes)

cdef inline void dcache_clean_inval_poc(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    pt.c.dcache_calls += 1
    pt.c.dcache_bytes += nbytes
    log_cmo(&pt.c, CMO_DCACHE, pa, nbytes)

cdef inline void icache_inval_pou(PT *pt, u64 pa, u64 nbytes) noexcept nogil:
    pt.c.icache_calls += 1
    pt.c.icache_bytes += nbytes
    log_cmo(&pt.c, CMO_ICACHE, pa, nbytes)

cdef dict counters_dict(const Counters *c, u64 pages_live)
