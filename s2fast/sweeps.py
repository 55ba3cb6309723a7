"""Design-space sweeps: a grid of experiments, one task per point, one long table.

A grid names parameter lists (``Workload`` fields, ``preset`` with its
overrides, ``strategy``, ``profile``); a scalar is one value for every point.
The sweep expands the product of the lists into points, skips invalid
combinations with the reason the workload layer gives (e.g. a 1 GiB chunk on
a 64 KiB host), and runs each point as one independent task: ``compare()``
of its workload under the grid's strategies (KERNEL always first, the
reference for the final-table check), or ``run_preset()``.

Tasks run on local processes (all cores, the default), a Dask cluster
(``dask.distributed.Client``) or any ``concurrent.futures.Executor``.
Workers return plain row dicts; only the calling process needs pandas.

The result is one long table (``results.comparison_records``): a row per
(point, measurement, strategy, phase) with every count. With an output file
(Parquet or CSV) the sweep is resumable: each point is keyed by a hash of its
normalised parameters, its strategies, its profile and the s2fast version;
points already in the file are not run again, and the file is rewritten
atomically as points finish, so an interrupted sweep leaves a complete table
of the points done so far."""
from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import __version__
from .results import WORKLOAD_COLUMNS, comparison_records, preset_records, to_frame, workload_columns
from .variants import Strategy
from .comparison import compare
from .hostrules import host_rules
from .presets import PRESETS, run_preset
from .sizes import parse_size
from .strategy import as_strategy as _strategy
from .workload import PATTERNS, Workload, _pattern

#: a grid of more points than this needs ``max_points=None`` (``--yes``)
DEFAULT_MAX_POINTS = 500
#: the preset overrides run_preset() accepts; every other Workload field is fixed by the preset
PRESET_OVERRIDES = ("chunk", "passes", "writes", "pattern", "seed")
SIZE_FIELDS = ("guest_size", "chunk", "base")
INT_FIELDS = ("passes", "writes", "seed", "hot_pages", "split_host_pages", "ia_bits")
BOOL_FIELDS = ("initially_set", "fwb", "tlb_range")
#: every key a grid may name
GRID_FIELDS = WORKLOAD_COLUMNS + ("preset", "strategy", "profile")
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class GridError(ValueError):
    """A bad grid: unknown field, empty list, bad value. The message names the key."""


class GridTypeError(GridError, TypeError):
    """A grid value of the wrong type (a TypeError too)."""


# ---------------------------------------------------------------------------
# The grid

def load_grid(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a grid file (TOML): top-level keys are grid fields."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{path}: not a TOML grid file: {e}") from None


def _check_value(key: str, v: Any) -> Any:
    """One grid value, checked on its own (type, and what does not depend
    on other fields) and normalised; GridError names the key."""
    def bad_type(want: str) -> GridTypeError:
        return GridTypeError(f"grid: {key}: {v!r} is a {type(v).__name__}, not {want}")

    try:
        if key in SIZE_FIELDS:
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise bad_type("a size (an integer of bytes or a string like '64G')")
            return parse_size(v)
        if key in INT_FIELDS:
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad_type("an integer")
            if v < 0:
                raise GridError(f"grid: {key}: {v} is negative")
            return v
        if key in BOOL_FIELDS:
            if not isinstance(v, bool):
                raise bad_type("true or false")
            return v
        if key == "granule":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise bad_type("a page size (4K, 16K or 64K)")
            return host_rules(v).granule
        if key == "backing":
            if not isinstance(v, (str, dict)):
                raise bad_type("a backing such as '1g', '2m', '4k' or 'mix:1g=50,2m=50'")
            return v
        if key == "pattern":
            if not isinstance(v, str):
                raise bad_type(f"one of {', '.join(PATTERNS)}")
            return _pattern(v)
        if key == "strategy":
            if not isinstance(v, str):
                raise bad_type("a strategy name")
            return _strategy(v).name
        if key == "preset":
            if not isinstance(v, str):
                raise bad_type("a preset name")
            if v not in PRESETS:
                raise GridError(f"grid: preset: {v!r} is not one of {', '.join(PRESETS)}")
            return v
        if key == "profile":
            if not isinstance(v, str):
                raise bad_type("a cost profile name or file")
            return v
    except GridError:
        raise
    except (ValueError, TypeError) as e:
        raise GridError(f"grid: {key}: {e}") from None
    raise AssertionError(key)


