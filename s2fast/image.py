"""Stage-2 tables outside the pool: opening tables in a memory image
read-only, exporting a pool table as an image, and importing an image back
into a pool. The registers are decoded by s2fast.registers.

Tables are built through ``Stage2PageTable._from_core`` (the class is passed
in by the facade, which imports this module, never the reverse)."""
from __future__ import annotations

import bisect
import json
import os
from typing import Any, Optional, Union

import numpy as np

from . import _core, _pool, checks
from .errors import CorruptTableError
from .geometry import address_bits, geometry, output_address
from .physmem import PhysMem
from .registers import (PS_BITS, TG0_GRANULE, Vtcr, decode_vtcr, decode_vttbr,  # noqa: F401 (their old home)
                        vttbr_ignored_bits)

IMAGE_FORMAT = "s2fast-image"
IMAGE_VERSION = 1
# A table is passed around as Any: naming Stage2PageTable here would import the facade back.
Table = Any


def table_oa(desc: np.ndarray, granule: int) -> np.ndarray:
    """Next-table / output address bits of descriptors (52-bit with 64 KiB)."""
    return output_address(desc, granule)


def read_page(pt: Table, pa: int, is_root: bool, root_entries: int, ptrs: int) -> Optional[np.ndarray]:
    """A table's entries; for a root page only those inside the IPA space
    (a root smaller than a page need only be that big, at any 8-byte
    alignment its size allows)."""
    return pt._read_table(pa, min(ptrs, root_entries) if is_root else None)


def scan_tables(pt: Table, start_level: int, root_pa: int, pgd_pages: int, granule: int,
                root_entries: int) -> tuple:
    """Every table page reachable from the root, level by level, as three
    uint64/int arrays (pa, level, parent entry PA or NO_PARENT for a root
    page). Raises ValueError when a page is reached twice (tables must form a
    tree, as every kernel writes them).

    Only pages above the last level are read; the children found are kept in
    numpy arrays, so opening an image of a million table pages costs a few
    bytes per page, not a Python object per page."""
    ptrs = granule // 8
    pas = [np.arange(pgd_pages, dtype=np.uint64) * np.uint64(granule) + np.uint64(root_pa)]
    levels = [np.full(pgd_pages, start_level, dtype=np.int8)]
    parents = [np.full(pgd_pages, NO_PARENT, dtype=np.uint64)]
    frontier = pas[0]
    level = start_level
    while frontier.size and level < 3:
        kids, froms = [], []
        for pa in frontier.tolist():
            page = read_page(pt, pa, level == start_level, root_entries, ptrs)
            if page is None:
                continue
            idx = np.flatnonzero((page & np.uint64(3)) == np.uint64(3))
            kids.append(table_oa(page[idx], granule))
            froms.append(idx.astype(np.uint64) * np.uint64(8) + np.uint64(pa))
        frontier = np.concatenate(kids) if kids else np.zeros(0, dtype=np.uint64)
        pas.append(frontier)
        levels.append(np.full(frontier.size, level + 1, dtype=np.int8))
        parents.append(np.concatenate(froms) if froms else np.zeros(0, dtype=np.uint64))
        _refuse_aliases(np.concatenate(pas), np.concatenate(parents), level)
        level += 1
    return np.concatenate(pas), np.concatenate(levels), np.concatenate(parents)


NO_PARENT = np.uint64((1 << 64) - 1)


def _refuse_aliases(pas: np.ndarray, parents: np.ndarray, level: int) -> None:
    """ValueError naming the first page (in walk order) reached twice."""
    order = np.argsort(pas, kind="stable")
    same = pas[order[1:]] == pas[order[:-1]]
    if not same.any():
        return
    second = int(order[1:][same].min())
    child = int(pas[second])
    first_from = int(parents[int(np.flatnonzero(pas == pas[second])[0])])
    where = "the root" if first_from == NO_PARENT else f"the entry at PA {first_from:#x}"
    raise ValueError(
        f"table page {child:#x} is reached from the entry at PA {int(parents[second]):#x} "
        f"(level {level}) and from {where}: the tables do not form a tree")


