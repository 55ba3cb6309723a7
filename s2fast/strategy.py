"""Walker strategies as values: the six built-in ones (``s2fast.Strategy``,
the RFC's ways to run kvm_pgtable_stage2_split()'s walk: the split visitor
is the kernel's; only the walk flags, the maximum level and, for
SKIP_RETURN, the visitor's return hints differ) and your own (``CustomStrategy``), accepted alike by ``VM``, ``Workload``,
``compare``, the presets and ``dirty_log_perf``.

A custom strategy is a name, the walk flags and maximum level of
kvm_pgtable_stage2_split()'s walk, and optionally a Python split visitor
that replaces the kernel's stage2_split_walker for that run (slow path: one
Python call per visited entry; every count is still the engine's). On the
command line: ``--strategy NAME=FLAGS[,max_level=N]`` and
``--strategy-module FILE.py``.
"""
from __future__ import annotations

import enum
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from . import _pool
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

    @staticmethod
    def custom(name: str, flags: int = int(WalkFlags.LEAF), max_level: int = LAST_LEVEL, *,
               skip_return: bool = False, split_visitor: Any = None, wrprotect_visitor: Any = None) -> Any:
        """Your own strategy, accepted wherever a Strategy is (a
        ``CustomStrategy``, below)."""
        return CustomStrategy(name, flags, max_level, skip_return, split_visitor, wrprotect_visitor)


_STRATEGY_ALIASES = {"SKIP_NEW_TABLE": "SKIP_LEVEL_NEW_TABLE", "SNT": "SKIP_LEVEL_NEW_TABLE"}


def parse_strategy(v: Any) -> Strategy:
    """A Strategy, or its name (any case, "-" for "_"; SNT and SKIP_NEW_TABLE
    for SKIP_LEVEL_NEW_TABLE)."""
    if isinstance(v, Strategy):
        return v
    if isinstance(v, str):
        name = v.strip().upper().replace("-", "_")
        name = _STRATEGY_ALIASES.get(name, name)
        if name in Strategy.__members__:
            return Strategy[name]
        raise ValueError(f"strategy {v!r} is not one of {', '.join(s.name for s in Strategy)}")
    raise TypeError(f"strategy must be an s2fast.Strategy or its name, not {type(v).__name__} {v!r}")


_KNOWN_FLAGS = 0
for _f in WalkFlags:
    _KNOWN_FLAGS |= int(_f)
_TABLE_VISITS = int(WalkFlags.TABLE_PRE | WalkFlags.TABLE_POST)


