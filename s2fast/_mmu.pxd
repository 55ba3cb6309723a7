# cython: language_level=3
# mmu.c's stage-2 fault path: user_mem_abort() and the guest accesses that
# reach it, run over a batch of accesses with the GIL released. It drives
# pgtable.c (_pgtable) as mmu.c does; the VM's state (memslots, the vCPU's
# memory cache, counters) lives in s2fast.mmu and is passed in.

from libc.stdint cimport uint8_t
from ._types cimport u64, s64, PT, MC

cdef struct Slot:
    # struct kvm_memory_slot, as far as the fault path reads it.
    u64 base
    u64 end
    bint logging            # KVM_MEM_LOG_DIRTY_PAGES
    const uint8_t *kinds    # backing kind of each PMD_SIZE unit (0 pages, 1 PMD, 2 PUD)
    u64 *dirty_bitmap       # NULL unless logging

cdef struct Host:
    # The host's size rules the fault path needs (s2fast.hostrules).
    int unit_shift          # log2(PMD_SIZE): a memslot's backing is chosen per unit
    u64 kind_size[3]        # leaf size of each backing kind
    u64 pmd_size
    u64 phys_offset         # guest memory's PA is phys_offset + IPA (+ PMD_SIZE for PMD blocks)
    s64 min_pages           # kvm_mmu_cache_min_pages()
    s64 cache_capacity      # KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE

# The VM's counters the fault path bumps, in the order of FAULT_COUNTERS
# (_mmu.pyx), which names them for s2fast.mmu.
cdef enum:
    C_GUEST_WRITES
    C_WRITES_NO_FAULT
    C_GUEST_READS
    C_READS_NO_FAULT
    C_FAULTS_READ
    C_FAULTS_PERM
    C_FAULTS_PERM_BLOCK
    C_FAULTS_TRANSLATION
    C_FAULT_RETRIES
    C_FAULT_ERRORS
    C_VCPU_CACHE_TOPUPS
    C_VCPU_CACHE_TOPUP_PAGES
    C_PAGES_MARKED_DIRTY
    N_FAULT_COUNTERS

cdef int user_mem_abort(PT *pt, MC *mc, const Host *h, const Slot *s, u64 ipa, int level, u64 pte,
                        bint write, u64 *counts) noexcept nogil

# The accesses of a batch, with the GIL released (see _mmu.pyx); the core
# calls it holding the table's busy flag.
cdef tuple guest_accesses(PT *pt, MC *mc, tuple host, list slots, const u64[::1] ipas,
                          const uint8_t[::1] writes, u64[::1] counts)
