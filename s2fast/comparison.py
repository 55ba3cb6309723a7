"""One workload under several walker strategies: ``compare`` runs KERNEL
first, then each other strategy, and checks each final table against
KERNEL's (s2fast.variants.diff_tables)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .mmu import VM
from .variants import Strategy, TableDiff, diff_tables, parse_strategy
from .workload import RunResult, Workload, summarize


@dataclass
class Comparison:
    """One workload under several strategies; KERNEL is always run first
    and is the reference for speed-ups and final-table checks."""

    workload: Workload
    results: dict[Strategy, RunResult]
    diffs: dict[Strategy, TableDiff]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per strategy: the totals' headline costs, wall time,
        speed-up over KERNEL in entries read, reduction (%), final table."""
        k = self.results[Strategy.KERNEL]
        k_entries = summarize(k.totals)["entries_read"]
        out = []
        for s, r in self.results.items():
            row: dict[str, Any] = {"strategy": s.name}
            row.update(summarize(r.totals))
            row["wall_s"] = r.wall_s
            e = row["entries_read"]
            row["speedup"] = k_entries / e if e else float("inf")
            row["reduction_pct"] = 100.0 * (1 - e / k_entries) if k_entries else 0.0
            row["wall_speedup"] = k.wall_s / r.wall_s if r.wall_s else float("inf")
            d = self.diffs[s]
            row["identical"] = d.identical
            row["outcome"] = d.describe()
            out.append(row)
        return out

    def phase_rows(self) -> list[dict[str, Any]]:
        out = []
        for s, r in self.results.items():
            for p in [r.build] + r.phases:
                row: dict[str, Any] = {"strategy": s.name, "phase": p.name}
                row.update(p.summary)
                row["wall_s"] = p.wall_s
                out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "workload": {"guest_size": w.guest_size, "backing": str(w.backing), "chunk": w.chunk,
                         "passes": w.passes, "initially_set": w.initially_set, "writes": w.writes,
                         "pattern": w.pattern, "seed": w.seed, "base": w.base, "ia_bits": w.ia_bits,
                         "fwb": w.fwb, "tlb_range": w.tlb_range, "granule": w.granule},
            "strategies": {
                s.name: {"totals": r.totals, "summary": summarize(r.totals), "wall_s": r.wall_s,
                         "build_wall_s": r.build.wall_s,
                         "phases": [{"name": p.name, "wall_s": p.wall_s, "summary": p.summary,
                                     "counts": p.counts} for p in r.phases],
                         "final_table": self.diffs[s].to_dict()}
                for s, r in self.results.items()},
            "rows": self.rows(),
        }


def _strategies(strategies: Optional[Iterable[Any]]) -> list[Strategy]:
    if strategies is None:
        return list(Strategy)
    if isinstance(strategies, (str, Strategy)):
        strategies = [strategies]
    out = [Strategy.KERNEL]
    for s in strategies:
        s = parse_strategy(s)
        if s not in out:
            out.append(s)
    return out


def compare(workload: Workload, strategies: Optional[Iterable[Any]] = None, *,
            progress: Optional[Callable[[float, str], None]] = None) -> Comparison:
    """Run ``workload`` under each strategy (all by default; KERNEL always
    first) and check each final table against KERNEL's."""
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be an s2fast.Workload, not {type(workload).__name__} {workload!r}")
    order = _strategies(strategies)
    results: dict[Strategy, RunResult] = {}
    diffs: dict[Strategy, TableDiff] = {}
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
    return Comparison(workload, results, diffs)

