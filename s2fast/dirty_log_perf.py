"""The kernel's ``dirty_log_perf_test`` (tools/testing/selftests/kvm, with
its memstress library), run by s2fast on a modelled KVM arm64 host.

Same options (``OPTIONS_GETOPT``), same memory layout (``layout``), same
phases in the same order (``run``), same report lines (``report``); each
time is the cost model's prediction for a profile (``phase_seconds`` is the
hook), followed by the exact counts of every phase under every strategy.

What the selftest does, and how it is modelled:

* ``memstress_create_vm``: the test region of ``vcpus x b`` bytes sits at
  the top of the guest's physical address space (``max_gfn`` of the guest
  mode), one guest page below it, aligned down to the backing's page size,
  split into ``-x`` equal memslots; vCPU i's slice is ``base + i x b``
  (the whole region with ``-o``). Memslot 0 (guest code, stage-1 tables,
  memstress_args) is not modelled.
* ``memstress_guest_code``: each pass visits ``pages`` guest pages, in order
  or (``-a``) at ``guest_random_u32() % pages``, and writes the page's first
  8 bytes when ``guest_random_u32() % 100 < write_percent``, else reads them.
  The guest's generator (Park-Miller, ``seed * 48271 % (2^31 - 1)``, seeded
  ``-r + vcpu``) is reproduced draw for draw; populate runs with 100 %
  writes, in order.
* Stage 2 is s2fast's mmu.c model (``s2fast.vm.VM``): populate faults each
  page or block in; enabling dirty logging, KVM_GET_DIRTY_LOG (which with
  ``-g`` also write-protects), KVM_CLEAR_DIRTY_LOG (manual protect with
  initially-all-set, as the selftest asks whenever the host has
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) and disabling are mmu.c's.
* vCPUs: see ``combine_vcpus`` (the one place the rule lives).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ._pool import MemCache
from .strategy import AnyStrategy, as_strategy
from .textfmt import render_table
from .variants import Strategy
from .hostrules import check_chunk as _chunk
from .hostrules import host_rules
from .memslot import Backing
from .mmu import VM
from .sizes import GiB, KiB, MiB, format_size, parse_size
from .variants import TableDiff, diff_tables
from .workload import _delta, summarize

#: dirty_log_perf_test's getopt string (Linux 6.x)
OPTIONS_GETOPT = "ab:c:eghi:m:nop:r:s:v:x:w:"
#: TEST_HOST_LOOP_N
DEFAULT_ITERATIONS = 2
#: DEFAULT_PER_VCPU_MEM_SIZE
DEFAULT_VCPU_BYTES = 1 * GiB
#: KVM_MAX_VCPUS of the selftests (and KVM_CAP_MAX_VCPUS of an arm64 host with a GICv3)
MAX_VCPUS = 512

# enum vm_guest_mode (include/kvm_util.h, Linux 6.x): (name, PA bits, VA bits,
# page size); None for the other architectures' modes.
GUEST_MODES: tuple[Optional[tuple[str, int, int, int]], ...] = (
    ("P52V48_4K", 52, 48, 4 * KiB), ("P52V48_16K", 52, 48, 16 * KiB), ("P52V48_64K", 52, 48, 64 * KiB),
    ("P48V48_4K", 48, 48, 4 * KiB), ("P48V48_16K", 48, 48, 16 * KiB), ("P48V48_64K", 48, 48, 64 * KiB),
    ("P40V48_4K", 40, 48, 4 * KiB), ("P40V48_16K", 40, 48, 16 * KiB), ("P40V48_64K", 40, 48, 64 * KiB),
    None,                                   # PXXV48_4K (x86)
    None, None,                             # P47V64_4K, P44V64_4K (s390x, riscv)
    ("P36V48_4K", 36, 48, 4 * KiB), ("P36V48_16K", 36, 48, 16 * KiB), ("P36V48_64K", 36, 48, 64 * KiB),
    ("P47V47_16K", 47, 47, 16 * KiB), ("P36V47_16K", 36, 47, 16 * KiB),
)
#: VM_MODE_DEFAULT on arm64: 40-bit IPA, 4 KiB guest pages
DEFAULT_MODE = 6

# vm_mem_backing_src_alias() names (lib/test_util.c) -> huge page size (0:
# the host's page size, "thp": the THP size, "hugetlb": the default hugetlb
# size; both are PMD_SIZE on arm64).
_HUGETLB_SIZES = {"16kb": 16 * KiB, "64kb": 64 * KiB, "512kb": 512 * KiB, "1mb": MiB, "2mb": 2 * MiB,
                  "8mb": 8 * MiB, "16mb": 16 * MiB, "32mb": 32 * MiB, "256mb": 256 * MiB,
                  "512mb": 512 * MiB, "1gb": GiB, "2gb": 2 * GiB, "16gb": 16 * GiB}
BACKING_SRC_TYPES = (("anonymous", "anonymous_thp", "anonymous_hugetlb")
                     + tuple(f"anonymous_hugetlb_{k}" for k in _HUGETLB_SIZES) + ("shmem", "shared_hugetlb"))


def arm64_hugetlb_sizes(granule: int) -> dict[int, str]:
    """Huge page sizes arm64's hugetlb accepts on a host (arch_hugetlb_valid_size:
    CONT_PTE, PMD, CONT_PMD and, on 4 KiB, PUD) -> the stage-2 leaf
    user_mem_abort() maps for it: "page", "pmd" or "pud"."""
    h = host_rules(granule)
    cont_pte = {4096: 16, 16384: 128, 65536: 32}[h.granule] * h.granule
    cont_pmd = {4096: 16, 16384: 32, 65536: 32}[h.granule] * h.pmd_size
    out = {cont_pte: "page", h.pmd_size: "pmd", cont_pmd: "pmd"}
    if h.pud_size:
        out[h.pud_size] = "pud"
    return out


# ---------------------------------------------------------------------------
# Options

@dataclass(frozen=True)
class Options:
    """One dirty_log_perf_test command line (letters in brackets), plus
    s2fast's own settings. Bad values raise ValueError with the selftest's
    constraint."""

    vcpu_bytes: Any = DEFAULT_VCPU_BYTES        # -b
    vcpus: int = 1                              # -v
    backing_src: str = "anonymous"              # -s
    iterations: int = DEFAULT_ITERATIONS        # -i
    manual_protect: bool = True                 # not -g
    random_access: bool = False                 # -a
    write_percent: int = 100                    # -w
    seed: int = 1                               # -r (guest_random_seed)
    slots: int = 1                              # -x
    partition: bool = True                      # not -o
    run_vcpus_while_disabling: bool = False     # -e
    mode: Any = DEFAULT_MODE                    # -m
    pcpus: Optional[str] = None                 # -c (thread pinning: no effect here)
    phys_offset: Optional[int] = None           # -p (parsed and unused by the selftest)
    eager_split_chunk: Any = 0                  # KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE (never set by the selftest)
    granule: Any = 4096                         # the host's page size (stage-2 granule)

    def __post_init__(self) -> None:
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        h = host_rules(self.granule)
        fix("granule", h.granule)
        fix("vcpu_bytes", parse_size(self.vcpu_bytes))
        fix("vcpus", _positive("Number of vCPUs", self.vcpus))
        if self.vcpus > MAX_VCPUS:
            raise ValueError(f"Invalid number of vcpus, must be between 1 and {MAX_VCPUS}")
        fix("iterations", _positive("Number of iterations", self.iterations))
        if self.iterations < 2:
            raise ValueError("The test should have at least two iterations")
        wp = self.write_percent
        if isinstance(wp, bool) or not isinstance(wp, (int, np.integer)) or wp < 0:
            raise ValueError(f"Write percentage must be non-negative, got '{wp}'")
        if wp > 100:
            raise ValueError("Write percentage must be between 0 and 100")
        fix("write_percent", int(wp))
        fix("seed", _positive("Random seed", self.seed))
        fix("slots", _positive("Number of slots", self.slots))
        for name in ("manual_protect", "random_access", "partition", "run_vcpus_while_disabling"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {getattr(self, name)!r}")
        fix("mode", guest_mode(self.mode)[0])
        src = self.backing_src
        if not isinstance(src, str) or src not in BACKING_SRC_TYPES:
            raise ValueError(f"Unknown backing src type: {src} (one of {', '.join(BACKING_SRC_TYPES)})")
        backing_page(src, h.granule)        # refuses sizes this host has no huge pages of
        fix("eager_split_chunk", _chunk(self.eager_split_chunk, h.granule))

    def command(self) -> str:
        """The selftest command line this run mirrors."""
        parts = ["./dirty_log_perf_test"]
        if self.vcpu_bytes != DEFAULT_VCPU_BYTES:
            parts += ["-b", format_size(self.vcpu_bytes, compact=True)]
        if self.vcpus != 1:
            parts += ["-v", str(self.vcpus)]
        if self.backing_src != "anonymous":
            parts += ["-s", self.backing_src]
        if self.iterations != DEFAULT_ITERATIONS:
            parts += ["-i", str(self.iterations)]
        if not self.manual_protect:
            parts.append("-g")
        if self.random_access:
            parts.append("-a")
        if self.write_percent != 100:
            parts += ["-w", str(self.write_percent)]
        if self.seed != 1:
            parts += ["-r", str(self.seed)]
        if self.slots != 1:
            parts += ["-x", str(self.slots)]
        if not self.partition:
            parts.append("-o")
        if self.run_vcpus_while_disabling:
            parts.append("-e")
        if self.mode != DEFAULT_MODE:
            parts += ["-m", str(self.mode)]
        return " ".join(parts)


def _positive(name: str, v: Any) -> int:
    """atoi_positive(): the selftest's wording."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be greater than 0, got '{v}'")
    return int(v)


