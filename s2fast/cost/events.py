"""The cost events: every thing the measured paths do that takes time.

Each event is derived exactly from the counts a run already keeps (the
engine's ``Stats`` plus ``entries_written``/``cmpxchg``, and the VM's mmu.c
counters, see ``s2fast.vm.COUNTERS``), so events are as exact and
deterministic as the counts. ``EVENTS`` is the one registry (read from
``events.toml``, data beside the profiles that price it): name -> what it
is, the kernel function that incurs it, and how it is derived.

The paths are dirty-tracking enable (kvm_mmu_wp_memory_region() then
kvm_mmu_split_memory_region()), KVM_CLEAR_DIRTY_LOG (per mask word:
kvm_arch_mmu_enable_log_dirty_pt_masked(): write-protect then split the
word's range) and guest write faults (user_mem_abort())."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Event:
    name: str
    meaning: str
    kernel: str
    derive: Callable[[Mapping[str, int]], int]


def _sum(*keys: str) -> Callable[[Mapping[str, int]], int]:
    return lambda c: sum(int(c.get(k, 0)) for k in keys)


def _load() -> dict[str, Event]:
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(os.path.join(os.path.dirname(__file__), "events.toml"), "rb") as f:
        table = tomllib.load(f)
    return {name: Event(name, e["meaning"], e["kernel"], _sum(*e["counts"])) for name, e in table.items()}


EVENTS: dict[str, Event] = _load()

EVENT_NAMES: tuple[str, ...] = tuple(EVENTS)


def events(counts: Mapping[str, int]) -> dict[str, int]:
    """Every event of ``EVENTS`` from one count dict (a ``Phase.counts``,
    ``RunResult.totals`` or ``VM.snapshot()`` difference)."""
    return {name: e.derive(counts) for name, e in EVENTS.items()}


def describe_events() -> str:
    """The registry as a plain-text table."""
    w = max(len(n) for n in EVENTS)
    return "\n".join(f"{n.ljust(w)}  {e.meaning} [{e.kernel}]" for n, e in EVENTS.items())
