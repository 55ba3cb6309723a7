"""How much memory a workload run needs, and how much the machine has.

``compare()`` and the ``s2fast compare`` command check this before they
build anything, so that a guest too big for the machine is refused with its
estimate and the largest guest that fits, instead of running for a while and
then being killed by the OOM killer.

The estimate follows what a run allocates:

* descriptor pages: the root, plus one table page per span of guest memory
  each table level covers, once the guest is split to pages (eager split or
  the first CLEAR in initially-all-set mode); otherwise the build's tables
  plus what the guest's write faults add. ``compare()`` keeps KERNEL's table
  while it runs each other strategy, so two tables are alive at once;
* per table: the page reference counts (an int32 array grown by doubling),
  the dirty bitmap and the backing kinds;
* comparing two final tables: a byte per descriptor for the equality check
  and the leaves of one diff window of each table;
* the guest's writes (an array and a list of their addresses, or a
  permutation of every page when they cover a quarter of the guest or more),
  and the CLEAR pass's per-segment arrays and lists.

``bench/test_memory.py`` checks the estimate against the measured peak RSS of
``s2fast compare`` for 64, 256 and 512 GiB guests.

The memory available is the least of ``MemAvailable`` (/proc/meminfo), the
cgroup's limit less its usage (v2 ``memory.max``, v1
``memory.limit_in_bytes``) and the address-space limit (RLIMIT_AS) less the
process's size. ``S2FAST_MEMORY_LIMIT`` (a size such as ``8G``) or the
``memory_limit=`` argument replaces it, for tests and for a run that should
stay under a budget.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .errors import InsufficientMemoryError
from .geometry import geometry
from .hostrules import host_rules
from .mmu import _CLEAR_SEGMENT
from .pgtable import DEFAULT_RESERVE
from .sizes import GiB, MiB, format_size, parse_size
from .variants import DIFF_WINDOW

ENV_LIMIT = "S2FAST_MEMORY_LIMIT"

#: bytes per leaf of a diff window, per table: the collector's buffers (17 bytes a
#: leaf, grown by doubling), its result, the keys and masks of the comparison
DIFF_BYTES_PER_LEAF = 56
#: bitmap words a CLEAR handles per batch (s2fast.mmu), and the bytes each
#: costs: arrays of the segment, two lists of Python ints
CLEAR_SEGMENT_WORDS = _CLEAR_SEGMENT
CLEAR_BYTES_PER_WORD = 8 * 5 + 2 * (32 + 8)
#: bytes per guest write: its page index, its address, and the address as a
#: Python int in a list
WRITE_BYTES = 8 + 8 + 32 + 8
#: Python objects of a run not counted above (phase dicts, results, lists)
SLACK = 8 * MiB


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's memory, in bytes, on top of what the process holds already:
    ``tables`` (descriptor pages of the tables alive at once), ``working``
    (every other array), and ``table_pages`` (pages of one table)."""

    tables: int
    working: int
    table_pages: int

    @property
    def total(self) -> int:
        return self.tables + self.working


def _spans(lo: int, hi: int, span: int) -> int:
    """Aligned ``span``-sized pieces that [lo, hi) touches."""
    return (hi - 1) // span - lo // span + 1 if hi > lo else 0


def table_pages(workload: Any, guest_size: Optional[int] = None) -> int:
    """Descriptor pages one table of ``workload`` holds at its largest
    (with ``guest_size`` in place of the workload's)."""
    size = workload.guest_size if guest_size is None else guest_size
    base = workload.base
    end = base + size
    ia_bits = max(workload.ia_bits, (end - 1).bit_length())
    g = geometry(ia_bits, workload.granule)
    pages = g.pgd_pages
    split = workload.chunk != 0 and (not workload.initially_set or workload.passes >= 1)
    b = workload.backing
    full = sum(_spans(base, end, g.level_size(lv - 1)) for lv in range(g.start_level + 1, 4))
    if split or b.pct_4k == 100:
        return pages + full
    # The build: tables down to the smallest leaf the backing uses (a mix may
    # place its pages anywhere, so count every span), then the write faults:
    # each breaks at most one block into tables down to level 3.
    smallest = 3 if b.pct_4k else (2 if b.pct_2m or g.min_block_level > 1 else 1)
    built = sum(_spans(base, end, g.level_size(lv - 1)) for lv in range(g.start_level + 1, smallest + 1))
    rounds = workload.passes if not workload.initially_set else max(0, workload.passes - 1)
    faults = workload.writes * rounds * (3 - g.min_block_level)
    return pages + min(full, built + faults)


