"""The ``s2fast`` command.

``s2fast compare`` runs a dirty-logging workload (or a preset that
re-creates one of the RFC series' experiments) under every walker strategy
and prints one table; ``s2fast presets`` lists the presets; ``s2fast dump``
lists a stage-2 table (a built-in guest, an exported image or an ELF core)
like the kernel's stage-2 ptdump. Bad arguments get a one-line error and
exit code 2."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import sys
from typing import Any, Optional, Sequence, TextIO

from . import __version__
from .cliargs import UsageError, count_arg as _count_arg, on_off
from .comparison import Comparison, compare
from .errors import InsufficientMemoryError
from .geometry import GRANULES
from .hostrules import host_rules
from .presets import PRESETS, PresetResult, run_preset
from .progress import FractionBar, fraction_bar, tqdm_class
from .sizes import format_size, parse_size
from .strategy import as_strategy
from .textfmt import render_table
from .variants import Strategy
from .workload import PATTERNS, Workload

DEFAULTS = Workload()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


# ---------------------------------------------------------------------------
# Argument parsing

def _size_arg(name: str):
    def parse(text: str) -> int:
        try:
            return parse_size(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


def _granule_arg(text: str) -> int:
    """--granule: the host page size, 4K, 16K or 64K (or its bytes)."""
    try:
        return host_rules(text).granule
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_granule_arg.__name__ = "--granule"


def _sizes_arg(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            out.append(parse_size(part))
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return out


def _reg_arg(name: str):
    """A register value or address in any base (0x..., 0o..., 0b..., decimal)."""
    def parse(text: str) -> int:
        try:
            v = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer (e.g. 0x40000000)") from None
        if not 0 <= v < 1 << 64:
            raise argparse.ArgumentTypeError(f"{text} is outside 0..2**64-1")
        return v
    parse.__name__ = name
    return parse


def custom_strategies(args: argparse.Namespace, given: Optional[list[Any]]) -> Optional[list[Any]]:
    """--strategies plus every --strategy NAME=FLAGS and --strategy-module
    FILE.py (None: the command's default set)."""
    from .strategy import load_strategy_module, parse_strategy_option
    extra: list[Any] = []
    try:
        extra += [parse_strategy_option(t) for t in args.strategy or []]
        for path in args.strategy_module or []:
            extra += load_strategy_module(path)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not extra:
        return given
    return (given if given is not None else [Strategy.KERNEL]) + extra


def _strategies_arg(text: str) -> list[Strategy]:
    if text.strip().lower() == "all":
        return list(Strategy)
    out = []
    for part in text.split(","):
        try:
            out.append(as_strategy(part))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    from .drgn import add_kernel_source, add_vms_parser

    p = _Parser(prog="s2fast", description="A fast, exact simulator of the KVM arm64 stage-2 walker.")
    p.add_argument("--version", action="version", version=f"s2fast {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("compare", help="run a dirty-logging workload under every walker strategy",
                       description="Build a guest, enable dirty logging, run CLEAR_DIRTY_LOG passes with guest "
                                   "writes between them, under each walker strategy; print one table.")
    w = c.add_argument_group("workload")
    w.add_argument("--guest-size", type=_size_arg("--guest-size"), default=None, metavar="SIZE",
                   help=f"guest memory, e.g. 64G, 256G (default {format_size(DEFAULTS.guest_size)})")
    w.add_argument("--granule", type=_granule_arg, default=None, metavar="SIZE",
                   help="host page size, which is the stage-2 granule: 4K (default), 16K or 64K")
    w.add_argument("--backing", default=None, metavar="SPEC",
                   help="1g (hugetlb), 2m (THP), 4k (already split) or mix:1g=P,2m=P,4k=P (default 1g); "
                        "16K hosts: 32m, 16k; 64K hosts: 512m, 64k (default: the largest block)")
    w.add_argument("--chunk", type=_size_arg("--chunk"), default=None, metavar="SIZE",
                   help="eager-split chunk size: 0 (off), 4K, 2M or 1G (default 2M); 16K hosts: 16K or "
                        "32M; 64K hosts: 64K or 512M (default: PMD_SIZE)")
    w.add_argument("--passes", type=_count_arg("--passes"), default=None, metavar="N",
                   help=f"CLEAR_DIRTY_LOG passes (default {DEFAULTS.passes})")
    w.add_argument("--writes", type=_count_arg("--writes"), default=None, metavar="N",
                   help=f"guest pages written between passes (default {DEFAULTS.writes})")
    w.add_argument("--pattern", choices=PATTERNS, default=None,
                   help=f"which pages the guest writes (default {DEFAULTS.pattern})")
    w.add_argument("--seed", type=_count_arg("--seed"), default=None, metavar="N",
                   help="seed for the mix and the access pattern (default 0)")
    on_off(w, "initially-set", "manual protect with initially-all-set: CLEAR splits (default)",
           "enabling dirty logging write-protects and eagerly splits")
    w.add_argument("--tlb-range", action="store_true", help="the CPU has range TLBIs")
    w.add_argument("--fwb", action="store_true",
                   help="the CPU has stage-2 FWB: the dcache hook is still called (CMO calls) but does no "
                        "maintenance (CMOs done)")
    w.add_argument("--preset", default=None, metavar="NAME",
                   help="one of the series' experiments (see 's2fast presets'), or 'all'")
    w.add_argument("--strategies", type=_strategies_arg, default=None, metavar="LIST",
                   help="comma-separated strategies, or all (default); KERNEL always runs")
    o = c.add_argument_group("output")
    o.add_argument("--profile", default=None, metavar="NAME|FILE",
                   help="machine profile that prices the counts in seconds: a shipped one "
                        "(generic, default; rfc-v1, rfc-v2) or a .toml/.json file (see s2fast calibrate)")
    fmt = o.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of the table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    o.add_argument("--phases", action="store_true", help="also print the cost of each phase")
    o.add_argument("--fail-on-difference", action="store_true",
                   help="exit with status 1 when a strategy's final table differs from KERNEL's (UNSAFE), "
                        "so that a CI job can use s2fast as a gate (0: all identical; 2: an error)")
    o.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw each strategy's %% change in entries read against KERNEL over guest sizes "
                        "(.png or .svg; needs matplotlib and pandas)")
    o.add_argument("--plot-sizes", type=_sizes_arg, default=None, metavar="LIST",
                   help="guest sizes for --plot, e.g. 16G,32G,64G (default: a quarter, half and all of "
                        "--guest-size)")
    on_off(o, "progress", "show a progress bar on stderr (default: when stderr is a terminal)")

    w.add_argument("--strategy", action="append", default=None, metavar="NAME=FLAGS[,max_level=N]",
                   help="your own strategy (repeatable), e.g. mine=LEAF|SKIP_LEVEL3; runs with KERNEL and "
                        "--strategies (default: KERNEL and yours)")
    w.add_argument("--strategy-module", action="append", default=None, metavar="FILE.py",
                   help="strategies from a Python file's STRATEGIES list (repeatable)")

    sub.add_parser("presets", help="list the presets that re-create the series' experiments")
    add_vms_parser(sub)

    k = sub.add_parser("calibrate", help="fit a machine profile to measured times",
                       description="Fit per-event costs to measurements of experiments s2fast can run (a CSV: "
                                   "preset or workload fields, strategy, phase, seconds or pct_change; see "
                                   "s2fast/cost/calibrate.py). Prints the fit of every row, leave-one-out "
                                   "errors and the costs the data cannot identify. Needs scipy "
                                   "(pip install 's2fast[fit]').")
    k.add_argument("measurements", metavar="MEASUREMENTS.csv")
    k.add_argument("-o", "--output", required=True, metavar="PROFILE",
                   help="where to write the fitted profile (.toml or .json)")
    k.add_argument("--prior", default=None, metavar="NAME|FILE",
                   help="starting profile the fit is regularised toward (default generic)")
    k.add_argument("--prior-weight", type=float, default=None, metavar="W",
                   help="ridge weight toward the prior (default 1e-4: a cost moving by 100%% of its prior "
                        "weighs as much as one point of misfit in one row)")
    from .dirty_log_perf import add_parser as add_dirty_log_perf
    add_dirty_log_perf(sub)

    d = sub.add_parser("dump", help="list a stage-2 table like the kernel's stage-2 ptdump",
                       description="One line per run of contiguous IPA with identical attributes. The table is "
                                   "a built-in guest (default), an exported image (--image) or a table in an "
                                   "ELF core (--elf with --vttbr and --vtcr).")
    src = d.add_argument_group("source")
    src.add_argument("--guest-size", type=_size_arg("--guest-size"), default=None, metavar="SIZE",
                     help="built-in guest: memory mapped from IPA 0x40000000 (default 4G)")
    src.add_argument("--backing", default=None, metavar="SIZE",
                     help="built-in guest: 1G blocks, 2M blocks or 4K pages (default 2M); with 16K "
                          "pages 32M or 16K, with 64K pages 512M or 64K (default the block)")
    src.add_argument("--granule", type=_granule_arg, default=None, metavar="SIZE",
                     help="built-in guest: page size 4K (default), 16K or 64K")
    where = src.add_mutually_exclusive_group()
    where.add_argument("--image", default=None, metavar="FILE",
                       help="a memory image: an export_image() file with its FILE.json sidecar, or any raw "
                            "image with --base-pa, --vttbr and --vtcr")
    where.add_argument("--elf", default=None, metavar="CORE",
                       help="an ELF core (kdump vmcore, QEMU dump-guest-memory); needs --vttbr and --vtcr")
    add_kernel_source(src, where)
    src.add_argument("--vm", default=None, metavar="ID",
                     help="--vmcore/--live: the VM to list, an ID from s2fast vms (N, N.M for nested MMU M, "
                          "a struct kvm address, or host)")
    src.add_argument("--vttbr", type=_reg_arg("--vttbr"), default=None, metavar="X",
                     help="VTTBR_EL2 as read from the CPU (VMID and CnP are ignored)")
    src.add_argument("--vtcr", type=_reg_arg("--vtcr"), default=None, metavar="X", help="VTCR_EL2")
    src.add_argument("--base-pa", type=_reg_arg("--base-pa"), default=None, metavar="X",
                     help="--image: physical address of the file's first byte (default: the sidecar's, or 0)")
    attrs = d.add_argument_group("attributes")
    on_off(attrs, "xnx", "the CPU has FEAT_XNX: XN[0] separates EL1 and EL0 execute (default: the "
                  "sidecar's setting, on for other images, off for the built-in guest)",
           "only XN[1] counts")
    on_off(attrs, "fwb", "MemAttr uses the FEAT_S2FWB encodings (HCR_EL2.FWB set)",
           "the KVM encodings without FWB (default, unless a sidecar says otherwise)")
    d.add_argument("--json", action="store_true", help="print a JSON list of runs instead of the table")
    from . import cli_sweep
    cli_sweep.add_parsers(sub)
    return p


