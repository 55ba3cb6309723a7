"""Print a per-strategy table from a pytest-benchmark JSON file written by
bench/test_variants.py (`pytest bench/test_variants.py --benchmark-json=F`)."""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "strategy" not in e:
            continue
        groups[(e["granule"], e["backing"])][e["strategy"]] = (b["stats"]["min"], e)
    for (granule, backing), rows in groups.items():
        base = rows.get("KERNEL", (None,))[0]
        print(f"\n{granule // 1024} KiB granule, backing {backing}")
        print(f"{'strategy':22} {'entries read':>14} {'callbacks':>12} {'tlbi':>8} {'pages':>8} "
              f"{'time (ms)':>10} {'speed-up':>9}")
        for name, (t, e) in rows.items():
            speed = f"{base / t:8.2f}x" if base else ""
            print(f"{name:22} {e['entries_read']:>14,} {e['callbacks']:>12,} {e['tlbi']:>8,} "
                  f"{e['pages_alloc']:>8,} {t * 1e3:>10.1f} {speed:>9}")


if __name__ == "__main__":
    main(sys.argv[1])
