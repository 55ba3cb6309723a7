"""Fit a profile to measured times of experiments s2fast can run.

A measurement file is CSV (lines starting with ``#`` are comments) with a
header and one row per measurement:

* the experiment: ``preset`` (``s2fast presets``), or the workload fields
  ``guest_size, backing, chunk, initially_set, passes, granule`` (and
  optionally ``writes, pattern, seed``; with a preset, only ``chunk,
  passes, writes, pattern, seed`` may be given, as overrides);
* ``strategy`` (a ``Strategy`` name) and ``phase``: ``enable``, ``clear``
  (every CLEAR pass of the run), ``total`` or a named phase of the run
  (``clear 1``, ``writes 2``, ...). With a preset, ``enable`` is measured
  on its enable workload (not initially-all-set) and every other phase on
  its CLEAR workload (initially-all-set);
* the time: ``seconds``, or ``pct_change`` (this strategy against KERNEL in
  the same experiment; no KERNEL row needed);
* free text: ``source``, ``note``, ``label``.

The fit. Unknowns are the costs relative to a starting profile,
``x = cost / prior_cost``. Each ``seconds`` row gives ``sum(n x c0) / t = 1``
(a relative residual); each ``pct_change`` row p is the ratio
``T_s = (1 + p/100) T_kernel``, linear in the costs:
``sum((n_s - (1 + p/100) n_kernel) x c0) / T_kernel(prior) = 0``, whose
residual is the error in percentage points / 100 (scaled by how far the
fitted KERNEL time is from the prior's). Ridge rows ``sqrt(w) (x - 1) = 0``
pull every cost toward the starting profile: with the default
``prior_weight`` 1e-4 a cost moving by 100% of its prior value weighs as
much as one percentage point (or 1%) of misfit in one row. The solve is
bounded least squares (costs >= 0, scipy's ``lsq_linear``).

pct_change rows fix ratios only: the time scale of a profile fitted to them
alone is the prior's (the report says so)."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from .events import EVENT_NAMES, events
from .model import Profile, load_profile, pct_change

WORKLOAD_FIELDS = ("guest_size", "backing", "chunk", "initially_set", "passes", "granule", "writes", "pattern",
                   "seed")
PRESET_OVERRIDES = ("chunk", "passes", "writes", "pattern", "seed")
TEXT_FIELDS = ("source", "note", "label")
COLUMNS = ("preset",) + WORKLOAD_FIELDS + ("strategy", "phase", "seconds", "pct_change") + TEXT_FIELDS
DEFAULT_PRIOR_WEIGHT = 1e-4


class MeasurementError(ValueError):
    """A bad measurement file; the message names the file, row and field."""


@dataclass(frozen=True)
class Measurement:
    """One row of a measurement file: an experiment s2fast can run and its time."""

    row: int                  # line number in the file (1: the header)
    workload: Any             # s2fast.Workload
    strategy: Any             # s2fast.Strategy
    phase: str
    seconds: Optional[float] = None
    pct_change: Optional[float] = None
    label: str = ""

    @property
    def kind(self) -> str:
        return "seconds" if self.seconds is not None else "pct_change"

    @property
    def value(self) -> float:
        return self.seconds if self.seconds is not None else self.pct_change  # type: ignore[return-value]


def _bool_field(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "y"):
        return True
    if s in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"{v!r} is not true or false")


def _int_field(v: str) -> int:
    s = v.strip()
    if not s.isdigit():
        raise ValueError(f"{v!r} is not a non-negative integer")
    return int(s)


def _float_field(name: str, v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a number") from None
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"{v!r} is not a finite number")
    if name == "seconds" and x <= 0:
        raise ValueError(f"{v!r} is not a positive time")
    if name == "pct_change" and x <= -100:
        raise ValueError(f"{v!r} is not above -100 (a strategy cannot take no time)")
    return x


def _phase_ok(phase: str, workload: Any) -> bool:
    return phase in ("enable", "clear", "total") or phase in workload.phase_names()


def read_measurements(path: Union[str, os.PathLike]) -> list[Measurement]:
    """Parse and check a measurement CSV; every error names the file, the
    row (line number) and the field."""
    from ..presets import PRESETS
    from ..sizes import parse_size
    from ..strategy import as_strategy as _strategy
    from ..workload import Workload

    path = os.fspath(path)
    try:
        with open(path, newline="") as f:
            text = f.read()
    except OSError as e:
        raise MeasurementError(f"{path}: cannot read the measurements: {e.strerror}") from None
    except UnicodeDecodeError:
        raise MeasurementError(f"{path}: not a CSV file (not text)") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise MeasurementError(f"{path}: no header and no rows")
    try:
        table = list(csv.reader([ln for _, ln in lines], strict=True))
    except csv.Error as e:
        raise MeasurementError(f"{path}: not a CSV file: {e}") from None
    header = [h.strip() for h in table[0]]
    hline = lines[0][0]
    if len(header) < 3:
        raise MeasurementError(f"{path}: row {hline}: not a CSV header with strategy, phase and seconds "
                               f"or pct_change (got {table[0]!r})")
    for h in header:
        if h not in COLUMNS:
            raise MeasurementError(f"{path}: row {hline}: column {h!r} is not one of {', '.join(COLUMNS)}")
    if len(set(header)) != len(header):
        raise MeasurementError(f"{path}: row {hline}: a column is named twice")
    for need in ("strategy", "phase"):
        if need not in header:
            raise MeasurementError(f"{path}: row {hline}: no {need} column")
    if "seconds" not in header and "pct_change" not in header:
        raise MeasurementError(f"{path}: row {hline}: no seconds or pct_change column")
    if "preset" not in header and "guest_size" not in header:
        raise MeasurementError(f"{path}: row {hline}: no preset column and no workload fields (guest_size, ...)")
    out = []
    for (line, _), cells in zip(lines[1:], table[1:]):
        if len(cells) != len(header):
            raise MeasurementError(f"{path}: row {line}: {len(cells)} fields, the header has {len(header)}")
        r = {h: c.strip() for h, c in zip(header, cells)}
        where = f"{path}: row {line}"

        def bad(name: str, msg: str) -> MeasurementError:
            return MeasurementError(f"{where}: {name}: {msg}")

        given = {k: r[k] for k in WORKLOAD_FIELDS if r.get(k)}
        parsed: dict[str, Any] = {}
        for k, v in given.items():
            try:
                if k in ("guest_size", "chunk"):
                    parsed[k] = parse_size(v)
                elif k == "granule":
                    parsed[k] = parse_size(v)
                elif k == "initially_set":
                    parsed[k] = _bool_field(v)
                elif k in ("passes", "writes", "seed"):
                    parsed[k] = _int_field(v)
                else:
                    parsed[k] = v
            except (ValueError, TypeError) as e:
                raise bad(k, str(e)) from None
        phase = r.get("phase", "")
        if not phase:
            raise bad("phase", "missing")
        preset = r.get("preset", "")
        try:
            if preset:
                if preset not in PRESETS:
                    raise bad("preset", f"{preset!r} is not one of {', '.join(PRESETS)}")
                extra = [k for k in parsed if k not in PRESET_OVERRIDES]
                if extra:
                    raise bad(extra[0], f"cannot be given with a preset (it fixes {extra[0]}); "
                                        f"overrides allowed: {', '.join(PRESET_OVERRIDES)}")
                p = PRESETS[preset]
                workload = p.enable_workload(**parsed) if phase == "enable" else p.clear_workload(**parsed)
            else:
                if "guest_size" not in parsed:
                    raise bad("preset", "missing (or give the workload: guest_size, backing, ...)")
                workload = Workload(**parsed)
        except MeasurementError:
            raise
        except (ValueError, TypeError) as e:
            raise MeasurementError(f"{where}: workload: {e}") from None
        if not _phase_ok(phase, workload):
            raise bad("phase", f"{phase!r} is not enable, clear, total or a phase of the run "
                               f"({', '.join(workload.phase_names())})")
        if not r.get("strategy"):
            raise bad("strategy", "missing")
        try:
            strategy = _strategy(r["strategy"])
        except (ValueError, TypeError) as e:
            raise bad("strategy", str(e)) from None
        sec, pct = r.get("seconds", ""), r.get("pct_change", "")
        if sec and pct:
            raise bad("seconds", "give seconds or pct_change, not both")
        if not sec and not pct:
            raise bad("seconds" if "seconds" in header else "pct_change", "missing time")
        try:
            seconds = _float_field("seconds", sec) if sec else None
        except ValueError as e:
            raise bad("seconds", str(e)) from None
        try:
            pctv = _float_field("pct_change", pct) if pct else None
        except ValueError as e:
            raise bad("pct_change", str(e)) from None
        if pctv is not None and strategy.name == "KERNEL":
            raise bad("pct_change", "is against KERNEL: a KERNEL row needs seconds")
        label = r.get("label") or (f"{preset} {strategy.name} {phase}" if preset else
                                   f"{workload.guest_size >> 30}G {workload.backing} {strategy.name} {phase}")
        out.append(Measurement(line, workload, strategy, phase, seconds, pctv, label))
    if not out:
        raise MeasurementError(f"{path}: a header but no measurement rows")
    return out


# ---------------------------------------------------------------------------
# Counts of experiments

_RUNS: dict[Any, Any] = {}


def run_counts(workload: Any, strategy: Any) -> list[Any]:
    """The phases of ``workload`` under ``strategy`` (cached: runs are
    deterministic)."""
    key = (workload, strategy)
    if key not in _RUNS:
        _RUNS[key] = workload.run(strategy).phases
    return _RUNS[key]


def phase_counts(phases: Sequence[Any], phase: str) -> dict[str, int]:
    """Counts of one named phase, every CLEAR pass ("clear"), or all ("total")."""
    out: dict[str, int] = {}
    for p in phases:
        if phase == "total" or p.name == phase or (phase == "clear" and p.name.startswith("clear ")):
            for k, v in p.counts.items():
                out[k] = out.get(k, 0) + v
    return out


def event_vector(m: Measurement, strategy: Any = None) -> np.ndarray:
    c = phase_counts(run_counts(m.workload, strategy or m.strategy), m.phase)
    ev = events(c)
    return np.array([ev[k] for k in EVENT_NAMES], dtype=float)


def predict(m: Measurement, profile: Profile) -> float:
    """The profile's prediction of a measurement: seconds, or % change."""
    from ..variants import Strategy
    c = np.array([profile.costs[k] for k in EVENT_NAMES]) * 1e-9
    t = float(event_vector(m) @ c)
    if m.kind == "seconds":
        return t
    return pct_change(t, float(event_vector(m, Strategy.KERNEL) @ c))


