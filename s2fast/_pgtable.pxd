# cython: language_level=3
# The stage-2 page-table operations of pgtable.c (kvm_pgtable_stage2_*),
# called by the core with the GIL released. Results are the kernel's (0 or a
# negative errno), or one of the internal S2_E* results.

from ._types cimport u64, s64, PT, MC, Ctx

cdef u64 kvm_pgtable_stage2_pte_prot(u64 pte) noexcept nogil
cdef int stage2_set_xn_attr(PT *pt, u64 prot, u64 *attr) noexcept nogil
cdef int kvm_pgtable_get_leaf(PT *pt, u64 addr, u64 *ptep, s64 *level) noexcept nogil
cdef int kvm_pgtable_stage2_map(PT *pt, u64 addr, u64 size, u64 phys, u64 prot, MC *mc,
                                int flags, bint force_pte) noexcept nogil
cdef int kvm_pgtable_stage2_set_owner(PT *pt, u64 addr, u64 size, MC *mc, u64 owner_id) noexcept nogil
cdef int kvm_pgtable_stage2_unmap(PT *pt, u64 addr, u64 size) noexcept nogil
cdef int kvm_pgtable_stage2_wrprotect(PT *pt, u64 addr, u64 size) noexcept nogil
cdef int kvm_pgtable_stage2_mkyoung(PT *pt, u64 addr, int flags) noexcept nogil
cdef int kvm_pgtable_stage2_relax_perms(PT *pt, u64 addr, u64 prot, int flags) noexcept nogil
cdef int kvm_pgtable_stage2_test_clear_young(PT *pt, u64 addr, u64 size, bint mkold,
                                             bint *young) noexcept nogil
cdef int kvm_pgtable_stage2_flush(PT *pt, u64 addr, u64 size) noexcept nogil
# The kernel's split visitor, for a Python split visitor's ctx.split() (_visitors).
cdef int stage2_split_walker(PT *pt, Ctx *ctx, int visit) noexcept nogil
cdef int kvm_pgtable_stage2_split(PT *pt, u64 addr, u64 size, MC *mc, int flags, int max_level,
                                  bint skip_return) noexcept nogil
cdef u64 *kvm_pgtable_stage2_create_unlinked(PT *pt, u64 phys, int level, u64 prot, MC *mc,
                                             bint force_pte, int *err) noexcept nogil
cdef void kvm_pgtable_stage2_free_unlinked(PT *pt, u64 *pgtable, int level) noexcept nogil
cdef void kvm_pgtable_stage2_destroy(PT *pt) noexcept nogil