def open_image(cls: type, physmem: Any, *, vttbr: Any, vtcr: Any, xnx: Any = True,
               fwb: Any = False, allow_aliases: Any = False) -> Table:
    """Stage2PageTable.from_image() for a PhysMem (see its docstring)."""
    segments = getattr(physmem, "segments", None)
    if segments is None:
        raise TypeError(f"physmem must be an s2fast.PhysMem (or a path to an exported image), "
                        f"not {type(physmem).__name__} {physmem!r}")
    v = decode_vtcr(vtcr)
    root = decode_vttbr(vttbr, v)
    xnx, fwb = checks.boolean("xnx", xnx), checks.boolean("fwb", fwb)
    allow_aliases = checks.boolean("allow_aliases", allow_aliases)
    segs, patched = engine_segments(segments, v, root, v.root_entries)
    core = _core.Stage2Core.__new__(_core.Stage2Core)
    core.init_image(v.page_shift, v.ia_bits, v.start_level, v.pgd_pages, root, fwb, xnx,
                    v.ps_bits, v.ha, segs, CorruptTableError)
    pt = cls._from_core(core, v.geometry(), fwb=fwb, xnx=xnx, tlb_range=False, vttbr=int(vttbr),
                        physmem=physmem, patched_pages=patched,
                        vttbr_ignored=vttbr_ignored_bits(vttbr, v))
    if not allow_aliases:
        scan_tables(pt, v.start_level, root, v.pgd_pages, v.granule, v.root_entries)
    return pt


def engine_segments(segments: Any, v: Vtcr, root: int, root_entries: int) -> tuple:
    """The memory the engine reads tables from, and the PAs of table pages
    copied to get there.

    The engine reads a table page in place, so the page must lie in one
    segment whose bytes are 8-byte aligned in host memory. A dump may break
    that: an ELF PT_LOAD at a file offset that is 4 mod 8 (QEMU pads notes to
    4 bytes), or a page cut in two by overlapping PT_LOADs. Such table pages,
    and only those, are copied into aligned memory; everything else stays a
    view of the dump."""
    aligned, odd = [], []
    for s in segments:
        data = np.ascontiguousarray(s.data).reshape(-1).view(np.uint8)
        (odd if int(s.pa) % 8 or data.ctypes.data % 8 else aligned).append((int(s.pa), data))
    if not odd and len(aligned) <= 1:
        return aligned, ()
    everything = sorted(aligned + odd, key=lambda x: x[0])
    starts = [pa for pa, _ in aligned]
    G, ptrs = v.granule, v.granule // 8

    def in_place(pa: int, n: int) -> Optional[np.ndarray]:
        i = bisect.bisect_right(starts, pa) - 1
        if i >= 0 and pa % 8 == 0 and pa + n <= starts[i] + aligned[i][1].size:
            off = pa - starts[i]
            return aligned[i][1][off:off + n].view("<u8")
        return None

    def assembled(pa: int, n: int) -> Optional[np.ndarray]:
        out, cur = bytearray(), pa
        i = max(bisect.bisect_right([p for p, _ in everything], pa) - 1, 0)
        for spa, data in everything[i:]:
            if cur >= pa + n or spa > cur:
                break
            if spa + data.size > cur:
                take = min(pa + n, spa + data.size) - cur
                out += data[cur - spa:cur - spa + take].tobytes()
                cur += take
        return np.frombuffer(bytes(out), dtype="<u8").copy() if cur == pa + n else None

    patches: dict = {}
    seen = set()
    frontier = [(root + i * G, min(ptrs, root_entries) * 8) for i in range(v.pgd_pages)]
    level = v.start_level
    while frontier and level <= 3:
        nxt = []
        for pa, n in frontier:
            if pa in seen:
                continue
            seen.add(pa)
            page = in_place(pa, n)
            if page is None:
                page = assembled(pa, n)
                if page is None:
                    continue                    # not in memory: walks report it
                patches[pa] = page
            if level < 3:
                desc = page[(page & np.uint64(3)) == np.uint64(3)]
                nxt += [(c, G) for c in table_oa(desc, G).tolist()]
        frontier = nxt
        level += 1
    if not patches:
        return aligned, ()
    # Cut the patched ranges out of the aligned segments, then add the copies.
    cuts = []
    for pa in sorted(patches):
        end = pa + patches[pa].nbytes
        if cuts and pa < cuts[-1][1]:
            del patches[pa]                    # overlaps one already taken (aliased garbage)
            continue
        cuts.append((pa, end))
    out = []
    for spa, data in aligned:
        cur, end = spa, spa + data.size
        for a, b in cuts:
            if b <= cur or a >= end:
                continue
            if a > cur:
                out.append((cur, data[cur - spa:a - spa]))
            cur = max(cur, b)
        if cur < end:
            out.append((cur, data[cur - spa:]))
    out += [(pa, patches[pa].view(np.uint8)) for pa in patches]
    out.sort(key=lambda x: x[0])
    return out, tuple(sorted(patches))


