"""The pictures reviewers post, drawn from a long results table
(``results.to_frame`` rows: a sweep's table, or ``Comparison.to_pandas()``).

Every picture shows % change against KERNEL in the same run (negative: the
strategy does less), and marks strategies whose final table differs from
KERNEL's. Titles say what was fixed and what was aggregated (the median over
the other parameters, whiskers from min to max).

* ``bars``: grouped bars per phase, one panel per backing;
* ``size``: the whole run against guest size (log axis), one line and
  marker per strategy;
* ``heatmap``: strategy x one parameter.

Needs matplotlib and pandas (``pip install 's2fast[plot]'``)."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from .results import pct_change
from .variants import Strategy
from .sizes import format_size

KINDS = ("bars", "size", "heatmap")
FORMATS = (".png", ".svg")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
#: descriptive columns a title may name, in the order it names them
SETUP_COLUMNS = ("preset", "measurement", "guest_size", "granule", "backing", "chunk", "initially_set", "passes",
                 "writes", "pattern", "hot_pages", "seed", "fwb", "tlb_range", "split_host_pages", "profile")
METRIC_NAMES = {"entries_read": "entries read", "callbacks": "callbacks", "tlbis": "TLBIs", "cmos": "CMOs",
                "pages_alloc": "table pages allocated", "predicted_s": "predicted time", "visits": "visits"}
DIFF_NOTE = "final table differs from KERNEL's"


def _phase_order(phases: Any) -> list[str]:
    """enable, then each pass's writes and clear, the total last."""
    def key(ph: str) -> tuple:
        if ph == "enable":
            return (0, 0, ph)
        if ph == "total":
            return (2, 0, ph)
        name, _, k = ph.partition(" ")
        return (1, int(k) if k.isdigit() else 0, 0 if name == "writes" else 1, ph)
    return sorted(set(phases), key=key)


def _strategy_order(names: Sequence[str]) -> list[str]:
    known = [s.name for s in Strategy]
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    known = [s.name for s in Strategy]
    return {n: cmap(known.index(n) if n in known else 6 + i) for i, n in enumerate(names)}


def _value(col: str, v: Any) -> str:
    """A parameter value as a title or tick reads it."""
    if col in ("guest_size", "chunk", "base"):
        return "off" if col == "chunk" and v == 0 else format_size(int(v))
    if col == "granule":
        return f"{format_size(int(v))} pages"
    if col == "initially_set":
        return "initially-all-set" if v else "not initially-all-set"
    if col in ("fwb", "tlb_range"):
        return {"fwb": "FWB", "tlb_range": "range TLBIs"}[col] if v else f"no {col.replace('_', ' ')}"
    return str(v)


def _describe(col: str, v: Any) -> str:
    text = _value(col, v)
    return {"guest_size": f"{text} guest", "chunk": f"chunk {text}", "backing": f"backing {text}",
            "passes": f"{v} CLEAR passes", "writes": f"{v} writes", "seed": f"seed {v}",
            "preset": f"preset {v}", "measurement": f"{v}", "hot_pages": f"hot set {v} pages",
            "split_host_pages": f"split cache limit {v} pages", "profile": f"profile {v}"}.get(col, text)


def _setup(df: Any, shown: Sequence[str]) -> tuple[str, str]:
    """(what every run shares, what the plot aggregates over)."""
    fixed, varied = [], []
    for col in SETUP_COLUMNS:
        if col not in df.columns:
            continue
        vals = df[col].dropna().unique()
        if col in ("preset", "profile", "measurement") and set(map(str, vals)) <= {"", "workload"}:
            continue
        if len(vals) == 1:
            if col in ("fwb", "tlb_range") and not vals[0]:
                continue
            fixed.append(_describe(col, vals[0]))
        elif len(vals) > 1 and col not in shown:
            lo, hi = min(vals), max(vals)
            varied.append(f"{col} {_value(col, lo)}..{_value(col, hi)}" if col in ("guest_size", "seed", "writes")
                          else f"{len(vals)} {col} values")
    agg = f"median over {', '.join(varied)}" if varied else ""
    return ", ".join(fixed), agg


