# cython: language_level=3
# The engine's shared vocabulary (kvm_pgtable.h's role): integer types,
# descriptor bits, errno values, the granule geometry with its helpers, and
# the C structs every module passes around (the page table, the visit
# context, the walker, the mm_ops seam). Declarations and inline functions
# only: this contract has no module body.

from libc.stdint cimport uint64_t, int64_t, int32_t

ctypedef uint64_t u64
ctypedef int64_t s64

cdef enum:
    LOG_MAX = 64            # entries kept in each event log since the last reset
    NLEVELS = 5             # levels -1..3, stored at index level + 1
    LAST_LEVEL = 3

# Descriptor bits and attribute encodings (kvm_pgtable.h, pgtable.c), written
# as the kernel writes them. Each is declared once with its value as its C
# text, so every module compiles it as a 64-bit constant expression (a cdef
# enum would be a C int).
cdef extern from *:
    """
    #define S2F_BIT(n) (1ULL << (n))
    #define S2F_GENMASK(h, l) ((~0ULL >> (63 - (h))) & (~0ULL << (l)))
    """
    const u64 PTE_VALID "S2F_BIT(0)"
    const u64 PTE_TYPE "S2F_BIT(1)"
    const u64 ATTR_LO "S2F_GENMASK(11, 2)"
    const u64 ATTR_HI "S2F_GENMASK(63, 50)"
    const u64 ATTR_HI_SW "S2F_GENMASK(58, 55)"
    const u64 S2_MEMATTR "S2F_GENMASK(5, 2)"
    const u64 S2AP_R "S2F_BIT(6)"
    const u64 S2AP_W "S2F_BIT(7)"
    const u64 S2_SH_IS "S2F_GENMASK(9, 8)"             # SH = 3, inner shareable
    const u64 S2_AF "S2F_BIT(10)"
    const u64 S2_XN "S2F_GENMASK(54, 53)"
    const u64 S2_PERMS "(S2F_BIT(6) | S2F_BIT(7) | S2F_GENMASK(54, 53))"   # S2AP_R | S2AP_W | S2_XN
    const u64 INVALID_PTE_OWNER_MASK "S2F_GENMASK(9, 2)"
    const u64 INVALID_PTE_LOCKED "S2F_BIT(10)"
    const u64 ADDR_51_48 "S2F_GENMASK(15, 12)"
    # Stage-2 MemAttr encodings (PAGE_S2_MEMATTR(attr): attr << 2), without and with FWB.
    const u64 MEMATTR_NORMAL "(0xFULL << 2)"
    const u64 MEMATTR_NORMAL_FWB "(0x6ULL << 2)"
    const u64 MEMATTR_DEVICE "(0x1ULL << 2)"
    const u64 MEMATTR_NC "(0x5ULL << 2)"
    # enum kvm_pgtable_prot
    const u64 PROT_PX "S2F_BIT(0)"
    const u64 PROT_UX "S2F_BIT(1)"
    const u64 PROT_X "(S2F_BIT(0) | S2F_BIT(1))"
    const u64 PROT_W "S2F_BIT(2)"
    const u64 PROT_R "S2F_BIT(3)"
    const u64 PROT_DEVICE "S2F_BIT(4)"
    const u64 PROT_NC "S2F_BIT(5)"
    const s64 TTL_UNKNOWN "0x7FFFFFFFLL"               # TLBI_TTL_UNKNOWN (INT_MAX)
    const s64 LEVEL_UNINIT "(-0x80000000LL)"           # (INT_MIN)
    const u64 MAX_TLBI_RANGE_PAGES "S2F_BIT(21)"       # __TLBI_RANGE_PAGES(31, 3)

cdef enum:
    E2BIG = 7
    EAGAIN = 11
    ENOMEM = 12
    EINVAL = 22
    ERANGE = 34

# Visitor return hints (RFC patch 1): positive values made only of these bits
# steer the walk and are never errors.
cdef enum:
    HINT_SKIP_CHILDREN = 1 << 28
    HINT_SKIP_SIBLINGS = 1 << 29

