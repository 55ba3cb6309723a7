"""Interleaved A/B timing of two s2fast builds on the engine's 4 KiB hot paths.

    python bench/ab_engine.py TREE_A TREE_B [PAIRS]

TREE_A and TREE_B are source trees with the extension built in place
(``python setup.py build_ext --inplace``), e.g. two ``git worktree``s. Each
pair runs one fresh process per tree, in alternating order, so slow and fast
spells of a noisy machine fall on both sides alike. Printed per operation: the
best time of each tree, their ratio, and the median of the per-pair ratios
(A's time over B's: above 1 means B is faster).

The operations, on a 16 GiB guest: building it with 4 KiB pages, a built-in
counting LEAF walk, wrprotect, split of 1 GiB blocks to pages, a Python
visitor over 256 MiB, and translate_batch() of 1 M random IPAs and of every
page's IPA in order (into a reused result array). Only API that every
version since translate_batch(out=) (85bac01) has is used, so any two such
commits compare."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

GiB = 1 << 30
GUEST = 16 * GiB
PHYS = 1 << 40


def measure() -> dict:
    import numpy as np

    import s2fast
    from s2fast import MemCache, Stage2PageTable, WalkFlags

    def best(fn, n):
        t = float("inf")
        for _ in range(n):
            s = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - s)
        return t

    def build_4k():
        pt = Stage2PageTable(40)
        assert pt.map(0, GUEST, PHYS, s2fast.RW, memcache=MemCache(1 << 21), force_pte=True) == 0
        return pt

    def timed(prepare, op):
        pt = prepare()
        s = time.perf_counter()
        assert op(pt) == 0
        return time.perf_counter() - s

    def blocks():
        pt = Stage2PageTable(40)
        assert pt.map(0, GUEST, PHYS, s2fast.RW, memcache=MemCache(64)) == 0
        return pt

    out = {"build_4k": best(build_4k, 2)}
    pt = build_4k()
    cv = s2fast.CountVisitor()

    def count_walk():
        cv.reset()
        pt.walk(0, GUEST, cv, WalkFlags.LEAF)

    out["count_walk_4k"] = best(count_walk, 5)
    out["wrprotect_4k"] = min(timed(build_4k, lambda p: p.wrprotect(0, GUEST)) for _ in range(2))
    out["split_1g"] = min(timed(blocks, lambda p: p.split(0, GUEST, MemCache(1 << 19))) for _ in range(2))
    out["python_walk_256m"] = best(lambda: pt.walk(0, GiB // 4, lambda ctx, visit: 0, WalkFlags.LEAF), 3)

    # Fixed seed: both trees translate the same IPAs.
    rand = np.random.default_rng(1).integers(0, GUEST, 1 << 20, dtype=np.uint64)
    seq = np.arange(0, GUEST, 4096, dtype=np.uint64)
    rows_rand = np.empty(len(rand), dtype=s2fast.TRANSLATE_DTYPE)
    rows_seq = np.empty(len(seq), dtype=s2fast.TRANSLATE_DTYPE)
    out["translate_random"] = best(lambda: pt.translate_batch(rand, "read", out=rows_rand), 5)
    out["translate_seq"] = best(lambda: pt.translate_batch(seq, "read", out=rows_seq), 3)
    assert rows_rand["ok"].all() and rows_seq["ok"].all()
    return out


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    trees = [os.path.abspath(t) for t in argv[:2]]
    pairs = int(argv[2]) if len(argv) == 3 else 20
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    for i in range(pairs):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run([sys.executable, __file__, "--child"], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True)
            runs[tree].append(json.loads(out.stdout))
    a, b = trees
    print(f"A = {a}\nB = {b}\n{pairs} interleaved pairs; times in ms (best of each side)")
    print(f"{'operation':18s} {'A':>9s} {'B':>9s}  {'A/B best':>8s}  {'median A/B':>10s}")
    for op in runs[a][0]:
        ta = [r[op] for r in runs[a]]
        tb = [r[op] for r in runs[b]]
        paired = statistics.median(x / y for x, y in zip(ta, tb))
        print(f"{op:18s} {min(ta) * 1e3:9.2f} {min(tb) * 1e3:9.2f}  {min(ta) / min(tb):8.3f}  {paired:10.3f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(measure()))
    else:
        main(sys.argv[1:])