# ---------------------------------------------------------------------------
# Output

def _fmt_int(v: int) -> str:
    return f"{v:,}"


def _fmt_s(v: float) -> str:
    return f"{v:.3g}"


def _ratio(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _outcome(row: dict[str, Any]) -> str:
    """The last column: 'identical', or UNSAFE and what differs (footnoted)."""
    if row["identical"]:
        return row["outcome"]
    return "UNSAFE*: " + row["outcome"].removeprefix("differs: ")


def comparison_table(cmp: Comparison) -> str:
    """One row per strategy. The preset tables use it too, so every table
    has the same columns."""
    headers = ["strategy", "entries read", "callbacks", "TLBIs", "CMO calls", "CMOs done", "pages alloc",
               "predicted (s)", "vs KERNEL", "time (s)", "reduction", "speed-up", "final table vs KERNEL"]
    rows = []
    for r in cmp.rows():
        rows.append([r["strategy"], _fmt_int(r["entries_read"]), _fmt_int(r["callbacks"]), _fmt_int(r["tlbis"]),
                     _fmt_int(r["cmos"]), _fmt_int(r["cmos_done"]), _fmt_int(r["pages_alloc"]),
                     _fmt_s(r["predicted_s"]), f"{r['predicted_pct_change']:+.1f}%",
                     f"{r['wall_s']:.2f}", _ratio(r["reduction_pct"], "{:.1f}%"), _ratio(r["speedup"], "{:.2f}x"),
                     _outcome(r)])
    return render_table(headers, rows, [False] + [True] * 11 + [False])


def phase_table(cmp: Comparison) -> str:
    headers = ["strategy", "phase", "entries read", "callbacks", "TLBIs", "CMO calls", "CMOs done", "pages alloc",
               "predicted (s)", "time (s)"]
    rows = [[r["strategy"], r["phase"], _fmt_int(r["entries_read"]), _fmt_int(r["callbacks"]),
             _fmt_int(r["tlbis"]), _fmt_int(r["cmos"]), _fmt_int(r["cmos_done"]), _fmt_int(r["pages_alloc"]),
             _fmt_s(r["predicted_s"]), f"{r['wall_s']:.2f}"]
            for r in cmp.phase_rows()]
    return render_table(headers, rows, [False, False] + [True] * 8)


FOOTNOTE = ("reduction, speed-up: KERNEL's entries read against the strategy's ('-' where KERNEL read none); "
            "predicted: seconds on the machine of profile {profile} (s2fast.cost) and their change against "
            "KERNEL; time is the simulator's, build excluded.\n"
            "CMO calls: calls of the cache-maintenance hooks (mm_ops dcache_clean_inval_poc, "
            "icache_inval_pou); CMOs done: those that maintain a cache (on FWB hardware mmu.c's dcache "
            "hook returns at once).")


def unsafe_footnote(cmps: Sequence[tuple[str, Comparison]]) -> list[str]:
    """What each UNSAFE row left behind, for the lines under the table."""
    out = []
    for label, cmp in cmps:
        for s, d in cmp.diffs.items():
            if d.identical:
                continue
            where = f" ({label})" if label else ""
            terms = []
            if d.unsplit:
                terms.append("unsplit: blocks KERNEL's split turned into smaller leaves and this strategy left "
                             "whole")
            if d.unmapped:
                terms.append("unmapped: KERNEL's leaves with nothing mapped here, e.g. the rest of a block "
                             "left unsplit that a write fault then broke up")
            why = f" ({'; '.join(terms)})" if terms else ""
            out.append(f"* UNSAFE: {s.name}{where} does not leave KERNEL's final table: "
                       f"{d.describe().removeprefix('differs: ')}{why}. A walker change must leave exactly "
                       "the kernel's table to replace it.")
    return out


def comparison_text(cmp: Comparison, phases: bool) -> str:
    w = cmp.workload
    names = ", ".join(p.name for p in next(iter(cmp.results.values())).phases)
    out = [f"s2fast compare: {w.describe()}", f"phases: {names} (build excluded)", "",
           comparison_table(cmp), "", FOOTNOTE.format(profile=_profile_name(cmp))] + unsafe_footnote([("", cmp)])
    if phases:
        out += ["", phase_table(cmp)]
    return "\n".join(out)


def preset_text(res: PresetResult, phases: bool) -> str:
    p = res.preset
    cw = res.clear.workload
    out = [f"s2fast compare --preset {p.name}: {p.description}", "",
           "enable dirty tracking: not initially-all-set (write-protect + eager split of the slot)",
           comparison_table(res.enable), "",
           f"CLEAR_DIRTY_LOG: initially-all-set, {cw.passes} CLEAR pass{'es' if cw.passes != 1 else ''}, "
           f"{cw.writes_text()}",
           comparison_table(res.clear), "", FOOTNOTE.format(profile=_profile_name(res.enable))]
    out += unsafe_footnote([("enable", res.enable), ("CLEAR", res.clear)])
    if phases:
        out += ["", "enable dirty tracking:", phase_table(res.enable), "", "CLEAR_DIRTY_LOG:",
                phase_table(res.clear)]
    return "\n".join(out)


def _profile_name(cmp: Comparison) -> str:
    from .cost.model import load_profile
    return load_profile(cmp.profile).name


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().rstrip("\n")


# ---------------------------------------------------------------------------
# Commands

def _workload(args: argparse.Namespace, guest_size: Optional[int] = None) -> Workload:
    given = {k: getattr(args, k) for k in ("guest_size", "backing", "chunk", "passes", "writes", "pattern",
                                           "seed", "initially_set", "granule") if getattr(args, k) is not None}
    if guest_size is not None:
        given["guest_size"] = guest_size
    if args.tlb_range:
        given["tlb_range"] = True
    if args.fwb:
        given["fwb"] = True
    return Workload(**given)


def _check_plot(args: argparse.Namespace) -> None:
    if args.plot is None:
        if args.plot_sizes is not None:
            raise UsageError("--plot-sizes needs --plot FILE.png")
        return
    if args.preset is not None:
        raise UsageError("--plot draws a workload against guest size; it cannot be combined with --preset")
    folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(folder):
        raise UsageError(f"--plot: folder {folder!r} does not exist")
    for module in ("matplotlib", "pandas"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--plot needs {module}: pip install 's2fast[plot]'")


def draw_plot(path: str, runs: dict[int, Comparison]) -> None:
    """% change against KERNEL against guest size (s2fast plot --kind size)."""
    from .plot import plot_size
    from .results import comparison_records, to_frame

    plot_size(to_frame([row for s in sorted(runs) for row in comparison_records(runs[s])]), path)


def cmd_presets(out: TextIO) -> int:
    rows = [[name, format_size(p.guest_size), p.backing, format_size(p.chunk), str(p.passes), p.description]
            for name, p in PRESETS.items()]
    out.write(render_table(["preset", "memslot", "backing", "chunk", "passes", "description"], rows,
                           [False, True, False, True, True, False]) + "\n")
    return 0


def _load_profile(spec: Optional[str]) -> Any:
    from .cost.model import ProfileError, load_profile
    try:
        return load_profile(spec)
    except ProfileError as e:
        raise UsageError(f"--profile: {e}") from None


def cmd_compare(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _check_plot(args)
    profile = _load_profile(args.profile)
    strategies = args.strategies
    strategies = custom_strategies(args, args.strategies)
    if args.preset is not None:
        if args.preset != "all" and args.preset not in PRESETS:
            raise UsageError(f"--preset: {args.preset!r} is not one of {', '.join(PRESETS)} or all")
        names = list(PRESETS) if args.preset == "all" else [args.preset]
        for flag in ("guest_size", "backing", "initially_set", "granule"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} cannot be combined with --preset (the preset fixes it)")
        if args.tlb_range or args.fwb:
            raise UsageError("--tlb-range and --fwb cannot be combined with --preset")
        overrides = {k: getattr(args, k) for k in ("chunk", "passes", "writes", "pattern", "seed")
                     if getattr(args, k) is not None}
        for name in names:   # check the overrides and the memory before the long run
            _checked(PRESETS[name].clear_workload, **overrides)
            _checked(PRESETS[name].enable_workload, **overrides)
        _check_memory([w for name in names for w in (PRESETS[name].clear_workload(**overrides),
                                                      PRESETS[name].enable_workload(**overrides))], strategies)
        bar = _progress(args, err)
        results = []
        try:
            for i, name in enumerate(names):
                if bar:
                    bar.title = f"{name} "
                results.append(run_preset(name, strategies, progress=(
                    (lambda f, n, i=i: bar((i + f) / len(names), n)) if bar else None), profile=profile,
                    **overrides))
        finally:
            if bar:
                bar.close()
        if args.json:
            out.write(json.dumps([r.to_dict() for r in results] if args.preset == "all" else results[0].to_dict(),
                                 indent=2) + "\n")
        elif args.csv:
            out.write(_csv([dict(preset=r.preset.name, **row) for r in results for row in r.rows()]) + "\n")
        else:
            out.write("\n\n".join(preset_text(r, args.phases) for r in results) + "\n")
        return _status(args, [c for r in results for c in (r.enable, r.clear)], err)

    workload = _checked(_workload, args)
    sizes = [workload.guest_size]
    if args.plot is not None:
        unit = host_rules(workload.granule).unit
        sizes = args.plot_sizes or sorted({max(unit, workload.guest_size // k // unit * unit) for k in (4, 2, 1)})
        for s in sizes:   # check every size before the long run
            _checked(workload.replace, guest_size=s)
    _check_memory([workload.replace(guest_size=s) for s in sizes], strategies)
    bar = _progress(args, err)
    runs: dict[int, Comparison] = {}
    try:
        order = sorted(set(sizes) | {workload.guest_size})
        for i, s in enumerate(order):
            w = workload.replace(guest_size=s)
            if bar:
                bar.title = f"{format_size(s)} " if len(order) > 1 else ""
            runs[s] = compare(w, strategies, progress=(
                (lambda f, n, i=i, k=len(order): bar((i + f) / k, n)) if bar else None), profile=profile)
    finally:
        if bar:
            bar.close()
    main_run = runs[workload.guest_size]
    if args.plot is not None:
        draw_plot(args.plot, {s: runs[s] for s in sizes})
    if args.json:
        d = main_run.to_dict()
        if args.plot is not None:
            d["plot"] = {"file": args.plot, "sizes": {str(s): runs[s].rows() for s in sizes}}
        out.write(json.dumps(d, indent=2) + "\n")
    elif args.csv:
        rows = main_run.phase_rows() if args.phases else main_run.rows()
        out.write(_csv(rows) + "\n")
    else:
        out.write(comparison_text(main_run, args.phases) + "\n")
        if args.plot is not None:
            out.write(f"\nplot: {args.plot} ({', '.join(format_size(s) for s in sizes)})\n")
    return _status(args, list(runs.values()), err)


def _status(args: argparse.Namespace, cmps: list[Comparison], err: TextIO) -> int:
    """--fail-on-difference: 1 when some strategy's final table differs."""
    bad = sorted({s.name for c in cmps for s, d in c.diffs.items() if not d.identical})
    if args.fail_on_difference and bad:
        err.write(f"s2fast: final table differs from KERNEL's under {', '.join(bad)} (--fail-on-difference)\n")
        return 1
    return 0


DUMP_BASE = 1 << 30


def _dump_backings(granule: int) -> dict:
    """Backing name -> leaf size for a granule: its page and block sizes."""
    from .geometry import geometry

    g = geometry(40, granule)
    sizes = [granule] + [g.level_size(lv) for lv in range(g.min_block_level, 3)]
    return {format_size(n, compact=True).lower(): n for n in sizes}


def _dump_pool(args: argparse.Namespace) -> Any:
    """The built-in guest: ``--guest-size`` of RW memory at 1 GiB in a
    40-bit IPA space, mapped with the ``--backing`` block or page size."""
    from .flags import RW
    from .pgtable import Stage2PageTable
    from ._pool import MemCache

    granule = 4096 if args.granule is None else args.granule
    if granule not in GRANULES:
        raise UsageError(f"--granule: {format_size(granule)} is not one of 4K, 16K, 64K")
    backings = _dump_backings(granule)
    size = 4 << 30 if args.guest_size is None else args.guest_size
    pmd = list(backings)[-1] if granule != 4096 else "2m"
    backing = pmd if args.backing is None else args.backing.strip().lower()
    if backing not in backings:
        raise UsageError(f"--backing: {args.backing!r} is not one of {', '.join(b.upper() for b in backings)} "
                         f"(with {format_size(granule)} pages)")
    unit = backings[backing]
    if size == 0 or size % unit:
        raise UsageError(f"--guest-size {format_size(size)} is not a positive multiple of the {backing} backing")
    if DUMP_BASE + size > 1 << 40:
        raise UsageError(f"--guest-size {format_size(size)} does not fit a 40-bit IPA space from {DUMP_BASE:#x}")
    pt = Stage2PageTable(40, granule=granule, xnx=bool(args.xnx), fwb=bool(args.fwb))
    # A level-2 backing: output addresses aligned to its block but not to a
    # level-1 block, so the kernel's map() picks level-2 blocks.
    phys = (1 << 40) + DUMP_BASE + (unit if unit != granule and unit < (1 << 30) else 0)
    ret = pt.map(DUMP_BASE, size, phys, RW, memcache=MemCache(0, on_empty="allocate"),
                 force_pte=unit == granule)
    if ret:
        raise UsageError(f"mapping the guest failed with {ret}")
    return pt


def _dump_table(args: argparse.Namespace) -> Any:
    """The table to list, from the command line's source options."""
    from .pgtable import Stage2PageTable
    from .physmem import PhysMem

    external = args.image is not None or args.elf is not None
    if external and (args.guest_size is not None or args.backing is not None or args.granule is not None):
        raise UsageError("--guest-size, --backing and --granule describe the built-in guest; they cannot "
                         "be combined with --image or --elf (an image's VTCR gives its granule)")
    if not external:
        for flag in ("vttbr", "vtcr", "base_pa"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} needs --image or --elf")
        return _dump_pool(args)
    if args.elf is not None and args.base_pa is not None:
        raise UsageError("--base-pa applies to --image; an ELF core gives each segment's physical address")
    kw = {k: getattr(args, k) for k in ("xnx", "fwb") if getattr(args, k) is not None}
    try:
        if args.elf is not None:
            if args.vttbr is None or args.vtcr is None:
                raise UsageError("--elf needs --vttbr and --vtcr (the registers of the vCPU whose stage 2 "
                                 "to list)")
            return Stage2PageTable.from_image(PhysMem.from_elf(args.elf), vttbr=args.vttbr, vtcr=args.vtcr, **kw)
        if not os.path.exists(args.image):
            raise UsageError(f"--image: no such file: {args.image!r}")
        if os.path.isdir(args.image):
            raise UsageError(f"--image: {args.image!r} is a directory, not a memory image file")
        sidecar = os.path.exists(args.image + ".json")
        if sidecar and args.base_pa is None:
            return Stage2PageTable.from_image(args.image, vttbr=args.vttbr, vtcr=args.vtcr, **kw)
        meta: dict[str, Any] = {}
        if sidecar:
            from .image import read_sidecar
            meta = read_sidecar(args.image)
        vttbr = args.vttbr if args.vttbr is not None else meta.get("vttbr")
        vtcr = args.vtcr if args.vtcr is not None else meta.get("vtcr")
        if vttbr is None or vtcr is None:
            raise UsageError(f"--image {args.image!r} has no sidecar {args.image + '.json'!r}: give --vttbr "
                             "and --vtcr (and --base-pa unless the file starts at PA 0)")
        base = args.base_pa if args.base_pa is not None else meta.get("base_pa", 0)
        if sidecar:
            kw.setdefault("xnx", bool(meta.get("xnx", True)))
            kw.setdefault("fwb", bool(meta.get("fwb", False)))
        return Stage2PageTable.from_image(PhysMem.from_file(args.image, base), vttbr=vttbr, vtcr=vtcr, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def cmd_kernel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """s2fast vms and s2fast dump --vm: VMs read from a kernel with drgn (s2fast/drgn.py)."""
    from . import drgn as kernel
    from .errors import CorruptTableError, PhysMemReadError

    try:
        if args.command == "vms":
            return kernel.cmd_vms(args, out, render_table)
        if args.vm is None or (args.vmcore is None and not args.live):
            raise UsageError("--vm needs --vmcore FILE or --live, and they (and --vmlinux) need --vm ID")
        if args.guest_size is not None or args.backing is not None or args.granule is not None or \
                args.vttbr is not None or args.vtcr is not None or args.base_pa is not None:
            raise UsageError("--vm lists a VM of the kernel: its table, registers and granule come from the kernel")
        text = kernel.dump_vm_text(args)
    except ImportError as e:
        raise UsageError(str(e)) from None
    except (CorruptTableError, PhysMemReadError) as e:
        err.write(f"s2fast: error: the table cannot be walked: {e}\n")
        return 1
    except (OSError, ValueError, LookupError) as e:
        raise UsageError(str(e)) from None
    out.write(text + "\n")
    return 0


def cmd_dump(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .dump import format_dump
    from .errors import CorruptTableError, PhysMemReadError

    if args.vm is not None or args.vmcore is not None or args.live or args.vmlinux is not None:
        return cmd_kernel(args, out, err)
    pt = _dump_table(args)
    try:
        text = format_dump(pt, json=args.json)
    except (CorruptTableError, PhysMemReadError) as e:
        err.write(f"s2fast: error: the table cannot be walked: {e}\n")
        return 1
    out.write(text + "\n")
    return 0


def cmd_calibrate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if os.path.splitext(args.output)[1].lower() not in (".toml", ".json"):
        raise UsageError(f"-o: {args.output}: a profile is written as .toml or .json")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UsageError(f"-o: folder {folder!r} does not exist")
    if importlib.util.find_spec("scipy") is None:
        raise UsageError("calibrate needs scipy: pip install 's2fast[fit]'")
    from .cost.calibrate import DEFAULT_PRIOR_WEIGHT, MeasurementError, calibrate
    from .cost.model import ProfileError, load_profile
    try:
        prior = load_profile(args.prior)
    except ProfileError as e:
        raise UsageError(f"--prior: {e}") from None
    w = DEFAULT_PRIOR_WEIGHT if args.prior_weight is None else args.prior_weight
    if not (w > 0 and w != float("inf")):
        raise UsageError(f"--prior-weight: {args.prior_weight!r} is not a positive number")
    try:
        cal = calibrate(args.measurements, prior, prior_weight=w,
                        name=os.path.splitext(os.path.basename(args.output))[0])
    except (MeasurementError, ProfileError) as e:
        raise UsageError(str(e)) from None
    out.write(cal.report() + "\n")
    cal.profile.save(args.output)
    out.write(f"\nprofile written to {args.output}\n")
    return 0


def cmd_dirty_log_perf(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import dirty_log_perf as dlp
    opts = _checked(dlp.options_from_args, args)
    _checked(dlp.layout, opts)
    given = None
    if args.strategies is not None:
        try:
            given = _strategies_arg(args.strategies)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--strategies: {e}") from None
    strategies = custom_strategies(args, given) or [Strategy.KERNEL]
    try:
        profile = dlp.load_profile(args.profile)
    except dlp.ProfileUnavailable as e:
        raise UsageError(str(e)) from None
    res = _checked(dlp.run_all, opts, strategies)
    if args.json:
        out.write(json.dumps(dlp.to_dict(res, profile), indent=2) + "\n")
    else:
        out.write(dlp.report(res, profile) + "\n")
    return 0


def _checked(fn: Any, *a: Any, **kw: Any) -> Any:
    """Build a workload from the command line: the workload layer's
    ValueError / TypeError (which name the bad value) become usage errors."""
    try:
        return fn(*a, **kw)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _check_memory(workloads: list[Workload], strategies: Optional[list[Strategy]]) -> None:
    """Refuse, before building anything, a run that does not fit in memory."""
    from .memory import check_memory
    from .comparison import _strategies

    try:
        check_memory(workloads, len(_strategies(strategies)))
    except ValueError as e:       # a bad S2FAST_MEMORY_LIMIT
        raise UsageError(str(e)) from None


def _progress(args: argparse.Namespace, err: TextIO) -> Optional[FractionBar]:
    if args.progress and tqdm_class() is None:
        raise UsageError("--progress needs tqdm: pip install 's2fast[sweep]'")
    return fraction_bar(err, args.progress)


def main(argv: Optional[Sequence[str]] = None, *, out: Optional[TextIO] = None,
         err: Optional[TextIO] = None) -> int:
    """Entry point of the ``s2fast`` console script and ``python -m s2fast``."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:   # --help, --version
            return int(e.code or 0)
        if args.command is None:
            raise UsageError("a command is required: compare, presets, dump, calibrate, vms, dirty-log-perf, "
                             "sweep or plot (see s2fast --help)")
        if args.command == "presets":
            return cmd_presets(out)
        if args.command == "dump":
            return cmd_dump(args, out, err)
        if args.command == "calibrate":
            return cmd_calibrate(args, out, err)
        if args.command == "vms":
            return cmd_kernel(args, out, err)
        if args.command == "dirty-log-perf":
            return cmd_dirty_log_perf(args, out, err)
        if args.command in ("sweep", "plot"):
            from . import cli_sweep
            return (cli_sweep.cmd_sweep if args.command == "sweep" else cli_sweep.cmd_plot)(args, out, err)
        return cmd_compare(args, out, err)
    except UsageError as e:
        err.write(f"s2fast: error: {e}\n")
        return 2
    except InsufficientMemoryError as e:     # refused before anything was built
        err.write(f"s2fast: error: {e}\n")
        return 2
    except MemoryError as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        err.write(f"s2fast: error: out of memory: {detail}\n")
        return 2
    except KeyboardInterrupt:
        err.write("s2fast: interrupted\n")
        return 130
