"""Differential tests: the Cython engine (``s2fast``) against the pure-Python
reference model (``tests/models/reference.py``), driven by hypothesis.

Both implementations model the same kernel code (arch/arm64/kvm/hyp/pgtable.c)
with the same page-allocation policy, so after every operation they must agree
bit for bit: the return value, every counter and event log
(``pt.stats.as_dict()``, reset before each operation), the whole descriptor
pool (``pt.descriptors``), ``leaves()``, ``annotations()``, ``table_pages()``,
``pages_live``, the page refcounts and what is left in the memory caches.

* ``test_random_sequences``: a random configuration (granule, IA size, FWB,
  XNX, range TLBI) and a random sequence drawn from every operation, with
  addresses and sizes concentrated in a small window of the IPA space (block
  and page aligned and unaligned, across concatenated-PGD boundaries, at the
  top of the space, out of range, wrapping) so that operations overlap.
* ``test_random_walks``: sequences rich in ``walk()`` calls with Python
  visitors that return random codes, rewrite entries through ``ctx.set``
  (clear, valid block/page, annotation, locked entry, copied table
  descriptor) and sometimes raise; the callback sequences (kind, level, addr,
  start, end, old, flags, ptep, arg) are compared as well.  ``walk_builtin``
  compares s2fast's C ``CountVisitor``/``CollectVisitor`` with the same
  visitors written in Python and run by the reference.
* ``test_safety_fuzz``: visitors also write arbitrary 64-bit values (table
  descriptors pointing outside the pool, at freed or never-allocated pages,
  unaligned, page descriptors above the last level), followed by more
  operations.  Nothing may crash; the only exception an operation may raise
  is ``CorruptTableError``, from both implementations at the same operation
  (or a visitor's own exception, which must come out as the same object).
* ``test_every_operation`` / ``test_every_walk_flag``: one parametrized test
  per operation kind and per walk flag, each forcing that operation (flag)
  into every generated sequence and checking that it ran, so coverage does
  not depend on luck.

Rules for what the kernel does not define (each one reported, see the
MODELLING DIFFERENCE comments): after a ``CorruptTableError`` the counters of
that operation are not compared, and if the tables themselves differ (the
engine records the error and finishes the operation, the reference stops at
once) the rest of the sequence is only checked for safety; a raising visitor
may cost the engine one more counted reload; ``pages_live`` is compared
modulo 2**64; the reference's inspection helpers refuse corrupt descriptors
that the engine's skip.  Engine bugs the suite found are listed, with
reproducers, in ``ENGINE_BUGS`` (see ``test_known_engine_bug``).
"""
from __future__ import annotations

import dataclasses
import functools
import random
import pathlib
import subprocess
import sys
import textwrap
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from models import reference
import s2fast
from s2fast import _walk as engine_walk

# ---------------------------------------------------------------------------
# Constants

MASK64 = (1 << 64) - 1
LEAF, TABLE_PRE, TABLE_POST = 1, 2, 4
SHARED, HANDLE_FAULT, SKIP_BBM_TLBI, SKIP_CMO = 8, 16, 32, 64
WALK_FLAG_NAMES = {LEAF: "LEAF", TABLE_PRE: "TABLE_PRE", TABLE_POST: "TABLE_POST",
                   SHARED: "SHARED", HANDLE_FAULT: "HANDLE_FAULT",
                   SKIP_BBM_TLBI: "SKIP_BBM_TLBI", SKIP_CMO: "SKIP_CMO"}
assert sum(WALK_FLAG_NAMES) == 0x7F
for _bit, _name in WALK_FLAG_NAMES.items():
    assert int(getattr(s2fast.WalkFlags, _name)) == int(getattr(reference.WalkFlags, _name)) == _bit

PX, UX, X, W, R = 1, 2, 3, 4, 8
DEVICE, NC = 16, 32
SW0, SW1, SW2, SW3 = 1 << 55, 1 << 56, 1 << 57, 1 << 58
PROT_BITS = (PX, UX, W, R, DEVICE, NC, SW0, SW1, SW2, SW3)
assert int(s2fast.Prot.SW3) == int(reference.Prot.SW3) == SW3

TABLE_PA_BASE = reference.TABLE_PA_BASE
assert engine_walk.TABLE_PA_BASE == TABLE_PA_BASE

RET_CODES = (0, None, -11, -22, -12, 1, 7)     # what a visitor may return
INVALID_PTE_LOCKED = reference.INVALID_PTE_LOCKED

SIDES = ("eng", "ref")
MODS = {"eng": s2fast, "ref": reference}

OPS = ("map", "unmap", "wrprotect", "relax_perms", "mkyoung", "test_clear_young", "get_leaf",
       "split", "flush", "set_owner", "create_unlinked", "free_unlinked", "destroy", "walk",
       "walk_builtin")

# Upper bound on the leaf entries one map/set_owner/create_unlinked may write
# (the reference is pure Python); larger requests are cut down.
LEAF_BUDGET = 9000
# A Python visitor stops the walk (returns 1) after this many callbacks, and
# writes at most this many table descriptors in one walk.
CALLBACK_BUDGET = 2500
MAX_TABLE_WRITES = 16

# ---------------------------------------------------------------------------
# Engine bugs this suite found.  Each has a reproducer run in a subprocess (one
# of them killed the process).  While a bug is present the strategies avoid
# the case (or the comparison tolerates exactly that difference); once fixed,
# the case is covered again and test_known_engine_bug guards the fix.
# Value: (commit that fixed it, or None while open; reproducer).

ENGINE_BUGS = {
    # kvm_pgtable_stage2_create_unlinked() with a NULL memcache: the engine's
    # zalloc_page() dereferenced the NULL MC (segfault) instead of returning
    # NULL -> -ENOMEM as the reference (and the conformance harness) model it.
    "create_unlinked_null_memcache": ("66eb51b", """
        import s2fast
        pt = s2fast.Stage2PageTable(40)
        assert pt.create_unlinked(0, 2, int(s2fast.RW), None) == (-12, None)
        assert pt.pages_live == pt.pgd_pages
    """),
    # table_pages() is "table pages reachable from the root, root pages
    # included" (the reference counts distinct pages); the engine counted one
    # page per table descriptor leading to it, so a page reachable twice
    # (after a visitor copied a table descriptor) was counted twice.  (The
    # first fix, 3dde77f, then under-counted: a page met again at another
    # level was not walked there; fixed in af3af35.)
    "table_pages_counts_references": ("af3af35", """
        import s2fast
        pt = s2fast.Stage2PageTable(32)                 # 4 concatenated PGD pages
        def alias(ctx, visit):                          # PGD page 0 entry 0 -> PGD page 1
            ctx.set(pt.table_pa(1) | 3)
            return 1
        pt.walk(0, 4096, alias, s2fast.WalkFlags.LEAF)
        assert pt.table_pages() == 4, pt.table_pages()  # 5 with the bug
    """),
}


def _aliased(pr) -> bool:
    """Whether a reference table has a table page reachable through more
    than one descriptor (or a PGD page used as a child)."""
    refs: dict = {}
    mm = pr.mm_ops
    for ipa, lv, pte, _ in pr._entries():
        if reference.kvm_pte_table(pte, lv):
            page = mm.follow_table(pte, ipa, lv) // mm.ptrs_per_pte
            refs[page] = refs.get(page, 0) + 1
    pgd0 = (pr.pgd or 0) // mm.ptrs_per_pte
    return any(c > 1 or pgd0 <= p < pgd0 + pr.pgd_pages for p, c in refs.items())


