"""Comparisons of the final tables the RFC's split strategies leave (the
strategies themselves, ``Strategy`` and ``parse_strategy``, live in
s2fast.strategy and are importable from here too).

Two comparisons of final tables share one leaf-matching core:
``compare_outcomes`` (every leaf of two tables, as runs) and ``diff_tables``
(counts per level, a window at a time, for 512 GiB guests)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._visitors import CollectVisitor
from .checks import integer
from .flags import WalkFlags
from .geometry import entry_sizes, level_shift
from .sizes import GiB, format_size
from .strategy import _STRATEGY_ALIASES, LAST_LEVEL, Strategy, parse_strategy  # noqa: F401 (their old home)

#: diff_tables() compares final tables a window of this many bytes of IPA at a time
DIFF_WINDOW = 1 * GiB


@dataclass(frozen=True)
class LeafRun:
    """A run of contiguous leaves of one level present in one table only."""

    level: int
    ipa: int
    size: int
    count: int

    def __str__(self) -> str:
        return f"level {self.level}: {self.count} x {format_size(self.size // self.count)} at {self.ipa:#x}-{self.ipa + self.size:#x}"


@dataclass(frozen=True)
class OutcomeDiff:
    """How two page tables differ in what they map.

    ``only_a`` / ``only_b`` are leaves present in one table and not the
    other, merged into runs by level; ``unsplit_blocks_a`` counts, per level,
    blocks of ``a`` where ``b`` maps the same IPA with smaller leaves."""

    identical: bool
    leaves_a: int
    leaves_b: int
    only_a: list[LeafRun] = field(default_factory=list)
    only_b: list[LeafRun] = field(default_factory=list)
    unsplit_blocks_a: dict[int, int] = field(default_factory=dict)
    unsplit_blocks_b: dict[int, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.identical:
            return f"identical ({self.leaves_a} leaves)"
        lines = [f"differ: {self.leaves_a} vs {self.leaves_b} leaves"]
        for name, runs, unsplit in (("a", self.only_a, self.unsplit_blocks_a),
                                    ("b", self.only_b, self.unsplit_blocks_b)):
            if unsplit:
                lines.append(f"  blocks left unsplit in {name}: "
                             + ", ".join(f"{n} at level {lv}" for lv, n in sorted(unsplit.items())))
            lines += [f"  only in {name}: {r}" for r in runs[:8]]
            if len(runs) > 8:
                lines.append(f"  ... {len(runs) - 8} more runs only in {name}")
        return "\n".join(lines)


def _runs(leaves: np.ndarray, level_size: Any) -> list[LeafRun]:
    runs: list[LeafRun] = []
    for lv in np.unique(leaves["level"]):
        sel = leaves[leaves["level"] == lv]
        size = level_size(int(lv))
        ipa = sel["ipa"].astype(np.uint64)
        breaks = np.nonzero(np.diff(ipa) != size)[0] + 1
        for chunk in np.split(ipa, breaks):
            runs.append(LeafRun(int(lv), int(chunk[0]), len(chunk) * size, len(chunk)))
    runs.sort(key=lambda r: (r.ipa, r.level))
    return runs


def _unsplit(blocks: np.ndarray, other: np.ndarray, level_size: Any) -> dict[int, int]:
    """Blocks of one table whose IPA range the other maps with smaller leaves."""
    out: dict[int, int] = {}
    if len(blocks) == 0 or len(other) == 0:
        return out
    starts = other["ipa"]
    for lv in np.unique(blocks["level"]):
        if lv >= LAST_LEVEL:
            continue
        sel = blocks[blocks["level"] == lv]["ipa"]
        size = level_size(int(lv))
        lo = np.searchsorted(starts, sel, side="left")
        hi = np.searchsorted(starts, sel + np.uint64(size), side="left")
        # smaller leaves inside the block's range in the other table
        deeper = np.array([np.any(other["level"][a:b] > lv) for a, b in zip(lo, hi)], dtype=bool)
        n = int(deeper.sum())
        if n:
            out[int(lv)] = n
    return out


def _matched(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which leaves of ``a`` have a leaf of the same IPA and level in ``b``,
    and the reverse. Leaves come in IPA order and IPAs are granule-aligned,
    so ipa | level is a sorted, unique key: membership by binary search."""
    ka = a["ipa"] | a["level"].astype(np.uint64)
    kb = b["ipa"] | b["level"].astype(np.uint64)
    return _member(ka, kb), _member(kb, ka)


def _member(keys: np.ndarray, sorted_other: np.ndarray) -> np.ndarray:
    """keys[i] in sorted_other, for a sorted array of unique keys."""
    if len(sorted_other) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_other, keys).clip(max=len(sorted_other) - 1)
    return sorted_other[pos] == keys


