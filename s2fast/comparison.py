"""One workload under several walker strategies: ``compare`` runs KERNEL
first, then each other strategy, and checks each final table against
KERNEL's (s2fast.variants.diff_tables)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .cost.model import load_profile, predict_comparison
from .memory import check_memory
from .mmu import VM
from .strategy import AnyStrategy, CustomStrategy, as_strategy
from .variants import Strategy, TableDiff, diff_tables
from .workload import RunResult, Workload, summarize


@dataclass
class Comparison:
    """One workload under several strategies; KERNEL is always run first
    and is the reference for speed-ups and final-table checks."""

    workload: Workload
    results: dict[AnyStrategy, RunResult]
    diffs: dict[AnyStrategy, TableDiff]
    #: the machine profile for predicted seconds (s2fast.cost; None: generic)
    profile: Any = None

    def predicted(self) -> dict[str, dict[str, Any]]:
        """Per strategy: predicted seconds per phase and in all, and % change
        against KERNEL, under ``profile`` (see s2fast.cost)."""
        return predict_comparison(self)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per strategy: the totals' headline costs, wall time,
        speed-up over KERNEL in entries read, reduction (%), predicted
        seconds and % change against KERNEL, final table."""
        k = self.results[Strategy.KERNEL]
        pred = self.predicted()
        k_entries = summarize(k.totals)["entries_read"]
        out = []
        for s, r in self.results.items():
            row: dict[str, Any] = {"strategy": s.name}
            row.update(summarize(r.totals))
            row["wall_s"] = r.wall_s
            e = row["entries_read"]
            # None where KERNEL read nothing (e.g. no passes): no ratio to give
            row["speedup"] = k_entries / e if e and k_entries else None
            row["reduction_pct"] = 100.0 * (1 - e / k_entries) if k_entries else None
            row["wall_speedup"] = k.wall_s / r.wall_s if r.wall_s and k_entries else None
            row["predicted_s"] = pred[s.name]["seconds"]
            row["predicted_pct_change"] = pred[s.name]["pct_change"]
            d = self.diffs[s]
            row["identical"] = d.identical
            row["outcome"] = d.describe()
            out.append(row)
        return out

    def phase_rows(self) -> list[dict[str, Any]]:
        out = []
        pred = self.predicted()
        for s, r in self.results.items():
            for p in [r.build] + r.phases:
                row: dict[str, Any] = {"strategy": s.name, "phase": p.name}
                row.update(p.summary)
                row["wall_s"] = p.wall_s
                row["predicted_s"] = pred[s.name]["phases"].get(p.name, pred[s.name]["build_s"])
                out.append(row)
        return out

    def to_pandas(self) -> Any:
        """One row per (strategy, phase): s2fast.results.comparison_records (needs pandas)."""
        from .results import comparison_frame
        return comparison_frame(self)

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        pred = self.predicted()
        return {
            "profile": load_profile(self.profile).name,
            "workload": {"guest_size": w.guest_size, "backing": str(w.backing), "chunk": w.chunk,
                         "passes": w.passes, "initially_set": w.initially_set, "writes": w.writes,
                         "pattern": w.pattern, "seed": w.seed, "base": w.base, "ia_bits": w.ia_bits,
                         "fwb": w.fwb, "tlb_range": w.tlb_range, "granule": w.granule},
            "strategies": {
                s.name: {"totals": r.totals, "summary": summarize(r.totals), "wall_s": r.wall_s,
                         "build_wall_s": r.build.wall_s, "predicted_s": pred[s.name]["seconds"],
                         "predicted_pct_change": pred[s.name]["pct_change"],
                         "phases": [{"name": p.name, "wall_s": p.wall_s, "summary": p.summary,
                                     "predicted_s": pred[s.name]["phases"][p.name],
                                     "counts": p.counts} for p in r.phases],
                         "final_table": self.diffs[s].to_dict()}
                for s, r in self.results.items()},
            "rows": self.rows(),
        }


def _strategies(strategies: Optional[Iterable[Any]]) -> list[AnyStrategy]:
    if strategies is None:
        return list(Strategy)
    if isinstance(strategies, (str, Strategy, CustomStrategy)):
        strategies = [strategies]
    out = [Strategy.KERNEL]
    for s in strategies:
        s = as_strategy(s)
        if s not in out:
            out.append(s)
    return out


def compare(workload: Workload, strategies: Optional[Iterable[Any]] = None, *,
            progress: Optional[Callable[[float, str], None]] = None, profile: Any = None,
            memory_limit: Any = None) -> Comparison:
    """Run ``workload`` under each strategy (all by default; KERNEL always
    first) and check each final table against KERNEL's. ``profile`` (a
    name, path or s2fast.cost.Profile; None: generic) prices the counts. A
    run whose memory estimate exceeds the memory available (or
    ``memory_limit``, bytes or a size such as "8G") is refused first:
    s2fast.memory.check_memory."""
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be an s2fast.Workload, not {type(workload).__name__} {workload!r}")
    profile = load_profile(profile)
    order = _strategies(strategies)
    check_memory([workload], len(order), memory_limit=memory_limit)
    results: dict[AnyStrategy, RunResult] = {}
    diffs: dict[AnyStrategy, TableDiff] = {}
    kernel_vm: Optional[VM] = None
    for i, s in enumerate(order):
        step = (lambda f, name, i=i, s=s: progress((i + f) / len(order), f"{s.name}: {name}")) \
            if progress else None
        r = workload.run(s, keep_vm=True, progress=step)
        if s is Strategy.KERNEL:
            kernel_vm = r.vm
            diffs[s] = TableDiff(True)
        else:
            assert kernel_vm is not None
            diffs[s] = diff_tables(kernel_vm.pt, r.vm.pt)
            r.vm = None
        results[s] = r
    results[Strategy.KERNEL].vm = None
    return Comparison(workload, results, diffs, profile)
