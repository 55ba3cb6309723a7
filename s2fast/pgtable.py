"""The Python face of the engine: ``Stage2PageTable`` with argument checks,
geometry as the kernel computes it, and ``Stats`` snapshots."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from . import _core, _pgtable, _pool
from ._pool import MemCache
from ._visitors import BuiltinVisitor
from .errors import CorruptTableError
from .flags import ALL_WALK_FLAGS, PROT_ALL, Prot, WalkFlags

GRANULES = (4096, 16384, 65536)
PA_RANGE_BITS = 48
U64_MAX = (1 << 64) - 1
KNOWN_WALK_FLAGS = ALL_WALK_FLAGS

# Virtual address space reserved per table for its descriptor pool: only the
# pages actually used cost memory.
DEFAULT_RESERVE = 32 << 30

Visitor = Union[Callable[[Any, int], Optional[int]], BuiltinVisitor]


@dataclass(frozen=True)
class Geometry:
    """What kvm_get_vtcr() and kvm_pgtable_stage2_init() derive from the IPA size."""

    granule: int
    ia_bits: int
    start_level: int
    pgd_pages: int
    ptrs_per_table: int
    vtcr: int

    @property
    def page_shift(self) -> int:
        return self.granule.bit_length() - 1

    def level_shift(self, level: int) -> int:
        """ARM64_HW_PGTABLE_LEVEL_SHIFT(level)."""
        return (self.page_shift - 3) * (4 - level) + 3

    def level_size(self, level: int) -> int:
        return 1 << self.level_shift(level)

    @property
    def min_block_level(self) -> int:
        return 1 if self.granule == 4096 else 2


def geometry(ia_bits: int, granule: int = 4096) -> Geometry:
    """Start level, concatenated PGD pages and VTCR_EL2 for a guest IPA size,
    computed the kernel's way (PARange 48 bits, 16-bit VMIDs, HA set)."""
    page_shift = granule.bit_length() - 1
    levels = max(2, (ia_bits - 8) // (page_shift - 3))  # stage2_pgtable_levels()
    start_level = 4 - levels
    shift = (page_shift - 3) * (4 - (start_level - 1)) + 3
    pgd_pages = (((1 << ia_bits) - 1) >> shift) + 1 if shift < 64 else 1
    tg0 = {4096: 0, 65536: 1, 16384: 2}[granule]
    sl0_base = 2 if granule == 4096 else 3
    vtcr = (1 << 31                       # RES1
            | 5 << 16                     # PS: 48-bit PA
            | 1 << 21                     # HA
            | 1 << 19                     # VS: 16-bit VMID
            | tg0 << 14
            | 3 << 12 | 1 << 10 | 1 << 8  # SH0 inner, ORGN0/IRGN0 WBWA
            | (sl0_base - start_level) << 6
            | (64 - ia_bits))
    return Geometry(granule, ia_bits, start_level, pgd_pages, 1 << (page_shift - 3), vtcr)


def _u64(name: str, v: Any) -> int:
    # timedelta64 is an np.integer subclass; it is a duration, not an address.
    if isinstance(v, (bool, np.timedelta64)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(v).__name__} {v!r}")
    v = int(v)
    if v < 0 or v > U64_MAX:
        raise ValueError(f"{name} {v!r} is outside 0..2**64-1")
    return v


def _bool_arg(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(v).__name__} {v!r}")
    return bool(v)


def _prot(v: Any) -> int:
    v = _u64("prot", v)
    if v & ~PROT_ALL:
        raise ValueError(f"prot {v:#x} has unknown bits {v & ~PROT_ALL:#x}")
    return v


def _flags(v: Any, known: int = KNOWN_WALK_FLAGS) -> int:
    v = _u64("flags", v)
    if v & ~known:
        raise ValueError(f"walk flags {v:#x} have unknown bits {v & ~known:#x}")
    return v


def _memcache(v: Any, allow_none: bool = True) -> Optional[MemCache]:
    if v is None and allow_none:
        return None
    if not isinstance(v, MemCache):
        raise TypeError(f"memcache must be an s2fast.MemCache{' or None' if allow_none else ''}, "
                        f"not {type(v).__name__} {v!r}")
    return v


def _level(v: Any, name: str = "level") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(v).__name__} {v!r}")
    v = int(v)
    if not -1 <= v <= 3:
        raise ValueError(f"{name} {v} is outside -1..3")
    return v


