"""The Python face of the engine: ``Stage2PageTable`` (argument checks,
then the engine core's operation) and ``Stats`` snapshots.

This is the only module that holds an engine core (``_core``): every other
layer goes through a table's public methods or the private ones marked for
s2fast's own layers. Geometry lives in s2fast.geometry, the checks in
s2fast.checks, images in s2fast.image."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from . import _core, _pgtable, _pool, checks
from ._pool import MemCache
from ._visitors import BuiltinVisitor
from .checks import U64_MAX
from .dump import format_dump
from .errors import CorruptTableError
from .flags import ALL_WALK_FLAGS, Prot, WalkFlags
from .geometry import GRANULES, PA_RANGE_BITS, Geometry, geometry
from .image import copy_table, export_image, open_exported, open_image
from .translate import Translation, as_ipas, check_out, parse_access
from .strategy import as_strategy, run_split, run_wrprotect
from .variants import Strategy

KNOWN_WALK_FLAGS = ALL_WALK_FLAGS

# The names this module had before the checks moved to s2fast.checks.
_u64, _bool_arg, _prot, _flags = checks.u64, checks.boolean, checks.prot, checks.walk_flags
_memcache, _level = checks.memcache, checks.level

# Virtual address space reserved per table for its descriptor pool: only the
# pages actually used cost memory.
DEFAULT_RESERVE = 32 << 30

Visitor = Union[Callable[[Any, int], Optional[int]], BuiltinVisitor]


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


def _geometry_field(name: str) -> property:
    """A read-only attribute of the table's Geometry."""
    return property(lambda self: getattr(self.geometry, name), doc=f"geometry.{name}")


def _core_field(name: str, doc: str) -> property:
    """A read-only attribute of the engine core."""
    return property(lambda self: getattr(self._core, name), doc=doc)