# Internal results that stop a walk and never reach the user as numbers: the
# core turns them into the stored exception. They lie below every value a
# visitor may return.
cdef enum:
    S2_EPYEXC = -2147483647     # a Python visitor raised
    S2_ECORRUPT = -2147483646   # a descriptor points outside the tables / at a freed page
    S2_ENOPOOL = -2147483645    # the backend cannot supply a page (pool reservation full)
    S2_EROFS = -2147483644      # a writing operation on a read-only backend
    VISITOR_RET_MIN = -2147483632

# Error kinds stored in PT.err_kind: the first one seen in an operation.
cdef enum:
    ERR_NONE = 0
    ERR_CORRUPT = 1
    ERR_NOPOOL = 2
    ERR_OUTSIDE = 3     # a descriptor points outside an image's physical memory

# ---------------------------------------------------------------------------
# Geometry: one family of helpers over a fused "granule" type. The run-time
# Geom answers from its fields; the three tag types answer with constants, so
# a function taking a NULL tag pointer compiles to one copy per granule with
# shifts, masks and PTRS_PER_PTE folded (the walker's and translation's hot
# loops). Everything else passes &pt.g.

# The small fields the hot loops read on every entry (here and in PT) are
# short, a type that no store in those loops has (entries are u64, refcounts
# int32, counters cnt_t): by C's aliasing rules the compiler then keeps them
# in registers for the whole loop instead of reloading them after each store
# (callgrind, 4K build: -6 % instructions; split 1 GiB -> 4K: -8 %).
cdef struct Geom:
    short page_shift        # 12, 14, 16
    short table_shift       # page_shift - 3: log2(PTRS_PER_PTE)
    u64 ptrs                # PTRS_PER_PTE
    short start_level
    short ia_bits
    u64 pgd_pages
    short min_block_level   # KVM_PGTABLE_MIN_BLOCK_LEVEL
    u64 addr_mask           # KVM_PTE_ADDR_MASK (g_addr_mask(), kept for the run-time form)

cdef struct G4K:
    char unused
cdef struct G16K:
    char unused
cdef struct G64K:
    char unused

ctypedef fused Gran:
    Geom
    G4K
    G16K
    G64K

cdef inline int g_page_shift(const Gran *t) noexcept nogil:
    if Gran is G4K:
        return 12
    elif Gran is G16K:
        return 14
    elif Gran is G64K:
        return 16
    else:
        return t.page_shift

cdef inline int g_table_shift(const Gran *t) noexcept nogil:
    return g_page_shift(t) - 3

cdef inline u64 g_ptrs(const Gran *t) noexcept nogil:
    return (<u64>1) << g_table_shift(t)

cdef inline int g_level_shift(const Gran *t, int level) noexcept nogil:
    # ARM64_HW_PGTABLE_LEVEL_SHIFT(level)
    return g_table_shift(t) * (4 - level) + 3

cdef inline u64 g_level_size(const Gran *t, int level) noexcept nogil:
    # kvm_granule_size(level)
    return (<u64>1) << g_level_shift(t, level)

cdef inline u64 g_addr_mask(const Gran *t) noexcept nogil:
    # KVM_PTE_ADDR_MASK: GENMASK(47, PAGE_SHIFT)
    if Gran is Geom:
        return t.addr_mask
    else:
        return (((<u64>1) << 48) - 1) & ~(((<u64>1) << g_page_shift(t)) - 1)

cdef inline u64 g_pte_to_phys(const Gran *t, u64 pte) noexcept nogil:
    # kvm_pte_to_phys(): with 64 KiB pages PA[51:48] sits in bits 15:12.
    cdef u64 pa = pte & g_addr_mask(t)
    if g_page_shift(t) == 16:
        pa |= (pte & ADDR_51_48) << 36
    return pa