def guest_mode(v: Any) -> tuple[int, str, int, int, int]:
    """-m: a guest mode ID (enum vm_guest_mode) or name (P40V48_4K) ->
    (id, name, PA bits, VA bits, page size)."""
    if isinstance(v, str):
        key = v.strip().upper().removeprefix("VM_MODE_")
        if key.isdigit():
            return guest_mode(int(key))
        for i, m in enumerate(GUEST_MODES):
            if m and m[0] == key:
                return guest_mode(i)
        raise ValueError(f"Guest mode {v!r} is not an arm64 guest mode "
                         f"({', '.join(f'{i}={m[0]}' for i, m in enumerate(GUEST_MODES) if m)})")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"guest mode must be an ID or a name, not {type(v).__name__} {v!r}")
    if not 0 <= v < len(GUEST_MODES):
        raise ValueError(f"Guest mode ID {v} too big (there are {len(GUEST_MODES)} modes)")
    m = GUEST_MODES[int(v)]
    if m is None:
        raise ValueError(f"Guest mode ID {v} is not an arm64 guest mode")
    if m[1] > 48:
        raise ValueError(f"Guest mode ID {v} ({m[0]}): s2fast models stage 2 with at most 48 IPA bits")
    return (int(v), *m)


def backing_page(src: str, granule: int) -> tuple[int, str]:
    """get_backing_src_pagesz() on an arm64 host of this page size, and the
    stage-2 leaf user_mem_abort() maps for it ("page", "pmd" or "pud")."""
    h = host_rules(granule)
    if src in ("anonymous", "shmem"):
        return h.granule, "page"
    if src in ("anonymous_thp", "anonymous_hugetlb", "shared_hugetlb"):
        return h.pmd_size, "pmd"      # THP size and default hugetlb size: PMD_SIZE
    size = _HUGETLB_SIZES[src.rsplit("_", 1)[1]]
    sizes = arm64_hugetlb_sizes(h.granule)
    if size not in sizes:
        names = ", ".join(f"anonymous_hugetlb_{format_size(s, compact=True).lower()}b" for s in sorted(sizes))
        raise ValueError(f"backing src type {src}: a {h.describe()} has no {format_size(size)} huge pages "
                         f"(arm64 hugetlb sizes here: {names})")
    return size, sizes[size]