@dataclass(frozen=True)
class CustomStrategy:
    """A walker strategy of your own.

    ``flags`` (``WalkFlags``) and ``max_level`` select the split walk, as
    ``Stage2PageTable.split(flags=, max_level=)`` does. ``split_visitor``
    (optional) is ``visitor(ctx, visit) -> int | None`` run by the walker in
    place of the kernel's split visitor; ``ctx.arg`` is a ``SplitCall``
    (the split cache), and ``ctx.split()`` splits the entry as the kernel's
    visitor would. ``wrprotect_visitor`` (optional) likewise replaces the
    kernel's write-protect visitor (stage2_attr_walker clearing S2AP_W) in
    every kvm_pgtable_stage2_wrprotect() of the run: a LEAF walk of the
    range, no ``ctx.arg``. Outcome checks (final table against KERNEL's)
    apply as to every strategy."""

    name: str
    flags: int = int(WalkFlags.LEAF)
    max_level: int = LAST_LEVEL
    skip_return: bool = False
    split_visitor: Optional[Callable[..., Optional[int]]] = None
    wrprotect_visitor: Optional[Callable[..., Optional[int]]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a strategy needs a name, not {self.name!r}")
        name = self.name.strip()
        if name.upper().replace("-", "_") in Strategy.__members__:
            raise ValueError(f"strategy name {name!r} is a built-in strategy's; choose another")
        object.__setattr__(self, "name", name)
        f = self.flags
        if isinstance(f, bool) or not isinstance(f, int):
            raise TypeError(f"strategy {name}: flags must be WalkFlags or an int, not {type(f).__name__} {f!r}")
        f = int(f)
        if f & ~_KNOWN_FLAGS or f <= 0:
            raise ValueError(f"strategy {name}: flags {f:#x} are not a set of WalkFlags")
        if self.split_visitor is None and not self.skip_return and f & _TABLE_VISITS:
            # the kernel's split visitor treats every visit as a leaf visit
            raise ValueError(f"strategy {name}: flags {f:#x} ask for table visits, which the kernel's "
                             "split visitor would treat as blocks")
        object.__setattr__(self, "flags", f)
        lv = self.max_level
        if isinstance(lv, bool) or not isinstance(lv, int) or not -1 <= lv <= LAST_LEVEL:
            raise ValueError(f"strategy {name}: max_level {lv!r} is outside -1..{LAST_LEVEL}")
        if not isinstance(self.skip_return, bool):
            raise TypeError(f"strategy {name}: skip_return must be a bool, not {self.skip_return!r}")
        for what in ("split_visitor", "wrprotect_visitor"):
            v = getattr(self, what)
            if v is not None and not callable(v):
                raise TypeError(f"strategy {name}: {what} must be callable, not {v!r}")
        if self.split_visitor is not None and self.skip_return:
            raise ValueError(f"strategy {name}: skip_return selects the engine's visitor; a Python "
                             "split_visitor returns its own hints")

    def __str__(self) -> str:
        return self.name

    def describe(self) -> str:
        parts = [f"flags={WalkFlags(self.flags)!r}", f"max_level={self.max_level}"]
        if self.skip_return:
            parts.append("skip_return")
        for what in ("split_visitor", "wrprotect_visitor"):
            v = getattr(self, what)
            if v is not None:
                parts.append(f"{what}={getattr(v, '__name__', 'visitor')}")
        return f"{self.name} ({', '.join(parts)})"


AnyStrategy = Union[Strategy, CustomStrategy]


def as_strategy(v: Any) -> AnyStrategy:
    """A strategy value from a Strategy, a CustomStrategy, a built-in name
    (``parse_strategy``), a ``NAME=FLAGS[,max_level=N]`` spec
    (``parse_custom``), or a ``(flags, max_level)`` pair (named by it)."""
    if isinstance(v, CustomStrategy):
        return v
    if isinstance(v, str) and "=" in v:
        return parse_custom(v)
    if isinstance(v, (str, Strategy)):
        try:
            return parse_strategy(v)
        except ValueError as e:
            raise ValueError(f"{e} (or NAME=FLAGS[,max_level=N])") from None
    if isinstance(v, tuple) and len(v) == 2:
        flags, level = v
        return CustomStrategy(f"flags={int(flags):#x},max_level={level}", flags, level)
    raise TypeError(f"strategy must be an s2fast.Strategy, a CustomStrategy, a name or a (flags, max_level) "
                    f"pair, not {type(v).__name__} {v!r}")


def parse_custom(text: str) -> CustomStrategy:
    """``NAME=FLAGS[,max_level=N]``: FLAGS are WalkFlags names joined by
    '|' or '+' (``LEAF|SKIP_LEVEL3``) or a number (``0x81``)."""
    if not isinstance(text, str):
        raise TypeError(f"a strategy spec must be a string, not {type(text).__name__} {text!r}")
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"strategy {text!r} is not NAME=FLAGS[,max_level=N]")
    parts = [p.strip() for p in rest.split(",")]
    flags = _parse_flags(parts[0], text)
    max_level = LAST_LEVEL
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if k.strip() != "max_level" or not sep:
            raise ValueError(f"strategy {text!r}: {p!r} is not max_level=N")
        try:
            max_level = int(v.strip())
        except ValueError:
            raise ValueError(f"strategy {text!r}: max_level {v.strip()!r} is not a whole number") from None
    return CustomStrategy(name.strip(), flags, max_level)


