"""Results as long tables: one row per (strategy, phase).

``comparison_records`` / ``preset_records`` turn a ``Comparison`` or a
``PresetResult`` into plain row dicts (no pandas: sweep workers build these),
``to_frame`` makes a pandas DataFrame of them with a fixed schema, and
``pct_change`` reads a table as % change against KERNEL, which is what the
plots draw. pandas is needed only by ``to_frame``, ``pct_change`` and the
``to_pandas()`` methods (``pip install 's2fast[sweep]'``)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .comparison import Comparison
    from .presets import PresetResult

#: the Workload fields, in table order (every one is a column)
WORKLOAD_COLUMNS = ("guest_size", "backing", "chunk", "passes", "initially_set", "writes", "pattern", "seed",
                    "base", "hot_pages", "fwb", "tlb_range", "split_host_pages", "ia_bits", "granule")
#: headline costs derived from the counts (vm.summarize()), beside every raw count
SUMMARY_COLUMNS = ("callbacks", "tlbis", "cmos")
#: columns that measure the run rather than describe it: they differ from one run to the next
TIMING_COLUMNS = ("wall_s", "peak_rss_bytes")
#: optional-integer Workload fields (None when not set)
_NULLABLE_INT = ("hot_pages", "split_host_pages")
_INT_COLUMNS = ("guest_size", "chunk", "passes", "writes", "seed", "base", "ia_bits", "granule")
_BOOL_COLUMNS = ("initially_set", "fwb", "tlb_range", "identical")
_STR_COLUMNS = ("key", "preset", "measurement", "backing", "pattern", "profile", "strategy", "phase", "outcome",
                "s2fast_version")


def workload_columns(w: Any) -> dict[str, Any]:
    """A Workload's fields as table values (the backing as its spec string)."""
    d = {f.name: getattr(w, f.name) for f in dataclasses.fields(w)}
    d["backing"] = str(d["backing"])
    return {k: d[k] for k in WORKLOAD_COLUMNS}


def comparison_records(cmp: "Comparison", measurement: str = "workload",
                       predict: Optional[Callable[[dict[str, int]], float]] = None) -> list[dict[str, Any]]:
    """One dict per (strategy, phase), build included: the workload's
    fields, every count, the headline costs, predicted seconds
    (``predict(counts)``; NaN without it), the phase's wall time, and
    whether the strategy's final table is KERNEL's (with the difference)."""
    from .workload import summarize

    if predict is None and getattr(cmp, "profile", None) is not None:
        from .cost.model import load_profile
        predict = load_profile(cmp.profile).seconds
    params = workload_columns(cmp.workload)
    out = []
    for s, r in cmp.results.items():
        d = cmp.diffs[s]
        for p in [r.build] + r.phases:
            s_ = summarize(p.counts)
            row: dict[str, Any] = {"measurement": measurement, **params, "strategy": s.name, "phase": p.name}
            row.update(p.counts)
            row.update(callbacks=s_["callbacks"], tlbis=s_["tlbis"], cmos=s_["cmos"])
            row.update(predicted_s=predict(p.counts) if predict else float("nan"), wall_s=p.wall_s,
                       identical=d.identical, outcome=d.describe())
            out.append(row)
    return out


def preset_records(res: "PresetResult",
                   predict: Optional[Callable[[dict[str, int]], float]] = None) -> list[dict[str, Any]]:
    """A preset's two measurements ("enable", "clear"), each as
    ``comparison_records``, with the preset's name."""
    rows = comparison_records(res.enable, "enable", predict) + comparison_records(res.clear, "clear", predict)
    for r in rows:
        r["preset"] = res.preset.name
    return rows


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("tables need pandas: pip install 's2fast[sweep]'") from None
    return pd


def to_frame(records: list[dict[str, Any]], columns: Optional[list[str]] = None) -> "pd.DataFrame":
    """A DataFrame of row dicts with one schema whatever the rows hold:
    integers as int64 (nullable Int64 for optional fields), flags as bool,
    names as strings, times as float64."""
    return apply_schema(_pandas().DataFrame.from_records(records, columns=columns))


def apply_schema(df: "pd.DataFrame") -> "pd.DataFrame":
    """Give a table's columns their dtypes (after from_records, or reading
    back a file): the same table always has the same schema."""
    pd = _pandas()
    if "preset" in df.columns:
        df["preset"] = df["preset"].fillna("")
    for c in df.columns:
        if c in _NULLABLE_INT:
            df[c] = df[c].astype("Int64")
        elif c in _BOOL_COLUMNS:
            df[c] = df[c].astype(bool)
        elif c in _STR_COLUMNS:
            df[c] = df[c].astype(str)
        elif c in ("wall_s", "predicted_s"):
            df[c] = df[c].astype("float64")
        elif c in _INT_COLUMNS or pd.api.types.is_integer_dtype(df[c]):
            df[c] = df[c].astype("int64")
    return df


def comparison_frame(cmp: "Comparison") -> "pd.DataFrame":
    return to_frame(comparison_records(cmp))


def preset_frame(res: "PresetResult") -> "pd.DataFrame":
    rows = preset_records(res)
    cols = ["preset"] + [k for k in rows[0] if k != "preset"]
    return to_frame(rows, cols)


def pct_change(df: "pd.DataFrame", metric: str = "entries_read", *, total: bool = True) -> "pd.DataFrame":
    """Each strategy's ``metric`` as % change against KERNEL's in the same
    run (point, measurement and phase): negative is a saving. Rows of the
    build (the same under every strategy) are left out; with ``total``, a
    phase "total" sums the others. Returns the descriptive columns of the
    table plus ``pct`` and ``identical``; KERNEL's own rows are dropped."""
    pd = _pandas()
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} is not a column of the table")
    if df[metric].isna().any():
        raise ValueError(f"metric {metric!r} has no value in some rows (predicted_s needs a cost profile)")
    # a run: a sweep point's key, or (tables of comparisons) its workload
    ident = ("key",) if "key" in df.columns else WORKLOAD_COLUMNS + ("profile",)
    run = [c for c in ident + ("preset", "measurement") if c in df.columns]
    keep = run + [c for c in df.columns if c not in run and (c in WORKLOAD_COLUMNS or c == "profile")]
    d = df[df["phase"] != "build"]
    if total:
        tot = d.groupby(run + ["strategy"], sort=False, as_index=False, dropna=False).agg(
            {metric: "sum", **{c: "first" for c in keep if c not in run}, "identical": "all"})
        tot["phase"] = "total"
        d = pd.concat([d[tot.columns], tot], ignore_index=True)
    kernel = d[d["strategy"] == "KERNEL"][run + ["phase", metric]].rename(columns={metric: "_kernel"})
    m = d[d["strategy"] != "KERNEL"].merge(kernel, on=run + ["phase"], how="left")
    if m["_kernel"].isna().any():
        raise ValueError("the table has runs without a KERNEL row to compare against")
    k = m["_kernel"].to_numpy("float64")
    v = m[metric].to_numpy("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        # a phase KERNEL does nothing in: 0% if the strategy does nothing either
        m["pct"] = np.where(k != 0, 100.0 * (v - k) / k, np.where(v != 0, np.inf, 0.0))
    return m[keep + ["strategy", "phase", "pct", "identical"]]
