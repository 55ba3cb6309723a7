"""Large-guest workloads modelled on ``arch/arm64/kvm/mmu.c``.

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
words) are counted by the VM (``VM.counters``).

``Workload`` runs the whole sequence under one walker strategy, ``compare``
runs it under several and checks each final table against KERNEL's, and
``PRESETS`` re-create the RFC series' experiments.

Every rule above depends on the host's page size, which is also the stage-2
granule (``granule=4096 | 16384 | 65536``, see ``HostRules``): the page and
block sizes a memslot can be backed with, the eager-split chunk sizes and
the split cache's size, the write-protect pieces, the dirty bitmap (one bit
per host page) and the size of a fault. The 4 KiB host is the configuration
the RFC series measured and the default.
"""
from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from . import _pool
from ._pool import MemCache
from ._visitors import CollectVisitor
from .flags import EAGAIN, ENOMEM, RW, WalkFlags
from .pgtable import DEFAULT_RESERVE, GRANULES, Stage2PageTable, geometry
from .variants import Strategy, _unsplit

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# The 4 KiB host's sizes (HostRules / host_rules() give every granule's).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SIZE = 2 * MiB
PUD_SIZE = 1 * GiB
BITS_PER_LONG = 64
#: arm64's KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE: a vCPU cache is topped up to this
VCPU_CACHE_CAPACITY = 40
#: __TLBI_RANGE_PAGES(31, 3): the most pages one range TLBI covers
MAX_TLBI_RANGE_PAGES = 1 << 21
#: eager-split chunk sizes KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE accepts on a 4 KiB host (0: off)
SPLIT_CHUNKS = (0, PAGE_SIZE, PMD_SIZE, PUD_SIZE)
#: guest memory's host physical address is PHYS_OFFSET + IPA (+PMD_SIZE for PMD blocks)
PHYS_OFFSET = 1 << 40
#: where add_memslot() places the first slot when no base is given (QEMU virt RAM)
DEFAULT_BASE = 1 * GiB

# Descriptor bits the hardware walk reads.
_PTE_VALID = 1
_PTE_TABLE = 2
_S2AP_W = 1 << 7
_TABLE_PA_BASE = _pool.TABLE_PA_BASE

#: user_mem_abort() walks with these flags
FAULT_FLAGS = int(WalkFlags.HANDLE_FAULT | WalkFlags.SHARED)
_RW = int(RW)
#: bitmap words a CLEAR handles per batch of Python work (16 GiB of guest)
_CLEAR_SEGMENT = 1 << 16

# Backing kinds, one per PMD_SIZE unit of a memslot: pages, PMD blocks, PUD
# blocks (named and sized here for a 4 KiB host; HostRules.kind_names/_sizes).
K4K, K2M, K1G = 0, 1, 2
KIND_NAMES = ("4k", "2m", "1g")
KIND_SIZES = (PAGE_SIZE, PMD_SIZE, PUD_SIZE)

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
    "faults_perm",            # permission fault fixed by relax_perms()
    "faults_perm_block",      # permission fault on a block: map() of a page
    "faults_translation",     # translation fault: map()
    "fault_retries",          # -EAGAIN: the guest retries the access
    "fault_errors",
    "vcpu_cache_topups",
    "vcpu_cache_topup_pages",
    "pages_marked_dirty",     # mark_page_dirty_in_slot()
)

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: Union[str, int]) -> int:
    """``"64G"``, ``"64GiB"``, ``"2M"``, ``"4k"``, ``"0"`` or an int -> bytes."""
    if isinstance(text, bool):
        raise TypeError(f"a size must be an int or a string like '64G', not {text!r}")
    if isinstance(text, (int, np.integer)):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return int(text)
    if not isinstance(text, str):
        raise TypeError(f"a size must be an int or a string like '64G', not {type(text).__name__} {text!r}")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"size {text!r} is not a size like 64G, 2M, 4K or a number of bytes")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    """Bytes as the largest exact binary unit: 2 MiB, 64 GiB, 12 KiB, 5 B."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _int(name: str, v: Any, lo: int = 0, hi: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(v).__name__} {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} {v} is outside {lo}..{hi if hi is not None else 'inf'}")
    return v


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(v).__name__} {v!r}")
    return bool(v)


_STRATEGY_ALIASES = {"SKIP_NEW_TABLE": "SKIP_LEVEL_NEW_TABLE", "SNT": "SKIP_LEVEL_NEW_TABLE"}


def _strategy(v: Any) -> Strategy:
    if isinstance(v, Strategy):
        return v
    if isinstance(v, str):
        name = v.strip().upper().replace("-", "_")
        name = _STRATEGY_ALIASES.get(name, name)
        if name in Strategy.__members__:
            return Strategy[name]
        raise ValueError(f"strategy {v!r} is not one of {', '.join(s.name for s in Strategy)}")
    raise TypeError(f"strategy must be an s2fast.Strategy or its name, not {type(v).__name__} {v!r}")


@dataclass(frozen=True)
class HostRules:
    """What mmu.c's rules look like on a host of one page size (the stage-2
    granule): PAGE_SIZE, PMD_SIZE, PUD_SIZE (0 where level-1 blocks do not
    exist: KVM_PGTABLE_MIN_BLOCK_LEVEL is 2 for 16 and 64 KiB), the block
    sizes KVM maps (kvm_supported_block_sizes(): the page and every block
    level), and the size of stage2_apply_range()'s pieces (one entry of
    KVM_PGTABLE_MIN_BLOCK_LEVEL)."""

    granule: int
    page_shift: int
    ptrs_per_table: int
    pmd_size: int
    pud_size: int
    wp_piece: int

    @property
    def page_size(self) -> int:
        return self.granule

    @property
    def chunks(self) -> tuple[int, ...]:
        """KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE's accepted values: 0 (off) or
        a size kvm_is_block_size_supported() accepts."""
        return (0,) + self.kind_sizes[: 3 if self.pud_size else 2]

    @property
    def kind_sizes(self) -> tuple[int, ...]:
        """Leaf size of each backing kind (pages, PMD blocks, PUD blocks)."""
        return (self.granule, self.pmd_size, self.pud_size)

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(_short(n) if n else "" for n in self.kind_sizes)

    @property
    def unit(self) -> int:
        """A memslot's backing is chosen per PMD_SIZE unit."""
        return self.pmd_size

    @property
    def units_per_pud(self) -> int:
        return self.pud_size // self.pmd_size if self.pud_size else 0

    def kind_list(self) -> str:
        """'1g, 2m or 4k' for a 4 KiB host, '32m or 16k' for 16 KiB."""
        names = [n for n in reversed(self.kind_names) if n]
        return ", ".join(names[:-1]) + " or " + names[-1]

    def describe(self) -> str:
        return f"{format_size(self.granule)} host"