# ---------------------------------------------------------------------------
# Layout (memstress_create_vm)

@dataclass(frozen=True)
class Layout:
    """Where memstress puts the test memory. Addresses are IPAs; pages are
    guest pages unless named host pages."""

    mode: str
    pa_bits: int
    guest_page: int
    host_page: int
    backing_pagesz: int
    leaf: str                   # "page", "pmd" or "pud": what stage 2 maps
    guest_num_pages: int
    gpa: int
    size: int
    slots: tuple[tuple[int, int], ...]          # (base, size) per memslot
    vcpus: tuple[tuple[int, int], ...]          # (gpa, pages) per vCPU
    pages_per_slot: int                         # host pages: each slot's dirty bitmap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layout(opts: Options) -> Layout:
    """memstress_create_vm() and memstress_setup_vcpus() for ``opts``."""
    _, name, pa_bits, _, gpage = guest_mode(opts.mode)
    hpage = opts.granule
    b = opts.vcpu_bytes
    if b == 0 or b % hpage:
        raise ValueError("Guest memory size is not host page size aligned.")
    if b % gpage:
        raise ValueError("Guest memory size is not guest page size aligned.")
    pagesz, leaf = backing_page(opts.backing_src, hpage)
    n = opts.vcpus * b // gpage                 # vm_adjust_num_guest_pages(): exact here
    if n % opts.slots:
        raise ValueError(f"Guest memory cannot be evenly divided into {opts.slots} slots.")
    region_end_gfn = (1 << pa_bits) // gpage    # vm->max_gfn + 1
    if n >= region_end_gfn:
        raise ValueError(f"Requested more guest memory than address space allows: {n} guest pages, "
                         f"max gfn {region_end_gfn - 1:#x}")
    gpa = (region_end_gfn - n - 1) * gpage // pagesz * pagesz
    size = n * gpage
    region = n // opts.slots * gpage
    slots = tuple((gpa + region * i, region) for i in range(opts.slots))
    if opts.partition:
        vcpus = tuple((gpa + i * b, b // gpage) for i in range(opts.vcpus))
    else:
        vcpus = tuple((gpa, n) for _ in range(opts.vcpus))
    return Layout(name, pa_bits, gpage, hpage, pagesz, leaf, n, gpa, size, slots, vcpus,
                  size // hpage // opts.slots)


# ---------------------------------------------------------------------------
# The guest's accesses

_LCG_M = (1 << 31) - 1
_LCG_A = 48271
_POW_BLOCK = 1 << 18
_POW: Optional[np.ndarray] = None


def _powers() -> np.ndarray:
    """48271^(k+1) mod (2^31-1) for k < _POW_BLOCK (products fit int64)."""
    global _POW
    if _POW is None:
        pw = np.empty(_POW_BLOCK, dtype=np.int64)
        pw[0] = _LCG_A
        n = 1
        while n < _POW_BLOCK:
            m = min(n, _POW_BLOCK - n)
            pw[n:n + m] = pw[:m] * pw[n - 1] % _LCG_M
            n += m
        _POW = pw
    return _POW


class GuestRandom:
    """guest_random_u32(): ``seed = seed * 48271 % (2^31 - 1)``, drawn in
    blocks by jumping ahead (x_{n+k} = 48271^k x_n)."""

    def __init__(self, seed: int) -> None:
        self.state = int(seed) % _LCG_M

    def take(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        pw = _powers()
        done = 0
        while done < n:
            m = min(_POW_BLOCK, n - done)
            out[done:done + m] = pw[:m] * self.state % _LCG_M
            self.state = int(out[done + m - 1])
            done += m
        return out


def guest_accesses(rng: GuestRandom, pages: int, write_percent: int, random_access: bool,
                   chunk: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass of memstress_guest_code's loop: (page indices, is-write) in
    chunks, drawing from ``rng`` as the guest does (a page draw first with
    -a, then the write-or-read draw)."""
    for lo in range(0, pages, chunk):
        m = min(chunk, pages - lo)
        if random_access:
            r = rng.take(2 * m)
            yield r[0::2] % pages, r[1::2] % 100 < write_percent
        else:
            r = rng.take(m)
            yield np.arange(lo, lo + m, dtype=np.int64), r % 100 < write_percent


# ---------------------------------------------------------------------------
# Running the phases

def guest_pass(vm: VM, ipas: np.ndarray, writes: np.ndarray) -> None:
    """The guest's accesses, in order, on ``vm``: one batch through the
    engine's fault path (``VM.access_pages``)."""
    vm.access_pages(ipas, writes)


@dataclass
class PhaseResult:
    """One timed phase: its report line, exact counts (engine + VM), the
    counts of each vCPU for the guest phases, and the simulator's time."""

    name: str
    line: str
    counts: dict[str, int]
    per_vcpu: Optional[list[dict[str, int]]] = None
    wall_s: float = 0.0

    @property
    def faults(self) -> int:
        c = self.counts
        return c["faults_perm"] + c["faults_perm_block"] + c["faults_translation"]


@dataclass
class DirtyLogPerfRun:
    """dirty_log_perf_test under one strategy."""

    options: Options
    layout: Layout
    strategy: AnyStrategy
    phases: list[PhaseResult]
    vm: Optional[VM] = field(default=None, repr=False)

    def phase(self, name: str) -> PhaseResult:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def wall_s(self) -> float:
        return sum(p.wall_s for p in self.phases)


def _sum(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def new_vm(opts: Options, strategy: Any = Strategy.KERNEL) -> tuple[VM, Layout]:
    """The VM memstress_create_vm() builds: empty memslots (nothing mapped
    until the guest touches it)."""
    lay = layout(opts)
    vm = VM(lay.pa_bits, strategy=strategy, eager_split_chunk=opts.eager_split_chunk,
            initially_set=opts.manual_protect, granule=opts.granule)
    # only the leaf's own Backing: a host without PUD blocks refuses a PUD one
    pct = {"page": (0, 0, 100), "pmd": (0, 100, 0), "pud": (100, 0, 0)}[lay.leaf]
    kind = Backing(*pct, opts.granule)
    for base, size in lay.slots:
        try:
            vm.add_memslot(size, kind, base=base, populate=False, page_aligned=True)
        except ValueError as e:
            raise ValueError(f"memslot at {base:#x}+{format_size(size)}: {e}") from None
    return vm, lay


def run(opts: Options, strategy: Any = Strategy.KERNEL, *, keep_vm: bool = False,
        progress: Optional[Callable[[float, str], None]] = None) -> DirtyLogPerfRun:
    """Run dirty_log_perf_test's phases on a modelled arm64 host under one
    walker strategy."""
    if not isinstance(opts, Options):
        raise TypeError(f"opts must be an s2fast.dirty_log_perf.Options, not {type(opts).__name__} {opts!r}")
    strategy = as_strategy(strategy)
    vm, lay = new_vm(opts, strategy)
    report = progress or (lambda f, n: None)
    # each vCPU has its own memory cache (vcpu->arch.mmu_page_cache)
    vcpu_caches = [vm.vcpu_cache] + [MemCache(0, on_empty="allocate") for _ in lay.vcpus[1:]]
    rngs = [GuestRandom(opts.seed + i) for i in range(opts.vcpus)]
    phases: list[PhaseResult] = []
    steps = 3 + 3 * opts.iterations

    def timed(name: str, line: str, fn: Callable[[], Optional[Mapping[str, int]]]) -> None:
        report(len(phases) / steps, name)
        before = vm.snapshot()
        t = time.perf_counter()
        extra = fn()
        wall = time.perf_counter() - t
        counts = _delta(vm.snapshot(), before)
        if extra:
            counts.update(extra)
        phases.append(PhaseResult(name, line, counts, None, wall))

    def guest(name: str, line: str, write_percent: int, random_access: bool) -> None:
        report(len(phases) / steps, name)
        per: list[dict[str, int]] = []
        t = time.perf_counter()
        for i, (gpa, pages) in enumerate(lay.vcpus):
            vm.vcpu_cache = vcpu_caches[i]
            before = vm.snapshot()
            for idx, wr in guest_accesses(rngs[i], pages, write_percent, random_access):
                guest_pass(vm, (idx * lay.guest_page + gpa).astype(np.uint64), wr)
            per.append(_delta(vm.snapshot(), before))
        phases.append(PhaseResult(name, line, _sum(per), per, time.perf_counter() - t))

    def each_slot(fn: Callable[[int], Optional[Mapping[str, int]]]) -> Callable[[], dict[str, int]]:
        return lambda: _sum(fn(s.id) or {} for s in sorted(vm.memslots, key=lambda s: s.id))

    bitmaps: dict[int, np.ndarray] = {}

    def get_log(slot: int) -> dict[str, int]:
        if opts.manual_protect:
            bitmaps[slot] = bm = vm.get_dirty_log(slot)     # a copy: nothing is protected
        else:
            s = vm._slots(slot)[0]
            bm = s.dirty_bitmap.copy()
            vm.clear_dirty_log(slot)                         # KVM_GET_DIRTY_LOG protects as it goes
        return {"bitmap_words": len(bm), "dirty_pages_reported": int(np.unpackbits(bm.view(np.uint8)).sum())}

    def clear_log(slot: int) -> None:
        vm.clear_dirty_log(slot, bitmaps.pop(slot))

    # Populate: 100 % writes, in order, whatever -w and -a say.
    guest("populate", "Populate memory time", 100, False)
    timed("enable", "Enabling dirty logging time", each_slot(lambda s: vm.enable_dirty_logging(s)))
    for it in range(1, opts.iterations + 1):
        guest(f"dirty {it}", f"Iteration {it} dirty memory time", opts.write_percent, opts.random_access)
        timed(f"get {it}", f"Iteration {it} get dirty log time", each_slot(get_log))
        if opts.manual_protect:
            timed(f"clear {it}", f"Iteration {it} clear dirty log time", each_slot(clear_log))
    timed("disable", "Disabling dirty logging time", each_slot(lambda s: vm.disable_dirty_logging(s)))
    vm.vcpu_cache = vcpu_caches[0]
    report(1.0, "done")
    return DirtyLogPerfRun(opts, lay, strategy, phases, vm if keep_vm else None)


@dataclass
class DirtyLogPerfResult:
    """dirty_log_perf_test under several strategies; KERNEL first, the
    reference for % changes and final-table checks."""

    options: Options
    runs: dict[str, DirtyLogPerfRun]
    diffs: dict[str, TableDiff]

    @property
    def layout(self) -> Layout:
        return next(iter(self.runs.values())).layout


def run_all(opts: Options, strategies: Optional[Iterable[Any]] = None, *,
            progress: Optional[Callable[[float, str], None]] = None) -> DirtyLogPerfResult:
    """``run`` under KERNEL and each strategy (all built-in ones by default
    or with "all"), checking each final table against KERNEL's."""
    order: list[AnyStrategy] = [Strategy.KERNEL]
    if strategies is None or (isinstance(strategies, str) and strategies.strip().lower() == "all"):
        strategies = list(Strategy)
    elif isinstance(strategies, (str, Strategy)):
        strategies = [strategies]
    for s in strategies:
        s = as_strategy(s)
        if s not in order:
            if any(o.name == s.name for o in order):
                raise ValueError(f"two strategies are named {s.name}")
            order.append(s)
    runs: dict[str, DirtyLogPerfRun] = {}
    diffs: dict[str, TableDiff] = {}
    kernel_vm: Optional[VM] = None
    for i, s in enumerate(order):
        step = (lambda f, n, i=i, s=s: progress((i + f) / len(order), f"{s.name}: {n}")) if progress else None
        r = run(opts, s, keep_vm=True, progress=step)
        if kernel_vm is None:
            kernel_vm = r.vm
            diffs[s.name] = TableDiff(True, granule=opts.granule)
        else:
            diffs[s.name] = diff_tables(kernel_vm.pt, r.vm.pt)
            r.vm = None
        runs[s.name] = r
    runs["KERNEL"].vm = None
    return DirtyLogPerfResult(opts, runs, diffs)


# ---------------------------------------------------------------------------
# Predicted time: the cost model's hook

class ProfileUnavailable(ValueError):
    """The profile asked for cannot be loaded: times are not predicted."""


def load_profile(spec: Any) -> Any:
    """The cost model's profile ``spec`` (a shipped name, a .toml/.json path or
    an s2fast.cost.Profile), or None when none is asked for: then the report
    gives counts only."""
    if spec is None:
        return None
    from .cost.model import ProfileError, load_profile as cost_profile
    try:
        return cost_profile(spec)
    except ProfileError as e:
        raise ProfileUnavailable(f"--profile: {e}") from None


def combine_vcpus(seconds: Sequence[float]) -> float:
    """How vCPUs running in parallel combine (the one place this rule
    lives): the phase ends when the slowest vCPU's pass ends, so its time is
    the largest of the vCPUs' serial costs. Contention on mmu_lock (write
    faults that map take it for write) is not modelled."""
    return max(seconds) if seconds else 0.0


def phase_seconds(phase: PhaseResult, profile: Any) -> Optional[float]:
    """The hook: a phase's predicted seconds under a cost-model profile
    (``profile.seconds(counts)`` of one thread's counts), vCPUs combined by
    ``combine_vcpus``. None without a profile."""
    if profile is None:
        return None
    if phase.per_vcpu is not None:
        return combine_vcpus([float(profile.seconds(c)) for c in phase.per_vcpu])
    return float(profile.seconds(phase.counts))


# ---------------------------------------------------------------------------
# The report

#: the counts shown per phase (label, how to get it from a counts dict)
COUNT_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, int]], int]], ...] = (
    ("faults", lambda c: c["faults_perm"] + c["faults_perm_block"] + c["faults_translation"]),
    ("read faults", lambda c: c["faults_read"]),
    ("pages dirtied", lambda c: c["pages_marked_dirty"]),
    ("mask words", lambda c: c["mask_words"]),
    ("wp calls", lambda c: c["wp_calls"]),
    ("split calls", lambda c: c["split_calls"]),
    ("entries read", lambda c: c["entries_read"]),
    ("callbacks", lambda c: summarize(c)["callbacks"]),
    ("TLBIs", lambda c: summarize(c)["tlbis"]),
    ("CMOs", lambda c: c["cmo_calls"]),
    ("pages alloc", lambda c: c["pages_alloc"]),
)


def _ts(s: float) -> str:
    """The selftest's %ld.%.9lds."""
    ns = int(round(s * 1e9))
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}s"


