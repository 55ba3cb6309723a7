"""Regression tests for problems found in review of the engine."""
import pathlib
import subprocess
import sys

import pytest

import s2fast
from s2fast import CorruptTableError, MemCache, Stage2PageTable, Strategy, WalkFlags

GiB = 1 << 30


def test_core_cannot_be_initialised_twice():
    pt = Stage2PageTable(40)
    with pytest.raises(RuntimeError, match="already initialised"):
        pt._core.__init__(12, 40, 1, 2, False, False, False, 1 << 24, CorruptTableError)
    assert pt.map(0, 4096, 0, s2fast.RW, memcache=MemCache(4)) == 0


def test_core_checks_memcache_type_and_null_split_cache():
    pt = Stage2PageTable(40)
    with pytest.raises(TypeError):
        pt._core.map(1 << 31, 1 << 21, 0, 0xF, "not a memcache", 0)
    with pytest.raises(TypeError, match="split needs a MemCache"):
        pt._core.split(0, GiB, None)
    with pytest.raises(ValueError, match="geometry"):
        s2fast._core.Stage2Core(12, 40, -5, 2, False, False, False, 1 << 24, CorruptTableError)


@pytest.mark.parametrize("flags", [WalkFlags.TABLE_POST, WalkFlags.TABLE_PRE])
def test_split_rejects_table_visits_the_split_visitor_would_treat_as_blocks(flags):
    pt = Stage2PageTable(40)
    pt.map(0, GiB, 1 << 40, s2fast.RW)
    with pytest.raises(ValueError, match="table visits"):
        pt.split(0, GiB, MemCache(600), flags=flags)
    assert pt.leaves()["level"].tolist() == [1]
    # SKIP_RETURN sees tables with TABLE_PRE already; POST is still refused.
    if flags == WalkFlags.TABLE_PRE:
        assert pt.split(0, GiB, MemCache(600), strategy=Strategy.SKIP_RETURN, flags=flags) == 0


SHARED_VISITOR = """
import threading, s2fast
from s2fast import *
ts = [Stage2PageTable(40) for _ in range(2)]
for p in ts:
    p.map(0, 64 << 20, 0x80000000, 0xf, memcache=MemCache(1000), force_pte=True)
cv = CollectVisitor()
refused = [0]
def run(p):
    for _ in range(200):
        try:
            p.walk(0, 64 << 20, cv)
            cv.result()
        except RuntimeError:
            refused[0] += 1
th = [threading.Thread(target=run, args=(p,)) for p in ts]
[t.start() for t in th]; [t.join() for t in th]
print("ok")
"""


def test_builtin_visitor_shared_between_threads_is_refused_not_corrupted():
    root = pathlib.Path(s2fast.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", SHARED_VISITOR], cwd=str(root), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip() == "ok"