cdef inline u64 g_phys_to_pte(const Gran *t, u64 pa) noexcept nogil:
    # kvm_phys_to_pte()
    cdef u64 pte = pa & g_addr_mask(t)
    if g_page_shift(t) == 16:
        pte |= ((pa >> 48) & 0xF) << 12
    return pte

cdef inline u64 root_entries_in_ia(const Geom *g) noexcept nogil:
    """Entries per root page that lie inside the IPA space."""
    cdef int used = g.ia_bits - g_level_shift(g, g.start_level)
    if used >= g.table_shift:
        return g.ptrs
    return (<u64>1) << used

cdef inline u64 align_down(u64 x, u64 a) noexcept nogil:
    return x & ~(a - 1)

cdef inline bint pte_valid(u64 pte) noexcept nogil:
    return (pte & PTE_VALID) != 0

cdef inline bint pte_table(u64 pte, int level) noexcept nogil:
    # kvm_pte_table()
    if level == LAST_LEVEL:
        return False
    return (pte & 3) == 3

cdef inline bint pte_is_counted(u64 pte) noexcept nogil:
    # stage2_pte_is_counted()
    return pte != 0

cdef inline bint pte_is_locked(u64 pte) noexcept nogil:
    # stage2_pte_is_locked()
    return (pte & (PTE_VALID | INVALID_PTE_LOCKED)) == INVALID_PTE_LOCKED

# ---------------------------------------------------------------------------
# Event counters (bumped in _events.pxd)

# Counters and logs are of a C type distinct from the entries' u64 (unsigned
# long): by C's aliasing rules a store to a counter then cannot change an
# entry, so the compiler keeps entries and counters in registers across
# each other in the hot loops.
ctypedef unsigned long long cnt_t
ctypedef long long slong_t

cdef struct LogRec:
    int kind
    cnt_t a                 # TLBI: address; CMO: PA
    slong_t b               # TLBI: level or page count (LEVEL_UNINIT when unknown); CMO: bytes

cdef struct Counters:
    cnt_t visits
    cnt_t reloads
    cnt_t cb_leaf
    cnt_t cb_pre
    cnt_t cb_post
    cnt_t cb_level[NLEVELS]
    cnt_t tlbi_ipa
    cnt_t tlbi_ipa_nsh
    cnt_t tlbi_range
    cnt_t tlbi_vmid
    cnt_t tlbi_range_pages
    cnt_t dcache_calls
    cnt_t dcache_bytes
    cnt_t icache_calls
    cnt_t icache_bytes
    cnt_t pages_alloc
    cnt_t pages_free
    cnt_t mc_used
    cnt_t mc_exhausted
    cnt_t unlinked_freed
    cnt_t warnings
    cnt_t tlbi_log_total
    cnt_t cmo_log_total
    cnt_t writes            # descriptor stores (WRITE_ONCE, or a cmpxchg that won); cost model only
    cnt_t cmpxchg           # cmpxchg attempts on shared walks; cost model only
    int tlbi_log_n
    int cmo_log_n
    int warn_log_n
    LogRec tlbi_log[LOG_MAX]
    LogRec cmo_log[LOG_MAX]
    int warn_log[LOG_MAX]

# ---------------------------------------------------------------------------
# The page table and the mm_ops seam

cdef struct MC:
    # struct kvm_mmu_memory_cache, as far as pgtable.c can see it.
    s64 nobjs
    bint allocate_on_empty

cdef struct PT

cdef enum:
    MM_POOL = 1             # see _mm.pxd: called inline, not through the pointers
    MM_OTHER = 2