def notes(opts: Options) -> list[str]:
    """What the model leaves out or ignores for these options."""
    out = ["memslot 0 (guest code, stage-1 tables, memstress_args) is not modelled; "
           "vCPUs run one after another within a phase (see combine_vcpus)"]
    if opts.pcpus is not None:
        out.append(f"-c {opts.pcpus}: vCPU pinning has no effect on the model")
    if opts.phys_offset is not None:
        out.append(f"-p {opts.phys_offset:#x}: parsed and unused by the selftest, as here")
    if opts.run_vcpus_while_disabling:
        out.append("-e: disabling dirty logging is modelled with the vCPUs stopped (its counts are the "
                   "ioctl's; the vCPUs' concurrent faults and mmu_lock contention are not modelled)")
    if not opts.manual_protect:
        out.append("-g: no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: enabling write-protects (and eagerly splits "
                   "with --eager-split-chunk); KVM_GET_DIRTY_LOG write-protects what it reports")
    return out


def report(res: DirtyLogPerfResult, profile: Any = None, profile_note: Optional[str] = None) -> str:
    """The selftest's report, each time the profile's prediction, then the
    exact counts of each phase per strategy and, with several strategies,
    a side-by-side table against KERNEL."""
    opts, lay = res.options, res.layout
    kernel = res.runs["KERNEL"]
    out = [f"s2fast dirty-log-perf: models `{opts.command()}` on a {format_size(opts.granule)}-page arm64 "
           f"host, eager-split chunk {format_size(opts.eager_split_chunk) if opts.eager_split_chunk else '0 (off)'}",
           f"Test iterations: {opts.iterations}",
           f"Testing guest mode: PA-bits:{lay.pa_bits},  VA-bits:{GUEST_MODES[opts.mode][2]}, "
           f"{lay.guest_page >> 10:2d}K pages",
           f"guest physical test memory: [{lay.gpa:#x}, {lay.gpa + lay.size:#x})"]
    out += [f"note: {n}" for n in notes(opts)]
    if profile is None:
        out.append(profile_note or "times need a cost-model profile (--profile): counts only")
    else:
        out.append(f"times: predicted by profile {getattr(profile, 'name', profile)} (not measured)")
    out.append("")

    def t(p: PhaseResult) -> str:
        s = phase_seconds(p, profile)
        return "(predicted: needs a profile)" if s is None else f"{_ts(s)} (predicted)"

    for p in kernel.phases:
        out.append(f"{p.line}: {t(p)}")
        if p.name == "enable":
            out.append("")
    for kind, label in (("get", "Get dirty log"), ("clear", "Clear dirty log")):
        ps = [p for p in kernel.phases if p.name.startswith(kind + " ")]
        if not ps:
            continue
        secs = [phase_seconds(p, profile) for p in ps]
        if secs[0] is None:
            out.append(f"{label} over {opts.iterations} iterations took (predicted: needs a profile)")
        else:
            total = sum(secs)
            out.append(f"{label} over {opts.iterations} iterations took {_ts(total)}. "
                       f"(Avg {_ts(total / opts.iterations)}/iteration) (predicted)")
    for name, r in res.runs.items():
        out += ["", f"exact counts, strategy {name}"
                + ("" if name == "KERNEL" else f" (final table vs KERNEL: {res.diffs[name].describe()})")]
        headers = ["phase"] + [c[0] for c in COUNT_COLUMNS]
        rows = [[p.line.replace(" time", "")] + [f"{fn(p.counts):,}" for _, fn in COUNT_COLUMNS]
                for p in r.phases]
        out.append(render_table(headers, rows, [False] + [True] * len(COUNT_COLUMNS)))
    if len(res.runs) > 1:
        out += ["", side_by_side(res, profile)]
    return "\n".join(out)