def _short(n: int) -> str:
    """A size as a backing name: 4k, 2m, 512m, 1g."""
    for suffix, shift in (("g", 30), ("m", 20), ("k", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def host_rules(granule: Any = 4096) -> HostRules:
    """The mmu.c rules of a host whose page size is ``granule`` (4096,
    16384 or 65536; a size string such as "64K" is accepted)."""
    if isinstance(granule, str):
        granule = parse_size(granule)
    if isinstance(granule, bool) or not isinstance(granule, (int, np.integer)):
        raise TypeError(f"granule must be an int, not {type(granule).__name__} {granule!r}")
    granule = int(granule)
    rules = _HOSTS.get(granule)
    if rules is None:
        raise ValueError(f"granule {granule} is not a host page size KVM supports "
                         f"(4K, 16K or 64K: {', '.join(str(g) for g in GRANULES)})")
    return rules


def _make_host(granule: int) -> HostRules:
    g = geometry(48, granule)
    min_block = g.min_block_level
    return HostRules(granule, g.page_shift, g.ptrs_per_table, g.level_size(2),
                     g.level_size(1) if min_block < 2 else 0, g.level_size(min_block))


_HOSTS = {gr: _make_host(gr) for gr in GRANULES}
HOST_4K = _HOSTS[4096]


def _chunk(v: Any, granule: int = 4096) -> int:
    v = parse_size(v)
    h = host_rules(granule)
    if v not in h.chunks:
        sizes = ", ".join(format_size(c) for c in h.chunks[1:])
        where = "" if granule == 4096 else f" on a {h.describe()}"
        raise ValueError(f"eager-split chunk {v} is not 0 or a block size the kernel accepts "
                         f"({sizes}{where})")
    return v


def split_nr_page_tables(chunk: int, granule: int = 4096) -> int:
    """kvm_mmu_split_nr_page_tables(): pages to split a chunk of blocks to
    pages: one per PMD_SIZE it touches, plus one per PUD_SIZE where the
    host has level-1 blocks (4 KiB granule only)."""
    h = host_rules(granule)
    n = -(-chunk // h.pmd_size)
    if h.pud_size:
        n += -(-chunk // h.pud_size)
    return n


def _popcount(a: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(a).sum())
    return int(np.unpackbits(a.view(np.uint8)).sum())


# ---------------------------------------------------------------------------
# Backing

@dataclass(frozen=True)
class Backing:
    """How a memslot is backed, as percentages of its size, by kind of leaf:
    ``pct_1g`` level-1 blocks (PUD_SIZE: 1 GiB hugetlb, 4 KiB hosts only),
    ``pct_2m`` level-2 blocks (PMD_SIZE: 2 MiB, 32 MiB or 512 MiB hugetlb or
    THP) and ``pct_4k`` pages of the host's size (memory already split).
    The field names are the 4 KiB host's; ``granule`` says which host.

    ``Backing.parse`` takes ``"1g"`` / ``"hugetlb"``, ``"2m"`` / ``"thp"``,
    ``"4k"`` / ``"split"``, or ``"mix:1g=50,2m=30,4k=20"``; with
    ``granule=16384`` the sizes are ``"32m"`` and ``"16k"``, with 65536
    ``"512m"`` and ``"64k"`` ("hugetlb" is the largest block size)."""

    pct_1g: int = 0
    pct_2m: int = 0
    pct_4k: int = 0
    granule: int = 4096

    def __post_init__(self) -> None:
        for name in ("pct_1g", "pct_2m", "pct_4k"):
            _int(name, getattr(self, name), 0, 100)
        h = host_rules(self.granule)
        object.__setattr__(self, "granule", h.granule)
        total = self.pct_1g + self.pct_2m + self.pct_4k
        n = h.kind_names
        if total != 100:
            if h.pud_size:
                raise ValueError(f"backing percentages add up to {total}, not 100: "
                                 f"1g={self.pct_1g}, 2m={self.pct_2m}, 4k={self.pct_4k}")
            raise ValueError(f"backing percentages add up to {total}, not 100: "
                             f"{n[1]}={self.pct_2m}, {n[0]}={self.pct_4k}")
        if self.pct_1g and not h.pud_size:
            raise ValueError(f"a {h.describe()} has no level-1 (1 GiB) stage-2 blocks: "
                             f"back the memslot with {h.kind_list()}")

    _ALIASES = {"1g": "1g", "hugetlb": "1g", "pud": "1g",
                "2m": "2m", "thp": "2m", "pmd": "2m",
                "4k": "4k", "split": "4k", "pages": "4k", "pte": "4k"}

    @staticmethod
    def _kind(key: Any, h: HostRules) -> Optional[int]:
        """A kind name of this host -> 0 (pages), 1 (PMD) or 2 (PUD)."""
        k = str(key).strip().lower()
        if h.granule == 4096:
            k = Backing._ALIASES.get(k, k)
        elif k in ("hugetlb", "thp", "pmd"):
            return 1
        elif k in ("split", "pages", "pte"):
            return 0
        names = h.kind_names
        return names.index(k) if k and k in names else None

    @classmethod
    def parse(cls, spec: Any, granule: Any = 4096) -> "Backing":
        h = host_rules(granule)
        if isinstance(spec, Backing):
            if spec.granule != h.granule:
                raise ValueError(f"backing {spec} is for a {format_size(spec.granule)} host, "
                                 f"not a {h.describe()}")
            return spec
        if isinstance(spec, Mapping):
            pct = [0, 0, 0]
            for k, v in spec.items():
                kind = cls._kind(k, h)
                if kind is None:
                    raise ValueError(f"backing kind {k!r} is not {h.kind_list()}"
                                     + ("" if h.granule == 4096 else f" (a {h.describe()})"))
                pct[kind] += _int(f"percentage of {h.kind_names[kind]}", v, 0, 100)
            return cls(pct[2], pct[1], pct[0], h.granule)
        if not isinstance(spec, str):
            raise TypeError(f"backing must be a string like '{h.kind_names[-1] or h.kind_names[1]}' or "
                            f"'mix:{h.kind_names[1]}=50,{h.kind_names[0]}=50', "
                            f"not {type(spec).__name__} {spec!r}")
        s = spec.strip().lower()
        if cls._kind(s, h) is not None:
            return cls.parse({s: 100}, h.granule)
        if s.startswith("mix:"):
            pct: dict[str, Any] = {}
            for part in s[4:].split(","):
                k, sep, v = part.partition("=")
                if not sep or not v.strip().isdigit():
                    raise ValueError(f"backing {spec!r}: {part!r} is not KIND=PERCENT")
                if k.strip() in pct:
                    raise ValueError(f"backing {spec!r} names {k.strip()!r} twice")
                pct[k.strip()] = int(v)
            return cls.parse(pct, h.granule)
        if h.granule == 4096:
            raise ValueError(f"backing {spec!r} is not 1g, 2m, 4k (hugetlb, thp, split) "
                             f"or mix:1g=P,2m=P,4k=P")
        big, page = h.kind_names[1], h.kind_names[0]
        raise ValueError(f"backing {spec!r} is not a page or block size of a {h.describe()} (its stage 2 "
                         f"maps {page} pages and {big} blocks only): {big}, {page} (hugetlb, thp, split) "
                         f"or mix:{big}=P,{page}=P")

    def __str__(self) -> str:
        n = _HOSTS[self.granule].kind_names
        parts = [(k, p) for k, p in ((n[2], self.pct_1g), (n[1], self.pct_2m), (n[0], self.pct_4k)) if p]
        if len(parts) == 1:
            return parts[0][0]
        return "mix:" + ",".join(f"{k}={p}" for k, p in parts)


def _assign_kinds(base: int, size: int, backing: Backing, rng: np.random.Generator,
                  h: HostRules = HOST_4K) -> np.ndarray:
    """One backing kind per PMD_SIZE unit (2 MiB on a 4 KiB host). PUD
    blocks go to whole, aligned PUD_SIZE ranges of the slot (chosen at
    random for a mix); page units are drawn at random from the rest; what
    is left is PMD blocks (also the fallback for PUD backing where no
    aligned PUD range fits). Hosts without PUD blocks have only the last two."""
    unit = h.unit
    n_units = size // unit
    kinds = np.full(n_units, K2M, dtype=np.uint8)
    per_pud = h.units_per_pud
    if per_pud:
        # units that start a whole, aligned PUD range inside the slot
        first = (-(base // unit)) % per_pud
        gib_starts = np.arange(first, n_units - per_pud + 1, per_pud, dtype=np.int64)
        want_1g = min(len(gib_starts), round(backing.pct_1g * n_units / 100 / per_pud))
        if backing.pct_1g == 100:
            want_1g = len(gib_starts)
        if want_1g:
            chosen = gib_starts if want_1g == len(gib_starts) else np.sort(
                rng.choice(gib_starts, size=want_1g, replace=False))
            idx = (chosen[:, None] + np.arange(per_pud)).ravel()
            kinds[idx] = K1G
    free = np.flatnonzero(kinds != K1G)
    want_4k = min(len(free), round(backing.pct_4k * n_units / 100))
    if backing.pct_4k == 100:
        want_4k = len(free)
    if want_4k == len(free):
        kinds[free] = K4K
    elif want_4k:
        kinds[rng.choice(free, size=want_4k, replace=False)] = K4K
    return kinds


@dataclass(eq=False)
class Memslot:
    """A guest memory region (struct kvm_memory_slot, as far as stage 2 sees
    it). ``kinds`` holds one backing kind per PMD_SIZE unit; pages, gfns
    and the dirty bitmap are in pages of the host's ``granule``."""

    id: int
    base: int
    size: int
    backing: Backing
    seed: int
    kinds: np.ndarray = field(repr=False)
    logging: bool = False
    dirty_bitmap: Optional[np.ndarray] = field(default=None, repr=False)
    granule: int = 4096

    def __post_init__(self) -> None:
        self._h = host_rules(self.granule)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def npages(self) -> int:
        return self.size >> self._h.page_shift

    @property
    def base_gfn(self) -> int:
        return self.base >> self._h.page_shift

    def contains(self, ipa: int) -> bool:
        return self.base <= ipa < self.end

    def block_counts(self) -> dict[str, int]:
        """How the slot was built: PUD blocks, PMD blocks, pages (keys by
        size: "1g", "2m", "4k" on a 4 KiB host; "32m", "16k" on 16 KiB)."""
        h = self._h
        n = np.bincount(self.kinds, minlength=3)
        out = {}
        if h.pud_size:
            out[h.kind_names[2]] = int(n[K1G]) // h.units_per_pud
        out[h.kind_names[1]] = int(n[K2M])
        out[h.kind_names[0]] = int(n[K4K]) * (h.unit // h.granule)
        return out

    def dirty_pages(self) -> int:
        """Bits set in the dirty bitmap (0 when not logging)."""
        return 0 if self.dirty_bitmap is None else _popcount(self.dirty_bitmap)

    def kind_at(self, ipa: int) -> int:
        return int(self.kinds[(ipa - self.base) // self._h.unit])

    def phys(self, ipa: int) -> int:
        """The host physical address backing ``ipa`` (PHYS_OFFSET + IPA,
        + PMD_SIZE for PMD blocks so that they are not PUD aligned)."""
        h = self._h
        return PHYS_OFFSET + ipa + (h.pmd_size if self.kinds[(ipa - self.base) // h.unit] == K2M else 0)


# ---------------------------------------------------------------------------
# The VM

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
        self._core = self.pt._core   # checked once here; the hot loops skip per-call checks
        self.strategy = strategy
        self.eager_split_chunk = eager_split_chunk
        self.initially_set = _bool("initially_set", initially_set)
        if split_host_pages is not None:
            split_host_pages = _int("split_host_pages", split_host_pages)
        self.split_host_pages = split_host_pages
        self.memslots: list[Memslot] = []
        self._bases: list[int] = []
        self.split_cache = MemCache(0, on_empty="allocate")
        self.vcpu_cache = MemCache(0, on_empty="allocate")
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        g = self.pt.geometry
        self._levels = 4 - g.start_level
        self._vcpu_min_pages = self._levels - 1          # kvm_mmu_cache_min_pages()
        self._shift = {lv: g.level_shift(lv) for lv in range(g.start_level, 4)}
        self._level_size = {lv: 1 << s for lv, s in self._shift.items()}
        self._desc = self._core.descriptors
        self._page_mask = ~(h.granule - 1)
        self._page_shift = h.page_shift
        self._kind_sizes = h.kind_sizes
        self._idx_mask = g.ptrs_per_table - 1
        self._addr_mask = ((1 << 48) - 1) & ~(h.granule - 1)

    # -- configuration ------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @strategy.setter
    def strategy(self, v: Any) -> None:
        s = _strategy(v)
        self._strategy = s
        self._split_args = (s.flags, s.max_level, s.skip_return)

    @property
    def eager_split_chunk(self) -> int:
        return self._chunk

    @eager_split_chunk.setter
    def eager_split_chunk(self, v: Any) -> None:
        self._chunk = _chunk(v, self.host.granule)
        self._split_capacity = split_nr_page_tables(self._chunk, self.host.granule)

    def __repr__(self) -> str:
        gran = "" if self.host.granule == 4096 else f"granule={self.host.granule}, "
        return (f"VM({gran}strategy={self.strategy.name}, eager_split_chunk={format_size(self._chunk)}, "
                f"initially_set={self.initially_set}, memslots={len(self.memslots)}, "
                f"pages_live={self.pt.pages_live})")

    # -- memslots -------------------------------------------------------------

    def add_memslot(self, size: Any, backing: Any = "hugetlb", *, base: Any = None,
                    seed: int = 0) -> Memslot:
        """Create a memslot and pre-fault all of it, writable, with its
        backing (as a guest that has touched all its memory; by default the
        host's largest stage-2 block: 1 GiB, 32 MiB or 512 MiB). Returns it."""
        h = self.host
        unit = h.unit
        size = parse_size(size)
        backing = Backing.parse(backing, h.granule)
        seed = _int("seed", seed)
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
        core = self._core
        unit, pmd = self.host.unit, self.host.pmd_size
        for a, b in zip(starts, ends):
            kind = int(kinds[a])
            ipa = slot.base + a * unit
            size = (b - a) * unit
            phys = PHYS_OFFSET + ipa + (pmd if kind == K2M else 0)
            ret = core.map(ipa, size, phys, _RW, mc, 0, kind == K4K)
            if ret:
                raise RuntimeError(f"building memslot {slot.id}: map({ipa:#x}, {size:#x}) returned {ret}")
        self._desc = core.descriptors

    def _slots(self, slot: Any) -> list[Memslot]:
        if slot is None:
            return list(self.memslots)
        if isinstance(slot, Memslot):
            if slot not in self.memslots:
                raise ValueError(f"memslot {slot.id} does not belong to this VM")
            return [slot]
        i = _int("slot", slot)
        for s in self.memslots:
            if s.id == i:
                return [s]
        raise ValueError(f"no memslot with id {i}")

    def slot_of(self, ipa: int) -> Optional[Memslot]:
        i = bisect.bisect(self._bases, ipa) - 1
        if i >= 0 and ipa < self.memslots[i].end:
            return self.memslots[i]
        return None

    @property
    def total_pages(self) -> int:
        return sum(s.npages for s in self.memslots)

    # -- stats --------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        """The engine's counters and the VM's (``COUNTERS``) as one dict."""
        d = {k: v for k, v in self.pt.stats.as_dict().items() if isinstance(v, int)}
        d.update(self.counters)
        return d

    # -- mmu.c building blocks ---------------------------------------------------------

    def _wp_range(self, addr: int, end: int) -> int:
        """kvm_stage2_wp_range(): stage2_apply_range() in pieces of one
        KVM_PGTABLE_MIN_BLOCK_LEVEL entry (1 GiB, 32 MiB or 512 MiB)."""
        core = self._core
        piece = self.host.wp_piece
        n = 0
        ret = 0
        while True:
            nxt = (addr + piece) & ~(piece - 1)
            if nxt > end:
                nxt = end
            ret = core.wrprotect(addr, nxt - addr)
            n += 1
            if ret or nxt == end:
                break
            addr = nxt
        self.counters["wp_calls"] += n
        return ret

    def _topup_split_cache(self) -> int:
        """__kvm_mmu_topup_memory_cache(cache, capacity, capacity)."""
        mc = self.split_cache
        cap = self._split_capacity
        have = mc.nobjs
        want = cap - have
        give = want if self.split_host_pages is None else min(want, self.split_host_pages)
        c = self.counters
        c["split_cache_topups"] += 1
        if give > 0:
            mc.topup(have + give)
            c["split_cache_topup_pages"] += give
            if self.split_host_pages is not None:
                self.split_host_pages -= give
        return 0 if mc.nobjs >= cap else ENOMEM

    def _split_huge_pages(self, addr: int, end: int) -> int:
        """kvm_mmu_split_huge_pages(): split [addr, end) one chunk at a time,
        topping the split cache up to kvm_mmu_split_nr_page_tables(chunk)
        whenever it holds fewer. Best-effort: the first error stops it."""
        chunk = self._chunk
        if chunk == 0:
            return 0
        mc = self.split_cache
        cap = self._split_capacity
        split = self._core.split
        flags, max_level, skip_return = self._split_args
        n = 0
        ret = 0
        while True:
            if mc.nobjs < cap:
                ret = self._topup_split_cache()
                if ret:
                    break
            nxt = (addr + chunk) & ~(chunk - 1)
            if nxt > end:
                nxt = end
            ret = split(addr, nxt - addr, mc, flags, max_level, skip_return)
            n += 1
            if ret or nxt == end:
                break
            addr = nxt
        c = self.counters
        c["split_calls"] += n
        if ret:
            c["split_errors"] += 1
            if ret == ENOMEM:
                c["split_enomem"] += 1
        return ret

    def _flush_memslot(self, slot: Memslot) -> None:
        """kvm_flush_remote_tlbs_memslot() -> kvm_tlb_flush_vmid_range()."""
        c = self.counters
        if not self.pt.tlb_range:
            c["mmu_tlbi_vmid"] += 1
            return
        pages = slot.npages
        while pages > 0:
            inval = min(pages, MAX_TLBI_RANGE_PAGES)
            c["mmu_tlbi_vmid_range"] += 1
            c["mmu_tlbi_range_pages"] += inval
            pages -= inval

    # -- dirty logging ------------------------------------------------------------------

    def enable_dirty_logging(self, slot: Any = None) -> None:
        """Set KVM_MEM_LOG_DIRTY_PAGES on a memslot (all when None), as
        kvm_arch_commit_memory_region() reacts: with initially-all-set the
        bitmap starts full and nothing else happens; otherwise the slot is
        write-protected, its TLBs flushed, and it is eagerly split."""
        slots = self._slots(slot)
        for s in slots:
            if s.logging:
                raise ValueError(f"memslot {s.id} is already logging dirty pages")
        for s in slots:
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
            self._wp_range(s.base, s.end)               # kvm_mmu_wp_memory_region()
            self._flush_memslot(s)
            self._split_huge_pages(s.base, s.end)       # kvm_mmu_split_memory_region()

    def disable_dirty_logging(self, slot: Any = None) -> None:
        """Clear KVM_MEM_LOG_DIRTY_PAGES: the bitmap goes, and so do the
        split cache's leftover pages (kvm_mmu_free_memory_cache)."""
        for s in self._slots(slot):
            if not s.logging:
                raise ValueError(f"memslot {s.id} is not logging dirty pages")
            s.logging = False
            s.dirty_bitmap = None
        self.split_cache = MemCache(0, on_empty="allocate")

    def get_dirty_log(self, slot: Any) -> np.ndarray:
        """KVM_GET_DIRTY_LOG with manual protect: a copy of the bitmap."""
        (s,) = self._slots(slot)
        if not s.logging:
            raise ValueError(f"memslot {s.id} is not logging dirty pages")
        return s.dirty_bitmap.copy()

    def clear_dirty_log(self, slot: Any = None, bitmap: Optional[np.ndarray] = None,
                        progress: Optional[Callable[[float], None]] = None) -> int:
        """KVM_CLEAR_DIRTY_LOG over whole memslots (all when None), with
        ``bitmap`` as userspace's bits to clear (default: everything dirty
        now, i.e. GET_DIRTY_LOG then CLEAR). Returns the mask words handed
        to kvm_arch_mmu_enable_log_dirty_pt_masked()."""
        slots = self._slots(slot)
        for s in slots:
            if not s.logging:
                raise ValueError(f"memslot {s.id} is not logging dirty pages")
        if bitmap is not None:
            if len(slots) != 1:
                raise ValueError("a bitmap can only be given for one memslot")
            if not isinstance(bitmap, np.ndarray) or bitmap.dtype != np.uint64 \
                    or bitmap.shape != slots[0].dirty_bitmap.shape:
                raise ValueError(f"bitmap must be a uint64 array of shape {slots[0].dirty_bitmap.shape}")
        total = 0
        c = self.counters
        wrprotect = self._core.wrprotect
        page_shift = self.host.page_shift
        piece_shift = self.host.wp_piece.bit_length() - 1
        for s in slots:
            bm = s.dirty_bitmap
            split = self.initially_set and self._chunk != 0
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
                    start = (gfn + (m & -m).bit_length() - 1) << page_shift
                    end = (gfn + m.bit_length()) << page_shift
                    # kvm_arch_mmu_enable_log_dirty_pt_masked()
                    if (start ^ (end - 1)) >> piece_shift:
                        self._wp_range(start, end)
                    else:
                        wrprotect(start, end - start)
                        c["wp_calls"] += 1
                    if split:
                        self._split_huge_pages(start, end)
                n += len(masks)
                if progress is not None:
                    progress(hi / len(bm))
            c["mask_words"] += n
            c["clear_calls"] += 1
            if n:
                self._flush_memslot(s)
            total += n
        return total

    # -- guest accesses ----------------------------------------------------------------

    def translate(self, ipa: int) -> tuple[int, int]:
        """The hardware's stage-2 walk of ``ipa``: (level, descriptor) of the
        entry that ends it (descriptor 0 if invalid). Counts nothing."""
        ipa = _int("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
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
            except IndexError:
                self._desc = self._core.descriptors
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
        ipa = _int("ipa", ipa, 0, (1 << self.pt.ia_bits) - 1)
        slot = self.slot_of(ipa)
        if slot is None:
            raise ValueError(f"IPA {ipa:#x} is outside every memslot")
        return self._write(slot, ipa & self._page_mask)

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
            if self._write(last, ipa):
                errors += 1
        return errors

    def _write(self, slot: Memslot, ipa: int) -> int:
        c = self.counters
        c["guest_writes"] += 1
        core = self._core
        ret = -EAGAIN
        for attempt in range(4):
            level, pte = self._translate(ipa)
            if pte & _S2AP_W:
                if attempt == 0:
                    c["writes_no_fault"] += 1
                return 0
            # user_mem_abort(): a write fault tops the vCPU cache up first
            mc = self.vcpu_cache
            if mc.nobjs < self._vcpu_min_pages:
                c["vcpu_cache_topups"] += 1
                c["vcpu_cache_topup_pages"] += VCPU_CACHE_CAPACITY - mc.nobjs
                mc.topup(VCPU_CACHE_CAPACITY)
            # logging forces pages; otherwise the backing's size
            size = self._kind_sizes[0 if slot.logging else slot.kind_at(ipa)]
            if pte and size == self._level_size[level]:
                c["faults_perm"] += 1
                ret = core.relax_perms(ipa, _RW, FAULT_FLAGS)
            else:
                c["faults_perm_block" if pte else "faults_translation"] += 1
                fipa = ipa & ~(size - 1)
                ret = core.map(fipa, size, slot.phys(fipa), _RW, mc, FAULT_FLAGS, False)
            if ret != EAGAIN:
                break
            c["fault_retries"] += 1
        if ret:
            c["fault_errors"] += 1
            return ret
        if slot.logging:
            off = (ipa - slot.base) >> self._page_shift
            slot.dirty_bitmap[off >> 6] |= np.uint64(1 << (off & 63))
            c["pages_marked_dirty"] += 1
        return 0


# ---------------------------------------------------------------------------
# Access patterns

PATTERNS = ("sequential", "random", "hot")


def _pattern(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"pattern must be a string, not {type(v).__name__} {v!r}")
    p = v.strip().lower()
    if p == "hot-set":
        p = "hot"
    if p not in PATTERNS:
        raise ValueError(f"pattern {v!r} is not one of {', '.join(PATTERNS)} (or hot-set)")
    return p


def _sample(rng: np.random.Generator, n_total: int, n: int) -> np.ndarray:
    """n distinct integers of [0, n_total), uniformly, in random order."""
    if n >= n_total // 4:
        return rng.permutation(n_total)[:n]
    out = np.unique(rng.integers(0, n_total, size=n + n // 8 + 16))
    while len(out) < n:
        out = np.unique(np.concatenate([out, rng.integers(0, n_total, size=n)]))
    return rng.permutation(out)[:n]


def pattern_pages(pattern: str, round_no: int, n: int, total_pages: int, seed: int = 0,
                  hot_pages: Optional[int] = None) -> np.ndarray:
    """Guest page indices (0 .. total_pages-1 over the slots in IPA order)
    written in round ``round_no`` (1-based):

    * ``sequential``: pages n*(round-1) .. n*round-1, wrapping around;
    * ``random``: n distinct pages drawn afresh each round;
    * ``hot``: n distinct pages drawn each round from one hot set of
      ``hot_pages`` pages (default 4n) fixed by the seed."""
    pattern = _pattern(pattern)
    n = _int("writes", n, 0, total_pages)
    if pattern == "sequential":
        return (np.arange(n, dtype=np.int64) + n * (round_no - 1)) % total_pages
    rng = np.random.default_rng([seed, round_no])
    if pattern == "random":
        return _sample(rng, total_pages, n)
    hot = min(total_pages, 4 * n if hot_pages is None else _int("hot_pages", hot_pages, n))
    hot_set = _sample(np.random.default_rng([seed, 0]), total_pages, hot)
    return hot_set[_sample(rng, hot, n)]


# ---------------------------------------------------------------------------
# Workloads, runs and comparisons

def summarize(counts: Mapping[str, int]) -> dict[str, int]:
    """The headline costs of a count dict: entries read, callbacks, TLBIs
    (pgtable.c's and mmu.c's), CMOs, table pages allocated."""
    return {
        "entries_read": counts["entries_read"],
        "callbacks": counts["callbacks_leaf"] + counts["callbacks_table_pre"] + counts["callbacks_table_post"],
        "tlbis": (counts["tlbi_vmid_ipa"] + counts["tlbi_vmid_ipa_nsh"] + counts["tlbi_vmid_range"]
                  + counts["tlbi_vmid"] + counts["mmu_tlbi_vmid"] + counts["mmu_tlbi_vmid_range"]),
        "cmos": counts["cmo_calls"],
        "pages_alloc": counts["pages_alloc"],
    }


@dataclass
class Phase:
    """What one step of a run cost: counts (engine + VM) and wall time."""

    name: str
    counts: dict[str, int]
    wall_s: float

    @property
    def summary(self) -> dict[str, int]:
        return summarize(self.counts)


@dataclass
class RunResult:
    """One workload under one strategy. ``phases`` excludes the build,
    which is the same under every strategy (``build``)."""

    strategy: Strategy
    build: Phase
    phases: list[Phase]
    vm: Optional[VM] = field(default=None, repr=False)

    @property
    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.phases:
            for k, v in p.counts.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.phases)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if k != "pages_live"}


@dataclass(frozen=True)
class Workload:
    """A dirty-logging run: build a guest, enable dirty logging, then
    ``passes`` rounds of (guest writes, KVM_CLEAR_DIRTY_LOG).

    In initially-all-set mode the first round has no writes: the bitmap
    starts full, so the first CLEAR write-protects and splits everything and
    later passes touch only what the guest dirtied since. Without it,
    enabling write-protects and eagerly splits, and every round's writes
    come before its CLEAR (which then only write-protects).

    ``granule`` is the host's page size (4096, 16384, 65536 or "4K", "16K",
    "64K"). ``backing`` defaults to the host's largest stage-2 block (1 GiB,
    32 MiB, 512 MiB) and ``chunk`` to its PMD_SIZE (2 MiB, 32 MiB, 512 MiB);
    ``writes`` and ``hot_pages`` count host pages."""

    guest_size: int = 64 * GiB
    backing: Any = None
    chunk: Any = None
    passes: int = 2
    initially_set: bool = True
    writes: int = 16384
    pattern: str = "random"
    seed: int = 0
    base: int = DEFAULT_BASE
    hot_pages: Optional[int] = None
    fwb: bool = False
    tlb_range: bool = False
    split_host_pages: Optional[int] = None
    ia_bits: Optional[int] = None
    granule: Any = 4096

    def __post_init__(self) -> None:
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        h = host_rules(self.granule)
        fix("granule", h.granule)
        unit, shift = h.unit, h.page_shift
        where = "" if h.granule == 4096 else f" (PMD_SIZE of a {h.describe()})"
        fix("guest_size", parse_size(self.guest_size))
        if self.guest_size == 0 or self.guest_size % unit:
            raise ValueError(f"guest size {self.guest_size} is not a positive multiple of "
                             f"{format_size(unit)}{where}")
        if self.backing is None:
            fix("backing", Backing(100, 0, 0) if h.pud_size else Backing(0, 100, 0, h.granule))
        fix("backing", Backing.parse(self.backing, h.granule))
        fix("chunk", _chunk(h.pmd_size if self.chunk is None else self.chunk, h.granule))
        fix("passes", _int("passes", self.passes, 0, 1000))
        fix("initially_set", _bool("initially_set", self.initially_set))
        fix("writes", _int("writes", self.writes, 0))
        if self.writes > self.guest_size >> shift:
            raise ValueError(f"writes {self.writes} is more than the guest's "
                             f"{self.guest_size >> shift} pages")
        fix("pattern", _pattern(self.pattern))
        fix("seed", _int("seed", self.seed))
        fix("base", parse_size(self.base))
        if self.base % unit:
            raise ValueError(f"base {self.base:#x} is not {format_size(unit)} aligned")
        if self.hot_pages is not None:
            fix("hot_pages", _int("hot_pages", self.hot_pages, self.writes, self.guest_size >> shift))
        fix("fwb", _bool("fwb", self.fwb))
        fix("tlb_range", _bool("tlb_range", self.tlb_range))
        if self.split_host_pages is not None:
            fix("split_host_pages", _int("split_host_pages", self.split_host_pages))
        need = max(40, (self.base + self.guest_size - 1).bit_length())
        if self.ia_bits is None:
            fix("ia_bits", need)
        else:
            fix("ia_bits", _int("ia_bits", self.ia_bits, 32, 48))
            if self.ia_bits < need:
                raise ValueError(f"ia_bits {self.ia_bits} cannot hold a guest ending at "
                                 f"{self.base + self.guest_size:#x}")
        if self.ia_bits > 48:
            raise ValueError(f"guest ending at {self.base + self.guest_size:#x} needs more than 48 IPA bits")

    def replace(self, **changes: Any) -> "Workload":
        from dataclasses import replace
        if "guest_size" in changes and "ia_bits" not in changes:
            changes["ia_bits"] = None
        if "granule" in changes and host_rules(changes["granule"]).granule != self.granule:
            # the backing and chunk follow the host unless given: the same
            # kinds of leaf (by level) and the chunk of the same level
            old, new = _HOSTS[self.granule], host_rules(changes["granule"])
            if "backing" not in changes:
                b = self.backing
                if b.pct_1g == 100 and not new.pud_size:
                    changes["backing"] = None          # the new host's largest block
                else:
                    changes["backing"] = Backing(b.pct_1g, b.pct_2m, b.pct_4k, new.granule)
            if "chunk" not in changes and self.chunk:
                changes["chunk"] = new.kind_sizes[old.kind_sizes.index(self.chunk)] or None
        return replace(self, **changes)

    def describe(self) -> str:
        mode = "initially-all-set" if self.initially_set else "not initially-all-set"
        chunk = format_size(self.chunk) if self.chunk else "off"
        when = "between passes" if self.initially_set else "before each pass"
        host = "" if self.granule == 4096 else f" ({format_size(self.granule)} pages)"
        return (f"{format_size(self.guest_size)} guest{host} at {self.base:#x}, backing {self.backing}, "
                f"eager-split chunk {chunk}, {mode}, {self.passes} CLEAR pass"
                f"{'es' if self.passes != 1 else ''}, {self.writes} {self.pattern} page writes {when}, "
                f"seed {self.seed}")

    def phase_names(self) -> list[str]:
        names = ["enable"]
        for k in range(1, self.passes + 1):
            if self.writes and (k > 1 or not self.initially_set):
                names.append(f"writes {k}")
            names.append(f"clear {k}")
        return names

    def new_vm(self, strategy: Any = Strategy.KERNEL) -> VM:
        """An empty VM configured for this workload."""
        return VM(self.ia_bits, strategy=strategy, eager_split_chunk=self.chunk,
                  initially_set=self.initially_set, fwb=self.fwb, tlb_range=self.tlb_range,
                  split_host_pages=self.split_host_pages, granule=self.granule)

    def run(self, strategy: Any = Strategy.KERNEL, *, keep_vm: bool = False,
            progress: Optional[Callable[[float, str], None]] = None) -> RunResult:
        """Build the guest and run every phase under ``strategy``.
        ``progress(fraction, phase)`` is called as the run advances."""
        strategy = _strategy(strategy)
        names = self.phase_names()
        report = progress or (lambda f, n: None)
        t0 = time.perf_counter()
        vm = self.new_vm(strategy)
        s0 = vm.snapshot()
        vm.add_memslot(self.guest_size, self.backing, base=self.base, seed=self.seed)
        s1 = vm.snapshot()
        build = Phase("build", _delta(s1, s0), time.perf_counter() - t0)
        phases: list[Phase] = []
        total_pages = vm.total_pages
        for i, name in enumerate(names):
            report(i / len(names), name)
            before = vm.snapshot()
            t = time.perf_counter()
            if name == "enable":
                vm.enable_dirty_logging()
            elif name.startswith("writes"):
                k = int(name.split()[1])
                pages = pattern_pages(self.pattern, k, self.writes, total_pages, self.seed, self.hot_pages)
                vm.write_pages(((pages << vm.host.page_shift) + self.base).tolist())
            else:
                vm.clear_dirty_log(progress=lambda f, i=i, name=name: report((i + f) / len(names), name))
            wall = time.perf_counter() - t
            phases.append(Phase(name, _delta(vm.snapshot(), before), wall))
        report(1.0, "done")
        return RunResult(strategy, build, phases, vm if keep_vm else None)


@dataclass(frozen=True)
class TableDiff:
    """How a strategy's final table differs from KERNEL's, all per level
    (level -> count): ``unsplit``, the strategy's blocks where KERNEL maps
    smaller leaves; ``kernel_unsplit``, the reverse; ``unmapped``, KERNEL's
    leaves whose IPA the strategy does not map at all (e.g. the rest of a
    leftover block a fault broke up); ``extra``, the reverse; ``changed``,
    leaves of the same IPA and level with other descriptor bits. Levels
    are named by their leaf size on the tables' ``granule``."""

    identical: bool
    unsplit: dict[int, int] = field(default_factory=dict)
    kernel_unsplit: dict[int, int] = field(default_factory=dict)
    unmapped: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    changed: int = 0
    granule: int = 4096

    def describe(self) -> str:
        if self.identical:
            return "identical"
        names = _level_names(self.granule)
        parts = [f"{n} x {names.get(lv, f'level-{lv}')} unsplit" for lv, n in sorted(self.unsplit.items())]
        parts += [f"{n} x {names.get(lv, f'level-{lv}')} unmapped"
                  for lv, n in sorted(self.unmapped.items())]
        parts += [f"KERNEL left {n} x {names.get(lv, f'level-{lv}')} unsplit"
                  for lv, n in sorted(self.kernel_unsplit.items())]
        parts += [f"{n} x {names.get(lv, f'level-{lv}')} mapped only here"
                  for lv, n in sorted(self.extra.items())]
        if self.changed:
            parts.append(f"{self.changed} leaves with other attributes")
        return "differs: " + ", ".join(parts)

    def to_dict(self) -> dict:
        names = _level_names(self.granule)
        name = lambda d: {names.get(lv, f"level-{lv}"): n for lv, n in sorted(d.items())}  # noqa: E731
        return {"identical": self.identical, "unsplit_blocks": name(self.unsplit),
                "kernel_unsplit_blocks": name(self.kernel_unsplit), "unmapped": name(self.unmapped),
                "mapped_only_here": name(self.extra), "changed_leaves": self.changed}


def _level_names(granule: int) -> dict[int, str]:
    """Level -> its leaf size: {1: "1 GiB", 2: "2 MiB", 3: "4 KiB"} for 4 KiB."""
    g = geometry(48, granule)
    return {lv: format_size(g.level_size(lv)) for lv in (1, 2, 3)}


def _window_leaves(pt: Stage2PageTable, lo: int, size: int) -> np.ndarray:
    cv = CollectVisitor()
    pt.walk(lo, size, cv, WalkFlags.LEAF)
    return cv.result()


def _member(keys: np.ndarray, sorted_other: np.ndarray) -> np.ndarray:
    """keys[i] in sorted_other, for a sorted array of unique keys."""
    if len(sorted_other) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_other, keys).clip(max=len(sorted_other) - 1)
    return sorted_other[pos] == keys


def _covered(leaves: np.ndarray, other: np.ndarray, level_size: Callable[[int], int]) -> np.ndarray:
    """Whether some leaf of ``other`` (IPA-sorted, disjoint) maps each leaf's IPA."""
    if len(other) == 0:
        return np.zeros(len(leaves), dtype=bool)
    pos = np.searchsorted(other["ipa"], leaves["ipa"], side="right") - 1
    ok = pos >= 0
    p = pos.clip(min=0)
    sizes = np.array([level_size(lv) if lv >= 0 else 0 for lv in range(-1, 4)], dtype=np.uint64)
    end = other["ipa"][p] + sizes[other["level"][p].astype(np.int64) + 1]
    return ok & (end > leaves["ipa"])


def _add_by_level(acc: dict[int, int], levels: np.ndarray) -> None:
    for lv, n in zip(*np.unique(levels, return_counts=True)):
        acc[int(lv)] = acc.get(int(lv), 0) + int(n)


def diff_tables(kernel: Stage2PageTable, other: Stage2PageTable, *, window: int = 16 * GiB) -> TableDiff:
    """Compare two final tables leaf by leaf (IPA, level, descriptor), a
    window at a time so that a 512 GiB guest never needs all its leaves in
    memory at once. Walks both tables (their stats change)."""
    if kernel.granule != other.granule or kernel.ia_bits != other.ia_bits:
        raise ValueError(f"tables differ in geometry: {kernel!r} vs {other!r}")
    window = _int("window", window, 1)
    if window % kernel.geometry.level_size(kernel.start_level):
        raise ValueError(f"window {window:#x} is not a multiple of a level-{kernel.start_level} entry")
    da, db = kernel.descriptors, other.descriptors
    if da.shape == db.shape and np.array_equal(da, db):
        return TableDiff(True)
    level_size = kernel.geometry.level_size
    unsplit: dict[int, int] = {}
    kernel_unsplit: dict[int, int] = {}
    unmapped: dict[int, int] = {}
    extra: dict[int, int] = {}
    changed = 0
    for lo in range(0, 1 << kernel.ia_bits, window):
        a = _window_leaves(kernel, lo, window)
        b = _window_leaves(other, lo, window)
        if len(a) == len(b) and np.array_equal(a, b):
            continue
        # Leaves come in IPA order and IPAs are granule-aligned, so
        # ipa | level is a sorted, unique key: membership by binary search.
        ka = a["ipa"] | a["level"].astype(np.uint64)
        kb = b["ipa"] | b["level"].astype(np.uint64)
        in_b, in_a = _member(ka, kb), _member(kb, ka)
        changed += int((a["pte"][in_b] != b["pte"][in_a]).sum())
        oa, ob = a[~in_b], b[~in_a]
        for lv, n in _unsplit(ob, a, level_size).items():
            unsplit[lv] = unsplit.get(lv, 0) + n
        for lv, n in _unsplit(oa, b, level_size).items():
            kernel_unsplit[lv] = kernel_unsplit.get(lv, 0) + n
        _add_by_level(unmapped, oa["level"][~_covered(oa, b, level_size)])
        _add_by_level(extra, ob["level"][~_covered(ob, a, level_size)])
    identical = not (unsplit or kernel_unsplit or unmapped or extra or changed)
    return TableDiff(identical, unsplit, kernel_unsplit, unmapped, extra, changed, kernel.granule)


@dataclass
class Comparison:
    """One workload under several strategies; KERNEL is always run first
    and is the reference for speed-ups and final-table checks."""

    workload: Workload
    results: dict[Strategy, RunResult]
    diffs: dict[Strategy, TableDiff]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per strategy: the totals' headline costs, wall time,
        speed-up over KERNEL in entries read, reduction (%), final table."""
        k = self.results[Strategy.KERNEL]
        k_entries = summarize(k.totals)["entries_read"]
        out = []
        for s, r in self.results.items():
            row: dict[str, Any] = {"strategy": s.name}
            row.update(summarize(r.totals))
            row["wall_s"] = r.wall_s
            e = row["entries_read"]
            row["speedup"] = k_entries / e if e else float("inf")
            row["reduction_pct"] = 100.0 * (1 - e / k_entries) if k_entries else 0.0
            row["wall_speedup"] = k.wall_s / r.wall_s if r.wall_s else float("inf")
            d = self.diffs[s]
            row["identical"] = d.identical
            row["outcome"] = d.describe()
            out.append(row)
        return out

    def phase_rows(self) -> list[dict[str, Any]]:
        out = []
        for s, r in self.results.items():
            for p in [r.build] + r.phases:
                row: dict[str, Any] = {"strategy": s.name, "phase": p.name}
                row.update(p.summary)
                row["wall_s"] = p.wall_s
                out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "workload": {"guest_size": w.guest_size, "backing": str(w.backing), "chunk": w.chunk,
                         "passes": w.passes, "initially_set": w.initially_set, "writes": w.writes,
                         "pattern": w.pattern, "seed": w.seed, "base": w.base, "ia_bits": w.ia_bits,
                         "fwb": w.fwb, "tlb_range": w.tlb_range, "granule": w.granule},
            "strategies": {
                s.name: {"totals": r.totals, "summary": summarize(r.totals), "wall_s": r.wall_s,
                         "build_wall_s": r.build.wall_s,
                         "phases": [{"name": p.name, "wall_s": p.wall_s, "summary": p.summary,
                                     "counts": p.counts} for p in r.phases],
                         "final_table": self.diffs[s].to_dict()}
                for s, r in self.results.items()},
            "rows": self.rows(),
        }


def _strategies(strategies: Optional[Iterable[Any]]) -> list[Strategy]:
    if strategies is None:
        return list(Strategy)
    if isinstance(strategies, (str, Strategy)):
        strategies = [strategies]
    out = [Strategy.KERNEL]
    for s in strategies:
        s = _strategy(s)
        if s not in out:
            out.append(s)
    return out


def compare(workload: Workload, strategies: Optional[Iterable[Any]] = None, *,
            progress: Optional[Callable[[float, str], None]] = None) -> Comparison:
    """Run ``workload`` under each strategy (all by default; KERNEL always
    first) and check each final table against KERNEL's."""
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be an s2fast.Workload, not {type(workload).__name__} {workload!r}")
    order = _strategies(strategies)
    results: dict[Strategy, RunResult] = {}
    diffs: dict[Strategy, TableDiff] = {}
    kernel_vm: Optional[VM] = None
    for i, s in enumerate(order):
        step = (lambda f, name, i=i, s=s: progress((i + f) / len(order), f"{s.name}: {name}")) \
            if progress else None
        r = workload.run(s, keep_vm=True, progress=step)
        if s is Strategy.KERNEL:
            kernel_vm = r.vm
            diffs[s] = TableDiff(True)
        else:
            assert kernel_vm is not None
            diffs[s] = diff_tables(kernel_vm.pt, r.vm.pt)
            r.vm = None
        results[s] = r
    results[Strategy.KERNEL].vm = None
    return Comparison(workload, results, diffs)


# ---------------------------------------------------------------------------
# Presets: the RFC series' experiments

@dataclass(frozen=True)
class Preset:
    """One of the series' published set-ups: a memslot of ``guest_size``
    backed by ``backing``. "Enable dirty tracking" is measured without
    initially-all-set (write-protect + eager split at enable time);
    "CLEAR_DIRTY_LOG" with it (the first pass splits, later ones re-walk
    already-split memory), each on a freshly built guest."""

    name: str
    description: str
    guest_size: int
    backing: str
    chunk: int = 2 * MiB
    passes: int = 2
    writes: int = 16384
    pattern: str = "random"
    seed: int = 0
    granule: int = 4096

    def enable_workload(self, **over: Any) -> Workload:
        return Workload(guest_size=self.guest_size, backing=self.backing, chunk=over.get("chunk", self.chunk),
                        passes=0, initially_set=False, writes=0, seed=over.get("seed", self.seed),
                        granule=self.granule)

    def clear_workload(self, **over: Any) -> Workload:
        return Workload(guest_size=self.guest_size, backing=self.backing, chunk=over.get("chunk", self.chunk),
                        passes=over.get("passes", self.passes), initially_set=True,
                        writes=over.get("writes", self.writes), pattern=over.get("pattern", self.pattern),
                        seed=over.get("seed", self.seed), granule=self.granule)


def _presets() -> dict[str, Preset]:
    out = {}
    for gib in (64, 16):
        for tag, backing, what in (("4k", "4k", "memory already split to 4 KiB"),
                                   ("thp", "2m", "2 MiB blocks (THP)"),
                                   ("hugetlb", "1g", "1 GiB blocks (hugetlb)")):
            name = f"rfc-{gib}g-{tag}"
            out[name] = Preset(name, f"{gib} GiB memslot, {what}; eager-split chunk 2 MiB",
                               gib * GiB, backing)
    return out


PRESETS: dict[str, Preset] = _presets()


@dataclass
class PresetResult:
    """A preset's two measurements, each a Comparison."""

    preset: Preset
    enable: Comparison
    clear: Comparison

    def rows(self) -> list[dict[str, Any]]:
        en = {r["strategy"]: r for r in self.enable.rows()}
        cl = {r["strategy"]: r for r in self.clear.rows()}
        out = []
        for name in en:
            e, c = en[name], cl[name]
            outcome = []
            if not e["identical"]:
                outcome.append(f"enable: {e['outcome']}")
            if not c["identical"]:
                outcome.append(f"CLEAR: {c['outcome']}")
            out.append({"strategy": name,
                        "enable_entries_read": e["entries_read"], "enable_reduction_pct": e["reduction_pct"],
                        "enable_wall_s": e["wall_s"],
                        "clear_entries_read": c["entries_read"], "clear_reduction_pct": c["reduction_pct"],
                        "clear_wall_s": c["wall_s"],
                        "identical": e["identical"] and c["identical"],
                        "outcome": "; ".join(outcome) if outcome else "identical"})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "description": self.preset.description,
                "enable": self.enable.to_dict(), "clear": self.clear.to_dict(), "rows": self.rows()}


def run_preset(preset: Union[str, Preset], strategies: Optional[Iterable[Any]] = None, *,
               progress: Optional[Callable[[float, str], None]] = None, **overrides: Any) -> PresetResult:
    """Run a preset's two measurements under each strategy. ``overrides``
    may change chunk, passes, writes, pattern or seed."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if not isinstance(preset, Preset):
        raise TypeError(f"preset must be a name or an s2fast.Preset, not {type(preset).__name__} {preset!r}")
    bad = set(overrides) - {"chunk", "passes", "writes", "pattern", "seed"}
    if bad:
        raise TypeError(f"run_preset() got unexpected overrides {sorted(bad)}")
    half = (lambda lo: (lambda f, n: progress(lo + f / 2, n))) if progress else (lambda lo: None)
    enable = compare(preset.enable_workload(**overrides), strategies, progress=half(0.0))
    clear = compare(preset.clear_workload(**overrides), strategies, progress=half(0.5))
    return PresetResult(preset, enable, clear)


__all__ = ["VM", "Memslot", "Backing", "Workload", "Phase", "RunResult", "Comparison", "TableDiff",
           "Preset", "PresetResult", "PRESETS", "compare", "run_preset", "diff_tables", "pattern_pages",
           "summarize", "parse_size", "format_size", "split_nr_page_tables", "COUNTERS", "PATTERNS",
           "HostRules", "host_rules"]