# ---------------------------------------------------------------------------
# The fit

@dataclass
class RowFit:
    measurement: Measurement
    fitted: float
    loo: Optional[float]

    @property
    def error(self) -> float:
        """Points for pct_change rows, % for seconds rows."""
        return _err(self.measurement, self.fitted)

    @property
    def loo_error(self) -> Optional[float]:
        return None if self.loo is None else _err(self.measurement, self.loo)


def _err(m: Measurement, pred: float) -> float:
    if m.kind == "pct_change":
        return pred - m.value
    return 100.0 * (pred / m.value - 1.0)


@dataclass
class Calibration:
    """A fitted profile with the fit of every row, leave-one-out
    predictions, and what the data could not identify."""

    profile: Profile
    prior: Profile
    rows: list[RowFit]
    exercised: list[str]
    unidentified: list[str]
    collinear: list[list[str]]
    rank: int
    condition: float
    scale_free: bool
    notes: list[str] = field(default_factory=list)

    @property
    def loo_mae(self) -> Optional[float]:
        errs = [abs(r.loo_error) for r in self.rows if r.loo_error is not None]
        return sum(errs) / len(errs) if errs else None

    def report(self) -> str:
        out = []
        head = f"{'row':>4}  {'measurement':<34} {'measured':>10} {'fitted':>10} {'error':>8} {'LOO':>10} {'LOO err':>8}"
        out += [head, "-" * len(head)]
        for r in self.rows:
            m = r.measurement
            unit = "%" if m.kind == "pct_change" else "s"
            fmt = (lambda v: f"{v:+.2f}%") if unit == "%" else (lambda v: f"{v:.4g}s")
            eu = "pt" if unit == "%" else "%"
            loo = "-" if r.loo is None else fmt(r.loo)
            le = "-" if r.loo_error is None else f"{r.loo_error:+.2f}{eu}"
            out.append(f"{m.row:>4}  {m.label[:34]:<34} {fmt(m.value):>10} {fmt(r.fitted):>10} "
                       f"{r.error:+.2f}{eu:<2} {loo:>10} {le:>8}")
        mae = self.loo_mae
        out.append("")
        if mae is not None:
            out.append(f"leave-one-out mean absolute error: {mae:.2f} "
                       f"({'points' if all(r.measurement.kind == 'pct_change' for r in self.rows) else 'points / %'})")
        out.append(f"events exercised: {len(self.exercised)} of {len(EVENT_NAMES)}; directions the data fix "
                   f"(weigh on 100x more than the prior): {self.rank}, condition number {self.condition:.3g}")
        if self.scale_free:
            out.append("only pct_change rows: they fix ratios of costs; the time scale is the prior's "
                       f"({self.prior.name})")
        if self.unidentified:
            out.append("not identified by the data (the prior decides): " + ", ".join(self.unidentified))
        if self.collinear:
            out.append("collinear events:")
        for g in self.collinear:
            out.append("  proportional in every row (only their sum is fitted): " + " + ".join(g))
        not_ex = [k for k in EVENT_NAMES if k not in self.exercised]
        if not_ex:
            out.append("not exercised (kept from the prior): " + ", ".join(not_ex))
        out += self.notes
        return "\n".join(out)


