# cython: language_level=3
# C-level declarations of the s2fast engine: the page-table core (kvm_pgtable),
# the walker and the visit context. Implementation lives in _walk.pyx.

from libc.stdint cimport uint64_t, int64_t, int32_t

ctypedef uint64_t u64
ctypedef int64_t s64

cdef enum:
    LOG_MAX = 64            # entries kept in each event log since the last reset
    NLEVELS = 5             # levels -1..3, stored at index level + 1
    LAST_LEVEL = 3

# Walk flags (enum kvm_pgtable_walk_flags).
cdef enum:
    F_LEAF = 1 << 0
    F_TABLE_PRE = 1 << 1
    F_TABLE_POST = 1 << 2
    F_SHARED = 1 << 3
    F_HANDLE_FAULT = 1 << 4
    F_SKIP_BBM_TLBI = 1 << 5
    F_SKIP_CMO = 1 << 6
    # Walker variants from the 2026 SKIP RFC and its review (not upstream).
    F_SKIP_LEVEL3 = 1 << 7
    F_SKIP_LEVEL2 = 1 << 8
    F_SKIP_LEVEL1 = 1 << 9
    F_SKIP_NEW_TABLE = 1 << 10
    F_SKIP_LEVEL0 = 1 << 11
    F_PAGE = 1 << 12
    F_BLOCK = 1 << 13

# Visitor return hints (RFC patch 1): positive values made only of these bits
# steer the walk and are never errors.
cdef enum:
    HINT_SKIP_CHILDREN = 1 << 28
    HINT_SKIP_SIBLINGS = 1 << 29

# Internal results that stop a walk and never reach the user as numbers: the
# Python wrapper turns them into the stored exception. They lie below every
# value a visitor may return.
cdef enum:
    S2_EPYEXC = -2147483647     # a Python visitor raised
    S2_ECORRUPT = -2147483646   # a descriptor points outside the pool / at a freed page
    S2_ENOPOOL = -2147483645    # the descriptor pool reservation is exhausted
    VISITOR_RET_MIN = -2147483632

# TLBI log kinds, CMO log kinds.
cdef enum:
    TLBI_IPA = 0
    TLBI_IPA_NSH = 1
    TLBI_RANGE = 2
    TLBI_VMID = 3
    CMO_DCACHE = 0
    CMO_ICACHE = 1

cdef struct Geom:
    int page_shift          # 12, 14, 16
    int table_shift         # page_shift - 3: log2(PTRS_PER_PTE)
    u64 ptrs                # PTRS_PER_PTE
    int start_level
    int ia_bits
    u64 pgd_pages
    int min_block_level     # KVM_PGTABLE_MIN_BLOCK_LEVEL
    u64 addr_mask           # KVM_PTE_ADDR_MASK, GENMASK(47, page_shift)
    bint pa_51_48           # 64 KiB: PA[51:48] in descriptor bits 15:12

cdef struct TlbiRec:
    int kind
    u64 a
    s64 b                   # level or page count; LEVEL_UNINIT when unknown

cdef struct CmoRec:
    int kind
    u64 pa
    u64 nbytes

cdef struct Counters:
    u64 visits
    u64 reloads
    u64 cb_leaf
    u64 cb_pre
    u64 cb_post
    u64 cb_level[NLEVELS]
    u64 tlbi_ipa
    u64 tlbi_ipa_nsh
    u64 tlbi_range
    u64 tlbi_vmid
    u64 tlbi_range_pages
    u64 dcache_calls
    u64 dcache_bytes
    u64 icache_calls
    u64 icache_bytes
    u64 pages_alloc
    u64 pages_free
    u64 mc_used
    u64 mc_exhausted
    u64 unlinked_freed
    u64 warnings
    u64 tlbi_log_total
    u64 cmo_log_total
    u64 writes              # descriptor stores (WRITE_ONCE or a cmpxchg that succeeded); cost model only
    u64 cmpxchg             # cmpxchg attempts on shared walks; cost model only
    int tlbi_log_n
    int cmo_log_n
    int warn_log_n
    TlbiRec tlbi_log[LOG_MAX]
    CmoRec cmo_log[LOG_MAX]
    int warn_log[LOG_MAX]

cdef struct MC:
    # struct kvm_mmu_memory_cache, as far as pgtable.c can see it.
    s64 nobjs
    bint allocate_on_empty

cdef struct Pool:
    u64 *mem                # reserved (mmap) region; pages never move
    u64 reserved_pages
    u64 n_pages             # pages ever handed out (high-water mark)
    u64 live                # pages allocated and not yet freed
    int32_t *refcnt
    u64 refcap
    u64 *free_stack
    u64 free_n
    u64 free_cap

cdef struct Seg:
    # One segment of external physical memory (an image's tables).
    u64 pa
    u64 size
    u64 *host               # host address of the byte at pa (8-byte aligned)

cdef struct PT:
    Geom g
    Pool pool
    # Root: pgd[i] is concatenated root page i (NULL: outside an image's memory).
    u64 *pgd[16]
    u64 root_pa
    # Tables in external memory (from_image): read-only, no pool.
    bint image
    Seg *segs
    int nsegs
    # For architectural translation: output-address size, VTCR_EL2.HA.
    int ps_bits
    bint ha
    Counters c
    bint has_pgd
    bint fwb
    bint xnx
    bint tlb_range
    # First corruption seen during the current operation.
    int err_kind
    u64 err_ipa
    int err_level
    u64 err_desc

cdef struct Ctx:
    # struct kvm_pgtable_visit_ctx
    u64 *ptep
    u64 old
    void *arg
    u64 start
    u64 addr
    u64 end
    int level
    int flags

ctypedef int (*visitor_fn)(PT *pt, Ctx *ctx, int visit) noexcept nogil

# Visits a run of last-level entries: ctx holds the first entry's addr; the
# function visits n entries (ptep0[0] .. ptep0[n-1]) with LEAF callbacks and
# returns the first result that stops the walk (0 when none did), storing
# how many callbacks it made in *done.
ctypedef int (*leaf_run_fn)(PT *pt, Ctx *ctx, u64 *ptep0, u64 n, u64 *done) noexcept nogil

cdef struct Walker:
    visitor_fn cb
    leaf_run_fn run
    void *arg
    int flags
    int max_level
    # Filled by prepare_walker() from flags and max_level, indexed level + 1:
    bint leaf_on[NLEVELS]       # LEAF visits of non-table entries happen here
    bint pre_on[NLEVELS]        # TABLE_PRE visits happen here
    bint post_on[NLEVELS]       # TABLE_POST visits happen here
    bint enter[NLEVELS]         # a table entry at this level may be descended into

cdef struct WalkData:
    Walker *walker
    u64 start
    u64 addr
    u64 end
    bint skip_siblings

cdef int kvm_pgtable_walk(PT *pt, u64 addr, u64 size, Walker *w) noexcept nogil