cdef struct MmOps:
    # struct kvm_pgtable_mm_ops: every page operation of the walker and the
    # visitors. A backend fills one of these, PT.mm with its own state and
    # PT.mm_kind.
    bint writable           # False: tables are read-only (no visitor may write)
    int bad_pa_err          # what a descriptor leading nowhere is (ERR_CORRUPT / ERR_OUTSIDE)
    # A zeroed page, refcount 1, from the memory cache (NULL when refused).
    u64 *(*zalloc_page)(PT *pt, MC *mc) noexcept nogil
    # References on the page holding addr; put_page() returns False (and
    # records the corruption) on an underflow.
    void (*get_page)(PT *pt, u64 *addr) noexcept nogil
    bint (*put_page)(PT *pt, u64 *addr) noexcept nogil
    int (*page_count)(PT *pt, u64 *addr) noexcept nogil
    # Host address of [pa, pa + nbytes) (8-byte aligned, inside one table
    # page) or NULL; and the physical address of a host address.
    u64 *(*phys_to_virt)(PT *pt, u64 pa, u64 nbytes) noexcept nogil
    u64 (*virt_to_phys)(PT *pt, const u64 *addr) noexcept nogil
    # Frees the backend's state (the core's lifetime ends; the core then clears pt.mm).
    void (*release)(PT *pt) noexcept nogil

cdef struct PT:
    # struct kvm_pgtable plus the simulator's state.
    Geom g
    const MmOps *mm_ops
    void *mm                # the backend's state
    short mm_kind           # MM_POOL: _mm.pxd calls the pool inline; else MM_OTHER (short: see Geom)
    # Root: pgd[i] is concatenated root page i (NULL: outside an image's memory).
    u64 *pgd[16]
    u64 root_pa
    u64 root_len            # entries of each root page the table uses
    # For architectural translation: output-address size, VTCR_EL2.HA.
    int ps_bits
    bint ha
    Counters c
    # Booleans, short for the reason given at Geom.
    short has_pgd
    short fwb
    short xnx
    short tlb_range
    # First corruption seen during the current operation.
    int err_kind
    u64 err_ipa
    int err_level
    u64 err_desc

cdef inline void mm_attach(PT *pt, void *state, const MmOps *ops, int kind) noexcept nogil:
    # A backend's attach function makes itself pt's: its state, its ops. The
    # core's detach calls ops.release(pt) (which frees the state) and clears both.
    pt.mm = state
    pt.mm_ops = ops
    pt.mm_kind = kind

cdef inline void set_error(PT *pt, int kind, u64 ipa, int level, u64 desc) noexcept nogil:
    if pt.err_kind == ERR_NONE:
        pt.err_kind = kind
        pt.err_ipa = ipa
        pt.err_level = level
        pt.err_desc = desc

cdef inline u64 memattr_normal(const PT *pt) noexcept nogil:
    return MEMATTR_NORMAL_FWB if pt.fwb else MEMATTR_NORMAL

cdef inline bint pte_cacheable(const PT *pt, u64 pte) noexcept nogil:
    # stage2_pte_cacheable()
    return pte_valid(pte) and (pte & S2_MEMATTR) == memattr_normal(pt)

cdef inline bint pte_executable(u64 pte) noexcept nogil:
    # stage2_pte_executable()
    return pte_valid(pte) and not (pte & S2_XN)

# ---------------------------------------------------------------------------
# Walker structs (kvm_pgtable_visit_ctx, kvm_pgtable_walker, kvm_pgtable_walk_data)

cdef struct Ctx:
    u64 *ptep
    u64 old
    void *arg
    u64 start
    u64 addr
    u64 end
    int level
    int flags
    # Cost-model events of this visit (write_pte() stores, shared-walk
    # cmpxchg attempts), added to pt.c by the walker after the callback
    # (flush_visit_counts()): a local count stays in a register across a
    # run of entries, where a counter in PT would be a load and store each.
    cnt_t writes
    cnt_t cmpxchg

ctypedef int (*visitor_fn)(PT *pt, Ctx *ctx, int visit) noexcept nogil

# Visits a run of last-level entries: ctx holds the first entry's addr; the
# function visits n entries (ptep0[0] .. ptep0[n-1]) with LEAF callbacks and
# returns the first result that stops the walk (0 when none did), storing
# how many callbacks it made in *done. Built with visit_leaves() (_walk.pxd).
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
