"""Drive a kernel conformance scenario through a page-table implementation.

The scenarios and the kernel's own results live in ``tests/data/kernel``
(copied from the project's shared conformance set; see FORMAT.md there).
``run_scenario`` replays one scenario through any implementation of the
s2fast API (the Cython engine or the pure-Python reference) and returns the
results in the golden files' layout, so a test can compare them field by
field.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from types import SimpleNamespace
from typing import Any, Callable, Iterator

# Hashing only (harness code, not the implementation under test).
from support.fnv import fnv1a_leaves, fnv1a_values

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "kernel"
GRANULE_DIRS = {4096: DATA, 16384: DATA / "granules" / "16k", 65536: DATA / "granules" / "64k"}

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
TABLE_ADDR_BITS = ((1 << 48) - 1) & ~((1 << 12) - 1)  # bits [47:12]

KIND_NAMES = {1: "LEAF", 2: "TABLE_PRE", 4: "TABLE_POST"}
LAST_LEVEL = 3


def scenario_names(granule: int = 4096) -> list[str]:
    return sorted(p.stem for p in (GRANULE_DIRS[granule] / "scenarios").glob("*.json"))


def load(granule: int, name: str) -> tuple[dict, dict]:
    base = GRANULE_DIRS[granule]
    with open(base / "scenarios" / f"{name}.json") as f:
        scenario = json.load(f)
    with open(base / "golden" / f"{name}.json") as f:
        golden = json.load(f)
    return scenario, golden


def to_int(v: Any) -> int:
    if isinstance(v, str):
        return int(v, 0)
    return int(v)


def fnv1a(h: int, values: Iterator[int]) -> int:
    return fnv1a_values(h, *values)


def is_table(pte: int, level: int) -> bool:
    return level < LAST_LEVEL and (pte & 3) == 3


def normalise(pte: int, level: int) -> int:
    return pte & ~TABLE_ADDR_BITS if is_table(pte, level) else pte


def parse_prot(impl: SimpleNamespace, v: Any) -> int:
    if isinstance(v, (int, str)) and not isinstance(v, list):
        return to_int(v)
    prot = 0
    for name in v:
        prot |= int(getattr(impl.Prot, "NC" if name == "NORMAL_NC" else name))
    return prot


def parse_flags(impl: SimpleNamespace, v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, (int, str)):
        return to_int(v)
    flags = 0
    for name in v:
        flags |= int(getattr(impl.WalkFlags, name))
    return flags


def events(pt: Any) -> dict:
    """The per-operation counters in the golden files' layout."""
    s = pt.stats.as_dict()
    return {
        "visits": s["visits"],
        "reloads": s["reloads"],
        "entries_read": s["entries_read"],
        "callbacks": {"LEAF": s["callbacks_leaf"], "TABLE_PRE": s["callbacks_table_pre"],
                      "TABLE_POST": s["callbacks_table_post"]},
        "callbacks_by_level": {str(lv): s[f"callbacks_level_{lv}"] for lv in range(4)},
        "tlbi": {"vmid_ipa": s["tlbi_vmid_ipa"], "vmid_ipa_nsh": s["tlbi_vmid_ipa_nsh"],
                 "vmid_range": s["tlbi_vmid_range"], "vmid": s["tlbi_vmid"]},
        "tlbi_range_pages": s["tlbi_range_pages"],
        "tlbi_log": [list(e) for e in s["tlbi_log"]],
        "tlbi_log_total": s["tlbi_log_total"],
        "cmo_calls": s["cmo_calls"],
        "cmo_bytes": s["cmo_bytes"],
        "dcache_calls": s["dcache_calls"],
        "dcache_bytes": s["dcache_bytes"],
        "icache_calls": s["icache_calls"],
        "icache_bytes": s["icache_bytes"],
        "cmo_log": [list(e) for e in s["cmo_log"]],
        "cmo_log_total": s["cmo_log_total"],
        "pages_alloc": s["pages_alloc"],
        "pages_free": s["pages_free"],
        "mc_used": s["mc_used"],
        "mc_exhausted": s["mc_exhausted"],
        "unlinked_tables_freed": s["unlinked_tables_freed"],
        "warnings": s["warnings"],
        "warning_sites": list(s["warning_sites"]),
        "mm_errors": 0,
    }