@functools.lru_cache(maxsize=None)
def _profile(name: str) -> Any:
    from .cost.model import load_profile
    return load_profile(name)


def _predict(profile: str, counts: Mapping[str, int]) -> float:
    """Predicted seconds of one phase's counts under a cost profile
    (s2fast.cost): the one place the sweep calls the cost model."""
    return float(_profile(profile).seconds(counts))


@dataclass(frozen=True)
class Point:
    """One experiment: ``params`` are the grid's values for it (normalised),
    ``label`` them as the grid wrote them; ``key`` hashes the full workload
    after defaults (so "2M" and 2097152 are one point), the strategies,
    the profile and the s2fast version."""

    index: int
    key: str
    label: str
    params: tuple[tuple[str, Any], ...]
    strategies: tuple[str, ...]
    profile: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Skipped:
    """A combination that is not a valid experiment, and why."""

    label: str
    reason: str


@dataclass(frozen=True)
class Failure:
    """A point whose task raised, or whose worker died."""

    point: Point
    error: str


class Grid:
    """A checked grid: ``axes`` (field -> list of values, in file order),
    the ``strategies`` every point runs (KERNEL first) and the cost
    ``profiles``. ``points()`` expands it."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise GridTypeError(f"grid must be a mapping of field -> list of values, not {type(spec).__name__}")
        axes: dict[str, list[Any]] = {}
        self.raw: dict[str, list[Any]] = {}
        for key, values in spec.items():
            if key not in GRID_FIELDS:
                raise GridError(f"grid: unknown field {key!r} (fields: {', '.join(GRID_FIELDS)})")
            if isinstance(values, (list, tuple)):
                if not values and key != "profile":
                    raise GridError(f"grid: {key}: the list is empty (give at least one value)")
                values = list(values)
            else:
                values = [values]
            if key == "strategy" and values == ["all"]:
                values = [s.name for s in Strategy]
            self.raw[key] = values
            checked = [_check_value(key, v) for v in values]
            if key == "strategy":
                if len(set(checked)) != len(checked):
                    raise GridError(f"grid: strategy: {values!r} names a strategy twice")
            axes[key] = checked
        self.strategies = tuple(["KERNEL"] + [s for s in axes.pop("strategy", [s.name for s in Strategy])
                                              if s != "KERNEL"])
        self.raw.pop("strategy", None)
        self.profiles = axes.pop("profile", [])
        if self.profiles:
            for prof in self.profiles:        # a bad profile is a bad grid, found before anything runs
                try:
                    _profile(prof)
                except (OSError, ValueError, TypeError) as e:
                    raise GridError(f"grid: profile: {e}") from None
        if "preset" in axes:
            fixed = [k for k in axes if k != "preset" and k not in PRESET_OVERRIDES]
            if fixed:
                raise GridError(f"grid: {fixed[0]} cannot be combined with preset (the preset fixes it; a preset "
                                f"takes {', '.join(PRESET_OVERRIDES)})")
        if "backing" in axes:     # a backing no host in the grid accepts is a bad value, not a skip
            granules = axes.get("granule", [4096])
            from .memslot import Backing
            for v in axes["backing"]:
                errors = []
                for g in granules:
                    try:
                        Backing.parse(v, g)
                        break
                    except (ValueError, TypeError) as e:
                        errors.append(e)
                else:
                    raise GridError(f"grid: backing: {errors[0]}")
        self.axes = axes

    def size(self) -> int:
        """Points before invalid combinations are skipped."""
        return math.prod(len(v) for v in self.axes.values()) * max(1, len(self.profiles))

    def points(self) -> tuple[list[Point], list[Skipped]]:
        """The valid points in grid order (the last field varies fastest),
        and the skipped combinations with their reasons."""
        keys = list(self.axes)
        points: list[Point] = []
        skipped: list[Skipped] = []
        seen: dict[str, str] = {}
        profiles = self.profiles or [""]
        for combo in itertools.product(*(range(len(self.axes[k])) for k in keys)):
            values = {k: self.axes[k][i] for k, i in zip(keys, combo)}
            label = ", ".join(f"{k}={self.raw[k][i]}" for k, i in zip(keys, combo))
            try:
                spec = self._spec(values)
            except (ValueError, TypeError) as e:
                skipped.append(Skipped(label, str(e)))
                continue
            for prof in profiles:
                lab = label + (f", profile={prof}" if self.profiles else "")
                key = point_key(spec, self.strategies, prof)
                if key in seen:
                    skipped.append(Skipped(lab, f"the same experiment as {seen[key]}"))
                    continue
                seen[key] = lab
                points.append(Point(len(points), key, lab, tuple(values.items()), self.strategies, prof))
        return points, skipped

    @staticmethod
    def _spec(values: Mapping[str, Any]) -> dict[str, Any]:
        """The point's full, normalised description (raises for an invalid
        combination, with the workload layer's message)."""
        if "preset" in values:
            p = PRESETS[values["preset"]]
            over = {k: v for k, v in values.items() if k != "preset"}
            return {"preset": p.name, "enable": workload_columns(p.enable_workload(**over)),
                    "clear": workload_columns(p.clear_workload(**over))}
        return workload_columns(Workload(**values))