@functools.lru_cache(maxsize=None)
def engine_bug_present(name: str) -> bool:
    """Run the reproducer in a fresh interpreter: True if it crashes or fails."""
    code = textwrap.dedent(ENGINE_BUGS[name][1])
    # Run from the directory of the s2fast under test: "-c" puts the cwd first
    # on sys.path, and a source checkout's s2fast/ has no compiled engine.
    root = pathlib.Path(s2fast.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=str(root))
    return proc.returncode != 0


# ---------------------------------------------------------------------------
# Configuration and geometry

# IA sizes: every one from 32 to 48 bits, with extra weight on a mix of start
# levels and concatenated-PGD counts (1 to 16 pages).
IA_FAVOURITES = {4096: (32, 39, 40, 40, 42, 43, 44, 48),
                 16384: (32, 36, 37, 38, 40, 42, 47, 48, 48),
                 65536: (32, 36, 40, 42, 43, 44, 47, 48, 48)}
IA_CHOICES = {g: tuple(range(32, 49)) + fav for g, fav in IA_FAVOURITES.items()}


@dataclasses.dataclass(frozen=True)
class Config:
    granule: int
    ia_bits: int
    fwb: bool
    xnx: bool
    tlb_range: bool

    def make(self, mod):
        return mod.Stage2PageTable(self.ia_bits, granule=self.granule, fwb=self.fwb,
                                   xnx=self.xnx, tlb_range=self.tlb_range)