class _PageTable:
    """What every table has, whatever it can do: the engine core (held here
    and nowhere else), the geometry, the walker, the whole-table views,
    translation, images and the dump. Stage2PageTable adds the stage-2
    operations."""

    def __init__(self, ia_bits: int, *, granule: int = 4096, fwb: bool = False, xnx: bool = False,
                 tlb_range: bool = False, reserve_bytes: int = DEFAULT_RESERVE) -> None:
        ia_bits = checks.integer("ia_bits", ia_bits, 32, PA_RANGE_BITS)
        granule = checks.integer("granule", granule)
        if granule not in GRANULES:
            raise ValueError(f"granule {granule!r} is not one of {GRANULES}")
        reserve_bytes = checks.integer("reserve_bytes", reserve_bytes)
        if not 1 << 20 <= reserve_bytes <= 1 << 46:
            raise ValueError(f"reserve_bytes {reserve_bytes!r} is outside 2**20..2**46")
        fwb, xnx, tlb_range = (checks.boolean(k, v) for k, v in (("fwb", fwb), ("xnx", xnx),
                                                                   ("tlb_range", tlb_range)))
        g = geometry(ia_bits, granule)
        core = _core.Stage2Core(g.page_shift, g.ia_bits, g.start_level, g.pgd_pages, fwb, xnx, tlb_range,
                                reserve_bytes, CorruptTableError)
        self._attach(core, g, fwb=fwb, xnx=xnx, tlb_range=tlb_range, vttbr=_pool.TABLE_PA_BASE)

    @classmethod
    def _from_core(cls, core: Any, g: Geometry, **attrs: Any) -> "Stage2PageTable":
        """A table around an engine core made elsewhere (an image's, or a
        copy's): the one way besides __init__ into a Stage2PageTable."""
        pt = cls.__new__(cls)
        pt._attach(core, g, **attrs)
        return pt

    def _attach(self, core: Any, g: Geometry, *, fwb: bool, xnx: bool, tlb_range: bool, vttbr: int,
                physmem: Any = None, **extra: Any) -> None:
        """Every attribute of a table is set here and only here."""
        self._core = core
        self.geometry = g
        self.fwb, self.xnx, self.tlb_range = fwb, xnx, tlb_range
        self.physmem = physmem
        self.vttbr = vttbr        # a pool's root at VMID 0, or the image's register
        for k, v in extra.items():
            setattr(self, k, v)

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
        if isinstance(physmem, (str, os.PathLike)):
            return open_exported(cls, physmem, vttbr=vttbr, vtcr=vtcr, xnx=xnx, fwb=fwb,
                                 allow_aliases=allow_aliases)
        if vttbr is None or vtcr is None:
            raise TypeError("from_image(physmem) needs vttbr= and vtcr=")
        return open_image(cls, physmem, vttbr=vttbr, vtcr=vtcr, xnx=True if xnx is None else xnx,
                          fwb=False if fwb is None else fwb, allow_aliases=allow_aliases)

    read_only = _core_field("is_image", "True for a table in an external image.")
    root_pa = _core_field("root_pa", "The root table's PA.")
    ps_bits = _core_field("ps_bits", "The output-address size the table is walked with (VTCR_EL2.PS; 48 for a pool).")

    def copy(self) -> "Stage2PageTable":
        """A writable pool table with the same descriptors (its tables at pool
        addresses). Statistics start from zero.

        A pool is a KVM table on a host with 48-bit PAs: its VTCR is the one
        ``geometry()`` computes (PS = 48 bits). Translations that depend on an
        image's own PS can therefore differ in the copy: an output address
        between the image's PS and 48 bits, one above 48 bits (64 KiB
        pages), and a 64 KiB level-1 block, valid only under PS = 52."""
        return copy_table(self, type(self))

    def export_image(self, path: Union[str, "os.PathLike[str]"]) -> dict:
        """Write the table pages to ``path`` and a JSON sidecar ``path.json``
        (base PA, root PA, VTTBR, VTCR, granule); from_image(path) reads both
        back. Returns the sidecar's contents."""
        return export_image(self, path)

    # -- for s2fast's own layers: arguments already checked ------------------

    def _require_tables(self, what: str) -> None:
        if not self._core.has_pgd:
            raise ValueError(f"this page table has been destroyed: there is nothing to {what}")

    def _read_table(self, pa: int, entries: Optional[int] = None) -> Optional[np.ndarray]:
        """The entries of the table page at ``pa`` (the first ``entries``), or
        None when the memory does not hold it."""
        return self._core.read_table(pa) if entries is None else self._core.read_table(pa, entries)

    def _live_pool_pages(self) -> np.ndarray:
        """The pool as (pages, ptrs_per_table), freed pages zeroed."""
        pool = np.array(self._core.descriptors, copy=True).reshape(-1, self.ptrs_per_table)
        pool[self._core.refcounts <= 0] = 0
        return pool

    def _load_pages(self, pages: np.ndarray) -> None:
        """Fill an empty pool with these table pages (page 0 the root)."""
        self._core.load_pages(pages)

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
        acc = parse_access(access)
        ha = self._core.ha if ha is None else checks.boolean("ha", ha)
        xnx = self.xnx if xnx is None else checks.boolean("xnx", xnx)
        arr = as_ipas(ipas)
        if out is not None:
            check_out(out, arr)
        return self._core.translate(arr, acc, ha, xnx, out)

    def translate(self, ipa: int, access: Any = "read", *, ha: Optional[bool] = None,
                  xnx: Optional[bool] = None) -> Translation:
        """translate_batch() of one IPA, as an s2fast.Translation."""
        ipa = checks.u64("ipa", ipa)
        return Translation.from_row(self.translate_batch(np.array([ipa], dtype=np.uint64), access,
                                                         ha=ha, xnx=xnx)[0])

    # -- configuration ----------------------------------------------------

    ia_bits = _geometry_field("ia_bits")
    granule = _geometry_field("granule")
    start_level = _geometry_field("start_level")
    pgd_pages = _geometry_field("pgd_pages")
    ptrs_per_table = _geometry_field("ptrs_per_table")
    vtcr = _geometry_field("vtcr")

    def __repr__(self) -> str:
        if self.read_only:
            return (f"Stage2PageTable.from_image(ia_bits={self.ia_bits}, granule={self.granule}, "
                    f"root_pa={self.root_pa:#x}, vtcr={self.vtcr:#x}, fwb={self.fwb}, xnx={self.xnx})")
        return (f"Stage2PageTable(ia_bits={self.ia_bits}, granule={self.granule}, fwb={self.fwb}, "
                f"xnx={self.xnx}, tlb_range={self.tlb_range}, pages_live={self.pages_live})")

    # -- state --------------------------------------------------------------

    descriptors = _core_field("descriptors", """The descriptor pool as a read-only flat uint64 view. Page ``i``
        starts at ``i * ptrs_per_table`` and lives at PA ``table_pa(i)``; the
        entry at PA ``ctx.ptep`` is ``descriptors[(ctx.ptep - TABLE_PA_BASE) // 8]``.
        Image-backed tables have no pool (TypeError).""")
    pages_live = _core_field("pages_live", "Table pages in use.")

    @property
    def stats(self) -> Stats:
        return Stats(self._core.stats_dict())

    def reset_stats(self) -> None:
        self._core.reset_stats()

    def leaves(self, *, skip_unreadable: bool = False) -> np.ndarray:
        """Every valid leaf as a structured array (ipa, level, pte) in IPA order.
        In an image, a table outside memory raises OutsideMemoryError unless
        ``skip_unreadable`` (then what it would map is left out)."""
        return self._core.entries(True, checks.boolean("skip_unreadable", skip_unreadable))

    def annotations(self, *, skip_unreadable: bool = False) -> np.ndarray:
        """Every non-zero invalid entry (owner annotations, locked entries)."""
        return self._core.entries(False, checks.boolean("skip_unreadable", skip_unreadable))

    def table_pages(self) -> int:
        """Table pages reachable from the root, root pages included."""
        return self._core.table_pages()

    def table_pa(self, page: int) -> int:
        """The simulated physical address of pool page ``page``."""
        page = checks.u64("page", page)
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
        ipa, size = checks.u64("ipa", ipa), checks.u64("size", size)
        flags = checks.walk_flags(flags)
        max_level = self._max_level(max_level)
        if not isinstance(visitor, BuiltinVisitor) and not callable(visitor):
            raise TypeError(f"visitor must be callable or an s2fast built-in visitor, not {visitor!r}")
        return self._core.walk(ipa, size, visitor, flags, arg, max_level)

    def _max_level(self, v: Any) -> int:
        v = checks.level(v, "max_level")
        if v < self.start_level:
            raise ValueError(f"max_level {v} is above the start level {self.start_level}")
        return v

    def dump(self, *, json: bool = False) -> str:
        """One line per run of IPAs with identical attributes, like the
        kernel's stage-2 ptdump (``json=True``: a JSON list)."""
        return format_dump(self, json=json)