def _ylabel(metric: str) -> str:
    return f"% change in {METRIC_NAMES.get(metric, metric)} vs KERNEL"


def _panels(df: Any) -> list[tuple[str, Any]]:
    """One panel per backing (and per measurement of a preset table)."""
    keys = [c for c in ("preset", "measurement", "backing") if c in df.columns and df[c].nunique() > 1]
    if not keys:
        return [("", df)]
    return [(", ".join(_describe(k, v) for k, v in zip(keys, vals if isinstance(vals, tuple) else (vals,))), g)
            for vals, g in df.groupby(keys, sort=False)]


def _figure(n_panels: int, width: float, height: float = 4.2) -> tuple[Any, list]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if n_panels == 4 else min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = axes.ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _finish(fig: Any, title: str, setup: tuple[str, str], path: str, whiskers: bool = True) -> None:
    import matplotlib.pyplot as plt

    fixed, agg = setup
    sub = "\n".join(s for s in (fixed, agg + (" (whiskers: min-max)" if whiskers else "") if agg else "") if s)
    fig.suptitle(title + ("\n" + sub if sub else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _agg(pc: Any, by: list[str]) -> Any:
    return pc.groupby(by, sort=False, dropna=False).agg(median=("pct", "median"), lo=("pct", "min"), hi=("pct", "max"),
                                          identical=("identical", "all"), n=("pct", "size")).reset_index()


def plot_bars(df: Any, path: str, metric: str = "entries_read") -> None:
    """% change against KERNEL per phase: grouped bars, one per strategy,
    one panel per backing. Hatched bars: the final table differs."""
    from matplotlib.patches import Patch

    pc = pct_change(df, metric)
    strategies = _strategy_order(pc["strategy"])
    colors = _colors(strategies)
    panels = _panels(pc)
    fig, axes = _figure(len(panels), 5.5)
    any_diff = False
    for ax, (name, g) in zip(axes, panels):
        phases = _phase_order(g["phase"])
        a = _agg(g, ["phase", "strategy"]).set_index(["phase", "strategy"])
        width = 0.8 / len(strategies)
        for j, s in enumerate(strategies):
            xs, ys, err, hatch = [], [], [[], []], []
            for i, ph in enumerate(phases):
                if (ph, s) not in a.index:
                    continue
                r = a.loc[(ph, s)]
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(r["median"])
                err[0].append(r["median"] - r["lo"])
                err[1].append(r["hi"] - r["median"])
                hatch.append(not r["identical"])
            bars = ax.bar(xs, ys, width, color=colors[s], label=s, yerr=err if a["n"].max() > 1 else None,
                          capsize=2, error_kw={"elinewidth": 0.8})
            for b, h in zip(bars, hatch):
                if h:
                    b.set_hatch("xx")
                    b.set_edgecolor("black")
                    any_diff = True
        ax.axhline(0, color="black", linewidth=0.8)
        ax.use_sticky_edges = False          # room above and below the bars
        ax.margins(x=0.02, y=0.05)
        ax.set_xticks(range(len(phases)), phases, fontsize=8)
        ax.set_ylabel(_ylabel(metric), fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(color=colors[s], label=s) for s in strategies]
    if any_diff:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="xx", label=DIFF_NOTE))
    axes[0].legend(handles=handles, fontsize=7, loc="best")
    _finish(fig, f"{METRIC_NAMES.get(metric, metric).capitalize()} per phase, % change vs KERNEL (build excluded)",
            _setup(df, ["backing"]), path)


