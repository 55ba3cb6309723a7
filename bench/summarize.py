"""Print per-strategy tables from a pytest-benchmark JSON file: one table per
benchmark run under several strategies (bench/test_variants.py's splits,
bench/test_workloads.py's dirty-logging steps). Give it the JSON of any run,
the whole suite's included (`pytest bench --benchmark-json=F`); benchmarks
without a strategy are skipped.

reduction and speed-up are `s2fast compare`'s: KERNEL's entries read against
the strategy's (the cost model). "time ratio" is KERNEL's min time over the
strategy's: the simulator's wall time, not the kernel's."""
import json
import re
import sys
from collections import defaultdict


def _group(bench: dict) -> str:
    """The benchmark's name without the strategy in its parameters."""
    strategy = bench["extra_info"]["strategy"]
    name = re.sub(rf"(?<=[\[-]){re.escape(strategy)}(?=[\]-])", "", bench["name"])
    return name.replace("[-", "[").replace("-]", "]").replace("--", "-").replace("[]", "")


def tables(data: dict) -> list[str]:
    groups: dict[str, dict[str, tuple[float, dict]]] = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "strategy" in e and "entries_read" in e:
            groups[_group(b)][e["strategy"]] = (b["stats"]["min"], e)
    out = []
    for name, rows in groups.items():
        base_t, base = rows.get("KERNEL", (None, None))
        lines = [name, f"{'strategy':22} {'entries read':>14} {'callbacks':>12} {'TLBIs':>8} {'pages':>8} "
                       f"{'time (ms)':>10} {'reduction':>9} {'speed-up':>9} {'time ratio':>10}"]
        for strategy, (t, e) in rows.items():
            k = base["entries_read"] if base else 0
            n = e["entries_read"]
            reduction = f"{100 * (1 - n / k):8.1f}%" if k else "-"
            speed = f"{k / n:8.2f}x" if k and n else "-"
            ratio = f"{base_t / t:9.2f}x" if base_t and t else "-"
            tlbis = e.get("tlbis", e.get("tlbi", 0))
            lines.append(f"{strategy:22} {n:>14,} {e.get('callbacks', 0):>12,} {tlbis:>8,} "
                         f"{e.get('pages_alloc', 0):>8,} {t * 1e3:>10.1f} {reduction:>9} {speed:>9} {ratio:>10}")
        out.append("\n".join(lines))
    return out


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    found = tables(data)
    if not found:
        print(f"{path}: no benchmark with a strategy in its extra_info")
        return
    print("\n\n".join(found))
    print("\nreduction, speed-up: KERNEL's entries read against the strategy's; "
          "time ratio: KERNEL's min time over the strategy's (the simulator's).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