def parse_strategy_option(text: str) -> AnyStrategy:
    """A ``--strategy`` value: ``NAME=FLAGS[,max_level=N]``, or a built-in
    strategy's name."""
    if isinstance(text, str) and "=" not in text:
        try:
            return parse_strategy(text)
        except ValueError:
            raise ValueError(f"strategy {text!r} is neither a built-in one ({', '.join(s.name for s in Strategy)}) "
                             "nor NAME=FLAGS[,max_level=N]") from None
    return parse_custom(text)


def _parse_flags(spec: str, text: str) -> int:
    try:
        return int(spec, 0)
    except ValueError:
        pass
    out = 0
    for tok in spec.replace("+", "|").split("|"):
        tok = tok.strip().upper()
        if tok not in WalkFlags.__members__:
            raise ValueError(f"strategy {text!r}: {tok!r} is not a walk flag "
                             f"({', '.join(WalkFlags.__members__)})")
        out |= int(WalkFlags[tok])
    return out


def load_strategy_module(path: str) -> list[CustomStrategy]:
    """The strategies a Python file defines: a module-level ``STRATEGIES``
    list (or a single ``STRATEGY``) of CustomStrategy values."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"strategy module {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"s2fast_user_strategy_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"strategy module {path!r} cannot be imported (is it a .py file?)")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:   # the user's code: name the file and the error on one line
        raise ValueError(f"strategy module {path!r} failed to import: {type(e).__name__}: {e}") from None
    found = getattr(mod, "STRATEGIES", None)
    if found is None and hasattr(mod, "STRATEGY"):
        found = [mod.STRATEGY]
    if not found:
        raise ValueError(f"strategy module {path!r} defines no STRATEGIES list (or STRATEGY)")
    out = list(found)
    for s in out:
        if not isinstance(s, CustomStrategy):
            raise ValueError(f"strategy module {path!r}: {s!r} is not an s2fast.CustomStrategy")
    return out


# ---------------------------------------------------------------------------
# Running a split under a strategy (the one place VM and Stage2PageTable do it)

class SplitCall:
    """``ctx.arg`` of a Python split visitor: the split cache
    (``memcache``, struct kvm_mmu_memory_cache) and the host's page shift.

    The visitor sees and writes entries (``ctx.old``, ``ctx.set``), splits
    one as the kernel's stage2_split_walker() does with
    ``ctx.split(ctx.arg.memcache)``, and returns hints or errors as the
    engine's visitors do."""

    __slots__ = ("memcache", "page_shift")

    def __init__(self, memcache: _pool.MemCache, page_shift: int) -> None:
        self.memcache = memcache
        self.page_shift = page_shift


def run_split(core: Any, page_shift: int, strategy: AnyStrategy, addr: int, size: int, mc: _pool.MemCache,
              extra_flags: int = 0, max_level: Optional[int] = None) -> int:
    """kvm_pgtable_stage2_split() of [addr, addr+size) under ``strategy``:
    the engine's split visitor, or the strategy's Python one."""
    flags = strategy.flags | extra_flags
    level = strategy.max_level if max_level is None else max_level
    visitor = getattr(strategy, "split_visitor", None)
    if visitor is None:
        return core.split(addr, size, mc, flags, level, strategy.skip_return)
    return core.walk(addr, size, visitor, flags, SplitCall(mc, page_shift), level)


def run_wrprotect(core: Any, strategy: Optional[AnyStrategy], addr: int, size: int) -> int:
    """kvm_pgtable_stage2_wrprotect() of [addr, addr+size): the engine's, or
    the strategy's Python write-protect visitor on a LEAF walk (as
    stage2_update_leaf_attrs() walks)."""
    visitor = getattr(strategy, "wrprotect_visitor", None)
    if visitor is None:
        return core.wrprotect(addr, size)
    return core.walk(addr, size, visitor, int(WalkFlags.LEAF), None, LAST_LEVEL)