def dump(pt: Any, limit: int, summary: bool) -> dict:
    arr = pt.leaves()
    inval = [[int(r["ipa"]), int(r["level"]), int(r["pte"])] for r in pt.annotations()]
    by_level = {"1": 0, "2": 0, "3": 0}
    levels, counts = np.unique(arr["level"], return_counts=True)
    for lv, n in zip(levels, counts):
        by_level[str(int(lv))] = int(n)
    h = fnv1a_leaves(FNV_OFFSET, arr)
    out: dict = {}
    if summary or len(arr) > limit:
        out["leaves_omitted"] = True
    else:
        out["leaves"] = [[int(r["ipa"]), int(r["level"]), int(r["pte"])] for r in arr]
    out.update({
        "invalid_nonzero": inval,
        "leaf_count": len(arr),
        "leaf_count_by_level": by_level,
        "leaves_hash": f"0x{h:016x}",
        "table_pages": pt.table_pages(),
        "pages_live": pt.pages_live,
    })
    return out


def make_table(impl: SimpleNamespace, scenario: dict, granule: int) -> Any:
    return impl.Stage2PageTable(
        to_int(scenario.get("ia_bits", 40)), granule=granule,
        fwb=bool(scenario.get("fwb", False)), xnx=bool(scenario.get("xnx", False)),
        tlb_range=bool(scenario.get("tlb_range", False)))


def run_scenario(impl: SimpleNamespace, scenario: dict, granule: int = 4096,
                 op_hook: Callable[[Any, dict, dict], None] | None = None) -> dict:
    """Replay ``scenario``; return ``{"config", "init", "results", "final"}``."""
    on_empty = "allocate" if scenario.get("mc_policy", "null") == "kernel" else "fail"
    dump_limit = to_int(scenario.get("dump_limit", 4096))
    trace_limit = to_int(scenario.get("trace_limit", 20000))

    def memcache(op: dict) -> Any:
        mc = op.get("mc", 10000)
        if mc is None:
            return None
        return impl.MemCache(pages=to_int(mc), on_empty=on_empty)

    pt = make_table(impl, scenario, granule)
    out: dict = {
        "config": {"ia_bits": pt.ia_bits, "granule": pt.granule, "start_level": pt.start_level,
                   "pgd_pages": pt.pgd_pages, "vtcr": pt.vtcr},
        "init": {"ret": 0, "events": events(pt)},
        "results": [],
    }
    for i, op in enumerate(scenario["ops"]):
        pt.reset_stats()
        kind = op["op"]
        r: dict = {"i": i, "op": kind}
        g = lambda k, d=None: to_int(op[k]) if k in op and op[k] is not None else d  # noqa: E731
        if kind == "map":
            mc = memcache(op)
            r["ret"] = pt.map(g("ipa"), g("size"), g("phys"), parse_prot(impl, op.get("prot", ["R", "W"])),
                              memcache=mc, flags=parse_flags(impl, op.get("flags")))
            r["mc_left"] = -1 if mc is None else mc.nobjs
        elif kind == "unmap":
            r["ret"] = pt.unmap(g("ipa"), g("size"))
        elif kind == "wrprotect":
            r["ret"] = pt.wrprotect(g("ipa"), g("size"))
        elif kind == "split":
            mc = memcache(op)
            r["ret"] = pt.split(g("ipa"), g("size"), mc)
            r["mc_left"] = -1 if mc is None else mc.nobjs
        elif kind == "relax_perms":
            r["ret"] = pt.relax_perms(g("ipa"), parse_prot(impl, op.get("prot", [])),
                                      flags=parse_flags(impl, op.get("flags")))
        elif kind == "mkyoung":
            r["ret"] = pt.mkyoung(g("ipa"), flags=parse_flags(impl, op.get("flags")))
        elif kind == "test_clear_young":
            young = pt.test_clear_young(g("ipa"), g("size"), bool(op.get("mkold", False)))
            r["ret"] = 1 if young else 0
            r["young"] = bool(young)
        elif kind == "get_leaf":
            ret, pte, level = pt.get_leaf(g("ipa"))
            r.update({"ret": ret, "pte": pte, "level": level})
        elif kind == "walk":
            fail_at = g("fail_at", -1)
            fail_ret = g("fail_ret", -22)
            trace: list = []
            count = [0]
            h = [FNV_OFFSET]

            def visitor(ctx: Any, visit: int) -> int:
                n = count[0]
                count[0] = n + 1
                tbl = is_table(ctx.old, ctx.level)
                pte = normalise(ctx.old, ctx.level)
                h[0] = fnv1a(h[0], (int(visit), ctx.level, ctx.addr, pte, int(tbl)))
                if len(trace) < trace_limit:
                    trace.append([KIND_NAMES[int(visit)], ctx.level, ctx.addr, pte, tbl])
                return fail_ret if n == fail_at else 0

            r["ret"] = pt.walk(g("ipa"), g("size"), visitor, parse_flags(impl, op.get("flags")))
            r["callbacks_total"] = count[0]
            r["trace_hash"] = f"0x{h[0]:016x}"
            if op.get("trace", True):
                r["trace"] = trace
                if count[0] > trace_limit:
                    r["trace_truncated"] = True
        elif kind == "flush":
            r["ret"] = pt.flush(g("ipa"), g("size"))
        elif kind == "set_owner":
            mc = memcache(op)
            r["ret"] = pt.set_owner(g("ipa"), g("size"), g("owner"), mc)
            r["mc_left"] = -1 if mc is None else mc.nobjs
        elif kind == "pte_prot":
            r["ret"] = 0
            r["prot"] = int(impl.pte_prot(g("pte")))
        elif kind == "dump":
            r["ret"] = None
            r["dump"] = dump(pt, dump_limit, bool(op.get("summary", False)))
        elif kind == "destroy":
            pt.destroy()
            r["ret"] = None
            r["pages_live"] = pt.pages_live
        else:  # pragma: no cover - the data set has no other ops
            raise ValueError(f"unknown op {kind!r}")
        r["events"] = events(pt)
        if op_hook is not None:
            op_hook(pt, op, r)
        out["results"].append(r)
    out["final"] = dump(pt, dump_limit, False)
    return out