def compare_outcomes(pt_a: Any, pt_b: Any) -> OutcomeDiff:
    """Compare what two page tables map (e.g. the same guest split under two
    strategies): leaves present in only one, and blocks one left unsplit."""
    if pt_a.granule != pt_b.granule:
        raise ValueError(f"granules differ: {pt_a.granule} vs {pt_b.granule}")
    a, b = pt_a.leaves(), pt_b.leaves()
    level_size = pt_a.geometry.level_size
    if len(a) == len(b) and np.array_equal(a, b):
        return OutcomeDiff(True, len(a), len(b))
    in_b, in_a = _matched(a, b)
    only_a, only_b = a[~in_b], b[~in_a]
    return OutcomeDiff(False, len(a), len(b), _runs(only_a, level_size), _runs(only_b, level_size),
                       _unsplit(only_a, b, level_size), _unsplit(only_b, a, level_size))


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

    def _named(self) -> dict[str, dict[str, int]]:
        """Each per-level count, its levels named by leaf size ("2 MiB")."""
        def name(lv: int) -> str:
            return format_size(1 << level_shift(lv, self.granule)) if 1 <= lv <= 3 else f"level-{lv}"
        return {k: {name(lv): n for lv, n in sorted(getattr(self, k).items())}
                for k in ("unsplit", "kernel_unsplit", "unmapped", "extra")}

    def describe(self) -> str:
        if self.identical:
            return "identical"
        d = self._named()
        parts = [f"{n} x {lv} unsplit" for lv, n in d["unsplit"].items()]
        parts += [f"{n} x {lv} unmapped" for lv, n in d["unmapped"].items()]
        parts += [f"KERNEL left {n} x {lv} unsplit" for lv, n in d["kernel_unsplit"].items()]
        parts += [f"{n} x {lv} mapped only here" for lv, n in d["extra"].items()]
        if self.changed:
            parts.append(f"{self.changed} leaves with other attributes")
        return "differs: " + ", ".join(parts)

    def to_dict(self) -> dict:
        d = self._named()
        return {"identical": self.identical, "unsplit_blocks": d["unsplit"],
                "kernel_unsplit_blocks": d["kernel_unsplit"], "unmapped": d["unmapped"],
                "mapped_only_here": d["extra"], "changed_leaves": self.changed}


def _window_leaves(pt: Any, lo: int, size: int) -> np.ndarray:
    cv = CollectVisitor()
    pt.walk(lo, size, cv, WalkFlags.LEAF)
    return cv.result()


def _covered(leaves: np.ndarray, other: np.ndarray, granule: int) -> np.ndarray:
    """Whether some leaf of ``other`` (IPA-sorted, disjoint) maps each leaf's IPA."""
    if len(other) == 0:
        return np.zeros(len(leaves), dtype=bool)
    pos = np.searchsorted(other["ipa"], leaves["ipa"], side="right") - 1
    ok = pos >= 0
    p = pos.clip(min=0)
    end = other["ipa"][p] + entry_sizes(granule)[other["level"][p].astype(np.int64) + 1]
    return ok & (end > leaves["ipa"])


def _add(acc: dict[int, int], more: dict[int, int]) -> None:
    for lv, n in more.items():
        acc[lv] = acc.get(lv, 0) + n


def _by_level(levels: np.ndarray) -> dict[int, int]:
    return {int(lv): int(n) for lv, n in zip(*np.unique(levels, return_counts=True))}


def diff_tables(kernel: Any, other: Any, *, window: int = DIFF_WINDOW) -> TableDiff:
    """Compare two final tables leaf by leaf (IPA, level, descriptor), a
    window at a time so that the leaves held at once stay small (a 1 GiB
    window of pages is 256 Ki leaves; s2fast.memory counts them). A window
    is a multiple of the largest block, so no leaf straddles two. Walks both
    tables (their stats change)."""
    if kernel.granule != other.granule or kernel.ia_bits != other.ia_bits:
        raise ValueError(f"tables differ in geometry: {kernel!r} vs {other!r}")
    window = integer("window", window, 1)
    g = kernel.geometry
    block_level = max(g.min_block_level, g.start_level)
    if window % g.level_size(block_level):
        raise ValueError(f"window {window:#x} is not a multiple of a level-{block_level} block")
    da, db = kernel.descriptors, other.descriptors
    if da.shape == db.shape and np.array_equal(da, db):
        return TableDiff(True)
    level_size: Callable[[int], int] = kernel.geometry.level_size
    granule = kernel.granule
    counts: dict[str, dict[int, int]] = {k: {} for k in ("unsplit", "kernel_unsplit", "unmapped", "extra")}
    changed = 0
    # Only windows under a root entry that either table uses.
    span = g.level_size(g.start_level)
    roots = da[: g.pgd_pages * g.ptrs_per_table] | db[: g.pgd_pages * g.ptrs_per_table]
    windows = sorted({w for i in np.flatnonzero(roots).tolist()
                      for w in range(i * span // window * window, (i + 1) * span, window)})
    top = 1 << kernel.ia_bits
    for lo in windows:
        a = _window_leaves(kernel, lo, min(window, top - lo))
        b = _window_leaves(other, lo, min(window, top - lo))
        if len(a) == len(b) and np.array_equal(a, b):
            continue
        in_b, in_a = _matched(a, b)
        changed += int((a["pte"][in_b] != b["pte"][in_a]).sum())
        oa, ob = a[~in_b], b[~in_a]
        _add(counts["unsplit"], _unsplit(ob, a, level_size))
        _add(counts["kernel_unsplit"], _unsplit(oa, b, level_size))
        _add(counts["unmapped"], _by_level(oa["level"][~_covered(oa, b, granule)]))
        _add(counts["extra"], _by_level(ob["level"][~_covered(ob, a, granule)]))
    identical = not (any(counts.values()) or changed)
    return TableDiff(identical, **counts, changed=changed, granule=granule)
