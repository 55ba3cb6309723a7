"""Presets: the RFC series' published experiments, each a pair of
comparisons (enabling dirty tracking, and CLEAR_DIRTY_LOG passes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from .comparison import Comparison, _strategies, compare
from .cost.model import load_profile, pct_change
from .memory import check_memory
from .sizes import GiB, MiB
from .workload import Workload


@dataclass(frozen=True)
class Preset:
    """One of the series' published set-ups: a memslot of ``guest_size``
    backed by ``backing``. "Enable dirty tracking" is measured without
    initially-all-set (write-protect + eager split at enable time);
    "CLEAR_DIRTY_LOG" with it (the first pass splits, later ones re-walk
    already-split memory), each on a freshly built guest."""

    name: str
    description: str
    guest_size: int
    backing: str
    chunk: int = 2 * MiB
    passes: int = 2
    writes: int = 16384
    pattern: str = "random"
    seed: int = 0
    granule: int = 4096

    def enable_workload(self, **over: Any) -> Workload:
        return Workload(guest_size=self.guest_size, backing=self.backing, chunk=over.get("chunk", self.chunk),
                        passes=0, initially_set=False, writes=0, seed=over.get("seed", self.seed),
                        granule=self.granule)

    def clear_workload(self, **over: Any) -> Workload:
        return Workload(guest_size=self.guest_size, backing=self.backing, chunk=over.get("chunk", self.chunk),
                        passes=over.get("passes", self.passes), initially_set=True,
                        writes=over.get("writes", self.writes), pattern=over.get("pattern", self.pattern),
                        seed=over.get("seed", self.seed), granule=self.granule)


def _presets() -> dict[str, Preset]:
    out = {}
    for gib in (64, 16):
        for tag, backing, what in (("4k", "4k", "memory already split to 4 KiB"),
                                   ("thp", "2m", "2 MiB blocks (THP)"),
                                   ("hugetlb", "1g", "1 GiB blocks (hugetlb)")):
            name = f"rfc-{gib}g-{tag}"
            out[name] = Preset(name, f"{gib} GiB memslot, {what}; eager-split chunk 2 MiB",
                               gib * GiB, backing)
    return out


PRESETS: dict[str, Preset] = _presets()


@dataclass
class PresetResult:
    """A preset's two measurements, each a Comparison."""

    preset: Preset
    enable: Comparison
    clear: Comparison

    def rows(self) -> list[dict[str, Any]]:
        en = {r["strategy"]: r for r in self.enable.rows()}
        cl = {r["strategy"]: r for r in self.clear.rows()}
        pe, pc = self.enable.predicted(), self.clear.predicted()
        out = []
        for name in en:
            e, c = en[name], cl[name]
            outcome = []
            if not e["identical"]:
                outcome.append(f"enable: {e['outcome']}")
            if not c["identical"]:
                outcome.append(f"CLEAR: {c['outcome']}")
            out.append({"strategy": name,
                        "enable_entries_read": e["entries_read"], "enable_reduction_pct": e["reduction_pct"],
                        "enable_wall_s": e["wall_s"],
                        "clear_entries_read": c["entries_read"], "clear_reduction_pct": c["reduction_pct"],
                        "clear_wall_s": c["wall_s"],
                        # the measured phases: enable, and every CLEAR pass (not the guest's writes)
                        "enable_predicted_s": pe[name]["phases"]["enable"],
                        "enable_predicted_pct_change": _pct(pe, name, ("enable",)),
                        "clear_predicted_s": _phase_sum(pc, name, _clears(pc)),
                        "clear_predicted_pct_change": _pct(pc, name, _clears(pc)),
                        "identical": e["identical"] and c["identical"],
                        "outcome": "; ".join(outcome) if outcome else "identical"})
        return out

    def to_pandas(self) -> Any:
        """One row per (measurement, strategy, phase): s2fast.results.preset_records (needs pandas)."""
        from .results import preset_frame
        return preset_frame(self)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "description": self.preset.description,
                "profile": self.enable.to_dict()["profile"],
                "enable": self.enable.to_dict(), "clear": self.clear.to_dict(), "rows": self.rows()}


def _clears(pred: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    return tuple(n for n in pred["KERNEL"]["phases"] if n.startswith("clear "))


def _phase_sum(pred: dict[str, dict[str, Any]], name: str, phases: tuple[str, ...]) -> float:
    return sum(pred[name]["phases"][p] for p in phases)


def _pct(pred: dict[str, dict[str, Any]], name: str, phases: tuple[str, ...]) -> float:
    return pct_change(_phase_sum(pred, name, phases), _phase_sum(pred, "KERNEL", phases))


def run_preset(preset: Union[str, Preset], strategies: Optional[Iterable[Any]] = None, *,
               progress: Optional[Callable[[float, str], None]] = None, profile: Any = None,
               **overrides: Any) -> PresetResult:
    """Run a preset's two measurements under each strategy. ``overrides``
    may change chunk, passes, writes, pattern or seed; ``profile`` prices
    the counts (s2fast.cost; None: generic)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if not isinstance(preset, Preset):
        raise TypeError(f"preset must be a name or an s2fast.Preset, not {type(preset).__name__} {preset!r}")
    bad = set(overrides) - {"chunk", "passes", "writes", "pattern", "seed"}
    if bad:
        raise TypeError(f"run_preset() got unexpected overrides {sorted(bad)}")
    half = (lambda lo: (lambda f, n: progress(lo + f / 2, n))) if progress else (lambda lo: None)
    check_memory([preset.enable_workload(**overrides), preset.clear_workload(**overrides)],
                 len(_strategies(strategies)))
    profile = load_profile(profile)
    enable = compare(preset.enable_workload(**overrides), strategies, progress=half(0.0), profile=profile)
    clear = compare(preset.clear_workload(**overrides), strategies, progress=half(0.5), profile=profile)
    return PresetResult(preset, enable, clear)
