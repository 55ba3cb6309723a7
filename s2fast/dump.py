"""A listing of a stage-2 table like the kernel's stage-2 ptdump
(arch/arm64/kvm/ptdump.c): one line per run of contiguous IPA whose entries
share their attributes.

Leaves merge into a run when they are at the same level, of the same kind
(block or page), with the same read/write permission, execute permission per
EL, MemAttr, access flag and software bits, and each starts where the last
ended. Their output addresses need not be contiguous (ptdump does not look at
them either). Non-zero invalid entries (owner annotations, locked entries)
form their own runs, merging when the value and level are the same.

The work is vectorised over ``pt.leaves()`` and ``pt.annotations()``: Python
runs once per run, never once per entry."""
from __future__ import annotations

import json as _json
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from .describe import (AF, INVALID_LOCKED, MEMATTR_MASK, OWNER_MASK, OWNER_SHIFT, S2AP_R, S2AP_W, SW_MASK, XN_MASK,
                       exec_perms, memtype_name)
from .geometry import block_allowed, entry_sizes, level_shift, output_address
from .sizes import format_size


@dataclass(frozen=True, slots=True)
class DumpRun:
    """``entries`` entries covering IPA ``[start, end)`` with one set of attributes.

    ``kind`` is "block" or "page" for valid leaves ("reserved" and
    "bad-block" for the encodings the architecture faults on), or
    "annotation" for non-zero invalid entries, whose value is ``annotation``.
    ``pa`` is the output address of the run's first entry."""

    start: int
    end: int
    level: int
    kind: str
    entries: int
    pa: Optional[int]
    readable: bool
    writable: bool
    exec_el1: bool
    exec_el0: bool
    memattr: Optional[int]
    memtype: Optional[str]
    af: bool
    sw: int
    annotation: Optional[int]
    owner: Optional[int]
    locked: bool

    @property
    def size(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = self.size
        return d


def _run_bounds(ipa: np.ndarray, end: np.ndarray, key: np.ndarray, lvl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the runs: a run breaks where the key or the
    level changes or the IPA is not where the last entry ended."""
    n = ipa.size
    brk = np.ones(n, dtype=bool)
    if n > 1:
        np.not_equal(key[1:], key[:-1], out=brk[1:])
        brk[1:] |= lvl[1:] != lvl[:-1]
        brk[1:] |= ipa[1:] != end[:-1]
    starts = np.flatnonzero(brk)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = n
    return starts, ends


def _leaf_kind(pte: int, level: int, granule: int, ps_bits: int) -> str:
    if pte & 3 == 3:
        return "page" if level == 3 else "table"
    if level == 3:
        return "reserved"
    return "block" if block_allowed(level, granule, ps_bits) else "bad-block"


def _columns(entries: np.ndarray, granule: int) -> tuple:
    """ipa, level, pte and end (ipa + the entry's size) of leaves() or annotations() rows."""
    ipa = np.ascontiguousarray(entries["ipa"])
    lvl = np.ascontiguousarray(entries["level"])
    return ipa, lvl, np.ascontiguousarray(entries["pte"]), ipa + entry_sizes(granule)[lvl.astype(np.intp) + 1]


def _leaf_runs(leaves: np.ndarray, granule: int, fwb: bool, xnx: bool, ps_bits: int) -> list[DumpRun]:
    if leaves.size == 0:
        return []
    ipa, lvl, pte, end = _columns(leaves, granule)
    # The attributes that split a run are a function of these descriptor bits
    # and the level: type (1:0, with the level giving block/page), MemAttr,
    # S2AP, AF, the XN bits that count, and the software bits.
    xn_bits = XN_MASK if xnx else 1 << 54
    mask = 0x3 | MEMATTR_MASK | S2AP_R | S2AP_W | AF | xn_bits | SW_MASK
    key = pte & np.uint64(mask)
    starts, ends = _run_bounds(ipa, end, key, lvl)

    out = []
    names: dict[int, str] = {}
    for s, e, first, level, lo, hi in zip(starts.tolist(), ends.tolist(), pte[starts].tolist(),
                                          lvl[starts].tolist(), ipa[starts].tolist(), end[ends - 1].tolist()):
        memattr = (first & MEMATTR_MASK) >> 2
        name = names.get(memattr)
        if name is None:
            name = names[memattr] = memtype_name(memattr, fwb)
        knd = _leaf_kind(first, level, granule, ps_bits)
        pa = output_address(first, granule)
        if knd == "block":
            pa &= ~((1 << level_shift(level, granule)) - 1)
        x1, x0 = exec_perms((first & XN_MASK) >> 53, xnx)
        out.append(DumpRun(lo, hi, level, knd, e - s, pa, bool(first & S2AP_R), bool(first & S2AP_W),
                           x1, x0, memattr, name, bool(first & AF), (first & SW_MASK) >> 55,
                           None, None, False))
    return out


def _annotation_runs(ann: np.ndarray, granule: int) -> list[DumpRun]:
    if ann.size == 0:
        return []
    ipa, lvl, pte, end = _columns(ann, granule)
    starts, ends = _run_bounds(ipa, end, pte, lvl)
    out = []
    for s, e, v, lv, lo, hi in zip(starts.tolist(), ends.tolist(), pte[starts].tolist(), lvl[starts].tolist(),
                                   ipa[starts].tolist(), end[ends - 1].tolist()):
        out.append(DumpRun(lo, hi, lv, "annotation", e - s, None, False, False, False, False, None, None,
                           False, 0, v, (v & OWNER_MASK) >> OWNER_SHIFT, bool(v & INVALID_LOCKED)))
    return out


def dump_runs(pt: Any) -> list[DumpRun]:
    """Every run of ``pt`` (a ``Stage2PageTable``, pool or image) in IPA order."""
    granule = int(pt.granule)
    leaves = _leaf_runs(pt.leaves(), granule, bool(pt.fwb), bool(pt.xnx), pt.ps_bits)
    ann = _annotation_runs(pt.annotations(), granule)
    if not ann:
        return leaves
    if not leaves:
        return ann
    return sorted(leaves + ann, key=lambda r: r.start)


def _size(n: int) -> str:
    return format_size(n, compact=True)


_HEADERS = ("IPA range", "size", "level", "type", "R/W", "exec", "memtype", "AF", "SW", "annotation")


def _exec_text(r: DumpRun) -> str:
    if r.exec_el1 and r.exec_el0:
        return "el1,el0"
    if r.exec_el1:
        return "el1"
    if r.exec_el0:
        return "el0"
    return "-"


def _row(r: DumpRun) -> tuple[str, ...]:
    rng = f"{r.start:#018x}-{r.end:#018x}"
    if r.kind == "annotation":
        what = "locked" if r.locked else f"owner={r.owner}"
        return (rng, _size(r.size), f"L{r.level}", "invalid", "", "", "", "", "", f"{what} ({r.annotation:#x})")
    rw = ("R" if r.readable else "-") + ("W" if r.writable else "-")
    return (rng, _size(r.size), f"L{r.level}", r.kind, rw, _exec_text(r), str(r.memtype),
            "AF" if r.af else "-", f"{r.sw:#x}", "")


def _n(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def format_dump(pt: Any, *, json: bool = False) -> str:
    """The listing as text (a title, a header and one line per run) or, with
    ``json=True``, a JSON list of run objects with integer addresses."""
    runs = dump_runs(pt)
    if json:
        if not runs:
            return "[]"
        return "[\n" + ",\n".join(_json.dumps(r.to_dict()) for r in runs) + "\n]"
    n_leaves = sum(r.entries for r in runs if r.kind != "annotation")
    n_ann = sum(r.entries for r in runs if r.kind == "annotation")
    mapped = sum(r.size for r in runs if r.kind != "annotation")
    ia = getattr(pt, "ia_bits", None)
    title = (f"stage-2 dump: {str(ia) + '-bit IPA, ' if ia is not None else ''}"
             f"{_size(int(pt.granule))} granule, fwb={'on' if pt.fwb else 'off'}, "
             f"xnx={'on' if pt.xnx else 'off'}: {_n(len(runs), 'run')}, {_n(n_leaves, 'leaf', 'leaves')} mapping "
             f"{_size(mapped) if mapped else '0'}, {_n(n_ann, 'annotation')}")
    ignored = getattr(pt, "vttbr_ignored", 0)
    if ignored:
        title += (f"; VTTBR {pt.vttbr:#x}: bits {ignored:#x} are below the root table's alignment "
                  f"and were ignored (root at {pt.root_pa:#x})")
    rows = [_row(r) for r in runs]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(_HEADERS)]
    right = (False, True, False, False, False, False, False, False, False, False)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    lines = [title, line(_HEADERS), line(tuple("-" * w for w in widths))]
    lines += [line(row) for row in rows]
    if not rows:
        lines.append("(no mappings and no annotations)")
    return "\n".join(lines)
