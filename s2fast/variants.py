"""The RFC's split strategies, and a comparison of the tables they leave.

Each strategy is a way to run kvm_pgtable_stage2_split()'s walk: the split
visitor is the kernel's; only the walk flags, the maximum level and (for
SKIP_RETURN) the visitor's return hints differ."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .flags import WalkFlags

LAST_LEVEL = 3


class Strategy(enum.Enum):
    """How split walks (value: walk flags, maximum level, return hints)."""

    #: today's kernel: a LEAF walk that re-reads every entry it meets
    KERNEL = (WalkFlags.LEAF, LAST_LEVEL, False)
    #: RFC patch 1: the visitor returns SKIP_CHILDREN for tables of pages and
    #: after building a full page-level subtree (TABLE_PRE sees the tables)
    SKIP_RETURN = (WalkFlags.LEAF | WalkFlags.TABLE_PRE, LAST_LEVEL, True)
    #: first reviewer: visit blocks only; tables of pages are not entered
    PAGE_BLOCK = (WalkFlags.BLOCK, LAST_LEVEL, False)
    #: second reviewer: walk no deeper than level 2
    MAX_LEVEL = (WalkFlags.LEAF, 2, False)
    #: the series' v1/v2 split: level 3 is skipped
    SKIP_LEVEL = (WalkFlags.LEAF | WalkFlags.SKIP_LEVEL3, LAST_LEVEL, False)
    #: the May proposal: also skip the table a split has just created
    SKIP_LEVEL_NEW_TABLE = (WalkFlags.LEAF | WalkFlags.SKIP_LEVEL3 | WalkFlags.SKIP_NEW_TABLE,
                            LAST_LEVEL, False)

    @property
    def flags(self) -> int:
        return int(self.value[0])

    @property
    def max_level(self) -> int:
        return self.value[1]

    @property
    def skip_return(self) -> bool:
        return self.value[2]


_STRATEGY_ALIASES = {"SKIP_NEW_TABLE": "SKIP_LEVEL_NEW_TABLE", "SNT": "SKIP_LEVEL_NEW_TABLE"}


def as_strategy(v: Any) -> Strategy:
    """A Strategy, or its name in any case with - or _ (SKIP_NEW_TABLE and
    SNT name SKIP_LEVEL_NEW_TABLE)."""
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
class LeafRun:
    """A run of contiguous leaves of one level present in one table only."""

    level: int
    ipa: int
    size: int
    count: int

    def __str__(self) -> str:
        return f"level {self.level}: {self.count} x {_size(self.size // self.count)} at {self.ipa:#x}-{self.ipa + self.size:#x}"


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


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


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


def compare_outcomes(pt_a: Any, pt_b: Any) -> OutcomeDiff:
    """Compare what two page tables map (e.g. the same guest split under two
    strategies): leaves present in only one, and blocks one left unsplit."""
    if pt_a.granule != pt_b.granule:
        raise ValueError(f"granules differ: {pt_a.granule} vs {pt_b.granule}")
    a, b = pt_a.leaves(), pt_b.leaves()
    level_size = pt_a.geometry.level_size
    if len(a) == len(b) and np.array_equal(a, b):
        return OutcomeDiff(True, len(a), len(b))
    # Leaf IPAs are granule-aligned, so the level fits in the low bits.
    ka = a["ipa"] | a["level"].astype(np.uint64)
    kb = b["ipa"] | b["level"].astype(np.uint64)
    in_b = np.isin(ka, kb)
    in_a = np.isin(kb, ka)
    only_a, only_b = a[~in_b], b[~in_a]
    return OutcomeDiff(False, len(a), len(b), _runs(only_a, level_size), _runs(only_b, level_size),
                       _unsplit(only_a, b, level_size), _unsplit(only_b, a, level_size))