def read_sidecar(path: Union[str, os.PathLike]) -> dict:
    side = os.fspath(path) + ".json"
    try:
        with open(side) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)!r} has no sidecar {side!r}; pass a PhysMem with vttbr= "
                         "and vtcr= instead") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"sidecar {side!r} is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != IMAGE_FORMAT:
        raise ValueError(f"sidecar {side!r} is not an {IMAGE_FORMAT} description")
    if meta.get("version") != IMAGE_VERSION:
        raise ValueError(f"sidecar {side!r} has version {meta.get('version')!r}; "
                         f"this s2fast reads version {IMAGE_VERSION}")
    for key in ("base_pa", "root_pa", "vttbr", "vtcr", "granule", "size"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool):
            raise ValueError(f"sidecar {side!r}: {key!r} must be an integer")
    return meta


def open_exported(cls: type, path: Union[str, os.PathLike], *, vttbr: Optional[int] = None,
                  vtcr: Optional[int] = None, xnx: Optional[bool] = None,
                  fwb: Optional[bool] = None, allow_aliases: bool = False) -> Table:
    """Open an image written by export_image(): the raw pages plus PATH.json."""
    meta = read_sidecar(path)
    pm = PhysMem.from_file(path, meta["base_pa"])
    return open_image(cls, pm, vttbr=meta["vttbr"] if vttbr is None else vttbr,
                      vtcr=meta["vtcr"] if vtcr is None else vtcr,
                      xnx=bool(meta.get("xnx", True)) if xnx is None else xnx,
                      fwb=bool(meta.get("fwb", False)) if fwb is None else fwb,
                      allow_aliases=allow_aliases)


def export_image(pt: Table, path: Union[str, os.PathLike]) -> dict:
    """Write pt's table pages to PATH (raw, one segment from base_pa) and
    PATH.json. An image-backed table is imported into a pool first, so its
    tables move to pool addresses; leaves and translations do not change."""
    pt._require_tables("export")
    if pt.read_only:
        pt = pt.copy()
    pool = pt._live_pool_pages()            # freed pages: not part of the table
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(pool.astype("<u8", copy=False).tobytes())
    meta = {
        "format": IMAGE_FORMAT, "version": IMAGE_VERSION,
        "base_pa": _pool.TABLE_PA_BASE, "root_pa": pt.root_pa,
        "vttbr": pt.root_pa, "vtcr": pt.vtcr, "granule": pt.granule,
        "size": int(pool.nbytes), "fwb": pt.fwb, "xnx": pt.xnx,
    }
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def copy_table(pt: Table, cls: type) -> Table:
    """A writable pool table with the same descriptors as pt (tables moved
    to pool addresses, every other bit kept)."""
    g = pt.geometry
    pt._require_tables("copy")
    if not 32 <= g.ia_bits <= 48:
        raise ValueError(f"a {g.ia_bits}-bit IPA space cannot be held in a pool "
                         "(the kernel's stage 2 supports 32 to 48 bits)")
    want = geometry(g.ia_bits, g.granule)
    if (want.start_level, want.pgd_pages) != (g.start_level, g.pgd_pages):
        raise ValueError(f"this table starts at level {g.start_level} with {g.pgd_pages} root pages; "
                         f"KVM's tables for {g.ia_bits}-bit IPAs start at level {want.start_level} "
                         f"with {want.pgd_pages}, so a pool cannot hold it")
    root_entries = g.root_entries
    pas, levels, parents = scan_tables(pt, g.start_level, pt.root_pa, g.pgd_pages, g.granule, root_entries)
    # Page i of the copy is pas[i]; a child's new PA follows from its rank.
    order = np.argsort(pas)
    sorted_pas = pas[order]
    out = np.zeros((pas.size, g.ptrs_per_table), dtype=np.uint64)
    addr_bits = np.uint64(address_bits(g.granule))
    for i, (pa, level, parent) in enumerate(zip(pas.tolist(), levels.tolist(), parents.tolist())):
        src = read_page(pt, pa, parent == NO_PARENT, root_entries, g.ptrs_per_table)
        if src is None:
            where = "the root" if parent == NO_PARENT else f"the descriptor at PA {parent:#x}"
            raise ValueError(
                f"table page {pa:#x} (level {level}, from {where}) is outside the image's memory: "
                "a pool copy cannot hold a table it cannot read")
        page = out[i]
        page[:len(src)] = src
        if level < 3:
            idx = np.flatnonzero((page & np.uint64(3)) == np.uint64(3))
            rank = order[np.searchsorted(sorted_pas, table_oa(page[idx], g.granule))]
            new = np.uint64(_pool.TABLE_PA_BASE) + rank.astype(np.uint64) * np.uint64(g.granule)
            page[idx] = (page[idx] & ~addr_bits) | new
    new_pt = cls(g.ia_bits, granule=g.granule, fwb=pt.fwb, xnx=pt.xnx, tlb_range=pt.tlb_range)
    new_pt._load_pages(out)
    new_pt.reset_stats()
    return new_pt