def side_by_side(res: DirtyLogPerfResult, profile: Any = None) -> str:
    """Per phase and strategy: predicted seconds (entries read without a
    profile) and % change against KERNEL."""
    names = list(res.runs)
    kernel = res.runs["KERNEL"]
    what = "predicted s" if profile is not None else "entries read"
    headers = ["phase"] + [h for n in names for h in (n, "%" if n != "KERNEL" else None) if h is not None]
    rows = []
    for i, kp in enumerate(kernel.phases):
        def val(r: DirtyLogPerfRun) -> float:
            p = r.phases[i]
            s = phase_seconds(p, profile)
            return float(p.counts["entries_read"]) if s is None else s
        k = val(kernel)
        row = [kp.line.replace(" time", "")]
        for n in names:
            v = val(res.runs[n])
            row.append(f"{v:,.0f}" if profile is None else f"{v:.6f}")
            if n != "KERNEL":
                row.append("-" if k == 0 and v == 0 else "inf" if k == 0 else f"{100.0 * (v - k) / k:+.1f}%")
        rows.append(row)
    outcome = ", ".join(f"{n}: {res.diffs[n].describe()}" for n in names if n != "KERNEL")
    return "\n".join([f"side by side ({what}; % change against KERNEL)",
                      render_table(headers, rows, [False] + [True] * (len(headers) - 1)),
                      f"final tables vs KERNEL: {outcome}"])


