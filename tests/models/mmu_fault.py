"""mmu.c's fault path in plain Python: the oracle for the engine's
(s2fast/_mmu.pyx). A guest access is free when the MMU's walk finds the page
mapped (writable, for a write); otherwise user_mem_abort() tops the vCPU's
memory cache up and calls relax_perms() when the entry the walk ended on is
a leaf of the size to map, else map() of that size (a page while the slot
logs dirty pages, else the backing's), retried on -EAGAIN; a write that
lands on a logging slot marks its page dirty. The pgtable.c calls are the
engine's own (checked against tests/models/reference.py elsewhere); this
model checks the decisions around them, access by access. It is handed an
s2fast.mmu.VM, whose state it reads and updates as the kernel would."""
from __future__ import annotations

import numpy as np

# The kernel's values, restated (the model imports nothing from s2fast):
EAGAIN = -11
PROT_R, PROT_W = 1 << 3, 1 << 2                 # enum kvm_pgtable_prot
FAULT_FLAGS = (1 << 4) | (1 << 3)               # KVM_PGTABLE_WALK_HANDLE_FAULT | _SHARED
KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE = 40
S2AP_W = 1 << 7
OA_MASK = (1 << 48) - 1
TABLE_PA_BASE = 1 << 46                         # where the simulator's pool pages live (s2fast._pool)


def hw_walk(vm, ipa: int) -> tuple[int, int]:
    """The MMU's walk: (level, descriptor) of the entry that ends it, 0 when invalid."""
    g = vm.pt.geometry
    desc = vm.pt.descriptors
    level = g.start_level
    idx = ipa >> g.level_shift(level)
    base = 0
    while True:
        pte = int(desc[base + idx])
        if not pte & 1:
            return level, 0
        if level == 3 or not pte & 2:
            return level, pte
        base = ((pte & OA_MASK & ~(vm.host.granule - 1)) - TABLE_PA_BASE) >> 3
        level += 1
        idx = (ipa >> g.level_shift(level)) & (g.ptrs_per_table - 1)


def fault_size(vm, slot, ipa: int) -> int:
    """The size user_mem_abort() maps: a page while the slot logs dirty
    pages (force_pte), else the backing's."""
    return vm.host.kind_sizes[0 if slot.logging else slot.kind_at(ipa)]


def user_mem_abort(vm, slot, ipa: int, level: int, pte: int, write: bool) -> int:
    c = vm.counters
    mc = vm.vcpu_cache
    # topup_memcache: a permission fault needs a table only to break a block up while logging
    topup = not pte or (slot.logging and write)
    if topup and mc.nobjs < 4 - vm.pt.geometry.start_level - 1:          # kvm_mmu_cache_min_pages()
        c["vcpu_cache_topups"] += 1
        c["vcpu_cache_topup_pages"] += KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE - mc.nobjs
        mc.topup(KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE)
    size = fault_size(vm, slot, ipa)
    if pte and size == vm.pt.geometry.level_size(level):
        c["faults_perm"] += 1
        return vm.pt._relax_perms_unchecked(ipa, PROT_R | PROT_W, FAULT_FLAGS)
    c["faults_perm_block" if pte else "faults_translation"] += 1
    if not write:
        c["faults_read"] += 1
    fipa = ipa & ~(size - 1)
    prot = PROT_R | PROT_W if write or not slot.logging else PROT_R
    return vm.pt._map_unchecked(fipa, size, slot.phys(fipa), prot, mc, FAULT_FLAGS, False)


def guest_access(vm, ipa: int, write: bool) -> int:
    slot = vm.slot_of(ipa)
    ipa &= ~(vm.host.granule - 1)
    c = vm.counters
    c["guest_writes" if write else "guest_reads"] += 1
    ret = EAGAIN
    for attempt in range(4):
        level, pte = hw_walk(vm, ipa)
        if (pte & S2AP_W) if write else pte:
            if attempt == 0:
                c["writes_no_fault" if write else "reads_no_fault"] += 1
            return 0
        ret = user_mem_abort(vm, slot, ipa, level, pte, write)
        if ret != EAGAIN:
            break
        c["fault_retries"] += 1
    if ret:
        c["fault_errors"] += 1
        return ret
    if slot.logging and write:
        off = (ipa - slot.base) >> vm.host.page_shift
        slot.dirty_bitmap[off >> 6] |= np.uint64(1 << (off & 63))
        c["pages_marked_dirty"] += 1
    return 0