class Stage2PageTable(_PageTable):
    """A guest stage-2 page table, as ``kvm_pgtable_stage2_init()`` builds it.

    Every operation is the pgtable.c function of the same name, with the same
    results, descriptors and counted events."""

    # -- stage-2 operations -----------------------------------------------------

    def map(self, ipa: int, size: int, phys: int, prot: int, *, memcache: Optional[MemCache] = None,
            flags: int = 0, force_pte: bool = False) -> int:
        """kvm_pgtable_stage2_map(). ``force_pte=True`` is what the kernel does
        when the table's force_pte_cb() answers true for the range: pages only."""
        ipa, size, phys = checks.u64("ipa", ipa), checks.u64("size", size), checks.u64("phys", phys)
        force_pte = checks.boolean("force_pte", force_pte)
        return self._core.map(ipa, size, phys, checks.prot(prot), checks.memcache(memcache),
                              checks.walk_flags(flags), force_pte)

    def unmap(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_unmap()."""
        return self._core.unmap(checks.u64("ipa", ipa), checks.u64("size", size))

    def wrprotect(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_wrprotect()."""
        return self._core.wrprotect(checks.u64("ipa", ipa), checks.u64("size", size))

    def relax_perms(self, ipa: int, prot: int, flags: int = 0) -> int:
        """kvm_pgtable_stage2_relax_perms()."""
        return self._core.relax_perms(checks.u64("ipa", ipa), checks.prot(prot), checks.walk_flags(flags))

    def mkyoung(self, ipa: int, flags: int = 0) -> None:
        """kvm_pgtable_stage2_mkyoung() (returns nothing, as the kernel's)."""
        self._core.mkyoung(checks.u64("ipa", ipa), checks.walk_flags(flags))

    def test_clear_young(self, ipa: int, size: int, mkold: bool) -> bool:
        """kvm_pgtable_stage2_test_clear_young()."""
        mkold = checks.boolean("mkold", mkold)
        return self._core.test_clear_young(checks.u64("ipa", ipa), checks.u64("size", size), mkold)

    def get_leaf(self, ipa: int) -> tuple[int, Optional[int], Optional[int]]:
        """kvm_pgtable_get_leaf(): (ret, pte, level); pte and level are None
        when ret is non-zero."""
        return self._core.get_leaf(checks.u64("ipa", ipa))

    def split(self, ipa: int, size: int, memcache: MemCache, *, strategy: Any = None,
              flags: int = 0, max_level: Optional[int] = None) -> int:
        """kvm_pgtable_stage2_split() under a walker ``strategy``
        (s2fast.Strategy or its name as compare() takes it, default KERNEL:
        today's walk). ``flags`` are OR-ed
        into the strategy's walk flags; ``max_level`` overrides its maximum level."""
        ipa, size = checks.u64("ipa", ipa), checks.u64("size", size)
        mc = checks.memcache(memcache, allow_none=False)
        strategy = Strategy.KERNEL if strategy is None else as_strategy(strategy)
        extra = checks.walk_flags(flags)
        # The kernel's split visitor treats every visit as a leaf: a table
        # visit would be split as if the table page were a block.
        table_visits = int(WalkFlags.TABLE_POST) | (0 if strategy.skip_return else int(WalkFlags.TABLE_PRE))
        if extra & table_visits and getattr(strategy, "split_visitor", None) is None:
            raise ValueError(f"split flags {extra:#x} ask for table visits, which {strategy.name}'s "
                             "split visitor would treat as blocks")
        level = None if max_level is None else self._max_level(max_level)
        return self._split_unchecked(ipa, size, mc, strategy, extra, level)

    def flush(self, ipa: int, size: int) -> int:
        """kvm_pgtable_stage2_flush()."""
        return self._core.flush(checks.u64("ipa", ipa), checks.u64("size", size))

    def set_owner(self, ipa: int, size: int, owner: int, memcache: Optional[MemCache]) -> int:
        """kvm_pgtable_stage2_set_owner(): annotate [ipa, ipa+size) with owner."""
        ipa, size = checks.u64("ipa", ipa), checks.u64("size", size)
        owner = checks.u64("owner", owner)
        if owner > 0xFF:
            raise ValueError(f"owner {owner} does not fit the kernel's u8 owner id")
        return self._core.set_owner(ipa, size, checks.memcache(memcache), owner)

    def create_unlinked(self, phys: int, level: int, prot: int, memcache: Optional[MemCache],
                        force_pte: bool = False) -> tuple[int, Optional[int]]:
        """kvm_pgtable_stage2_create_unlinked(): (0, table PA) or (errno, None)."""
        phys = checks.u64("phys", phys)
        level = self._unlinked_level(level)
        force_pte = checks.boolean("force_pte", force_pte)
        return self._core.create_unlinked(phys, level, checks.prot(prot), checks.memcache(memcache), force_pte)

    def free_unlinked(self, table_pa: int, level: int) -> None:
        """kvm_pgtable_stage2_free_unlinked()."""
        self._core.free_unlinked(checks.u64("table_pa", table_pa), self._unlinked_level(level))

    def _unlinked_level(self, level: Any) -> int:
        level = checks.level(level)
        if self.geometry.level_shift(level) >= 64:
            raise ValueError(f"level {level} has no granule with a {self.granule}-byte page size")
        return level

    def destroy(self) -> None:
        """kvm_pgtable_stage2_destroy(): frees every table; later operations
        return -EINVAL as in the kernel."""
        self._core.destroy()

    # The workload layer's hot loops (s2fast.mmu) call these without the
    # public methods' checks; their arguments are checked once, up front.
    def _map_unchecked(self, ipa: int, size: int, phys: int, prot: int, mc: MemCache, flags: int,
                       force_pte: bool) -> int:
        return self._core.map(ipa, size, phys, prot, mc, flags, force_pte)

    def _wrprotect_unchecked(self, ipa: int, size: int, strategy: Any = None) -> int:
        return run_wrprotect(self._core, strategy, ipa, size)

    def _relax_perms_unchecked(self, ipa: int, prot: int, flags: int) -> int:
        return self._core.relax_perms(ipa, prot, flags)

    def _split_unchecked(self, ipa: int, size: int, mc: MemCache, strategy: Any, extra_flags: int = 0,
                         max_level: Optional[int] = None) -> int:
        return run_split(self._core, self.geometry.page_shift, strategy, ipa, size, mc, extra_flags, max_level)

    def _guest_accesses(self, mc: MemCache, host: tuple, slots: list, ipas: np.ndarray, writes: np.ndarray,
                        counts: np.ndarray) -> tuple[int, int]:
        """Guest accesses through mmu.c's fault path (s2fast.mmu checks them)."""
        return self._core.guest_accesses(mc, host, slots, ipas, writes, counts)

    def _cost_counts(self) -> tuple[int, int]:
        """(entries written, cmpxchg attempts): the engine's counts the cost
        model prices besides Stats (s2fast.cost)."""
        return self._core.cost_counts()


def pte_prot(pte: int) -> Prot:
    """kvm_pgtable_stage2_pte_prot()."""
    return Prot(_pgtable.pte_prot(checks.u64("pte", pte)))