def to_dict(res: DirtyLogPerfResult, profile: Any = None) -> dict[str, Any]:
    opts = res.options
    return {
        "command": opts.command(),
        "options": asdict(opts),
        "layout": res.layout.to_dict(),
        "profile": None if profile is None else str(getattr(profile, "name", profile)),
        "notes": notes(opts),
        "strategies": {
            n: {"final_table": res.diffs[n].to_dict(), "wall_s": r.wall_s,
                "phases": [{"name": p.name, "line": p.line, "predicted_s": phase_seconds(p, profile),
                            "counts": p.counts, "per_vcpu": p.per_vcpu, "wall_s": p.wall_s}
                           for p in r.phases]}
            for n, r in res.runs.items()},
    }


# ---------------------------------------------------------------------------
# Command line: s2fast dirty-log-perf

def add_parser(sub: Any) -> Any:
    """The ``dirty-log-perf`` subcommand: the selftest's letters, then s2fast's options."""
    d = sub.add_parser(
        "dirty-log-perf", help="the kernel's dirty_log_perf_test, modelled: same options and report",
        description="Model a run of tools/testing/selftests/kvm/dirty_log_perf_test on a KVM arm64 host: "
                    "the selftest's options, memory layout, phases and report; exact counts per phase "
                    "and, with a cost-model profile, predicted times.")
    t = d.add_argument_group("dirty_log_perf_test's options")
    t.add_argument("-a", action="store_true", dest="random_access", help="access memory randomly rather than in order")
    t.add_argument("-b", dest="vcpu_bytes", default=None, metavar="SIZE",
                   help="memory dirtied by each vCPU, e.g. 10M or 3G (default 1G)")
    t.add_argument("-c", dest="pcpus", default=None, metavar="CPUS", help="pin vCPUs to pCPUs (no effect here)")
    t.add_argument("-e", action="store_true", dest="evil",
                   help="run vCPUs while dirty logging is being disabled")
    t.add_argument("-g", action="store_true", dest="no_manual",
                   help="do not enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (GET_DIRTY_LOG protects; no CLEAR)")
    t.add_argument("-i", dest="iterations", default=None, metavar="N",
                   help=f"iterations (default {DEFAULT_ITERATIONS}, at least 2)")
    t.add_argument("-m", dest="mode", default=None, metavar="MODE",
                   help="guest mode ID or name (default 6 = P40V48_4K): sets the IPA size and guest page size")
    t.add_argument("-n", action="store_true", dest="nested", help="run the vCPUs in L2 (x86 only: refused)")
    t.add_argument("-o", action="store_true", dest="overlap",
                   help="overlap guest memory accesses instead of partitioning them per vCPU")
    t.add_argument("-p", dest="phys_offset", default=None, metavar="OFFSET",
                   help="guest physical test memory offset (unused by the selftest)")
    t.add_argument("-r", dest="seed", default=None, metavar="SEED", help="starting random seed (default 1)")
    t.add_argument("-s", dest="backing_src", default=None, metavar="TYPE",
                   help="backing source: " + ", ".join(BACKING_SRC_TYPES) + " (default anonymous)")
    t.add_argument("-v", dest="vcpus", default=None, metavar="N", help="vCPUs (default 1)")
    t.add_argument("-x", dest="slots", default=None, metavar="N", help="memslots (default 1)")
    t.add_argument("-w", dest="write_percent", default=None, metavar="PCT",
                   help="percentage of pages written, 0-100 (default 100)")
    s = d.add_argument_group("s2fast")
    s.add_argument("--eager-split-chunk", default="0", metavar="SIZE",
                   help="KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: 0 (off, the kernel's default), or a block size")
    s.add_argument("--granule", default="4K", metavar="SIZE", help="host page size: 4K (default), 16K or 64K")
    s.add_argument("--strategies", default=None, metavar="LIST",
                   help="comma-separated strategies, or all (default: KERNEL only); KERNEL always runs")
    s.add_argument("--strategy", action="append", default=None, metavar="NAME=FLAGS[,max_level=N]",
                   help="your own strategy (repeatable), e.g. mine=LEAF|SKIP_LEVEL3,max_level=3")
    s.add_argument("--strategy-module", action="append", default=None, metavar="FILE.py",
                   help="strategies from a Python file's STRATEGIES list (repeatable)")
    s.add_argument("--profile", default=None, metavar="NAME", help="cost-model profile for predicted times")
    s.add_argument("--json", action="store_true", help="print JSON instead of the report")
    return d


