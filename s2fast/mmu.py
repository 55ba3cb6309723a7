"""A guest's stage 2 as ``arch/arm64/kvm/mmu.c`` drives it: ``VM``.

A ``VM`` sits on one ``Stage2PageTable`` and drives it the way KVM's MMU
code does during dirty logging (live migration):

* memslots pre-faulted with 1 GiB blocks, 2 MiB blocks, 4 KiB pages or a
  seeded mix (built with a few ``map`` calls per run of equal backing);
* enabling dirty logging: without "initially all set", the slot is
  write-protected in 1 GiB pieces (``kvm_mmu_wp_memory_region``), its TLB
  range flushed, then split by ``kvm_mmu_split_huge_pages``' chunk loop with
  its split-cache top-up rule; with it, nothing happens until CLEAR;
* ``KVM_CLEAR_DIRTY_LOG``: for every 64-page bitmap word with dirty bits
  being cleared, ``kvm_arch_mmu_enable_log_dirty_pt_masked`` (write-protect
  from the first to the last set bit; in initially-all-set mode, also split
  that range), then one TLB flush of the slot;
* guest writes: the hardware walk is done on the descriptors directly (it
  costs KVM nothing); a write that faults goes through ``user_mem_abort``'s
  choice of ``relax_perms`` or ``map`` and marks the page dirty.

Every walk is the engine's, so every count is exact. Events that belong to
mmu.c rather than pgtable.c (remote TLB flushes, cache top-ups, faults, mask
words) are counted by the VM (``VM.counters``). The mmu.c functions are
module functions under their kernel names, taking the VM as the kernel's
take ``struct kvm``; the VM holds the state and the ioctl-level methods.

Every rule depends on the host's page size, which is also the stage-2
granule (see s2fast.hostrules); the 4 KiB host is the default.
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Iterable, Optional

import numpy as np

from . import checks
from ._pool import TABLE_PA_BASE, MemCache
from .flags import EAGAIN, ENOMEM, RW, Prot, WalkFlags
from .geometry import OA_MASK
from .hostrules import check_chunk, host_rules, split_nr_page_tables
from .memslot import K2M, K4K, PHYS_OFFSET, Backing, Memslot, _assign_kinds
from .pgtable import DEFAULT_RESERVE, Stage2PageTable
from .sizes import GiB, format_size, parse_size
from .strategy import AnyStrategy, as_strategy
from .variants import Strategy

BITS_PER_LONG = 64
#: arm64's KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE: a vCPU cache is topped up to this
VCPU_CACHE_CAPACITY = 40
#: __TLBI_RANGE_PAGES(31, 3): the most pages one range TLBI covers
MAX_TLBI_RANGE_PAGES = 1 << 21
#: where add_memslot() places the first slot when no base is given (QEMU virt RAM)
DEFAULT_BASE = 1 * GiB
#: user_mem_abort() walks with these flags
FAULT_FLAGS = int(WalkFlags.HANDLE_FAULT | WalkFlags.SHARED)
#: bitmap words a CLEAR handles per batch of Python work (16 GiB of guest)
_CLEAR_SEGMENT = 1 << 16
_RW = int(RW)
_R = int(Prot.R)

# Descriptor bits the hardware walk reads.
_PTE_VALID = 1
_PTE_TABLE = 2
_S2AP_W = 1 << 7
_TABLE_PA_BASE = TABLE_PA_BASE

#: the counters a VM keeps for mmu.c's own events (the engine counts the rest)
COUNTERS = (
    "wp_calls",               # kvm_pgtable_stage2_wrprotect() calls
    "split_calls",            # kvm_pgtable_stage2_split() calls
    "split_cache_topups",     # split-cache top-ups (__kvm_mmu_topup_memory_cache)
    "split_cache_topup_pages",
    "split_errors",           # kvm_mmu_split_huge_pages() calls that stopped early
    "split_enomem",           # ... of which with -ENOMEM (the split is best-effort)
    "mmu_tlbi_vmid",          # remote flushes (kvm_flush_remote_tlbs_memslot): whole VMID
    "mmu_tlbi_vmid_range",    # ... or range TLBIs when the CPU has them
    "mmu_tlbi_range_pages",
    "clear_calls",            # KVM_CLEAR_DIRTY_LOG per memslot
    "mask_words",             # kvm_arch_mmu_enable_log_dirty_pt_masked() calls
    "guest_writes",
    "writes_no_fault",        # the page was writable: no exit
    "guest_reads",
    "reads_no_fault",         # the page was mapped: no exit
    "faults_read",            # ... of the faults counted below, those of a read
    "faults_perm",            # permission fault fixed by relax_perms()
    "faults_perm_block",      # permission fault on a block: map() of a page
    "faults_translation",     # translation fault: map()
    "fault_retries",          # -EAGAIN: the guest retries the access
    "fault_errors",
    "vcpu_cache_topups",
    "vcpu_cache_topup_pages",
    "pages_marked_dirty",     # mark_page_dirty_in_slot()
    "dirty_bitmap_bytes",     # bitmap bytes kvm_clear_dirty_log_protect() scans (whole slot per CLEAR)
)


class VM:
    """A guest's stage 2 as arch/arm64/kvm/mmu.c manages it.

    ``strategy`` is the walker variant used for every split;
    ``eager_split_chunk`` is KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE (0: off);
    ``initially_set`` is manual-protect with KVM_DIRTY_LOG_INITIALLY_SET;
    ``split_host_pages`` caps the pages the host can give the split cache
    (None: unlimited), so that its top-up can fail with -ENOMEM;
    ``granule`` is the host's page size (4096, 16384 or 65536), which is
    the stage-2 granule and sets every size rule (see ``HostRules``)."""

    def __init__(self, ia_bits: int = 40, *, strategy: Any = Strategy.KERNEL, eager_split_chunk: Any = 0,
                 initially_set: bool = True, fwb: bool = False, tlb_range: bool = False,
                 split_host_pages: Optional[int] = None, reserve_bytes: int = DEFAULT_RESERVE,
                 granule: Any = 4096) -> None:
        self.host = h = host_rules(granule)
        self.pt = Stage2PageTable(ia_bits, granule=h.granule, fwb=fwb, tlb_range=tlb_range,
                                  reserve_bytes=reserve_bytes)
        self.strategy = strategy
        self.eager_split_chunk = eager_split_chunk
        self.initially_set = checks.boolean("initially_set", initially_set)
        if split_host_pages is not None:
            split_host_pages = checks.integer("split_host_pages", split_host_pages)
        self.split_host_pages = split_host_pages
        self.memslots: list[Memslot] = []
        self._bases: list[int] = []
        self.split_cache = MemCache(0, on_empty="allocate")
        self.vcpu_cache = MemCache(0, on_empty="allocate")
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        g = self.pt.geometry
        self._vcpu_min_pages = 4 - g.start_level - 1          # kvm_mmu_cache_min_pages()
        self._shift = {lv: g.level_shift(lv) for lv in range(g.start_level, 4)}
        self._level_size = {lv: 1 << s for lv, s in self._shift.items()}
        self._desc = self.pt.descriptors
        self._page_mask = ~(h.granule - 1)
        self._idx_mask = g.ptrs_per_table - 1
        self._addr_mask = OA_MASK & ~(h.granule - 1)

    # -- configuration ------------------------------------------------------

    @property
    def strategy(self) -> AnyStrategy:
        return self._strategy

    @strategy.setter
    def strategy(self, v: Any) -> None:
        self._strategy = as_strategy(v)

    @property
    def eager_split_chunk(self) -> int:
        return self._chunk

    @eager_split_chunk.setter
    def eager_split_chunk(self, v: Any) -> None:
        self._chunk = check_chunk(v, self.host.granule)
        self._split_capacity = split_nr_page_tables(self._chunk, self.host.granule)

    def __repr__(self) -> str:
        gran = "" if self.host.granule == 4096 else f"granule={self.host.granule}, "
        return (f"VM({gran}strategy={self.strategy.name}, eager_split_chunk={format_size(self._chunk)}, "
                f"initially_set={self.initially_set}, memslots={len(self.memslots)}, "
                f"pages_live={self.pt.pages_live})")

    # -- memslots -------------------------------------------------------------

    def add_memslot(self, size: Any, backing: Any = "hugetlb", *, base: Any = None,
                    seed: int = 0, populate: bool = True, page_aligned: bool = False) -> Memslot:
        """Create a memslot and pre-fault all of it, writable, with its
        backing (as a guest that has touched all its memory; by default the
        host's largest stage-2 block: 1 GiB, 32 MiB or 512 MiB). Returns it.
        With ``populate=False`` nothing is mapped: the guest's first touch
        of each page faults. Slots are PMD_SIZE aligned; with
        ``page_aligned=True`` a slot backed by pages only may start and end
        on any page boundary (KVM itself needs no more)."""
        h = self.host
        size = parse_size(size)
        backing = Backing.parse(backing, h.granule)
        page_aligned = checks.boolean("page_aligned", page_aligned)
        unit = h.granule if page_aligned and backing.pct_4k == 100 else h.unit
        seed = checks.integer("seed", seed)
        populate = checks.boolean("populate", populate)
        if base is None:
            base = self.memslots[-1].end if self.memslots else DEFAULT_BASE
            base = -(-base // unit) * unit
        base = parse_size(base)
        if size == 0 or size % unit:
            raise ValueError(f"memslot size {size} is not a positive multiple of {format_size(unit)}"
                             + ("" if h.granule == 4096 else f" (PMD_SIZE of a {h.describe()})"))
        if base % unit:
            raise ValueError(f"memslot base {base:#x} is not {format_size(unit)} aligned")
        if base + size > 1 << self.pt.ia_bits:
            raise ValueError(f"memslot {base:#x}+{format_size(size)} does not fit a "
                             f"{self.pt.ia_bits}-bit IPA space")
        for s in self.memslots:
            if base < s.end and s.base < base + size:
                raise ValueError(f"memslot {base:#x}+{format_size(size)} overlaps memslot {s.id} "
                                 f"at {s.base:#x}+{format_size(s.size)}")
        rng = np.random.default_rng([seed, len(self.memslots)])
        slot = Memslot(len(self.memslots), base, size, backing, seed, _assign_kinds(base, size, backing, rng, h),
                       granule=h.granule)
        if populate:
            self._build(slot)
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self.memslots.insert(i, slot)
        return slot

    def _build(self, slot: Memslot) -> None:
        kinds = slot.kinds
        edges = np.flatnonzero(np.diff(kinds)) + 1
        starts = np.concatenate(([0], edges)).tolist()
        ends = np.concatenate((edges, [len(kinds)])).tolist()
        mc = MemCache(1 << 40)
        unit, pmd = self.host.unit, self.host.pmd_size
        for a, b in zip(starts, ends):
            kind = int(kinds[a])
            ipa = slot.base + a * unit
            size = min(b * unit, slot.size) - a * unit
            phys = PHYS_OFFSET + ipa + (pmd if kind == K2M else 0)
            ret = self.pt._map_unchecked(ipa, size, phys, _RW, mc, 0, kind == K4K)
            if ret:
                raise RuntimeError(f"building memslot {slot.id}: map({ipa:#x}, {size:#x}) returned {ret}")
        self._desc = self.pt.descriptors

    def _slots(self, slot: Any, logging: Optional[bool] = None) -> list[Memslot]:
        """The memslots ``slot`` names (all when None); with ``logging``,
        each must be (True) or must not be (False) logging dirty pages."""
        if slot is None:
            slots = list(self.memslots)
        elif isinstance(slot, Memslot):
            if slot not in self.memslots:
                raise ValueError(f"memslot {slot.id} does not belong to this VM")
            slots = [slot]
        else:
            i = checks.integer("slot", slot)
            slots = [s for s in self.memslots if s.id == i]
            if not slots:
                raise ValueError(f"no memslot with id {i}")
        for s in slots:
            if logging is not None and s.logging != logging:
                raise ValueError(f"memslot {s.id} is {'not' if logging else 'already'} logging dirty pages")
        return slots

    def slot_of(self, ipa: int) -> Optional[Memslot]:
        i = bisect.bisect(self._bases, ipa) - 1
        if i >= 0 and ipa < self.memslots[i].end:
            return self.memslots[i]
        return None

    @property
    def total_pages(self) -> int:
        return sum(s.npages for s in self.memslots)

    def snapshot(self) -> dict[str, int]:
        """The engine's counters and the VM's (``COUNTERS``) as one dict."""
        d = {k: v for k, v in self.pt.stats.as_dict().items() if isinstance(v, int)}
        d["entries_written"], d["cmpxchg"] = self.pt._cost_counts()
        # Maintenance done, not just hook calls: mmu.c's dcache hook
        # (clean_dcache_guest_page) returns at once on FWB hardware.
        d["cmo_done"] = d["icache_calls"] + (0 if self.pt.fwb else d["dcache_calls"])
        d.update(self.counters)
        return d

    # -- dirty logging ------------------------------------------------------------------

    def enable_dirty_logging(self, slot: Any = None) -> None:
        """Set KVM_MEM_LOG_DIRTY_PAGES on a memslot (all when None), as
        kvm_arch_commit_memory_region() reacts: with initially-all-set the
        bitmap starts full and nothing else happens; otherwise the slot is
        write-protected, its TLBs flushed, and it is eagerly split."""
        for s in self._slots(slot, logging=False):
            words = -(-s.npages // BITS_PER_LONG)
            bm = np.zeros(words, dtype=np.uint64)
            if self.initially_set:
                bm[: s.npages // BITS_PER_LONG] = np.uint64(0xFFFFFFFFFFFFFFFF)
                if s.npages % BITS_PER_LONG:
                    bm[-1] = np.uint64((1 << (s.npages % BITS_PER_LONG)) - 1)
            s.dirty_bitmap = bm
            s.logging = True
            if self.initially_set:
                continue
            kvm_stage2_wp_range(self, s.base, s.end)            # kvm_mmu_wp_memory_region()
            kvm_flush_remote_tlbs_memslot(self, s)
            kvm_mmu_split_huge_pages(self, s.base, s.end)       # kvm_mmu_split_memory_region()

    def disable_dirty_logging(self, slot: Any = None) -> None:
        """Clear KVM_MEM_LOG_DIRTY_PAGES: the bitmap goes, and so do the
        split cache's leftover pages (kvm_mmu_free_memory_cache)."""
        for s in self._slots(slot, logging=True):
            s.logging = False
            s.dirty_bitmap = None
        self.split_cache = MemCache(0, on_empty="allocate")

    def get_dirty_log(self, slot: Any) -> np.ndarray:
        """KVM_GET_DIRTY_LOG with manual protect: a copy of the bitmap."""
        (s,) = self._slots(slot, logging=True)
        return s.dirty_bitmap.copy()

    def clear_dirty_log(self, slot: Any = None, bitmap: Optional[np.ndarray] = None,
                        progress: Optional[Callable[[float], None]] = None) -> int:
        """KVM_CLEAR_DIRTY_LOG over whole memslots (all when None), with
        ``bitmap`` as userspace's bits to clear (default: everything dirty
        now, i.e. GET_DIRTY_LOG then CLEAR). Returns the mask words handed
        to kvm_arch_mmu_enable_log_dirty_pt_masked()."""
        slots = self._slots(slot, logging=True)
        if bitmap is not None:
            if len(slots) != 1:
                raise ValueError("a bitmap can only be given for one memslot")
            if not isinstance(bitmap, np.ndarray) or bitmap.dtype != np.uint64 \
                    or bitmap.shape != slots[0].dirty_bitmap.shape:
                raise ValueError(f"bitmap must be a uint64 array of shape {slots[0].dirty_bitmap.shape}")
        total = 0
        c = self.counters
        for s in slots:
            bm = s.dirty_bitmap
            n = 0
            # Word by word as kvm_clear_dirty_log_protect() goes; a segment of
            # the bitmap at a time, so that the Python lists stay small.
            for lo in range(0, len(bm), _CLEAR_SEGMENT):
                hi = min(lo + _CLEAR_SEGMENT, len(bm))
                user = bm[lo:hi].copy() if bitmap is None else bitmap[lo:hi]
                cleared = user & bm[lo:hi]      # what atomic_long_fetch_andnot() really cleared
                bm[lo:hi] &= ~user
                idx = np.flatnonzero(cleared)
                masks = cleared[idx].tolist()
                offsets = ((idx + lo) * BITS_PER_LONG + s.base_gfn).tolist()
                for m, gfn in zip(masks, offsets):
                    kvm_arch_mmu_enable_log_dirty_pt_masked(self, gfn, m)
                n += len(masks)
                if progress is not None:
                    progress(hi / len(bm))
            c["mask_words"] += n
            c["clear_calls"] += 1
            c["dirty_bitmap_bytes"] += len(bm) * 8
            if n:
                kvm_flush_remote_tlbs_memslot(self, s)
            total += n
        return total

    # -- guest accesses ----------------------------------------------------------------

    def translate(self, ipa: int) -> tuple[int, int]:
        """The hardware's stage-2 walk of ``ipa``: (level, descriptor) of the
        entry that ends it (descriptor 0 if invalid). Counts nothing."""
        ipa = checks.integer("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
        return self._translate(ipa)

    def _translate(self, ipa: int) -> tuple[int, int]:
        level = self.pt.start_level
        shift = self._shift
        idx = ipa >> shift[level]
        base = 0
        addr_mask, idx_mask = self._addr_mask, self._idx_mask
        while True:
            try:
                pte = int(self._desc[base + idx])
            except IndexError:          # the pool grew since the view was taken
                self._desc = self.pt.descriptors
                pte = int(self._desc[base + idx])
            if not pte & _PTE_VALID:
                return level, 0
            if level == 3 or not pte & _PTE_TABLE:
                return level, pte
            base = ((pte & addr_mask) - _TABLE_PA_BASE) >> 3
            level += 1
            idx = (ipa >> shift[level]) & idx_mask

    def write(self, ipa: int) -> int:
        """One guest write to ``ipa`` (inside a memslot); returns 0 or the
        fault handler's error. See ``write_pages``."""
        ipa = checks.integer("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
        slot = self.slot_of(ipa)
        if slot is None:
            raise ValueError(f"IPA {ipa:#x} is outside every memslot")
        return guest_write(self, slot, ipa & self._page_mask)

    def write_pages(self, ipas: Iterable[int]) -> int:
        """Guest writes, one per page address, in order. A write to a
        writable page costs nothing; one that faults is handled as
        user_mem_abort() does for a write. Returns how many failed."""
        errors = 0
        slot_of = self.slot_of
        last: Optional[Memslot] = None
        page_mask = self._page_mask
        for ipa in ipas:
            ipa = int(ipa) & page_mask
            if last is None or not (last.base <= ipa < last.end):
                last = slot_of(ipa)
                if last is None:
                    raise ValueError(f"IPA {ipa:#x} is outside every memslot")
            if guest_write(self, last, ipa):
                errors += 1
        return errors


# ---------------------------------------------------------------------------
# mmu.c, function by function (the VM stands for struct kvm)

def kvm_stage2_wp_range(vm: VM, addr: int, end: int) -> int:
    """kvm_stage2_wp_range(): stage2_apply_range() in pieces of one
    KVM_PGTABLE_MIN_BLOCK_LEVEL entry (1 GiB, 32 MiB or 512 MiB)."""
    wrprotect = vm.pt._wrprotect_unchecked
    piece = vm.host.wp_piece
    n = 0
    ret = 0
    while True:
        nxt = (addr + piece) & ~(piece - 1)
        if nxt > end:
            nxt = end
        ret = wrprotect(addr, nxt - addr)
        n += 1
        if ret or nxt == end:
            break
        addr = nxt
    vm.counters["wp_calls"] += n
    return ret


def topup_split_cache(vm: VM) -> int:
    """__kvm_mmu_topup_memory_cache(split cache, capacity, capacity)."""
    mc = vm.split_cache
    cap = vm._split_capacity
    have = mc.nobjs
    want = cap - have
    give = want if vm.split_host_pages is None else min(want, vm.split_host_pages)
    c = vm.counters
    c["split_cache_topups"] += 1
    if give > 0:
        mc.topup(have + give)
        c["split_cache_topup_pages"] += give
        if vm.split_host_pages is not None:
            vm.split_host_pages -= give
    return 0 if mc.nobjs >= cap else ENOMEM


def kvm_mmu_split_huge_pages(vm: VM, addr: int, end: int) -> int:
    """kvm_mmu_split_huge_pages(): split [addr, end) one chunk at a time,
    topping the split cache up to kvm_mmu_split_nr_page_tables(chunk)
    whenever it holds fewer. Best-effort: the first error stops it."""
    chunk = vm._chunk
    if chunk == 0:
        return 0
    mc = vm.split_cache
    cap = vm._split_capacity
    split, strategy = vm.pt._split_unchecked, vm._strategy
    n = 0
    ret = 0
    while True:
        if mc.nobjs < cap:
            ret = topup_split_cache(vm)
            if ret:
                break
        nxt = (addr + chunk) & ~(chunk - 1)
        if nxt > end:
            nxt = end
        ret = split(addr, nxt - addr, mc, strategy)
        n += 1
        if ret or nxt == end:
            break
        addr = nxt
    c = vm.counters
    c["split_calls"] += n
    if ret:
        c["split_errors"] += 1
        if ret == ENOMEM:
            c["split_enomem"] += 1
    return ret


def kvm_flush_remote_tlbs_memslot(vm: VM, slot: Memslot) -> None:
    """kvm_flush_remote_tlbs_memslot() -> kvm_tlb_flush_vmid_range()."""
    c = vm.counters
    if not vm.pt.tlb_range:
        c["mmu_tlbi_vmid"] += 1
        return
    pages = slot.npages
    while pages > 0:
        inval = min(pages, MAX_TLBI_RANGE_PAGES)
        c["mmu_tlbi_vmid_range"] += 1
        c["mmu_tlbi_range_pages"] += inval
        pages -= inval


def kvm_arch_mmu_enable_log_dirty_pt_masked(vm: VM, gfn_offset: int, mask: int) -> None:
    """Write-protect the pages of one bitmap word from its first to its last
    set bit (one wrprotect call when that range is inside one piece), and in
    initially-all-set mode with eager splitting, split the range too."""
    page_shift = vm.host.page_shift
    start = (gfn_offset + (mask & -mask).bit_length() - 1) << page_shift
    end = (gfn_offset + mask.bit_length()) << page_shift
    if (start ^ (end - 1)) >> (vm.host.wp_piece.bit_length() - 1):
        kvm_stage2_wp_range(vm, start, end)
    else:
        vm.pt._wrprotect_unchecked(start, end - start)
        vm.counters["wp_calls"] += 1
    if vm.initially_set and vm._chunk != 0:
        kvm_mmu_split_huge_pages(vm, start, end)


def guest_write(vm: VM, slot: Memslot, ipa: int, write: bool = True,
                walked: Optional[tuple[int, int]] = None) -> int:
    """A guest write (or, ``write=False``, read) of page ``ipa``: free when
    the hardware walk finds it writable (for a read: valid), else a stage-2
    fault (user_mem_abort()), retried on -EAGAIN; a write that lands marks
    the page dirty (mark_page_dirty_in_slot()). ``walked``: the hardware
    walk's (level, descriptor) for ``ipa`` when the caller has just done it
    (a batch translation)."""
    c = vm.counters
    c["guest_writes" if write else "guest_reads"] += 1
    ret = -EAGAIN
    for attempt in range(4):
        level, pte = walked if attempt == 0 and walked is not None else vm._translate(ipa)
        if pte & _S2AP_W if write else pte:
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
        slot.dirty_bytes[off >> 3] |= 1 << (off & 7)
        c["pages_marked_dirty"] += 1
    return 0


def user_mem_abort(vm: VM, slot: Memslot, ipa: int, level: int, pte: int, write: bool = True) -> int:
    """A fault on ``ipa``, whose walk ended at ``level`` with ``pte``: top
    the vCPU cache up, then relax_perms() when the entry is a leaf of the
    size to map, else map() that size (pages while logging, else the
    backing's). A read faults only on an invalid entry; on a logging slot
    it maps the page read-only (only a write fault maps it writable)."""
    c = vm.counters
    mc = vm.vcpu_cache
    if mc.nobjs < vm._vcpu_min_pages:
        c["vcpu_cache_topups"] += 1
        c["vcpu_cache_topup_pages"] += VCPU_CACHE_CAPACITY - mc.nobjs
        mc.topup(VCPU_CACHE_CAPACITY)
    size = vm.host.kind_sizes[0 if slot.logging else slot.kind_at(ipa)]
    if pte and size == vm._level_size[level]:
        c["faults_perm"] += 1
        return vm.pt._relax_perms_unchecked(ipa, _RW, FAULT_FLAGS)
    c["faults_perm_block" if pte else "faults_translation"] += 1
    if not write:
        c["faults_read"] += 1
    fipa = ipa & ~(size - 1)
    prot = _RW if write or not slot.logging else _R
    return vm.pt._map_unchecked(fipa, size, slot.phys(fipa), prot, mc, FAULT_FLAGS, False)
