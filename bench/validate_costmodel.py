"""Validate the cost model against the RFC series' published hardware tables.

    python bench/validate_costmodel.py [--prior NAME|FILE] [--prior-weight W] [--markdown]

For each cell of each table (s2fast/cost/data/rfc-v1.csv, rfc-v2.csv):
published % change; counts-only (entries read of the measured phases,
against KERNEL, which is what a reading of "entries read -50%" as "50%
faster" predicts); predicted leave-one-out within the table (the profile is
fitted to the other five cells of the same table); predicted by the profile
fitted to the whole other table as it is (a % change is a ratio, so an
overall time scale between two machines cancels); the same with one free
factor, fitted to the whole table (all six cells at once, least squares),
that scales every per-entry cost (entry visit, reload, callbacks, entry
written: how fast this machine walks tables relative to its page allocator
and TLBIs); and the errors in points. Nothing is fitted per cell."""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from s2fast.cost import DATA_DIR, Profile  # noqa: E402
from s2fast.cost.calibrate import (DEFAULT_PRIOR_WEIGHT, calibrate, phase_counts, predict,  # noqa: E402
                                   run_counts)
from s2fast.variants import Strategy  # noqa: E402

TABLES = ("rfc-v1", "rfc-v2")
#: the events whose cost is the walker's own per-entry work
PER_ENTRY = ("entry_visit", "entry_reload", "callback_leaf", "callback_table", "entry_written")


def walk_scaled(p: Profile, alpha: float) -> Profile:
    return Profile(f"{p.name} x{alpha:.3g} walk", {k: v * (alpha if k in PER_ENTRY else 1.0)
                                                  for k, v in p.costs.items()})


def fit_walk_factor(ms, p: Profile) -> float:
    """The one factor on per-entry costs that best fits a whole table."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    sse = [sum((predict(m, walk_scaled(p, a)) - m.value) ** 2 for m in ms) for a in grid]
    return float(grid[int(np.argmin(sse))])


def counts_only(m) -> float:
    """% change in entries read of the measured phases, against KERNEL."""
    s = phase_counts(run_counts(m.workload, m.strategy), m.phase)["entries_read"]
    k = phase_counts(run_counts(m.workload, Strategy.KERNEL), m.phase)["entries_read"]
    return 100.0 * (s / k - 1.0)


def validate(prior=None, prior_weight=DEFAULT_PRIOR_WEIGHT):
    """Rows of the validation table and each table's mean absolute errors."""
    cals = {t: calibrate(os.path.join(DATA_DIR, t + ".csv"), prior, prior_weight=prior_weight, name=t)
            for t in TABLES}
    rows, summary = [], {}
    for t in TABLES:
        other = [o for o in TABLES if o != t][0]
        errs = {"counts": [], "loo": [], "cross": [], "cross1": []}
        alpha = fit_walk_factor([r.measurement for r in cals[t].rows], cals[other].profile)
        scaled = walk_scaled(cals[other].profile, alpha)
        for r in cals[t].rows:
            m = r.measurement
            c = counts_only(m)
            x = predict(m, cals[other].profile)
            x1 = predict(m, scaled)
            rows.append({"table": t, "cell": m.label, "published": m.value, "counts_only": c, "loo": r.loo,
                         "cross": x, "cross1": x1, "err_counts": c - m.value, "err_loo": r.loo - m.value,
                         "err_cross": x - m.value, "err_cross1": x1 - m.value})
            errs["counts"].append(abs(c - m.value))
            errs["loo"].append(abs(r.loo - m.value))
            errs["cross"].append(abs(x - m.value))
            errs["cross1"].append(abs(x1 - m.value))
        summary[t] = {k: sum(v) / len(v) for k, v in errs.items()}
        summary[t]["alpha"] = alpha
    return rows, summary, cals


def render(rows, summary, markdown=False) -> str:
    head = ["cell", "published", "counts-only", "LOO", "other table", "other + 1 factor",
            "err counts", "err LOO", "err other", "err other+1"]
    body = []
    for r in rows:
        body.append([r["cell"], f"{r['published']:+.2f}%", f"{r['counts_only']:+.1f}%", f"{r['loo']:+.1f}%",
                     f"{r['cross']:+.1f}%", f"{r['cross1']:+.1f}%", f"{r['err_counts']:+.1f}",
                     f"{r['err_loo']:+.1f}", f"{r['err_cross']:+.1f}", f"{r['err_cross1']:+.1f}"])
    for t, s in summary.items():
        body.append([f"{t}: mean abs. error (points)", "", "", "", "", f"walk x{s['alpha']:.2f}",
                     f"{s['counts']:.1f}", f"{s['loo']:.1f}", f"{s['cross']:.1f}", f"{s['cross1']:.1f}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(out)
    w = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=None)
    ap.add_argument("--prior-weight", type=float, default=DEFAULT_PRIOR_WEIGHT)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--reports", action="store_true", help="also print each table's calibration report")
    a = ap.parse_args(argv)
    rows, summary, cals = validate(a.prior, a.prior_weight)
    print(render(rows, summary, a.markdown))
    if a.reports:
        for t, c in cals.items():
            print(f"\n{t}:\n{c.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