def _design(ms: Sequence[Measurement], c0: np.ndarray) -> np.ndarray:
    """One row per measurement in x = cost / c0 (see the module doc)."""
    from ..variants import Strategy
    rows = []
    for m in ms:
        n = event_vector(m)
        if m.kind == "seconds":
            rows.append(n * c0 * 1e-9 / m.value)
        else:
            nk = event_vector(m, Strategy.KERNEL)
            tk0 = float(nk @ c0) * 1e-9
            rows.append((n - (1 + m.value / 100) * nk) * c0 * 1e-9 / tk0)
    return np.array(rows)


def _targets(ms: Sequence[Measurement]) -> np.ndarray:
    return np.array([1.0 if m.kind == "seconds" else 0.0 for m in ms])


def _solve(A: np.ndarray, b: np.ndarray, x0: np.ndarray, weight: float) -> np.ndarray:
    from scipy.optimize import lsq_linear
    k = len(x0)
    s = math.sqrt(weight)
    AA = np.vstack([A, s * np.eye(k)])
    bb = np.concatenate([b, s * x0])
    return lsq_linear(AA, bb, bounds=(0.0, np.inf), method="bvls").x


def _identifiability(A: np.ndarray, names: Sequence[str], weight: float, x: Optional[np.ndarray] = None):
    """Rank, condition number, events not identified, and proportional
    groups among the events the data exercise. A direction of the relative
    costs is identified when the data weigh on it at least 100 times more
    than the prior does (singular value of the design matrix >= 10 x
    sqrt(prior_weight)); an event is not identified when a sizeable part of
    its own direction is not. With ``x`` (pct_change rows only), the overall
    scale, which such rows cannot fix, is taken out first: what remains are
    the ratios the data do not fix."""
    norms = np.linalg.norm(A, axis=0)
    ex = [i for i in range(A.shape[1]) if norms[i] > 0]
    if not ex:
        return 0, float("inf"), [], [], []
    _, s, vt = np.linalg.svd(A[:, ex], full_matrices=True)
    rank = int((s > 10 * math.sqrt(weight)).sum())
    cond = float(s[0] / s[rank - 1]) if rank else float("inf")
    An = A[:, ex] / norms[ex]
    null = vt[rank:]                     # directions the data do not see
    if x is not None and null.size:
        y = x[ex]
        y = y / (np.linalg.norm(y) or 1.0)
        proj = null - np.outer(null @ y, y)
        u, sv, w = np.linalg.svd(proj, full_matrices=False)
        null = w[sv > 0.5]
    # an event is identified when its own direction lies (almost) wholly in
    # what the data see
    unident = [names[i] for j, i in enumerate(ex) if null.size and np.linalg.norm(null[:, j]) > 0.3]
    # proportional columns: the data only ever see their weighted sum
    groups: list[list[str]] = []
    cos = An.T @ An
    seen: set[int] = set()
    for j in range(len(ex)):
        if j in seen:
            continue
        g = [k for k in range(len(ex)) if k not in seen and abs(cos[j, k]) > 0.999]
        if len(g) > 1:
            groups.append([names[ex[k]] for k in g])
            seen.update(g)
    return rank, cond, [names[i] for i in ex], unident, groups