class Geo:
    """Sizes and interesting addresses of one configuration."""

    def __init__(self, cfg: Config):
        g = s2fast.geometry(cfg.ia_bits, cfg.granule)
        self.cfg = cfg
        self.G = cfg.granule
        self.ptrs = g.ptrs_per_table
        self.page_shift = g.page_shift
        self.start_level = g.start_level
        self.pgd_pages = g.pgd_pages
        self.min_block_level = g.min_block_level
        self.top = 1 << cfg.ia_bits
        self.size = {lv: g.level_size(lv) for lv in range(-1, 4) if g.level_shift(lv) < 64}
        self.L2 = self.size[2]
        self.L1 = self.size[1]
        self.levels = tuple(self.size)           # usable levels for create_unlinked
        pgd_span = 1 << min(64, g.level_shift(self.start_level - 1))
        anchors = {0, self.top, self.top // 2}
        if self.pgd_pages > 1:
            anchors |= {pgd_span, (self.pgd_pages - 1) * pgd_span}
        s0 = self.size[self.start_level]
        if s0 < self.top:
            anchors |= {s0, self.top - s0}
        if self.L1 < self.top:
            anchors.add(self.L1)
        self.anchors = tuple(sorted(anchors))
        self.units = (self.G, self.G, self.G, self.L2, self.L2, self.L2, self.L1)
        self.offsets = (0, 0, 0, 0, 0, 0, 0x123, 0x1000, self.G // 2, self.G - 0x1000 or 0x800,
                        self.L2 // 2)

    def align_down(self, x: int) -> int:
        return x & ~(self.G - 1)

    def walk_range(self, ipa: int, size: int) -> tuple[int, int]:
        start = self.align_down(ipa)
        end = (start + size + self.G - 1) & ~(self.G - 1) & MASK64
        return start, end

    def map_leaves(self, ipa: int, size: int, phys: int, pages_only: bool = False) -> int:
        """How many leaf entries a map of [ipa, ipa+size) would write (estimate)."""
        start, end = self.walk_range(ipa, size)
        if end <= start or end > self.top:
            return 0
        n = (end - start) // self.G
        B = self.L2
        if pages_only or (self.align_down(phys) - start) % B:
            return n
        first = min(end, -(-start // B) * B)
        last = max(first, end // B * B)
        return (first - start) // self.G + (end - last) // self.G + (last - first) // B

    def unlinked_cost(self, level: int, force_pte: bool, pages: Optional[int]) -> int:
        """Entries create_unlinked(level) visits (pages None: no limit)."""
        budget = [10**9 if pages is None else pages]
        cost = 0

        def table(lv: int) -> None:           # one table of level-lv entries
            nonlocal cost
            if budget[0] <= 0:
                return
            budget[0] -= 1
            leaf = lv == 3 or (lv >= self.min_block_level and not force_pte)
            if leaf:
                cost += self.ptrs
                return
            for _ in range(self.ptrs):
                cost += 1
                if budget[0] <= 0 or cost > 10**6:
                    return
                table(lv + 1)

        if level + 1 <= 3:
            table(level + 1)
        return cost


# ---------------------------------------------------------------------------
# Operations and visitor specifications


@dataclasses.dataclass(frozen=True)
class VisitorSpec:
    seed: int
    p_stop: float                  # chance that a callback returns a non-zero code
    p_write: float                 # chance that a callback rewrites its entry
    writes: tuple                  # kinds of rewrite (see Visitor._new_value)
    raise_at: Optional[int] = None  # callback index at which the visitor raises
    budget: int = CALLBACK_BUDGET


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str
    args: tuple = ()

    @property
    def a(self) -> dict:
        return dict(self.args)

    def __repr__(self) -> str:
        parts = []
        for k, v in self.args:
            parts.append(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                         and abs(v) > 9 else f"{k}={v!r}")
        return f"{self.kind}({', '.join(parts)})"


def op(kind: str, **kw) -> Op:
    return Op(kind, tuple(kw.items()))


class VisitorBoom(Exception):
    """Raised by a visitor on purpose; must reach the caller unchanged."""


class VisitorKeyBoom(KeyError):
    pass


class VisitorStopBoom(StopIteration):
    pass


class VisitorBaseBoom(BaseException):
    """Not an Exception: only ever raised by the test's visitors."""


BOOMS = (VisitorBoom, VisitorKeyBoom, VisitorStopBoom, VisitorBaseBoom)


class Visitor:
    """A deterministic Python visitor: its choices depend only on its seed and
    on what it is shown, so the engine's and the reference's copies act alike
    as long as they are shown the same callbacks."""

    def __init__(self, spec: VisitorSpec, geo: Geo, pool_pages):
        self.spec = spec
        self.geo = geo
        self.pool_pages = pool_pages
        self.rng = random.Random(spec.seed)
        self.trace: list = []
        self.tables: dict = {}
        self.table_writes = 0
        self.boom: Optional[VisitorBoom] = None

    def __call__(self, ctx, visit):
        level, old = ctx.level, ctx.old
        # The engine's ctx.ptep is the entry's PA, the reference's its pool index.
        ptep = (ctx.ptep - TABLE_PA_BASE) >> 3 if isinstance(ctx, s2fast.VisitCtx) else ctx.ptep
        self.trace.append((visit, level, ctx.addr, ctx.start, ctx.end, old, ctx.flags, ptep,
                           ctx.arg is self))
        n = len(self.trace)
        if level < 3 and (old & 3) == 3:
            self.tables.setdefault(level, []).append(old)
        if self.spec.raise_at is not None and n - 1 == self.spec.raise_at:
            self.boom = self.rng.choice(BOOMS)(f"visitor raised at callback {n - 1}")
            raise self.boom
        rng = self.rng
        if self.spec.writes and rng.random() < self.spec.p_write:
            new = self._new_value(rng.choice(self.spec.writes), level, old)
            if new is not None and level < 3 and new & 3 == 3:
                # A table descriptor: the walk may descend into it (aliased
                # tables multiply what later walks visit), so only a few.
                self.table_writes += 1
                if self.table_writes > MAX_TABLE_WRITES:
                    new = None
            if new is not None:
                ctx.set(new)
        if n >= self.spec.budget:
            return 1
        if rng.random() < self.spec.p_stop:
            return rng.choice(RET_CODES[2:])
        return rng.choice((0, None))

    def _new_value(self, kind: str, level: int, old: int) -> Optional[int]:
        rng, geo = self.rng, self.geo
        if kind == "clear":
            return 0
        if kind == "leaf":                 # a valid block/page descriptor
            size = geo.size[level]
            pa = (rng.choice((0, 1 << 30, 1 << 39, 3 << 42, TABLE_PA_BASE))
                  + rng.randrange(4) * size) & ((1 << 48) - 1)
            attr = rng.choice((0x400000000007FC, 0x7FC, 0x77C, 0x4000000000073C, 0x400000000007C4,
                               0x400000000007D4, 0x40000000000758, 0x40000000000BFC | SW1,
                               0x200000000003FC))
            return pa & ~(geo.G - 1) | attr | (3 if level == 3 else 1)
        if kind == "annot":                # owner annotations, a locked entry
            return rng.choice((4, 8, 0x3FC, INVALID_PTE_LOCKED, INVALID_PTE_LOCKED | 4))
        if kind == "perm":                 # flip attribute bits of what is there
            if not old & 1:
                return None
            return old ^ rng.choice((1 << 7, 1 << 6, 1 << 10, SW0, 3 << 53, 1 << 53))
        if kind == "copy":                 # a table descriptor seen at this level
            seen = self.tables.get(level)
            return rng.choice(seen) if seen else None
        # --- safety fuzz only ------------------------------------------------
        if kind == "random":
            return rng.getrandbits(64)
        if kind == "random_table":
            return rng.getrandbits(64) | 3
        if kind == "pool_table":           # live, freed or never-allocated pool page
            page = rng.randrange(self.pool_pages() + 3)
            off = rng.choice((0, 0, 0, 8, 0x1000, geo.G // 2))
            return (TABLE_PA_BASE + page * geo.G + off) & ((1 << 48) - 1) | 3 \
                | rng.choice((0, 0, 1 << 10, 0x3 << 53))
        if kind == "outside_table":
            return rng.choice((0, 0x1000, TABLE_PA_BASE - geo.G, 1 << 47, (1 << 48) - geo.G,
                               TABLE_PA_BASE + (1 << 45), 0xF << 12)) | 3
        if kind == "copy_any":             # a table descriptor from any level
            seen = [d for v in self.tables.values() for d in v]
            return rng.choice(seen) if seen else None
        if kind == "page_as_table":        # a page descriptor written above level 3
            return 0x400000000007FF | (rng.randrange(1 << 20) << 16)
        raise AssertionError(kind)


SAFE_WRITES = ("clear", "leaf", "annot", "perm", "copy")
FUZZ_WRITES = SAFE_WRITES + ("random", "random_table", "pool_table", "pool_table",
                             "outside_table", "copy_any", "page_as_table")

# ---------------------------------------------------------------------------
# Running one operation on both implementations and comparing


class PyCountVisitor:
    """s2fast.CountVisitor in Python: valid and invalid LEAF visits and
    TABLE_PRE visits, per level."""

    def __init__(self):
        self.valid, self.invalid, self.tables = {}, {}, {}

    def __call__(self, ctx, visit):
        d = None
        if visit == LEAF:
            d = self.valid if ctx.old & 1 else self.invalid
        elif visit == TABLE_PRE:
            d = self.tables
        if d is not None:
            d[ctx.level] = d.get(ctx.level, 0) + 1
        return 0


class PyCollectVisitor:
    """s2fast.CollectVisitor in Python: every valid leaf visited, with its
    IPA aligned down to the leaf's granule."""

    def __init__(self):
        self.rows = []

    def __call__(self, ctx, visit):
        if visit == LEAF and ctx.old & 1:
            size = 1 << ctx.mm_ops.level_shift[ctx.level]
            self.rows.append((ctx.addr & ~(size - 1), ctx.level, ctx.old))
        return 0

    def result(self):
        return self.rows


def _builtin_result(v) -> Any:
    if isinstance(v, (PyCountVisitor, s2fast.CountVisitor)):
        return (v.valid, v.invalid, v.tables)
    rows = v.result()
    return rows if isinstance(rows, list) else rows.tolist()


BUILTINS = {"count": {"eng": s2fast.CountVisitor, "ref": PyCountVisitor},
            "collect": {"eng": s2fast.CollectVisitor, "ref": PyCollectVisitor}}


def _pool_pages(side: str, pt) -> int:
    if side == "ref":
        return len(pt.mm_ops.refs)
    return pt.descriptors.shape[0] // pt.ptrs_per_table


def _inspect(pt) -> tuple:
    """leaves(), annotations(), table_pages() as comparable values, or the
    name of the exception raised while walking the tables for them."""
    try:
        return ("ok", pt.leaves().tolist(), pt.annotations().tolist(), pt.table_pages())
    except Exception as e:   # the reference refuses to follow a corrupt descriptor
        return ("exc", type(e).__name__)


# Beyond this many entries for a walk of the whole IPA space (every path
# through aliased tables counted) a sequence stops: see Pair.state_problems.
WALK_COST_LIMIT = 300_000


def walk_cost(geo: Geo, pr) -> int:
    """Entries a walk of the whole IPA space of reference table ``pr`` would
    visit, each path through aliased tables counted (saturates at the limit)."""
    if pr.pgd is None:
        return 0
    mm = pr.mm_ops
    ptrs, G, refs = mm.ptrs_per_pte, geo.G, mm.refs
    mem = pr.descriptors        # a copy: a view would pin the reference's pool array
    memo: dict = {}

    def cost(page: int, level: int) -> int:
        if (page, level) not in memo:
            c = ptrs
            if level < 3:
                entries = mem[page * ptrs:(page + 1) * ptrs]
                for pte in entries[(entries & 3) == 3].tolist():
                    off = mm.kvm_pte_to_phys(pte) - TABLE_PA_BASE
                    if off >= 0 and off % G == 0 and off // G < len(refs) and refs[off // G] > 0:
                        c += cost(off // G, level + 1)
                        if c >= WALK_COST_LIMIT:
                            break
            memo[page, level] = min(c, WALK_COST_LIMIT)
        return memo[page, level]

    pgd0 = pr.pgd // ptrs
    return min(sum(cost(pgd0 + i, geo.start_level) for i in range(geo.pgd_pages)), WALK_COST_LIMIT)


def _is_corrupt(side: str, exc: BaseException) -> bool:
    return isinstance(exc, MODS[side].CorruptTableError)


class Mismatch(AssertionError):
    pass


class Pair:
    """One engine table and one reference table driven in lock step."""

    def __init__(self, cfg: Config, shared_mcs: tuple = ()):
        self.cfg = cfg
        self.geo = Geo(cfg)
        self.pt = {s: cfg.make(MODS[s]) for s in SIDES}
        self.shared = {s: [MODS[s].MemCache(n, on_empty=oe) for n, oe in shared_mcs] for s in SIDES}
        self.unlinked: list = []           # (table PA, level) made and not yet freed
        self.history: list = []
        self.executed: list = []           # (kind, flags) of every operation run
        self.traces: list = []             # callback traces of the walks
        self.corrupted = False             # a CorruptTableError has been raised
        self.diverged = False              # after corruption: the states differ
        self.divergences: list = []
        self.exploded = False              # see walk_cost()
        pe, pr = self.pt["eng"], self.pt["ref"]
        for attr in ("ia_bits", "granule", "start_level", "pgd_pages", "vtcr"):
            self.expect_eq(getattr(pe, attr), getattr(pr, attr), attr)
        self.check_state()

    # -- memory caches ------------------------------------------------------
    def _memcache(self, side: str, spec: Optional[tuple]):
        if spec is None or spec[0] == "none":
            return None
        if spec[0] == "shared":
            caches = self.shared[side]
            return caches[spec[1] % len(caches)] if caches else MODS[side].MemCache(0)
        _, n, on_empty = spec
        return MODS[side].MemCache(n, on_empty=on_empty)

    def _resolve(self, o: Op) -> Op:
        """Turn the parts of an operation that depend on the current state
        (which unlinked table to free, 'exact' split caches) into values."""
        a = o.a
        if o.kind == "free_unlinked":
            if a.get("page") is not None:
                # Misuse (safety fuzz only): "free" any pool page as an
                # unlinked table, a PGD page or a linked table included.
                pages = _pool_pages("ref", self.pt["ref"])
                pa = TABLE_PA_BASE + (a["page"] % pages) * self.geo.G
                level = 2 if a["level"] is None else a["level"]
                return op("free_unlinked", table_pa=pa, level=level, which=a["which"])
            if self.unlinked:
                pa, level = self.unlinked[a["which"] % len(self.unlinked)]
            else:          # nothing to free: an address that is no live page
                pa, level = TABLE_PA_BASE + (1 << 40), 2
            if a.get("level") is not None:
                level = a["level"]
            return op("free_unlinked", table_pa=pa, level=level, which=a["which"])
        if o.kind == "split" and a["mc"][0] == "exact":
            need = 0
            start, end = self.geo.walk_range(a["ipa"], a["size"])
            info = _inspect(self.pt["ref"])
            if info[0] == "ok":
                for ipa, level, _pte in info[1]:
                    if level == 2 and ipa + self.geo.L2 > start and ipa < end:
                        need += 1
            n = max(0, min(need + a["mc"][1], self.split_cap()))
            a["mc"] = ("new", n, "fail")
            return Op("split", tuple(a.items()))
        return o

    def split_cap(self) -> int:
        return {4096: 12, 16384: 6, 65536: 3}[self.cfg.granule]

    # -- one side -------------------------------------------------------------
    def _run_side(self, side: str, o: Op):
        pt = self.pt[side]
        a = o.a
        mc = self._memcache(side, a.get("mc"))
        visitor = None
        pt.reset_stats()
        try:
            k = o.kind
            if k == "map":
                r = pt.map(a["ipa"], a["size"], a["phys"], a["prot"], memcache=mc, flags=a["flags"])
            elif k == "unmap":
                r = pt.unmap(a["ipa"], a["size"])
            elif k == "wrprotect":
                r = pt.wrprotect(a["ipa"], a["size"])
            elif k == "relax_perms":
                r = pt.relax_perms(a["ipa"], a["prot"], a["flags"])
            elif k == "mkyoung":
                r = pt.mkyoung(a["ipa"], a["flags"])
            elif k == "test_clear_young":
                r = pt.test_clear_young(a["ipa"], a["size"], a["mkold"])
            elif k == "get_leaf":
                r = pt.get_leaf(a["ipa"])
            elif k == "split":
                r = pt.split(a["ipa"], a["size"], mc)
            elif k == "flush":
                r = pt.flush(a["ipa"], a["size"])
            elif k == "set_owner":
                r = pt.set_owner(a["ipa"], a["size"], a["owner"], mc)
            elif k == "create_unlinked":
                r = pt.create_unlinked(a["phys"], a["level"], a["prot"], mc, a["force_pte"])
            elif k == "free_unlinked":
                r = pt.free_unlinked(a["table_pa"], a["level"])
            elif k == "destroy":
                r = pt.destroy()
            elif k == "walk":
                visitor = Visitor(a["visitor"], self.geo, functools.partial(_pool_pages, side, pt))
                r = pt.walk(a["ipa"], a["size"], visitor, a["flags"], arg=visitor)
            elif k == "walk_builtin":
                # s2fast's C visitors against the same visitors in Python.
                v = BUILTINS[a["which"]][side]()
                r = (pt.walk(a["ipa"], a["size"], v, a["flags"]), _builtin_result(v))
            else:
                raise AssertionError(k)
            out = ("ok", r)
        except (Exception, VisitorBaseBoom) as e:
            out = ("exc", type(e).__name__, e)
        return out, mc, visitor

    # -- both sides -------------------------------------------------------------
    def step(self, o: Op) -> None:
        if self.exploded:
            return      # aliased tables too big to walk in reasonable time: the sequence ends
        o = self._resolve(o)
        self.history.append(o)
        try:
            note(f"op {len(self.history) - 1}: {o!r}")
        except InvalidArgument:       # not inside a hypothesis test
            pass
        (oe, mce, ve), (orf, mcr, vr) = self._run_side("eng", o), self._run_side("ref", o)
        self.executed.append((o.kind, o.a.get("flags", 0)))
        if ve is not None:
            self.traces.append(ve.trace)

        for side, out, vis in (("eng", oe, ve), ("ref", orf, vr)):
            if out[0] != "exc":
                continue
            exc = out[2]
            if isinstance(exc, BOOMS):
                # A visitor's exception comes out unchanged (the same object).
                self.expect(vis is not None and exc is vis.boom, f"{side}: foreign VisitorBoom {exc!r}")
            elif _is_corrupt(side, exc):
                pass
            elif isinstance(exc, ValueError) and o.kind == "free_unlinked":
                pass          # not a live table page: refused before anything is done
            else:
                raise Mismatch(f"{side} raised {type(exc).__name__}: {exc}\n{self._where()}") from exc

        if self.diverged:
            return                     # states differ after a corruption: safety only

        corrupt = [oe[0] == "exc" and _is_corrupt("eng", oe[2]),
                   orf[0] == "exc" and _is_corrupt("ref", orf[2])]
        # Same outcome: the same value, or the same exception class.
        if oe[:2] != orf[:2]:
            raise Mismatch(f"result differs: engine {oe[:2]} reference {orf[:2]}\n{self._where()}")
        if ve is not None:
            self.expect_eq(ve.trace, vr.trace, "walk callbacks")

        if o.kind == "create_unlinked" and oe[0] == "ok" and oe[1][0] == 0:
            self.unlinked.append((oe[1][1], o.a["level"]))
        if o.kind == "free_unlinked" and oe[0] == "ok":
            self.unlinked = [u for u in self.unlinked if u[0] != o.a["table_pa"]]

        if all(corrupt):
            # Both refused to follow a corrupt descriptor (or to drop a page
            # reference below zero) at the same operation.  How much of the
            # operation had been done by then, and what was counted, is the
            # implementations' own business (the kernel has no such error):
            # counters are not compared, and if the tables themselves differ
            # the rest of the sequence is only checked for safety.
            self.corrupted = True
            problems = self.state_problems(mce, mcr)
            if problems:
                self.diverged = True
                self.divergences.append((o, problems))
            return

        stats_e = self.pt["eng"].stats.as_dict()
        stats_r = self.pt["ref"].stats.as_dict()
        # MODELLING DIFFERENCE: pages_live is a u64 in the engine and a Python
        # int in the reference.  Should a corrupted table (a PGD page "freed"
        # as an unlinked table, ...) ever free more pages than were allocated,
        # the engine's count wraps (2**64 - 1 for -1).  Compared modulo 2**64.
        stats_r["pages_live"] %= 1 << 64
        if ve is not None and ve.boom is not None and oe[0] == "exc" and oe[2] is ve.boom:
            # MODELLING DIFFERENCE (no kernel counterpart; see
            # test_visitor_exception_counts): after a raising callback the
            # engine still re-reads the entry (one more reload) before it
            # stops; the reference stops at once.
            if stats_e["reloads"] == stats_r["reloads"] + 1:
                stats_e = dict(stats_e, reloads=stats_r["reloads"],
                               entries_read=stats_e["entries_read"] - 1)
        self.expect_eq(stats_e, stats_r, "stats")
        problems = self.state_problems(mce, mcr)
        if problems:
            raise Mismatch("\n".join(problems) + "\n" + self._where())

    def state_problems(self, mce=None, mcr=None) -> list:
        """Every difference in what can be observed of the two tables."""
        pe, pr = self.pt["eng"], self.pt["ref"]
        out = []
        de, dr = pe.descriptors, pr.descriptors
        if de.shape != dr.shape or not np.array_equal(de, dr):
            out.append(f"descriptors differ{_first_diff(de, dr)}")
        # pages_live: u64 in the engine, Python int in the reference (see step()).
        if pe.pages_live % (1 << 64) != pr.pages_live % (1 << 64):
            out.append(f"pages_live differ: engine {pe.pages_live} reference {pr.pages_live}")
        # Page refcounts are not part of the API but decide every later free.
        re_, rr = pe._core.refcounts.tolist(), list(pr.mm_ops.refs)
        if re_ != rr:
            out.append(f"page refcounts differ: engine {_short(re_, 300)} reference {_short(rr, 300)}")
        if out or walk_cost(self.geo, pr) >= WALK_COST_LIMIT:
            # Visitors that copy table descriptors can alias tables so that
            # the number of paths (what a walk visits, what leaves() lists)
            # multiplies level by level: beyond the limit, the identical
            # descriptors and refcounts are all that is compared and the
            # sequence stops here.
            self.exploded = not out
            return out
        ie, ir = _inspect(pe), _inspect(pr)
        if (ie[0] == ir[0] == "ok" and ie[3] != ir[3] and ie[1:3] == ir[1:3]
                and engine_bug_present("table_pages_counts_references") and _aliased(pr)):
            # ENGINE BUG (see ENGINE_BUGS): a table page reachable through two
            # descriptors is counted twice by the engine's table_pages().
            ie = ie[:3] + (ir[3],)
        # MODELLING DIFFERENCE: the reference's leaves()/annotations()/
        # table_pages() raise CorruptTableError on a descriptor they cannot
        # follow, the engine's skip it.  Compared when the reference can walk.
        if (ir[0] == "ok" or ie[0] != "ok") and ie != ir:
            out.append(f"leaves/annotations/table_pages differ:\n engine    {_short(ie)}\n"
                       f" reference {_short(ir)}")
        if (mce is None) != (mcr is None) or (mce is not None and mce.nobjs != mcr.nobjs):
            out.append(f"memcache nobjs differ: {getattr(mce, 'nobjs', None)} "
                       f"{getattr(mcr, 'nobjs', None)}")
        for i, (ce, cr) in enumerate(zip(self.shared["eng"], self.shared["ref"])):
            if ce.nobjs != cr.nobjs:
                out.append(f"shared memcache {i} nobjs differ: {ce.nobjs} {cr.nobjs}")
        return out

    def check_state(self) -> None:
        problems = self.state_problems()
        if problems:
            raise Mismatch("\n".join(problems) + "\n" + self._where())

    # -- reporting -----------------------------------------------------------
    def _where(self) -> str:
        lines = [f"config {self.cfg}"] + [f"  op {i}: {o!r}" for i, o in enumerate(self.history)]
        return "\n".join(lines)

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            raise Mismatch(f"{what}\n{self._where()}")

    def expect_eq(self, e: Any, r: Any, what: str) -> None:
        if e != r:
            raise Mismatch(f"{what} differ:\n engine    {_short(e)}\n reference {_short(r)}\n"
                           f"{_dict_diff(e, r)}{self._where()}")


def _short(v: Any, n: int = 600) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def _dict_diff(e: Any, r: Any) -> str:
    if isinstance(e, dict) and isinstance(r, dict):
        keys = sorted(set(e) | set(r))
        return "".join(f"  {k}: engine {_short(e.get(k), 200)} reference {_short(r.get(k), 200)}\n"
                       for k in keys if e.get(k) != r.get(k))
    return ""


def _first_diff(de: np.ndarray, dr: np.ndarray) -> str:
    if de.shape != dr.shape:
        return f": pool sizes {de.shape} vs {dr.shape}"
    i = int(np.flatnonzero(de != dr)[0])
    return f": first at entry {i}: engine {int(de[i]):#x} reference {int(dr[i]):#x}"


def run_sequence(cfg: Config, shared: tuple, ops: list) -> Pair:
    pair = Pair(cfg, shared)
    for o in ops:
        pair.step(o)
    return pair


# ---------------------------------------------------------------------------
# Strategies


@st.composite
def configs(draw, granule: Optional[int] = None) -> Config:
    g = granule or draw(st.sampled_from((4096, 4096, 16384, 65536)))
    ia = draw(st.sampled_from(IA_CHOICES[g]))
    return Config(g, ia, draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))


def prots(relax: bool = False):
    """Protection bits: mostly sensible, sometimes any subset (invalid
    combinations, DEVICE/NC, software bits)."""
    common = (R, R | W, R | X, R | W | X, R | W | DEVICE, R | DEVICE, R | W | NC, R | NC, W, 0,
              R | PX, R | UX, R | W | SW0, R | W | SW2 | SW3, R | X | DEVICE, DEVICE | NC | R)
    if relax:
        common = (R, W, R | W, X, R | X, R | W | X, PX, UX, R | PX, R | UX, 0, R | SW1, DEVICE | R)
    anyset = st.lists(st.sampled_from(PROT_BITS), max_size=6).map(lambda bits: sum(set(bits)))
    usual = st.sampled_from((R | W, R | W, R, R | X, R | W | X))
    return st.one_of(usual, usual, st.sampled_from(common), anyset)


def walk_flag_sets():
    extra = st.lists(st.sampled_from((SHARED, HANDLE_FAULT, SKIP_BBM_TLBI, SKIP_CMO, TABLE_POST,
                                      LEAF, TABLE_PRE)), max_size=3)
    return st.one_of(st.just(0), st.sampled_from((SHARED, HANDLE_FAULT, SKIP_BBM_TLBI | SKIP_CMO,
                                                  SHARED | HANDLE_FAULT)),
                     extra.map(lambda fl: sum(set(fl))))


def memcaches(split: bool = False):
    if split:
        return st.one_of(st.tuples(st.just("new"), st.sampled_from((0, 1, 1, 2, 3)), st.just("fail")),
                         st.tuples(st.just("exact"), st.sampled_from((0, 0, -1, 1))),
                         st.tuples(st.just("new"), st.sampled_from((1, 2)), st.just("allocate")))
    large = st.tuples(st.just("new"), st.sampled_from((64, 16, 600)), st.just("fail"))
    return st.one_of(large, large, st.just(("none",)),
                     st.tuples(st.just("new"), st.sampled_from((0, 1, 2, 3)), st.just("fail")),
                     st.tuples(st.just("new"), st.sampled_from((0, 1, 2)), st.just("allocate")),
                     st.tuples(st.just("shared"), st.integers(0, 1)))


@st.composite
def addresses(draw, geo: Geo, base: int) -> int:
    kind = draw(st.sampled_from(("near",) * 12 + ("random", "top", "top", "out")))
    if kind == "near":
        lo, hi = (-4, 0) if base >= geo.top else ((0, 4) if base == 0 else (-3, 3))
        delta = draw(st.integers(lo, hi)) * draw(st.sampled_from(geo.units))
        if base + delta >= geo.top and base - delta >= 0:
            delta = -delta            # stay inside the space (out of range has its own cases)
        a = base + delta + draw(st.sampled_from(geo.offsets))
    elif kind == "random":
        a = draw(st.integers(0, geo.top - 1))
    elif kind == "top":
        a = geo.top - draw(st.sampled_from((geo.L2, geo.G, 2 * geo.G, geo.L2 + geo.G, 0x1000, 0)))
    else:
        a = draw(st.sampled_from((geo.top + geo.G, geo.top, MASK64 - 0xFFF, 1 << 63, 2 * geo.top)))
    return min(max(a, 0), MASK64)


@st.composite
def sizes(draw, geo: Geo, a: int) -> int:
    kind = draw(st.sampled_from(("pages", "blocks") * 4
                                + ("l1", "zero", "to_top", "past_top", "wrap")))
    extra = draw(st.sampled_from((0, 0, 0, 1, 0x123, 0x1000, geo.G)))
    if kind == "zero":
        s = 0
    elif kind == "pages":
        s = draw(st.integers(1, 5)) * geo.G + extra
    elif kind == "blocks":
        s = draw(st.integers(1, 4)) * geo.L2 + extra - draw(st.sampled_from((0, 0, geo.G)))
    elif kind == "l1":
        s = draw(st.integers(1, 2)) * geo.L1 + extra
    elif kind == "to_top":
        s = max(geo.top - a, 0)
    elif kind == "past_top":
        s = max(geo.top - a, 0) + geo.G
    else:
        s = draw(st.sampled_from(((1 << 64) - a, MASK64, (1 << 64) - a + geo.G, 1 << 63)))
    if kind in ("pages", "blocks", "l1") and a < geo.top < a + s \
            and not draw(st.sampled_from((False, False, True))):
        s = geo.top - a               # up to the top; past it only sometimes
    return min(max(s, 0), MASK64)


@st.composite
def physes(draw, geo: Geo, ipa: int) -> int:
    kind = draw(st.sampled_from(("congruent",) * 5 + ("block", "page", "any", "high", "pool")))
    base = draw(st.sampled_from((1 << 42, 3 << 42, 0)))
    if kind == "congruent":           # blocks wherever the IPA allows them
        return base + ipa % geo.L1
    if kind == "block":               # congruent modulo a level-2 block only
        return base + ipa % geo.L2 + draw(st.integers(0, 3)) * geo.L2
    if kind == "page":                # page-misaligned relative to the IPA
        return base + ipa % geo.L2 + geo.G * draw(st.integers(1, 3))
    if kind == "high":                # PA bits 51:48 (64K) and above
        return (draw(st.sampled_from((0xF, 0x1F, 0x10, 0xFFFF))) << 48) + ipa % geo.L1
    if kind == "pool":                # guest pages at the PAs of table pages
        return TABLE_PA_BASE + draw(st.integers(0, 7)) * geo.G
    return draw(st.integers(0, MASK64))


def _cap_leaves(draw, geo: Geo, ipa: int, size: int, phys: int, pages_only: bool = False) -> int:
    """Cut a map/set_owner size down when it would write too many leaves."""
    if geo.map_leaves(ipa, size, phys, pages_only) > LEAF_BUDGET:
        size = draw(st.integers(0, 8)) * geo.G + draw(st.sampled_from((0, 0x123)))
    return size


@st.composite
def visitor_specs(draw, fuzz: bool = False, quiet: bool = False) -> VisitorSpec:
    seed = draw(st.integers(0, 2**32 - 1))
    if quiet:
        return VisitorSpec(seed, 0.0, 0.0, ())
    p_stop = draw(st.sampled_from((0.0, 0.0, 0.01, 0.05, 0.2, 0.5)))
    if fuzz:
        p_write = draw(st.sampled_from((0.2, 0.5, 1.0, 0.05)))
        writes = (draw(st.sampled_from(FUZZ_WRITES[len(SAFE_WRITES):])),) + tuple(
            draw(st.lists(st.sampled_from(FUZZ_WRITES), max_size=3, unique=True)))
    else:
        p_write = draw(st.sampled_from((0.0, 0.05, 0.2, 0.5, 1.0)))
        writes = tuple(draw(st.lists(st.sampled_from(SAFE_WRITES), min_size=1, max_size=4,
                                     unique=True)))
    raise_at = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 40)))
    return VisitorSpec(seed, p_stop, p_write, writes, raise_at)


@st.composite
def operations(draw, geo: Geo, base: int, kind: str, *, fuzz: bool = False,
               walk_flags: Optional[int] = None, op_flags: Optional[int] = None) -> Op:
    cfg = geo.cfg
    ipa = draw(addresses(geo, base))
    size = draw(sizes(geo, ipa))
    if kind == "map":
        phys = draw(physes(geo, ipa))
        size = _cap_leaves(draw, geo, ipa, size, phys)
        flags = draw(walk_flag_sets()) if op_flags is None else op_flags
        return op("map", ipa=ipa, size=size, phys=phys, prot=draw(prots()), mc=draw(memcaches()),
                  flags=flags)
    if kind == "unmap":
        if cfg.fwb and cfg.tlb_range:
            # The deferred range TLBI loops over size >> PAGE_SHIFT pages in 2^21
            # chunks even when the walk fails: keep it to a sane number of calls.
            size = min(size, 1 << 50)
        return op("unmap", ipa=ipa, size=size)
    if kind == "wrprotect":
        return op("wrprotect", ipa=ipa, size=size)
    if kind == "relax_perms":
        flags = draw(walk_flag_sets()) if op_flags is None else op_flags
        return op("relax_perms", ipa=ipa, prot=draw(prots(relax=True)), flags=flags)
    if kind == "mkyoung":
        flags = draw(walk_flag_sets()) if op_flags is None else op_flags
        return op("mkyoung", ipa=ipa, flags=flags)
    if kind == "test_clear_young":
        return op("test_clear_young", ipa=ipa, size=size, mkold=draw(st.booleans()))
    if kind == "get_leaf":
        return op("get_leaf", ipa=ipa)
    if kind == "split":
        return op("split", ipa=ipa, size=size, mc=draw(memcaches(split=True)))
    if kind == "flush":
        return op("flush", ipa=ipa, size=size)
    if kind == "set_owner":
        size = _cap_leaves(draw, geo, ipa, size, 0, pages_only=True)
        return op("set_owner", ipa=ipa, size=size, owner=draw(st.sampled_from((0, 1, 1, 2))),
                  mc=draw(memcaches()))
    if kind == "create_unlinked":
        level = draw(st.sampled_from((2, 2, 1) + geo.levels))
        force_pte = draw(st.booleans())
        mc = draw(st.one_of(st.tuples(st.just("new"), st.sampled_from((8, 64, 600)), st.just("fail")),
                            memcaches()))
        if mc[0] == "none" and engine_bug_present("create_unlinked_null_memcache"):
            mc = ("new", 0, "fail")          # ENGINE BUG: see ENGINE_BUGS
        pages = 0 if mc[0] == "none" else \
            (mc[1] if mc[0] == "new" and mc[2] == "fail" else None)
        if geo.unlinked_cost(level, force_pte, pages) > LEAF_BUDGET:
            mc = ("new", draw(st.integers(0, 2)), "fail")
            if geo.unlinked_cost(level, force_pte, mc[1]) > LEAF_BUDGET:
                force_pte = False
                if geo.unlinked_cost(level, force_pte, mc[1]) > LEAF_BUDGET:
                    level = 2
        gs = geo.size[level]
        phys = draw(st.sampled_from(((1 << 42) // gs * gs, 0, gs, 3 * gs, (0xF << 48) // gs * gs,
                                     gs // 2 or 1, geo.G)))
        return op("create_unlinked", phys=phys, level=level, prot=draw(prots()), mc=mc,
                  force_pte=force_pte)
    if kind == "free_unlinked":
        level = page = None
        if fuzz and draw(st.sampled_from((False, False, False, True))):
            level = draw(st.sampled_from(geo.levels))
        if fuzz and draw(st.sampled_from((False, False, False, True))):
            page = draw(st.integers(0, 63))
        return op("free_unlinked", which=draw(st.integers(0, 7)), level=level, page=page)
    if kind == "destroy":
        return op("destroy")
    if kind == "walk":
        flags = walk_flags
        if flags is None:
            flags = draw(st.lists(st.sampled_from((LEAF, TABLE_PRE, TABLE_POST)), max_size=3,
                                  unique=True).map(sum))
            flags |= draw(st.sampled_from((0, 0, SHARED, HANDLE_FAULT, SHARED | HANDLE_FAULT,
                                           SKIP_BBM_TLBI | SKIP_CMO)))
        return op("walk", ipa=ipa, size=size, flags=flags, visitor=draw(visitor_specs(fuzz=fuzz)))
    if kind == "walk_builtin":
        flags = walk_flags if walk_flags is not None else draw(
            st.lists(st.sampled_from(list(WALK_FLAG_NAMES)), max_size=4).map(lambda fl: sum(set(fl))))
        return op("walk_builtin", ipa=ipa, size=size, flags=flags,
                  which=draw(st.sampled_from(("collect", "count"))))
    raise AssertionError(kind)


OP_WEIGHTS = {"map": 10, "unmap": 3, "wrprotect": 2, "relax_perms": 2, "mkyoung": 2,
              "test_clear_young": 2, "get_leaf": 2, "split": 3, "flush": 1, "set_owner": 2,
              "create_unlinked": 2, "free_unlinked": 1, "destroy": 0, "walk": 3, "walk_builtin": 1}
WALK_HEAVY_WEIGHTS = dict(OP_WEIGHTS, walk=10, map=8, get_leaf=1, flush=1)


@st.composite
def scenarios(draw, *, weights: dict = OP_WEIGHTS, max_ops: int = 12, fuzz: bool = False,
              force_op: Optional[str] = None, force_flag: Optional[int] = None,
              granule: Optional[int] = None):
    cfg = draw(configs(granule))
    geo = Geo(cfg)
    base = draw(st.sampled_from(geo.anchors))
    shared = tuple(draw(st.lists(st.tuples(st.sampled_from((0, 1, 3, 8, 40)),
                                           st.sampled_from(("fail", "fail", "allocate"))),
                                 max_size=2)))
    kinds = [k for k, w in weights.items() for _ in range(w)]
    n = draw(st.integers(1, max_ops))
    ops = [draw(operations(geo, base, draw(st.sampled_from(kinds)), fuzz=fuzz)) for _ in range(n)]
    if draw(st.sampled_from((False,) * 19 + (True,))):
        ops.insert(draw(st.integers(0, len(ops))), op("destroy"))
    if force_op is not None:
        forced = draw(operations(geo, base, force_op, fuzz=fuzz))
        if force_op == "free_unlinked":
            # Something to free: a table made just before.
            level = draw(st.sampled_from((2, 1) if geo.G == 4096 else (2,)))
            ops.insert(0, op("create_unlinked", phys=1 << 42, level=level, prot=R | W,
                             mc=("new", 8, "fail"), force_pte=draw(st.booleans())))
        ops.insert(draw(st.integers(1 if force_op == "free_unlinked" else 0, len(ops))), forced)
    if force_flag is not None:
        # A mapping in the window, then a walk of it with the flag (plus a
        # map and a relax_perms/mkyoung carrying it where the kernel takes it).
        ipa = geo.align_down(min(base, geo.top - geo.L2 - geo.G) if base else geo.L2)
        ipa = max(ipa - geo.L2, 0) if ipa + 2 * geo.L2 > geo.top else ipa
        setup = [op("map", ipa=ipa, size=geo.L2 + 3 * geo.G, phys=(1 << 42) + ipa % geo.L1,
                    prot=R | W, mc=("new", 64, "fail"), flags=0)]
        walk_flags = force_flag
        if force_flag not in (LEAF, TABLE_PRE, TABLE_POST):
            walk_flags |= LEAF | TABLE_PRE | TABLE_POST
        spec = draw(visitor_specs(quiet=True))
        setup.append(op("walk", ipa=ipa, size=geo.L2 + 3 * geo.G, flags=walk_flags, visitor=spec))
        if force_flag not in (LEAF, TABLE_PRE, TABLE_POST):
            setup.append(draw(operations(geo, ipa, "map", op_flags=force_flag)))
            setup.append(draw(operations(geo, ipa, draw(st.sampled_from(("relax_perms", "mkyoung"))),
                                         op_flags=force_flag)))
        ops = setup + ops
    return cfg, shared, ops


COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------
# Tests


@settings(max_examples=800, **COMMON)
@given(scenarios(max_ops=16))
def test_random_sequences(scn):
    cfg, shared, ops = scn
    run_sequence(cfg, shared, ops)


@settings(max_examples=500, **COMMON)
@given(scenarios(weights=WALK_HEAVY_WEIGHTS, max_ops=14))
def test_random_walks(scn):
    cfg, shared, ops = scn
    run_sequence(cfg, shared, ops)


@settings(max_examples=600, **COMMON)
@given(scenarios(weights=dict(WALK_HEAVY_WEIGHTS, walk=12), fuzz=True, max_ops=16))
@example(
    scn=(Config(granule=16384,
      ia_bits=41,
      fwb=False,
      xnx=False,
      tlb_range=False),
     (),
     [Op(kind='walk',
       args=(('ipa', 68_719_476_736),
        ('size', 16384),
        ('flags', 0),
        ('visitor',
         VisitorSpec(seed=0,
          p_stop=0.0,
          p_write=0.2,
          writes=('random',),
          raise_at=None,
          budget=2500)))),
      Op(kind='map',
       args=(('ipa', 68_719_476_736),
        ('size', 16384),
        ('phys', 4_398_046_511_104),
        ('prot', 12),
        ('mc', ('none',)),
        ('flags', 0))),
      Op(kind='map',
       args=(('ipa', 2_198_989_701_120),
        ('size', 16384),
        ('phys', 4_466_732_433_408),
        ('prot', 12),
        ('mc', ('new', 1, 'fail')),
        ('flags', 0))),
      Op(kind='walk',
       args=(('ipa', 2_198_989_701_120),
        ('size', 16384),
        ('flags', 7),
        ('visitor',
         VisitorSpec(seed=0,
          p_stop=0.0,
          p_write=0.2,
          writes=('random', 'clear'),
          raise_at=None,
          budget=2500)))),
      Op(kind='map',
       args=(('ipa', 68_719_493_120),
        ('size', 0),
        ('phys', 4_398_046_527_488),
        ('prot', 12),
        ('mc', ('new', 64, 'fail')),
        ('flags', 0))),
      Op(kind='flush',
       args=(('ipa', 68_719_509_504), ('size', 18_446_744_004_990_042_112))),
      Op(kind='wrprotect', args=(('ipa', 2_199_023_271_936), ('size', 16384))),
      Op(kind='walk',
       args=(('ipa', 68_719_427_584),
        ('size', 81920),
        ('flags', 5),
        ('visitor',
         VisitorSpec(seed=368064917,
          p_stop=0.0,
          p_write=0.5,
          writes=('copy_any', 'pool_table'),
          raise_at=None,
          budget=2500)))),
      Op(kind='walk',
       args=(('ipa', 127),
        ('size', 2_199_023_255_425),
        ('flags', 0),
        ('visitor',
         VisitorSpec(seed=2425,
          p_stop=0.0,
          p_write=0.2,
          writes=('random', 'pool_table', 'clear', 'leaf'),
          raise_at=None,
          budget=2500)))),
      Op(kind='walk',
       args=(('ipa', 68_719_476_736),
        ('size', 16384),
        ('flags', 0),
        ('visitor',
         VisitorSpec(seed=0,
          p_stop=0.0,
          p_write=0.2,
          writes=('random',),
          raise_at=None,
          budget=2500)))),
      Op(kind='split',
       args=(('ipa', 68_719_443_968),
        ('size', 67108864),
        ('mc', ('new', 0, 'fail')))),
      Op(kind='wrprotect', args=(('ipa', 2_198_989_701_120), ('size', 0))),
      Op(kind='walk_builtin',
       args=(('ipa', 2_198_989_701_120),
        ('size', 33570816),
        ('flags', 1),
        ('which', 'collect'))),
      Op(kind='walk_builtin',
       args=(('ipa', 68_719_476_736),
        ('size', 16384),
        ('flags', 0),
        ('which', 'collect')))]),
).via("16K root with 32 entries: reference listed root entries beyond the IPA space")
@example(
    scn=(Config(granule=4096,
      ia_bits=35,
      fwb=False,
      xnx=False,
      tlb_range=False),
     (),
     [Op(kind='free_unlinked',
       args=(('which', 0), ('level', None), ('page', 0))),
      Op(kind='relax_perms',
       args=(('ipa', 1_073_741_824), ('prot', 12), ('flags', 0))),
      Op(kind='relax_perms',
       args=(('ipa', 1_073_741_824), ('prot', 12), ('flags', 0))),
      Op(kind='mkyoung', args=(('ipa', 0), ('flags', 8))),
      Op(kind='unmap', args=(('ipa', 0), ('size', 4096))),
      Op(kind='unmap', args=(('ipa', 0), ('size', 4096))),
      Op(kind='unmap', args=(('ipa', 1_073_741_824), ('size', 4096))),
      Op(kind='map',
       args=(('ipa', 1_071_644_672),
        ('size', 2097152),
        ('phys', 4_399_118_155_776),
        ('prot', 12),
        ('mc', ('new', 64, 'fail')),
        ('flags', 0)))]),
).via("root page freed as an unlinked table: reference listed root entries beyond the IPA space")
def test_safety_fuzz(scn):
    cfg, shared, ops = scn
    run_sequence(cfg, shared, ops)


@pytest.mark.parametrize("kind", OPS)
@settings(max_examples=30, **COMMON)
@given(data=st.data())
def test_every_operation(kind, data):
    cfg, shared, ops = data.draw(scenarios(force_op=kind, max_ops=6))
    pair = run_sequence(cfg, shared, ops)
    assert kind in {k for k, _ in pair.executed}


@pytest.mark.parametrize("flag", list(WALK_FLAG_NAMES), ids=list(WALK_FLAG_NAMES.values()))
@settings(max_examples=30, **COMMON)
@given(data=st.data())
def test_every_walk_flag(flag, data):
    cfg, shared, ops = data.draw(scenarios(force_flag=flag, max_ops=5))
    pair = run_sequence(cfg, shared, ops)
    # The forced walk ran with the flag and, for the visit kinds, the visitor
    # was called for that kind (the range holds a table and leaves).
    trace = pair.traces[0]
    assert trace and all(t[6] & flag for t in trace)
    if flag in (LEAF, TABLE_PRE, TABLE_POST):
        assert any(t[0] == flag for t in trace)
    else:
        assert any(k == "map" and f & flag for k, f in pair.executed)


@settings(max_examples=150, **COMMON)
@given(st.one_of(st.integers(0, MASK64),
                 st.lists(st.sampled_from([1 << b for b in range(64)]), max_size=8).map(
                     lambda bits: sum(set(bits)))))
def test_pte_prot(pte):
    assert int(s2fast.pte_prot(pte)) == reference.pte_prot(pte)


# ---------------------------------------------------------------------------
# Deterministic checks of the rules the random tests rely on


@pytest.mark.parametrize("bug", sorted(ENGINE_BUGS))
def test_known_engine_bug(bug):
    """The reproducers of ENGINE_BUGS, each in a subprocess: an open bug is
    an expected failure, a fixed one must stay fixed."""
    fixed_in = ENGINE_BUGS[bug][0]
    if fixed_in is None and engine_bug_present(bug):
        pytest.xfail(f"open engine bug {bug!r} (see ENGINE_BUGS in this file)")
    assert not engine_bug_present(bug), f"engine bug {bug!r} (fixed in {fixed_in}) is back"


@pytest.mark.parametrize("exc_type", BOOMS)
@pytest.mark.parametrize("side", SIDES)
def test_visitor_exception_propagates_unchanged(side, exc_type):
    mod = MODS[side]
    pt = mod.Stage2PageTable(40)
    assert pt.map(0, 1 << 21, 1 << 40, R | W, memcache=mod.MemCache(10)) == 0
    boom = exc_type("boom")
    calls = []

    def visitor(ctx, visit):
        calls.append(visit)
        if len(calls) == 3:
            raise boom
        return 0

    with pytest.raises(exc_type) as info:
        pt.walk(0, 1 << 30, visitor, LEAF | TABLE_PRE | TABLE_POST)
    assert info.value is boom and len(calls) == 3
    # The table is usable afterwards.
    assert pt.get_leaf(0)[0] == 0 and len(pt.leaves()) == 1


def test_visitor_exception_counts():
    """MODELLING DIFFERENCE (reported; no kernel counterpart): when a visitor
    raises, the engine still counts the re-read of the entry that follows a
    LEAF/TABLE_PRE callback, the reference does not.  Everything else agrees."""
    stats = {}
    for side in SIDES:
        pt = Config(4096, 40, False, False, False).make(MODS[side])

        def visitor(ctx, visit):
            raise VisitorBoom()

        pt.reset_stats()
        with pytest.raises(VisitorBoom):
            pt.walk(0, 4096, visitor, LEAF)
        stats[side] = pt.stats.as_dict()
    assert stats["ref"]["reloads"] == 0
    assert stats["eng"]["reloads"] in (0, 1)
    for d in stats.values():
        d.pop("reloads")
        d.pop("entries_read")
    assert stats["eng"] == stats["ref"]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("bad", ["0", 1.5, (1 << 31), -(1 << 31) - 1])
def test_visitor_bad_return_value(side, bad):
    mod = MODS[side]
    pt = mod.Stage2PageTable(40)
    with pytest.raises((TypeError, ValueError)):
        pt.walk(0, 4096, lambda ctx, visit: bad, LEAF)


def test_aliasing_explosion_stops_the_sequence():
    """Copies of one table descriptor in many entries multiply the paths
    through the tables (what a walk visits, what leaves() lists); the harness
    must notice (walk_cost) and end the sequence instead of walking them all."""
    cfg = Config(16384, 40, False, False, False)
    geo = Geo(cfg)
    pair = run_sequence(cfg, (), [op("map", ipa=0, size=4 * geo.G, phys=1 << 42, prot=R | W,
                                     mc=("new", 8, "fail"), flags=0)])
    assert not pair.exploded
    for side in SIDES:
        pt = pair.pt[side]
        table = int(pt.descriptors[0])                # PGD entry 0: the level-3 table
        assert table & 3 == 3
        for i in range(1, 1000):                      # 999 more level-2 entries -> that table
            pt.walk(i * geo.L2, geo.G, lambda ctx, visit: ctx.set(table) or 1, LEAF)
    pair.check_state()
    assert pair.exploded
    pair.step(op("unmap", ipa=0, size=geo.top))
    assert [k for k, _ in pair.executed] == ["map"]