def point_key(spec: Mapping[str, Any], strategies: Iterable[str], profile: str = "") -> str:
    """The resume key: a hash of the point's normalised parameters, its
    strategies, its profile and the s2fast version."""
    text = json.dumps({"spec": spec, "strategies": list(strategies), "profile": profile,
                       "s2fast": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------
# One task

def _reset_peak_rss() -> None:
    try:   # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """This process's peak resident set since the last reset, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_point(point: Point) -> list[dict[str, Any]]:
    """Run one point (in a worker): its rows, as plain dicts."""
    _reset_peak_rss()
    kw = point.kwargs
    predict = (lambda counts: _predict(point.profile, counts)) if point.profile else None
    if "preset" in kw:
        preset = kw.pop("preset")
        rows = preset_records(run_preset(preset, point.strategies, **kw), predict)
    else:
        rows = comparison_records(compare(Workload(**kw), point.strategies), predict=predict)
        for r in rows:
            r["preset"] = ""
    peak = _peak_rss()
    for r in rows:
        r.update(key=point.key, profile=point.profile, peak_rss_bytes=peak, s2fast_version=__version__)
    return rows


#: the table's leading columns, in order (the counts follow)
LEAD_COLUMNS = ("key", "point", "preset", "measurement") + WORKLOAD_COLUMNS + ("profile", "strategy", "phase")
TAIL_COLUMNS = ("predicted_s", "wall_s", "peak_rss_bytes", "identical", "outcome", "s2fast_version")


def _order(rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]
    mid = [k for k in first if k not in LEAD_COLUMNS and k not in TAIL_COLUMNS]
    return list(LEAD_COLUMNS) + mid + list(TAIL_COLUMNS)


# ---------------------------------------------------------------------------
# Executors

class SerialExecutor(cf.Executor):
    """Runs each task in the calling process when it is submitted (for
    debugging, and a reference for the parallel runs)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            f.set_exception(e)
        return f


def _worker_init(init: Optional[Callable[..., Any]], args: tuple) -> None:
    # Ctrl-C on a terminal reaches the whole process group: the parent
    # handles it (saves the table, stops the workers); workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is not None:
        init(*args)


@dataclass
class LocalProcesses:
    """The default executor: a pool of ``workers`` local processes (all
    cores by default). Unlike a pool passed in, the sweep rebuilds it if a
    worker dies, and reruns the points that were in flight, each alone, so
    that only the point that kills its worker is reported as failed.
    ``initializer(*initargs)`` runs in each worker as it starts."""

    workers: Optional[int] = None
    initializer: Optional[Callable[..., Any]] = None
    initargs: tuple = ()

    def __post_init__(self) -> None:
        if self.workers is None:
            self.workers = os.cpu_count() or 1
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, not {self.workers!r}")

    def make(self) -> cf.ProcessPoolExecutor:
        # forkserver: workers do not inherit the parent's threads (tqdm, Dask)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["s2fast.sweeps"])    # workers fork with s2fast imported
        return cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                      initargs=(self.initializer, self.initargs))


def _stop_pool(pool: cf.Executor) -> None:
    """Stop a pool we own at once: cancel what has not started and end the
    workers (their points are not saved and run again next time)."""
    terminate = getattr(pool, "terminate_workers", None)      # Python 3.14
    if terminate is not None:
        terminate()
        return
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _dask_client(obj: Any) -> bool:
    return hasattr(obj, "get_executor") and hasattr(obj, "scheduler_info")


def _window(executor: Any) -> int:
    """How many points to keep submitted at once."""
    n = None
    if _dask_client(executor):
        n = sum(executor.nthreads().values())
    elif isinstance(executor, SerialExecutor):
        return 1
    else:
        n = getattr(executor, "_max_workers", None)
    return 2 * max(1, n or os.cpu_count() or 1)


class _Runner:
    """Submits points, collects rows or failures; recovers from a dead
    worker when it owns the pool."""

    def __init__(self, executor: Any) -> None:
        self.local: Optional[LocalProcesses] = None
        if executor is None:
            executor = LocalProcesses()
        if isinstance(executor, LocalProcesses):
            self.local = executor
            self.pool: Any = executor.make()
            self.window = 2 * executor.workers
        elif _dask_client(executor):
            self.window = _window(executor)
            self.pool = executor.get_executor(pure=False)
        elif isinstance(executor, cf.Executor):
            self.pool = executor
            self.window = _window(executor)
        else:
            raise TypeError(f"executor must be None, an s2fast.sweep.LocalProcesses, a concurrent.futures.Executor "
                            f"or a dask.distributed.Client, not {type(executor).__name__}")
        self.inflight: dict[cf.Future, Point] = {}

    def run(self, points: list[Point], done: Callable[[Point, list], None],
            failed: Callable[[Point, str], None]) -> None:
        pending = deque(points)
        suspects: deque[Point] = deque()      # in flight when a worker died: rerun alone
        alone: set[str] = set()
        broken_error: Optional[str] = None    # a pool we cannot rebuild is broken
        inflight = self.inflight
        while pending or suspects or inflight:
            if not any(p.key in alone for p in inflight.values()):
                src, limit = (suspects, 1) if suspects else (pending, self.window)
                while src and len(inflight) < limit:
                    p = src.popleft()
                    if broken_error is not None:
                        failed(p, broken_error)
                        continue
                    if src is suspects:
                        alone.add(p.key)
                    try:
                        inflight[self.pool.submit(run_point, p)] = p
                    except cf.BrokenExecutor as e:
                        if self.local is None:
                            broken_error = f"the executor cannot run tasks: {_one_line(e)}"
                            failed(p, broken_error)
                            continue
                        # our pool died under a point in flight: collect that below, then rebuild
                        src.appendleft(p)
                        alone.discard(p.key)
                        if not inflight:
                            self._rebuild()
                        break
            if not inflight:
                continue
            finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            pool_died = False
            for f in finished:
                p = inflight.pop(f)
                try:
                    rows = f.result()
                except cf.process.BrokenProcessPool as e:
                    pool_died = True
                    if self.local is None or p.key in alone:
                        failed(p, f"its worker process died while running it (killed, or crashed): {_one_line(e)}")
                    else:
                        suspects.append(p)
                except cf.CancelledError:
                    failed(p, "the task was cancelled")
                except Exception as e:
                    failed(p, _one_line(e))
                else:
                    done(p, rows)
            if pool_died:
                for f, p in list(inflight.items()):    # they share the dead pool's fate
                    if self.local is None or p.key in alone:
                        failed(p, "its worker pool broke while it ran (another task's worker died)")
                    else:
                        suspects.append(p)
                inflight.clear()
                if self.local is not None:
                    self._rebuild()
                else:
                    broken_error = "the executor broke (a worker died) before it ran"

    def _rebuild(self) -> None:
        assert self.local is not None
        _stop_pool(self.pool)
        self.pool = self.local.make()

    def stop(self) -> None:
        """After an interrupt: drop what is in flight."""
        for f in self.inflight:
            f.cancel()
        if self.local is not None:
            _stop_pool(self.pool)

    def close(self) -> None:
        if self.local is not None:
            self.pool.shutdown(wait=True)


# ---------------------------------------------------------------------------
# The table on disk

def output_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output {path!r}: the name must end in .parquet or .csv")
    return OUTPUT_FORMATS[ext]


def read_table(path: Union[str, os.PathLike]) -> Any:
    """A sweep table written by ``sweep()`` (Parquet or CSV)."""
    import pandas as pd

    from .results import _STR_COLUMNS, apply_schema
    path = os.fspath(path)
    if output_format(path) == "parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False,
                         na_values={c: [""] for c in ("hot_pages", "split_host_pages", "predicted_s")})
    return apply_schema(df)


class _Store:
    """The sweep's table: rows kept per point, written whole and atomically
    (temporary file, then rename) at most every few seconds and at the end."""

    def __init__(self, path: Optional[str], points: list[Point]) -> None:
        self.path = path
        self.fmt = output_format(path) if path else None
        self.order = {p.key: p.index for p in points}
        self.frames: dict[str, Any] = {}
        self.columns: Optional[list[str]] = None
        self.dirty = False
        self.last = -math.inf          # the first point is written at once
        self.interval = 1.0
        if path and os.path.exists(path):
            old = read_table(path)
            foreign = sorted(set(old["key"]) - set(self.order))
            if foreign:
                raise ValueError(f"{path} holds results of {len(foreign)} points that are not in this grid (another "
                                 "grid, or another s2fast version): write to another file or remove it")
            self.columns = list(old.columns)
            for key, rows in old.groupby("key", sort=False):
                self.frames[key] = rows

    def add(self, point: Point, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            r["point"] = point.index
        if self.columns is None:
            self.columns = _order(rows)
        self.frames[point.key] = to_frame(rows, self.columns)
        self.dirty = True

    def table(self) -> Any:
        import pandas as pd

        if not self.frames:
            return to_frame([], self.columns or list(LEAD_COLUMNS + TAIL_COLUMNS))
        keys = sorted(self.frames, key=self.order.__getitem__)
        df = pd.concat([self.frames[k] for k in keys], ignore_index=True)
        df["point"] = df["key"].map(self.order).astype("int64")
        return df

    def flush(self, force: bool = False) -> None:
        if not (self.path and self.dirty) or (not force and time.monotonic() - self.last < self.interval):
            return
        t = time.monotonic()
        df = self.table()
        folder, name = os.path.split(os.path.abspath(self.path))
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        try:
            if self.fmt == "parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.dirty = False
        self.last = time.monotonic()
        self.interval = max(1.0, 5 * (self.last - t))    # big tables: write less often


def check_output(path: Union[str, os.PathLike], points: list[Point]) -> None:
    """Raise ValueError if ``path`` cannot take this sweep's table: a bad
    name, or a file holding points of another grid."""
    _Store(os.fspath(path), points)


# ---------------------------------------------------------------------------
# The sweep

@dataclass
class SweepResult:
    """What a sweep did: ``table`` (one row per point, measurement,
    strategy and phase, in grid order), the points ``ran`` now and
    ``reused`` from the output file, the combinations ``skipped`` as
    invalid and the points that ``failed``."""

    table: Any
    points: list[Point]
    ran: list[Point] = field(default_factory=list)
    reused: list[Point] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    output: Optional[str] = None
    wall_s: float = 0.0

    def to_pandas(self) -> Any:
        return self.table


def plan(grid: Union[Mapping[str, Any], str, os.PathLike, Grid], *,
         max_points: Optional[int] = DEFAULT_MAX_POINTS) -> tuple[Grid, list[Point], list[Skipped]]:
    """Check and expand a grid (a mapping, a TOML file or a ``Grid``)
    without running it. More than ``max_points`` points (combinations,
    invalid ones included) is an error (None: no limit)."""
    if isinstance(grid, (str, os.PathLike)):
        grid = load_grid(grid)
    if not isinstance(grid, Grid):
        grid = Grid(grid)
    if max_points is not None and grid.size() > max_points:     # before expanding a huge grid
        raise GridError(f"grid: {grid.size()} points is more than the limit of {max_points} (max_points; "
                        "--yes on the command line runs it anyway)")
    points, skipped = grid.points()
    if not points:
        reason = f": {skipped[0].label}: {skipped[0].reason}" if skipped else ""
        raise GridError(f"grid: no valid point (every combination is invalid{reason})")
    return grid, points, skipped


def sweep(grid: Union[Mapping[str, Any], str, os.PathLike, Grid], output: Optional[Union[str, os.PathLike]] = None,
          *, executor: Any = None, max_points: Optional[int] = DEFAULT_MAX_POINTS,
          progress: Optional[bool] = None, on_failure: Optional[Callable[[Failure], None]] = None) -> SweepResult:
    """Run every point of ``grid`` and return the long table.

    ``executor``: None (local processes, all cores), ``LocalProcesses(n)``,
    ``"serial"`` (this process), a ``dask.distributed.Client`` or any
    ``concurrent.futures.Executor``. ``output`` (``.parquet`` or ``.csv``):
    points already in it are not run again, and it is rewritten atomically
    as points finish. ``progress``: a tqdm bar on stderr (default: when
    stderr is a terminal). A point whose task fails is reported to
    ``on_failure`` and in ``failed``; the others complete. Bad grids raise
    GridError (a ValueError) before anything is run or written."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise ImportError("s2fast.sweep needs pandas (and pyarrow for Parquet): pip install 's2fast[sweep]'") from None
    t0 = time.perf_counter()
    grid, points, skipped = plan(grid, max_points=max_points)
    out = os.fspath(output) if output is not None else None
    if out is not None:
        output_format(out)
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise ValueError(f"output {out!r}: folder {folder!r} does not exist")
    if executor == "serial":
        executor = SerialExecutor()
    store = _Store(out, points)
    result = SweepResult(None, points, skipped=skipped, output=out)
    todo = [p for p in points if p.key not in store.frames]
    result.reused = [p for p in points if p.key in store.frames]
    if todo:
        runner = _Runner(executor)
        bar = _bar(len(todo), len(result.reused), progress)

        def done(p: Point, rows: list) -> None:
            store.add(p, rows)
            result.ran.append(p)
            store.flush()
            if bar is not None:
                bar.update(1)

        def failed(p: Point, error: str) -> None:
            fail = Failure(p, error)
            result.failed.append(fail)
            if on_failure is not None:
                on_failure(fail)
            if bar is not None:
                bar.update(1)

        try:
            runner.run(todo, done, failed)
        except BaseException:
            runner.stop()
            raise
        else:
            runner.close()
        finally:
            if bar is not None:
                bar.close()
            store.flush(force=True)
    result.table = store.table()
    result.wall_s = time.perf_counter() - t0
    return result


def _bar(total: int, reused: int, progress: Optional[bool]) -> Any:
    on = progress if progress is not None else sys.stderr.isatty()
    if not on:
        return None
    from .progress import tqdm_class
    tqdm = tqdm_class()
    if tqdm is None:
        return None
    desc = "sweep" + (f" ({reused} points already done)" if reused else "")
    return tqdm(total=total, desc=desc, unit="point", file=sys.stderr, dynamic_ncols=True)


def describe_point(p: Point) -> str:
    return f"point {p.index} ({p.label})"


__all__ = ["sweep", "plan", "load_grid", "read_table", "check_output", "Grid", "GridError", "Point", "Skipped", "Failure",
           "SweepResult", "LocalProcesses", "SerialExecutor", "run_point", "point_key", "DEFAULT_MAX_POINTS"]