def plot_size(df: Any, path: str, metric: str = "entries_read") -> None:
    """% change against KERNEL over the whole run (build excluded) against
    guest size, log axis; one marker and line style per strategy. Red
    rings: the final table differs."""
    import matplotlib.ticker as mticker

    pc = pct_change(df, metric)
    pc = pc[pc["phase"] == "total"]
    strategies = _strategy_order(pc["strategy"])
    colors = _colors(strategies)
    panels = _panels(pc)
    fig, axes = _figure(len(panels), 6.0)
    for ax, (name, g) in zip(axes, panels):
        a = _agg(g, ["strategy", "guest_size"])
        ringed = False
        for j, s in enumerate(strategies):
            r = a[a["strategy"] == s].sort_values("guest_size")
            if r.empty:
                continue
            x = r["guest_size"].to_numpy(float)
            ax.errorbar(x, r["median"], yerr=[r["median"] - r["lo"], r["hi"] - r["median"]] if r["n"].max() > 1
                        else None, marker=MARKERS[j % len(MARKERS)], linestyle=LINESTYLES[j % len(LINESTYLES)],
                        color=colors[s], label=s, markersize=6, capsize=2, linewidth=1.2)
            bad = ~r["identical"].to_numpy(bool)
            if bad.any():
                ax.scatter(x[bad], r["median"].to_numpy()[bad], s=160, facecolors="none", edgecolors="red",
                           linewidths=1.5, zorder=5, label=None if ringed else DIFF_NOTE)
                ringed = True
        sizes = sorted(g["guest_size"].unique())
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(mticker.FixedLocator([float(v) for v in sizes]))
        ax.xaxis.set_major_formatter(mticker.FixedFormatter([format_size(int(v)) for v in sizes]))
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("guest size (log scale)")
        ax.set_ylabel(_ylabel(metric) + ", whole run", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    _finish(fig, f"{METRIC_NAMES.get(metric, metric).capitalize()}: % change vs KERNEL against guest size "
                 f"(all phases but the build)", _setup(df, ["guest_size", "backing"]), path)


def plot_heatmap(df: Any, path: str, metric: str = "entries_read", param: Optional[str] = None) -> None:
    """Strategy x ``param``: each cell the median % change against KERNEL
    over the whole run; "≠" marks a final table that differs."""
    import numpy as np

    pc = pct_change(df, metric)
    pc = pc[pc["phase"] == "total"]
    if param is None:
        varied = [c for c in SETUP_COLUMNS if c in pc.columns and c != "seed" and pc[c].nunique() > 1]
        param = varied[0] if varied else "guest_size"
    if param not in pc.columns:
        raise ValueError(f"param {param!r} is not a parameter column of the table")
    strategies = _strategy_order(pc["strategy"])
    values = sorted(pc[param].dropna().unique())
    a = _agg(pc, ["strategy", param]).set_index(["strategy", param])
    grid = np.full((len(strategies), len(values)), np.nan)
    differs = np.zeros(grid.shape, dtype=bool)
    for i, s in enumerate(strategies):
        for j, v in enumerate(values):
            if (s, v) in a.index:
                grid[i, j] = a.loc[(s, v), "median"]
                differs[i, j] = not a.loc[(s, v), "identical"]
    fig, (ax,) = _figure(1, max(8.0, 1.1 * len(values) + 3.0), 0.45 * len(strategies) + 2.4)
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    for i in range(len(strategies)):
        for j in range(len(values)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.1f}%" + (" ≠" if differs[i, j] else ""), ha="center", va="center",
                        fontsize=8, color="white" if abs(grid[i, j]) > 0.6 * lim else "black",
                        fontweight="bold" if differs[i, j] else "normal")
    ax.set_xticks(range(len(values)), [_value(param, v) for v in values], fontsize=8)
    ax.set_yticks(range(len(strategies)), strategies, fontsize=8)
    ax.set_xlabel(param)
    fig.colorbar(im, ax=ax, label=_ylabel(metric))
    title = f"{_ylabel(metric)}, whole run, by strategy and {param}"
    if differs.any():
        title += f" (≠: {DIFF_NOTE})"
    _finish(fig, title, _setup(df, [param]), path, whiskers=False)


def plot(df: Any, path: str, kind: str, metric: str = "entries_read", param: Optional[str] = None) -> None:
    """Draw ``kind`` (bars, size or heatmap) of a results table to ``path``
    (.png or .svg)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"plot file {path!r}: the name must end in .png or .svg")
    if param is not None and kind != "heatmap":
        raise ValueError("param applies to the heatmap only")
    if kind == "bars":
        plot_bars(df, path, metric)
    elif kind == "size":
        plot_size(df, path, metric)
    else:
        plot_heatmap(df, path, metric, param)