def _atoi(name: str, text: Optional[str], default: int) -> int:
    if text is None:
        return default
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a whole number") from None


def options_from_args(args: Any) -> Options:
    """Options from parsed ``dirty-log-perf`` arguments (ValueError names the bad value)."""
    if args.nested:
        raise ValueError("-n: nested (L2) vCPUs are x86 only; memstress skips the test on arm64")
    size = DEFAULT_VCPU_BYTES
    if args.vcpu_bytes is not None:
        try:
            size = parse_size(args.vcpu_bytes)
        except ValueError as e:
            raise ValueError(f"-b: {e}") from None
    offset = None
    if args.phys_offset is not None:
        try:
            offset = int(args.phys_offset, 0)
        except ValueError:
            raise ValueError(f"-p: {args.phys_offset!r} is not a number") from None
    return Options(
        vcpu_bytes=size, vcpus=_atoi("Number of vCPUs", args.vcpus, 1),
        backing_src=args.backing_src or "anonymous",
        iterations=_atoi("Number of iterations", args.iterations, DEFAULT_ITERATIONS),
        manual_protect=not args.no_manual, random_access=args.random_access,
        write_percent=_atoi("Write percentage", args.write_percent, 100),
        seed=_atoi("Random seed", args.seed, 1), slots=_atoi("Number of slots", args.slots, 1),
        partition=not args.overlap, run_vcpus_while_disabling=args.evil,
        mode=DEFAULT_MODE if args.mode is None else args.mode, pcpus=args.pcpus, phys_offset=offset,
        eager_split_chunk=args.eager_split_chunk, granule=args.granule)
