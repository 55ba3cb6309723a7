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
* guest accesses: the MMU's walk of each (it costs KVM nothing); one that
  faults goes through user_mem_abort()'s choice of ``relax_perms`` or
  ``map``, and a write marks the page dirty. That path runs in the engine
  (s2fast/_mmu.pyx), a batch of accesses per call (``VM.access_pages``).

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
from ._mmu import FAULT_COUNTERS, FAULT_FLAGS  # noqa: F401 (FAULT_FLAGS: part of the API)
from ._pool import MemCache
from .flags import ENOMEM, RW
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
#: bitmap words a CLEAR handles per batch of Python work (16 GiB of guest)
_CLEAR_SEGMENT = 1 << 16
_RW = int(RW)

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
        # What the engine's fault path needs of the host: PMD_SIZE, the leaf
        # size of each backing kind, PHYS_OFFSET, kvm_mmu_cache_min_pages()
        # and the vCPU cache's capacity.
        self._fault_host = (h.pmd_size, h.kind_sizes, PHYS_OFFSET, 4 - self.pt.geometry.start_level - 1,
                            VCPU_CACHE_CAPACITY)
        self._page_mask = ~(h.granule - 1)

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
        """The MMU's stage-2 walk of ``ipa``: (level, descriptor) of the
        entry that ends it (descriptor 0 if invalid). Counts nothing."""
        ipa = checks.integer("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
        row = self.pt.translate_batch(np.array([ipa], dtype=np.uint64), "read", ha=True)[0]
        desc = int(row["desc"])
        return int(row["level"]), desc if desc & 1 else 0

    def write(self, ipa: int) -> int:
        """One guest write to ``ipa`` (inside a memslot); returns 0 or the
        fault handler's error. See ``access_pages``."""
        ipa = checks.integer("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
        return guest_accesses(self, np.array([ipa], dtype=np.uint64), np.ones(1, dtype=np.uint8))[1]

    def write_pages(self, ipas: Iterable[int]) -> int:
        """Guest writes, one per page address, in order. Returns how many
        failed. See ``access_pages``."""
        return self.access_pages(ipas, True)

    def access_pages(self, ipas: Any, writes: Any = True) -> int:
        """Guest accesses, in order: ``ipas`` (page addresses, each inside a
        memslot) and ``writes`` (one bool per access, or one for all). An
        access the MMU's walk allows costs nothing; one that faults is
        handled as user_mem_abort() does, retried on -EAGAIN, and a write
        marks its page dirty on a logging slot. Returns how many accesses
        failed (the handler's error; counted in ``fault_errors``)."""
        arr = np.asarray(list(ipas) if not hasattr(ipas, "__len__") else ipas)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise TypeError(f"ipas must be a sequence of integer addresses, not {arr.dtype} of shape {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >> self.pt.ia_bits):
            bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
            raise ValueError(f"IPA {bad:#x} is outside the {self.pt.ia_bits}-bit IPA space")
        w = np.asarray(writes)
        if w.dtype != np.bool_:
            raise TypeError(f"writes must be a bool or bools, not {w.dtype}")
        w = np.full(arr.shape, bool(w)) if w.ndim == 0 else w
        if w.shape != arr.shape:
            raise ValueError(f"writes has {w.size} values for {arr.size} accesses")
        errors, _ = guest_accesses(self, arr, w)
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
        ret = wrprotect(addr, nxt - addr, vm._strategy)
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
        vm.pt._wrprotect_unchecked(start, end - start, vm._strategy)
        vm.counters["wp_calls"] += 1
    if vm.initially_set and vm._chunk != 0:
        kvm_mmu_split_huge_pages(vm, start, end)


def guest_accesses(vm: VM, ipas: np.ndarray, writes: np.ndarray) -> tuple[int, int]:
    """Guest accesses (page addresses; a write where ``writes`` is non-zero)
    through the engine's fault path, the VM's state handed in: returns (how
    many failed, the last error). The engine refuses the whole batch, before
    any access, when an IPA lies outside every memslot (ValueError)."""
    ipas = np.ascontiguousarray(ipas, dtype=np.uint64)
    slots = [(s.base, s.end, s.logging, s.kinds, s.dirty_bitmap) for s in vm.memslots]
    counts = np.zeros(len(FAULT_COUNTERS), dtype=np.uint64)
    done, last = vm.pt._guest_accesses(vm.vcpu_cache, vm._fault_host, slots, ipas,
                                      np.ascontiguousarray(writes).view(np.uint8), counts)
    c = vm.counters
    for name, v in zip(FAULT_COUNTERS, counts.tolist()):
        c[name] += v
    if done != len(ipas):       # the engine stops early only on a corrupt table, which raises
        raise RuntimeError(f"the fault path stopped after {done} of {len(ipas)} accesses")
    return int(counts[FAULT_COUNTERS.index("fault_errors")]), last


def guest_write(vm: VM, slot: Memslot, ipa: int, write: bool = True) -> int:
    """One guest write (``write=False``: read) of page ``ipa`` in ``slot``:
    the MMU's walk, then user_mem_abort() if it faults, retried on -EAGAIN;
    a write marks the page dirty (mark_page_dirty_in_slot()). Returns 0 or
    the handler's error. user_mem_abort() itself is the engine's
    (s2fast/_mmu.pyx), which runs whole batches (``VM.access_pages``)."""
    ipa = checks.integer("ipa", ipa, 0, (1 << vm.pt.ia_bits) - 1)
    write = checks.boolean("write", write)
    if slot not in vm.memslots or not slot.contains(ipa):
        raise ValueError(f"IPA {ipa:#x} is not inside memslot {slot.id} of this VM")
    return guest_accesses(vm, np.array([ipa], dtype=np.uint64), np.array([write], dtype=np.uint8))[1]
