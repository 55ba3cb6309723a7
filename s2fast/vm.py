"""Large-guest workloads modelled on ``arch/arm64/kvm/mmu.c``: the names
this module has always had, from their homes:

* s2fast.sizes: ``parse_size``, ``format_size``;
* s2fast.hostrules: ``HostRules``, ``host_rules``, ``split_nr_page_tables``
  and the 4 KiB host's sizes;
* s2fast.memslot: ``Backing``, ``Memslot``;
* s2fast.mmu: ``VM`` (mmu.c's dirty logging, faults and splits), ``COUNTERS``;
* s2fast.workload: ``Workload``, ``pattern_pages``, ``PATTERNS``, ``Phase``,
  ``RunResult``, ``summarize``;
* s2fast.variants: ``TableDiff``, ``diff_tables``;
* s2fast.comparison: ``Comparison``, ``compare``;
* s2fast.strategy: ``CustomStrategy``, ``as_strategy``, ``run_split``;
* s2fast.memory: ``check_memory``, ``DIFF_WINDOW``;
* s2fast.presets: ``Preset``, ``PresetResult``, ``PRESETS``, ``run_preset``.

New code imports from those modules; this one stays for the code that
imports from here."""
from __future__ import annotations

import numpy as np

from ._pool import MemCache  # noqa: F401
from ._visitors import CollectVisitor  # noqa: F401
from .checks import boolean as _bool  # noqa: F401
from .checks import integer as _int  # noqa: F401
from .comparison import Comparison, _strategies, compare  # noqa: F401
from .flags import EAGAIN, ENOMEM, RW, Prot, WalkFlags  # noqa: F401
from .geometry import GRANULES, geometry  # noqa: F401
from .hostrules import (_HOSTS, HOST_4K, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE, SPLIT_CHUNKS,  # noqa: F401
                        HostRules, _make_host, host_rules, split_nr_page_tables)
from .hostrules import check_chunk as _chunk  # noqa: F401
from .memslot import (K1G, K2M, K4K, KIND_NAMES, KIND_SIZES, PHYS_OFFSET, Backing, Memslot,  # noqa: F401
                      _assign_kinds, _popcount)
from .memory import DIFF_WINDOW, check_memory  # noqa: F401
from .mmu import (_CLEAR_SEGMENT, _RW,  # noqa: F401
                  BITS_PER_LONG, COUNTERS, DEFAULT_BASE, FAULT_FLAGS, MAX_TLBI_RANGE_PAGES, VCPU_CACHE_CAPACITY,
                  VM)
from .pgtable import DEFAULT_RESERVE, Stage2PageTable  # noqa: F401
from .presets import PRESETS, Preset, PresetResult, _clears, _pct, _phase_sum, _presets, run_preset  # noqa: F401
from .sizes import _SIZE_RE, _SIZE_UNITS, GiB, KiB, MiB, TiB, format_size, parse_size  # noqa: F401
from .variants import (_STRATEGY_ALIASES, Strategy, TableDiff, _covered, _member, _unsplit,  # noqa: F401
                       _window_leaves, diff_tables)
from .strategy import AnyStrategy, CustomStrategy, as_strategy, run_split  # noqa: F401
from .strategy import as_strategy as _strategy  # noqa: F401
from .workload import (PATTERNS, Phase, RunResult, Workload, _delta, _pattern, _sample,  # noqa: F401
                       pattern_pages, summarize)


# Private helpers of the old module whose work is now done elsewhere.
def _short(n: int) -> str:
    return format_size(n, compact=True).lower()


def _level_names(granule: int) -> dict[int, str]:
    return {lv: format_size(geometry(48, granule).level_size(lv)) for lv in (1, 2, 3)}


def _add_by_level(acc: dict[int, int], levels: np.ndarray) -> None:
    for lv, n in zip(*np.unique(levels, return_counts=True)):
        acc[int(lv)] = acc.get(int(lv), 0) + int(n)


__all__ = ["VM", "Memslot", "Backing", "Workload", "Phase", "RunResult", "Comparison", "TableDiff",
           "Preset", "PresetResult", "PRESETS", "compare", "run_preset", "diff_tables", "pattern_pages",
           "summarize", "parse_size", "format_size", "split_nr_page_tables", "COUNTERS", "PATTERNS",
           "HostRules", "host_rules"]