def calibrate(measurements: Union[str, os.PathLike, Sequence[Measurement]], prior: Any = None, *,
              prior_weight: float = DEFAULT_PRIOR_WEIGHT, name: Optional[str] = None,
              loo: bool = True) -> Calibration:
    """Fit a profile to measurements (a CSV path or ``read_measurements()``
    rows), starting from and regularised toward ``prior`` (a profile name,
    path or Profile; default generic). Returns a Calibration; its
    ``profile`` carries a source for every cost."""
    if isinstance(measurements, (str, os.PathLike)):
        src = os.path.basename(os.fspath(measurements))
        ms = read_measurements(measurements)
    else:
        ms = list(measurements)
        src = "the given measurements"
        if not ms or not all(isinstance(m, Measurement) for m in ms):
            raise TypeError("measurements must be a CSV path or a non-empty list of Measurement")
    if isinstance(prior_weight, bool) or not isinstance(prior_weight, (int, float)) or not prior_weight > 0 \
            or math.isinf(prior_weight):
        raise ValueError(f"prior_weight {prior_weight!r} is not a positive number")
    p0 = load_profile(prior)
    c0_raw = np.array([p0.costs[k] for k in EVENT_NAMES])
    scale = np.where(c0_raw > 0, c0_raw, 1.0)       # an event the prior prices at 0 is fitted in ns
    x0 = c0_raw / scale
    A = _design(ms, scale)
    b = _targets(ms)
    x = _solve(A, b, x0, prior_weight)
    scale_free = all(m.kind == "pct_change" for m in ms)
    rank, cond, exercised, unident, groups = _identifiability(A, EVENT_NAMES, prior_weight,
                                                              x if scale_free else None)
    costs = dict(zip(EVENT_NAMES, (x * scale).tolist()))
    sources = {}
    for k in EVENT_NAMES:
        if k not in exercised:
            sources[k] = f"{p0.name} (not exercised by {src}): {p0.sources.get(k, '')}"
        elif k in unident:
            sources[k] = f"fitted to {src}, but not identified by it alone (prior {p0.name}: {p0.costs[k]:g} ns)"
        else:
            sources[k] = f"fitted to {src}"
    pname = name or (os.path.splitext(src)[0] if src != "the given measurements" else "fitted")
    prof = Profile(pname, costs, sources,
                   f"Fitted by s2fast calibrate to {src} ({len(ms)} rows), starting from {p0.name} with prior "
                   f"weight {prior_weight:g}.")
    fits = [predict(m, prof) for m in ms]
    loos: list[Optional[float]] = [None] * len(ms)
    if loo and len(ms) > 1:
        for i in range(len(ms)):
            keep = [j for j in range(len(ms)) if j != i]
            xi = _solve(A[keep], b[keep], x0, prior_weight)
            pi = Profile(pname, dict(zip(EVENT_NAMES, (xi * scale).tolist())))
            loos[i] = predict(ms[i], pi)
    return Calibration(prof, p0, [RowFit(m, f, lo) for m, f, lo in zip(ms, fits, loos)], exercised, unident,
                       groups, rank, cond, scale_free)