def diff(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ (first few, readable)."""
    out: list[str] = []
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for k in theirs:
            if k not in ours:
                out.append(f"{path}.{k}: missing (kernel {str(theirs[k])[:120]})")
            else:
                out += diff(ours[k], theirs[k], f"{path}.{k}")
        for k in ours:
            if k not in theirs:
                out.append(f"{path}.{k}: extra ({str(ours[k])[:120]})")
    elif isinstance(theirs, list) and isinstance(ours, list):
        if len(ours) != len(theirs):
            out.append(f"{path}: length {len(ours)} != kernel {len(theirs)}")
        for i, (a, b) in enumerate(zip(ours, theirs)):
            out += diff(a, b, f"{path}[{i}]")
            if len(out) > 8:
                break
    elif ours != theirs and not (isinstance(ours, bool) and ours == theirs):
        out.append(f"{path}: ours {str(ours)[:200]} != kernel {str(theirs)[:200]}")
    return out


def compare(impl: SimpleNamespace, granule: int, name: str) -> list[str]:
    scenario, golden = load(granule, name)
    ours = run_scenario(impl, scenario, granule)
    problems = []
    cfg = golden["config"]
    for k in ("ia_bits", "start_level", "pgd_pages", "vtcr"):
        if ours["config"][k] != cfg[k]:
            problems.append(f"config.{k}: ours {ours['config'][k]} != kernel {cfg[k]}")
    problems += diff(ours["init"], golden["init"], "init")
    for o, t in zip(ours["results"], golden["results"]):
        d = diff(o, t, f"op[{t['i']}]({t['op']})")
        problems += d
        if len(problems) > 20:
            break
    problems += diff(ours["final"], golden["final"], "final")
    return problems
