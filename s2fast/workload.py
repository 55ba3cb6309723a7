"""Dirty-logging workloads: which pages a guest writes (access patterns),
a ``Workload`` (build a guest, enable dirty logging, passes of writes and
KVM_CLEAR_DIRTY_LOG) run under one walker strategy, and what each phase of
the run cost.

A new workload kind goes here: a Workload field (checked in
``__post_init__``) and a phase in ``phase_names()`` / ``run()``, each phase
driving the VM (s2fast.mmu) as KVM would."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .checks import boolean as _bool
from .checks import integer as _int
from .hostrules import _HOSTS, check_chunk, host_rules
from .memslot import Backing
from .mmu import DEFAULT_BASE, VM
from .sizes import GiB, format_size, parse_size
from .strategy import AnyStrategy, as_strategy
from .variants import Strategy

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
# Runs

def summarize(counts: Mapping[str, int]) -> dict[str, int]:
    """The headline costs of a count dict: entries read, callbacks, TLBIs
    (pgtable.c's and mmu.c's), CMOs (calls of the mm_ops cache-maintenance
    hooks, and the maintenance those calls do: none for dcache on FWB),
    table pages allocated."""
    return {
        "entries_read": counts["entries_read"],
        "callbacks": counts["callbacks_leaf"] + counts["callbacks_table_pre"] + counts["callbacks_table_post"],
        "tlbis": (counts["tlbi_vmid_ipa"] + counts["tlbi_vmid_ipa_nsh"] + counts["tlbi_vmid_range"]
                  + counts["tlbi_vmid"] + counts["mmu_tlbi_vmid"] + counts["mmu_tlbi_vmid_range"]),
        "cmos": counts["cmo_calls"],
        "cmos_done": counts["cmo_done"],
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

    strategy: AnyStrategy
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
        fix("chunk", check_chunk(h.pmd_size if self.chunk is None else self.chunk, h.granule))
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
        host = "" if self.granule == 4096 else f" ({format_size(self.granule)} pages)"
        return (f"{format_size(self.guest_size)} guest{host} at {self.base:#x}, backing {self.backing}, "
                f"eager-split chunk {chunk}, {mode}, {self.passes} CLEAR pass"
                f"{'es' if self.passes != 1 else ''}, {self.writes_text()}, seed {self.seed}")

    def writes_text(self) -> str:
        """The guest writes the run makes: '16384 random page writes between
        passes', or 'no guest writes' when no round has any."""
        rounds = sum(1 for n in self.phase_names() if n.startswith("writes"))
        if not rounds:
            return "no guest writes"
        when = "between passes" if self.initially_set else "before each pass"
        return f"{self.writes} {self.pattern} page writes {when}"

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
        strategy = as_strategy(strategy)
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