class Stats:
    """A snapshot of a page table's event counters (see README for the keys).

    Counters add up over every operation since the last ``reset_stats()``,
    nested walks included. ``a - b`` gives the counts between two snapshots."""

    __slots__ = ("_d",)

    def __init__(self, d: dict) -> None:
        object.__setattr__(self, "_d", d)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._d[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def as_dict(self) -> dict:
        return dict(self._d)

    def __sub__(self, other: "Stats") -> "Stats":
        return Stats({k: v - other._d[k] for k, v in self._d.items() if isinstance(v, int)})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stats) and self._d == other._d

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self._d.items() if isinstance(v, int) and v)
        return f"Stats({shown})"


class Stage2PageTable:
    """A guest stage-2 page table, as ``kvm_pgtable_stage2_init()`` builds it.

    Every operation is the pgtable.c function of the same name, with the same
    results, descriptors and counted events."""

    def __init__(self, ia_bits: int, *, granule: int = 4096, fwb: bool = False, xnx: bool = False,
                 tlb_range: bool = False, reserve_bytes: int = DEFAULT_RESERVE) -> None:
        if isinstance(ia_bits, bool) or not isinstance(ia_bits, (int, np.integer)):
            raise TypeError(f"ia_bits must be an int, not {type(ia_bits).__name__} {ia_bits!r}")
        if not 32 <= int(ia_bits) <= PA_RANGE_BITS:
            raise ValueError(f"ia_bits {ia_bits!r} is outside 32..48")
        if isinstance(granule, bool) or not isinstance(granule, (int, np.integer)):
            raise TypeError(f"granule must be an int, not {type(granule).__name__} {granule!r}")
        granule = int(granule)
        if granule not in GRANULES:
            raise ValueError(f"granule {granule!r} is not one of {GRANULES}")
        if isinstance(reserve_bytes, bool) or not isinstance(reserve_bytes, (int, np.integer)):
            raise TypeError(f"reserve_bytes must be an int, not {type(reserve_bytes).__name__} "
                            f"{reserve_bytes!r}")
        if not 1 << 20 <= int(reserve_bytes) <= 1 << 46:
            raise ValueError(f"reserve_bytes {reserve_bytes!r} is outside 2**20..2**46")
        for name, v in (("fwb", fwb), ("xnx", xnx), ("tlb_range", tlb_range)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, not {type(v).__name__} {v!r}")
        self.geometry = g = geometry(int(ia_bits), granule)
        self.fwb, self.xnx, self.tlb_range = bool(fwb), bool(xnx), bool(tlb_range)
        self._core = _core.Stage2Core(g.page_shift, g.ia_bits, g.start_level, g.pgd_pages,
                                      self.fwb, self.xnx, self.tlb_range, int(reserve_bytes),
                                      CorruptTableError)
        self.physmem: Any = None
        self.vttbr = _pool.TABLE_PA_BASE      # the pool's root, VMID 0

    # -- tables outside the pool --------------------------------------------

    @classmethod
    def from_image(cls, physmem: Any, *, vttbr: Optional[int] = None, vtcr: Optional[int] = None,
                   xnx: Optional[bool] = None, fwb: Optional[bool] = None,
                   allow_aliases: bool = False) -> "Stage2PageTable":
        """A read-only table in external memory.

        ``physmem`` is an s2fast.PhysMem (then ``vttbr`` and ``vtcr`` are
        required: the register values as a CPU holds them) or the path of an
        image written by export_image() (registers from its sidecar unless
        given). ``xnx`` (FEAT_XNX, default True) and ``fwb`` (HCR_EL2.FWB,
        default False) are not in the registers. Walks, leaves(), translate()
        and dump() work as on a pool; changes raise ReadOnlyTableError.
        Tables reached twice (not a tree) raise ValueError unless
        ``allow_aliases``: walks of such tables can take very long."""
        from .image import open_exported, open_image

        if isinstance(physmem, (str, os.PathLike)):
            return open_exported(cls, physmem, vttbr=vttbr, vtcr=vtcr, xnx=xnx, fwb=fwb,
                                 allow_aliases=allow_aliases)
        if vttbr is None or vtcr is None:
            raise TypeError("from_image(physmem) needs vttbr= and vtcr=")
        return open_image(cls, physmem, vttbr=vttbr, vtcr=vtcr, xnx=True if xnx is None else xnx,
                          fwb=False if fwb is None else fwb, allow_aliases=allow_aliases)

    @property
    def read_only(self) -> bool:
        """True for a table in an external image."""
        return self._core.is_image

    @property
    def root_pa(self) -> int:
        return self._core.root_pa

    def copy(self) -> "Stage2PageTable":
        """A writable pool table with the same descriptors (its tables at pool
        addresses). Statistics start from zero.

        A pool is a KVM table on a host with 48-bit PAs: its VTCR is the one
        ``geometry()`` computes (PS = 48 bits). Translations that depend on an
        image's own PS can therefore differ in the copy: an output address
        between the image's PS and 48 bits, one above 48 bits (64 KiB
        pages), and a 64 KiB level-1 block, valid only under PS = 52."""
        from .image import copy_table

        return copy_table(self, type(self))

    def export_image(self, path: Union[str, "os.PathLike[str]"]) -> dict:
        """Write the table pages to ``path`` and a JSON sidecar ``path.json``
        (base PA, root PA, VTTBR, VTCR, granule); from_image(path) reads both
        back. Returns the sidecar's contents."""
        from .image import export_image

        return export_image(self, path)

    # -- architectural translation ---------------------------------------------

    def translate_batch(self, ipas: Any, access: Any = "read", *, ha: Optional[bool] = None,
                        xnx: Optional[bool] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The MMU's stage-2 translation of every IPA for one access kind
        ("read", "write", "exec_el1", "exec_el0" or s2fast.Access): a
        TRANSLATE_DTYPE array (ipa, ok, pa, level, block_size, desc, readable,
        writable, exec_el1, exec_el0, fault, fault_level, fsc). ``ha`` (VTCR.HA)
        and ``xnx`` (FEAT_XNX) default to the table's. ``out``, an array of
        that dtype and length, is filled and returned instead of a new one:
        a fresh array of millions of rows costs the kernel page zeroing on
        every call, a reused one does not."""
        from .translate import as_ipas, check_out, parse_access

        acc = parse_access(access)
        ha = self._core.ha if ha is None else _bool_arg("ha", ha)
        xnx = self.xnx if xnx is None else _bool_arg("xnx", xnx)
        arr = as_ipas(ipas)
        if out is not None:
            check_out(out, arr)
        return self._core.translate(arr, acc, ha, xnx, out)

    def translate(self, ipa: int, access: Any = "read", *, ha: Optional[bool] = None,
                  xnx: Optional[bool] = None) -> Any:
        """translate_batch() of one IPA, as an s2fast.Translation."""
        from .translate import Translation

        ipa = _u64("ipa", ipa)
        return Translation.from_row(self.translate_batch(np.array([ipa], dtype=np.uint64), access,
                                                         ha=ha, xnx=xnx)[0])

    # -- configuration ----------------------------------------------------

    @property
    def ia_bits(self) -> int:
        return self.geometry.ia_bits

    @property
    def granule(self) -> int:
        return self.geometry.granule

    @property
    def start_level(self) -> int:
        return self.geometry.start_level

    @property
    def pgd_pages(self) -> int:
        return self.geometry.pgd_pages

    @property
    def ptrs_per_table(self) -> int:
        return self.geometry.ptrs_per_table

    @property
    def vtcr(self) -> int:
        return self.geometry.vtcr

    def __repr__(self) -> str:
        if self.read_only:
            return (f"Stage2PageTable.from_image(ia_bits={self.ia_bits}, granule={self.granule}, "
                    f"root_pa={self.root_pa:#x}, vtcr={self.vtcr:#x}, fwb={self.fwb}, xnx={self.xnx})")
        return (f"Stage2PageTable(ia_bits={self.ia_bits}, granule={self.granule}, fwb={self.fwb}, "
                f"xnx={self.xnx}, tlb_range={self.tlb_range}, pages_live={self.pages_live})")

    # -- state --------------------------------------------------------------

    @property
    def descriptors(self) -> np.ndarray:
        """The descriptor pool as a read-only flat uint64 view. Page ``i``
        starts at ``i * ptrs_per_table`` and lives at PA ``table_pa(i)``; the
        entry at PA ``ctx.ptep`` is ``descriptors[(ctx.ptep - TABLE_PA_BASE) // 8]``.
        Image-backed tables have no pool (TypeError)."""
        return self._core.descriptors

    @property
    def pages_live(self) -> int:
        return self._core.pages_live

    @property
    def stats(self) -> Stats:
        return Stats(self._core.stats_dict())

    def reset_stats(self) -> None:
        self._core.reset_stats()

    def leaves(self, *, skip_unreadable: bool = False) -> np.ndarray:
        """Every valid leaf as a structured array (ipa, level, pte) in IPA order.
        In an image, a table outside memory raises OutsideMemoryError unless
        ``skip_unreadable`` (then what it would map is left out)."""
        return self._core.entries(True, _bool_arg("skip_unreadable", skip_unreadable))

    def annotations(self, *, skip_unreadable: bool = False) -> np.ndarray:
        """Every non-zero invalid entry (owner annotations, locked entries)."""
        return self._core.entries(False, _bool_arg("skip_unreadable", skip_unreadable))

    def table_pages(self) -> int:
        """Table pages reachable from the root, root pages included."""
        return self._core.table_pages()

    def table_pa(self, page: int) -> int:
        """The simulated physical address of pool page ``page``."""
        page = _u64("page", page)
        if page >= self._core.n_pages:
            raise ValueError(f"page {page} is not in the pool ({self._core.n_pages} pages)")
        return _pool.TABLE_PA_BASE + page * self.granule

    # -- the walker -----------------------------------------------------------

    def walk(self, ipa: int, size: int, visitor: Visitor, flags: int = WalkFlags.LEAF, *,
             arg: Any = None, max_level: int = 3) -> int:
        """kvm_pgtable_walk(): visit [ipa, ipa+size) with ``visitor``.

        ``visitor(ctx, visit)`` is called for each visited entry; ``visit`` is
        the int value of WalkFlags.LEAF / TABLE_PRE / TABLE_POST. It returns
        an int (or None for 0): non-zero stops the walk and is returned,
        except -EAGAIN without HANDLE_FAULT, and except the hints SKIP_CHILDREN /
        SKIP_SIBLINGS. A BuiltinVisitor runs in C. ``max_level`` (a walker
        variant, not in the kernel): no visit below it, its tables not entered."""
        ipa, size = _u64("ipa", ipa), _u64("size", size)
        flags = _flags(flags)
        max_level = self._max_level(max_level)
        if not isinstance(visitor, BuiltinVisitor) and not callable(visitor):
            raise TypeError(f"visitor must be callable or an s2fast built-in visitor, not {visitor!r}")
        return self._core.walk(ipa, size, visitor, flags, arg, max_level)

    def _max_level(self, v: Any) -> int:
        v = _level(v, "max_level")
        if v < self.start_level:
            raise ValueError(f"max_level {v} is above the start level {self.start_level}")
        return v

    # -- stage-2 operations -----------------------------------------------------

    def map(self, ipa: int, size: int, phys: int, prot: int, *, memcache: Optional[MemCache] = None,
            flags: int = 0, force_pte: bool = False) -> int:
        """kvm_pgtable_stage2_map(). ``force_pte=True`` is what the kernel does
        when the table's force_pte_cb() answers true for the range: pages only."""
        ipa, size, phys = _u64("ipa", ipa), _u64("size", size), _u64("phys", phys)
        if not isinstance(force_pte, (bool, np.bool_)):
            raise TypeError(f"force_pte must be a bool, not {type(force_pte).__name__} {force_pte!r}")
        return self._core.map(ipa, size, phys, _prot(prot), _memcache(memcache), _flags(flags),
                              bool(force_pte))

    def unmap(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_unmap()."""
        return self._core.unmap(_u64("ipa", ipa), _u64("size", size))

    def wrprotect(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_wrprotect()."""
        return self._core.wrprotect(_u64("ipa", ipa), _u64("size", size))

    def relax_perms(self, ipa: int, prot: int, flags: int = 0) -> int:
        """kvm_pgtable_stage2_relax_perms()."""
        return self._core.relax_perms(_u64("ipa", ipa), _prot(prot), _flags(flags))

    def mkyoung(self, ipa: int, flags: int = 0) -> None:
        """kvm_pgtable_stage2_mkyoung() (returns nothing, as the kernel's)."""
        self._core.mkyoung(_u64("ipa", ipa), _flags(flags))

    def test_clear_young(self, ipa: int, size: int, mkold: bool) -> bool:
        """kvm_pgtable_stage2_test_clear_young()."""
        if not isinstance(mkold, (bool, np.bool_)):
            raise TypeError(f"mkold must be a bool, not {type(mkold).__name__} {mkold!r}")
        return self._core.test_clear_young(_u64("ipa", ipa), _u64("size", size), bool(mkold))

    def get_leaf(self, ipa: int) -> tuple[int, Optional[int], Optional[int]]:
        """kvm_pgtable_get_leaf(): (ret, pte, level); pte and level are None
        when ret is non-zero."""
        return self._core.get_leaf(_u64("ipa", ipa))

    def split(self, ipa: int, size: int, memcache: MemCache, *, strategy: Any = None,
              flags: int = 0, max_level: Optional[int] = None) -> int:
        """kvm_pgtable_stage2_split() under a walker ``strategy``
        (s2fast.Strategy, default KERNEL: today's walk). ``flags`` are OR-ed
        into the strategy's walk flags; ``max_level`` overrides its maximum level."""
        from .variants import Strategy

        ipa, size = _u64("ipa", ipa), _u64("size", size)
        mc = _memcache(memcache, allow_none=False)
        strategy = Strategy.KERNEL if strategy is None else strategy
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be an s2fast.Strategy, not {type(strategy).__name__} {strategy!r}")
        extra = _flags(flags)
        # The kernel's split visitor treats every visit as a leaf: a table
        # visit would be split as if the table page were a block.
        table_visits = int(WalkFlags.TABLE_POST) | (0 if strategy.skip_return else int(WalkFlags.TABLE_PRE))
        if extra & table_visits:
            raise ValueError(f"split flags {extra:#x} ask for table visits, which {strategy.name}'s "
                             "split visitor would treat as blocks")
        walk_flags = strategy.flags | extra
        level = strategy.max_level if max_level is None else self._max_level(max_level)
        return self._core.split(ipa, size, mc, walk_flags, level, strategy.skip_return)

    def flush(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_flush()."""
        return self._core.flush(_u64("ipa", ipa), _u64("size", size))

    def set_owner(self, ipa: int, size: int, owner: int, memcache: Optional[MemCache]) -> int:
        """kvm_pgtable_stage2_set_owner(): annotate [ipa, ipa+size) with owner."""
        ipa, size = _u64("ipa", ipa), _u64("size", size)
        owner = _u64("owner", owner)
        if owner > 0xFF:
            raise ValueError(f"owner {owner} does not fit the kernel's u8 owner id")
        return self._core.set_owner(ipa, size, _memcache(memcache), owner)

    def create_unlinked(self, phys: int, level: int, prot: int, memcache: Optional[MemCache],
                        force_pte: bool = False) -> tuple[int, Optional[int]]:
        """kvm_pgtable_stage2_create_unlinked(): (0, table PA) or (errno, None)."""
        phys = _u64("phys", phys)
        level = self._unlinked_level(level)
        if not isinstance(force_pte, (bool, np.bool_)):
            raise TypeError(f"force_pte must be a bool, not {type(force_pte).__name__} {force_pte!r}")
        return self._core.create_unlinked(phys, level, _prot(prot), _memcache(memcache), bool(force_pte))

    def free_unlinked(self, table_pa: int, level: int) -> None:
        """kvm_pgtable_stage2_free_unlinked()."""
        self._core.free_unlinked(_u64("table_pa", table_pa), self._unlinked_level(level))

    def _unlinked_level(self, level: Any) -> int:
        level = _level(level)
        if self.geometry.level_shift(level) >= 64:
            raise ValueError(f"level {level} has no granule with a {self.granule}-byte page size")
        return level

    def dump(self, *, json: bool = False) -> str:
        """One line per run of IPAs with identical attributes, like the
        kernel's stage-2 ptdump (``json=True``: a JSON list)."""
        from .dump import format_dump

        return format_dump(self, json=json)

    def destroy(self) -> None:
        """kvm_pgtable_stage2_destroy(): frees every table; later operations
        return -EINVAL as in the kernel."""
        self._core.destroy()


def pte_prot(pte: int) -> Prot:
    """kvm_pgtable_stage2_pte_prot()."""
    return Prot(_pgtable.pte_prot(_u64("pte", pte)))