def estimate(workload: Any, strategies: int = 6, guest_size: Optional[int] = None) -> MemoryEstimate:
    """The memory ``compare(workload)`` needs with ``strategies`` strategies
    (KERNEL included), or one ``workload.run()`` with ``strategies=1``."""
    size = workload.guest_size if guest_size is None else guest_size
    granule = workload.granule
    pages = table_pages(workload, size)
    alive = 2 if strategies > 1 else 1
    guest_pages = size // granule
    per_table = (8 * pages            # reference counts: int32, capacity doubled
                 + guest_pages // 8   # dirty bitmap
                 + size // geometry(48, granule).level_size(2))   # backing kind per PMD unit
    working = alive * per_table
    if strategies > 1:
        working += pages * granule // 8                                   # the equality check
        working += 2 * DIFF_BYTES_PER_LEAF * (min(size, DIFF_WINDOW) // granule)   # a diff window
    words = -(-guest_pages // 64)
    working += CLEAR_BYTES_PER_WORD * min(words, CLEAR_SEGMENT_WORDS)
    writes = min(workload.writes, guest_pages)
    working += WRITE_BYTES * writes
    if writes and writes >= guest_pages // 4:
        working += 8 * guest_pages                                        # a permutation of every page
    return MemoryEstimate(alive * pages * granule, working + SLACK, pages)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_headroom() -> Optional[int]:
    """The cgroup's memory limit less its usage (v2 or v1), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: Optional[int] = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files = ("/sys/fs/cgroup", "memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            files = ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        root, lim, cur = files
        # Inside a container the cgroup's own folder is mounted as the root.
        for folder in (root + path, root):
            limit = _read_int(os.path.join(folder, lim))
            if limit is None and not os.path.exists(os.path.join(folder, lim)):
                continue
            if limit is not None and limit < 1 << 60:     # v1 says "no limit" with a huge number
                room = limit - (_read_int(os.path.join(folder, cur)) or 0)
                best = room if best is None else min(best, room)
            break
    return best


def available_memory(memory_limit: Any = None) -> tuple[int, str]:
    """(bytes a run may still use, where that figure comes from)."""
    if memory_limit is not None:
        return parse_size(memory_limit), "memory_limit"
    env = os.environ.get(ENV_LIMIT)
    if env:
        try:
            return parse_size(env), ENV_LIMIT
        except ValueError as e:
            raise ValueError(f"{ENV_LIMIT}: {e}") from None
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    room = _cgroup_headroom()
    if room is not None:
        found.append((max(room, 0), "the cgroup's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        vsize = (_read_int_field("/proc/self/status", "VmSize:") or 0)
        found.append((max(soft - vsize, 0), "the address-space limit (ulimit -v)"))
    if not found:
        return 1 << 62, "unknown"
    return min(found)


def _read_int_field(path: str, key: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _fits(workload: Any, strategies: int, size: int, room: int) -> bool:
    e = estimate(workload, strategies, size)
    return e.total <= room and e.table_pages * workload.granule <= DEFAULT_RESERVE


def largest_guest(workload: Any, strategies: int, room: int) -> int:
    """The largest guest size (a multiple of the backing unit) whose run fits
    in ``room`` bytes, or 0."""

    unit = host_rules(workload.granule).unit
    if workload.backing.pct_1g:
        unit = max(unit, host_rules(workload.granule).pud_size)
    lo, hi = 0, max(1, (1 << 48) - workload.base) // unit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(workload, strategies, mid * unit, room):
            lo = mid
        else:
            hi = mid - 1
    best = lo * unit
    return best // GiB * GiB if best >= GiB else best     # every unit divides 1 GiB


def check_memory(workloads: Iterable[Any], strategies: int = 6, *, memory_limit: Any = None) -> None:
    """Raise InsufficientMemoryError (one line: the estimate, the memory
    available and the largest guest that fits) when a run of any of
    ``workloads`` would not fit."""

    room = None
    for w in workloads:
        e = estimate(w, strategies)
        over_pool = e.table_pages * w.granule > DEFAULT_RESERVE
        if room is None:
            room, source = available_memory(memory_limit)
        if e.total <= room and not over_pool:
            continue
        best = largest_guest(w, strategies, room)
        fit = (f"the largest {w.backing}-backed guest that fits is {format_size(best)}" if best
               else "no guest of this kind fits")
        if over_pool:
            why = (f"one table needs {_gib(e.table_pages * w.granule)} of descriptor pages, more than the "
                   f"descriptor pool's {_gib(DEFAULT_RESERVE)} reservation")
        else:
            why = f"only {_gib(room)} is available ({source})"
        raise InsufficientMemoryError(
            f"a {format_size(w.guest_size)} guest needs about {_gib(e.total)} of memory "
            f"({_gib(e.tables)} of tables, {_gib(e.working)} of working arrays) and {why}; {fit}",
            e.total, room, best)


def _gib(n: int) -> str:
    if n >= 1 << 40:
        return f"{n / (1 << 40):.1f} TiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"
