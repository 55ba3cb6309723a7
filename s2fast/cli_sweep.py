"""``s2fast sweep`` and ``s2fast plot``: the command line of s2fast.sweeps
and s2fast.plot (registered by s2fast.cli)."""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import TextIO

from .cliargs import UsageError, count_arg as _count_arg, on_off
from .plot import KINDS
from .sweeps import DEFAULT_MAX_POINTS, Failure, GridError, LocalProcesses, describe_point

#: at most this many skipped combinations are listed one per line
SHOW_SKIPPED = 10


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="run a grid of experiments (local processes or a Dask cluster) into one table",
                       description="Expand a grid file (TOML: each field a value or a list of values) into points, "
                                   "run each point under the grid's strategies as one task, and write one long "
                                   "table: a row per point, strategy and phase. Rerunning with the same output "
                                   "runs only the points it does not hold yet.")
    s.add_argument("grid", metavar="GRID.toml", help="the grid file")
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the results table, .parquet or .csv (resumed if it exists)")
    ex = s.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=_count_arg("--workers", 1), default=None, metavar="N",
                    help="local worker processes (default: one per core)")
    ex.add_argument("--serial", action="store_true", help="run every point in this process, one after another")
    ex.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="a Dask distributed scheduler, e.g. tcp://10.0.0.1:8786 (its workers need s2fast)")
    s.add_argument("--max-points", type=_count_arg("--max-points", 1), default=DEFAULT_MAX_POINTS, metavar="N",
                   help=f"refuse a grid of more points than this without --yes (default {DEFAULT_MAX_POINTS})")
    s.add_argument("--yes", action="store_true", help="run a grid of any size")
    on_off(s, "progress", "show progress with ETA on stderr (default: when stderr is a terminal)")

    p = sub.add_parser("plot", help="draw a results table: %% change against KERNEL",
                       description="Draw a sweep's table (or any s2fast results table) as reviewers read it: "
                                   "% change against KERNEL, final-table differences marked.")
    p.add_argument("table", metavar="TABLE", help="a results table (.parquet or .csv) written by s2fast sweep")
    p.add_argument("--kind", required=True, choices=KINDS,
                   help="bars: per phase, grouped, a panel per backing; size: the whole run against guest size; "
                        "heatmap: strategy x --param")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the picture, .png or .svg")
    p.add_argument("--metric", default="entries_read", metavar="COLUMN",
                   help="the count compared (default entries_read; e.g. callbacks, tlbis, predicted_s)")
    p.add_argument("--param", default=None, metavar="COLUMN",
                   help="heatmap: the parameter across (default: the first that varies)")


def _need(*modules: str, extra: str, what: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise UsageError(f"{what} needs {m}: pip install 's2fast[{extra}]'")


def _folder(flag: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag}: folder {folder!r} does not exist")


def cmd_sweep(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .sweeps import check_output, output_format, plan, sweep

    _need("pandas", extra="sweep", what="s2fast sweep")
    try:
        fmt = output_format(args.output)
    except ValueError as e:
        raise UsageError(f"--output: {e}") from None
    if fmt == "parquet":
        _need("pyarrow", extra="sweep", what="a .parquet output")
    _folder("--output", args.output)
    max_points = None if args.yes else args.max_points
    try:
        grid, points, skipped = plan(args.grid, max_points=max_points)
    except GridError as e:
        msg = str(e)
        raise UsageError(f"{args.grid}: {msg[len('grid: '):] if msg.startswith('grid: ') else msg}") from None
    try:
        check_output(args.output, points)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.progress:
        _need("tqdm", extra="sweep", what="--progress")
    client = None
    if args.serial:
        executor = "serial"
    elif args.scheduler is not None:
        _need("distributed", extra="sweep", what="--scheduler")
        from distributed import Client
        try:
            client = Client(args.scheduler, timeout=10)
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"--scheduler: cannot connect to {args.scheduler!r}: {e}") from None
        executor = client
    else:
        executor = LocalProcesses(args.workers)

    def report(f: Failure) -> None:
        err.write(f"s2fast: {describe_point(f.point)} failed: {f.error}\n")
        err.flush()

    out.write(f"s2fast sweep {args.grid}: {len(points)} points, strategies {', '.join(grid.strategies)}\n")
    for s in skipped[:SHOW_SKIPPED]:
        out.write(f"skipped: {s.label}: {s.reason}\n")
    if len(skipped) > SHOW_SKIPPED:
        out.write(f"skipped: ... and {len(skipped) - SHOW_SKIPPED} more invalid combinations\n")
    out.flush()
    try:
        res = sweep(grid, args.output, executor=executor, max_points=None, progress=args.progress,
                    on_failure=report)
    except KeyboardInterrupt:
        err.write(f"s2fast: interrupted: the points finished so far are in {args.output}; run the same command "
                  "again to finish the rest\n")
        return 130
    finally:
        if client is not None:
            client.close()
    out.write(f"ran {len(res.ran)}, reused {len(res.reused)} from {args.output}, failed {len(res.failed)}; "
              f"{len(res.table):,} rows in {args.output} ({res.wall_s:.1f} s)\n")
    if res.failed:
        err.write(f"s2fast: {len(res.failed)} of {len(points)} points failed (listed above); rerun to retry them\n")
        return 1
    return 0


def cmd_plot(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .plot import FORMATS, plot
    from .sweeps import output_format, read_table

    _need("matplotlib", "pandas", extra="plot", what="s2fast plot")
    if os.path.splitext(args.output)[1].lower() not in FORMATS:
        raise UsageError(f"--output {args.output!r}: the name must end in .png or .svg")
    _folder("--output", args.output)
    try:
        fmt = output_format(args.table)
    except ValueError:
        raise UsageError(f"{args.table}: a results table ends in .parquet or .csv") from None
    if fmt == "parquet":
        _need("pyarrow", extra="sweep", what="reading a .parquet table")
    if not os.path.exists(args.table):
        raise UsageError(f"{args.table}: no such file")
    try:
        df = read_table(args.table)
    except Exception as e:     # pyarrow / pandas parse errors have no common base
        raise UsageError(f"{args.table}: cannot read it as a results table: {e}") from None
    missing = [c for c in ("key", "strategy", "phase", "identical", args.metric) if c not in df.columns]
    if missing:
        raise UsageError(f"{args.table}: not an s2fast results table (no {missing[0]!r} column)")
    try:
        plot(df, args.output, args.kind, args.metric, args.param)
    except ValueError as e:
        raise UsageError(f"--kind {args.kind}: {e}") from None
    out.write(f"plot: {args.output}\n")
    return 0
