"""Issue 11, "the first hour": what a new user meets first works, and a guest
too big for the machine is refused before anything is built. One section per
item of the issue."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import s2fast
from s2fast import MemCache, Stage2PageTable, Strategy, WalkFlags
from s2fast.cli import main
from s2fast.vm import VM, Workload, compare, diff_tables

ROOT = pathlib.Path(__file__).resolve().parent.parent
GiB, MiB = 1 << 30, 1 << 20


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str) -> str:
    assert err.startswith("s2fast: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- 1. too big for memory ------------------------------------------------------------

def test_compare_refuses_a_run_that_does_not_fit_before_building(monkeypatch):
    from s2fast.errors import InsufficientMemoryError

    def no_build(*a, **kw):
        raise AssertionError("a refused run must not build anything")

    monkeypatch.setattr(Workload, "run", no_build)
    w = Workload(guest_size="64G")
    with pytest.raises(InsufficientMemoryError) as e:
        compare(w, memory_limit="200M")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("a 64 GiB guest needs about ") and "200 MiB is available (memory_limit)" in msg
    assert isinstance(e.value, MemoryError)
    # The largest guest it names fits, and one more GiB does not.
    from s2fast.memory import estimate
    best = e.value.largest
    assert f"the largest 1g-backed guest that fits is {best >> 30} GiB" in msg
    assert estimate(w, 6, best).total <= 200 * MiB < estimate(w, 6, best + GiB).total
    assert e.value.needed == estimate(w).total > 200 * MiB


def test_cli_refuses_with_a_fake_memory_limit(monkeypatch):
    monkeypatch.setenv("S2FAST_MEMORY_LIMIT", "48M")
    code, out, err = run(["compare", "--guest-size", "4G", "--no-progress"])
    assert code == 2 and out == ""
    one_line_error(err)
    assert "a 4 GiB guest needs about" in err and "only 48 MiB is available (S2FAST_MEMORY_LIMIT)" in err
    assert "the largest 1g-backed guest that fits is" in err
    # presets are checked before their first run too
    code, out, err = run(["compare", "--preset", "rfc-16g-4k", "--no-progress"])
    assert code == 2 and out == "" and "a 16 GiB guest needs about" in one_line_error(err)
    monkeypatch.setenv("S2FAST_MEMORY_LIMIT", "lots")
    code, _, err = run(["compare", "--guest-size", "4G"])
    assert code == 2 and "S2FAST_MEMORY_LIMIT: size 'lots'" in one_line_error(err)


def test_cli_refuses_a_guest_beyond_the_descriptor_pool(monkeypatch):
    monkeypatch.setenv("S2FAST_MEMORY_LIMIT", "64T")
    code, out, err = run(["compare", "--guest-size", "100T"])
    assert code == 2 and out == ""
    assert "more than the descriptor pool's 32.0 GiB reservation" in one_line_error(err)


def test_cli_memory_error_anywhere_is_one_line(monkeypatch):
    import s2fast.cli as cli

    def huge(*a, **kw):
        return np.empty(1 << 62, dtype=np.uint8)     # numpy's _ArrayMemoryError

    monkeypatch.setattr(cli, "compare", huge)
    code, out, err = run(["compare", "--guest-size", "2G", "--no-progress"])
    assert code == 2 and out == ""
    assert one_line_error(err).startswith("s2fast: error: out of memory: ")


def test_table_estimate_is_the_split_guest_exactly():
    """The descriptor pages the estimate counts are the pages a run holds."""
    from s2fast.memory import table_pages
    for w in (Workload(guest_size="4G"), Workload(guest_size="2G", backing="4k", passes=0),
              Workload(guest_size="2G", initially_set=False), Workload(guest_size="2G", granule="16K"),
              Workload(guest_size="4G", granule="64K", backing="64k")):
        r = w.run(keep_vm=True)
        assert table_pages(w) == r.vm.pt.pages_live, w
    w = Workload(guest_size="4G", chunk=0)          # no split: build + what the faults add, an upper bound
    assert w.run(keep_vm=True).vm.pt.pages_live <= table_pages(w)


def test_available_memory_reads_the_machine(monkeypatch):
    from s2fast.memory import available_memory
    monkeypatch.delenv("S2FAST_MEMORY_LIMIT", raising=False)
    room, source = available_memory()
    assert room > 0 and source in ("MemAvailable", "the cgroup's memory limit",
                                   "the address-space limit (ulimit -v)", "unknown")
    assert available_memory("3G") == (3 * GiB, "memory_limit")


# -- 2. the checkout shadows the installed package --------------------------------------

def test_a_source_folder_without_the_engine_says_how_to_build(tmp_path):
    shutil.copytree(ROOT / "s2fast", tmp_path / "s2fast", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    env = dict(os.environ, PYTHONPATH="")
    res = subprocess.run([sys.executable, "-c", "import s2fast"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: s2fast was imported from ") and "has no compiled engine" in last
    assert "pip install -e ." in last


def test_setup_py_without_cython_says_what_to_install(tmp_path):
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'Cython':\n"
               "            raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"
               "sys.meta_path.insert(0, Block())\n")
    (tmp_path / "sitecustomize.py").write_text(blocker)
    res = subprocess.run([sys.executable, str(ROOT / "setup.py"), "build_ext", "--inplace"], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "Cython is needed to build s2fast's engine: pip install 'Cython>=3.1' numpy" in res.stderr


def _bench_conftest():
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "bench" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_children_import_this_s2fast_from_any_folder(tmp_path, monkeypatch):
    bench = _bench_conftest()
    (tmp_path / "s2fast").mkdir()      # a source folder without the engine, where the child starts
    (tmp_path / "s2fast" / "__init__.py").write_text("raise ImportError('the source folder')\n")
    monkeypatch.chdir(tmp_path)
    assert bench.run_child("import s2fast; print(s2fast.__file__)").strip() == s2fast.__file__
    with pytest.raises(AssertionError, match="(?s)exited with status 1.*ZeroDivisionError"):
        bench.run_child("1 / 0")


# -- 3. summarize.py on the whole suite's JSON ------------------------------------------

def test_summarize_reads_any_benchmark_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench" / "summarize.py")
    summ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summ)

    def b(name, strategy, entries, t, **kw):
        return {"name": name, "stats": {"min": t}, "extra_info": dict(strategy=strategy, entries_read=entries, **kw)}

    data = {"benchmarks": [
        b("test_split_256g[1g-KERNEL]", "KERNEL", 400, 2.0, granule=4096, backing="1g", callbacks=9, tlbi=3,
          pages_alloc=1),
        b("test_split_256g[1g-SKIP_LEVEL]", "SKIP_LEVEL", 200, 1.0, granule=4096, backing="1g", callbacks=9,
          tlbi=3, pages_alloc=1),
        # the workload benchmarks: a strategy, no granule, "tlbis"
        b("test_clear_pass_1[64g-1g-KERNEL]", "KERNEL", 300, 1.0, callbacks=5, tlbis=7, pages_alloc=2),
        b("test_clear_pass_1[64g-1g-SKIP_LEVEL]", "SKIP_LEVEL", 200, 1.0, callbacks=5, tlbis=7, pages_alloc=2),
        {"name": "test_build[64g-1g]", "stats": {"min": 1.0}, "extra_info": {"size": "64g"}},
    ]}
    path = tmp_path / "out.json"
    path.write_text(json.dumps(data))
    summ.main(str(path))
    out = capsys.readouterr().out
    assert "test_split_256g[1g]" in out and "test_clear_pass_1[64g-1g]" in out
    # reduction and speed-up are compare's (entries read); the time ratio is separate
    rows = [l.split() for l in out.splitlines() if l.startswith("SKIP_LEVEL")]
    assert rows[0][-3:] == ["50.0%", "2.00x", "2.00x"]
    assert rows[1][-3:] == ["33.3%", "1.50x", "1.00x"]


# -- 4. numpy integers from visitors; strategy names in split() ---------------------------

def test_a_visitor_may_return_a_numpy_integer():
    pt = Stage2PageTable(40)
    pt.map(0, 4 * GiB, 1 << 40, s2fast.RW, memcache=MemCache(8))
    assert pt.walk(0, 4 * GiB, lambda ctx, visit: np.int64(0), WalkFlags.LEAF) == 0
    assert pt.walk(0, 4 * GiB, lambda ctx, visit: np.int32(-7), WalkFlags.LEAF) == -7
    assert pt.walk(0, 4 * GiB, lambda ctx, visit: np.int64(s2fast.SKIP_SIBLINGS), WalkFlags.LEAF) == 0
    with pytest.raises(TypeError, match="not bool np.True_"):
        pt.walk(0, 4 * GiB, lambda ctx, visit: np.bool_(True), WalkFlags.LEAF)
    with pytest.raises(TypeError, match="not float64"):
        pt.walk(0, 4 * GiB, lambda ctx, visit: np.float64(0), WalkFlags.LEAF)


def test_split_takes_the_strategy_names_compare_takes():
    def blocks():
        pt = Stage2PageTable(40)
        pt.map(0, 2 * GiB, 1 << 40, s2fast.RW, memcache=MemCache(4))
        return pt

    for name, strategy in (("skip_level", Strategy.SKIP_LEVEL), ("SKIP-NEW-TABLE", Strategy.SKIP_LEVEL_NEW_TABLE),
                           ("SNT", Strategy.SKIP_LEVEL_NEW_TABLE), ("KERNEL", Strategy.KERNEL)):
        a, b = blocks(), blocks()
        assert a.split(0, 2 * GiB, MemCache(1100), strategy=name) == 0
        assert b.split(0, 2 * GiB, MemCache(1100), strategy=strategy) == 0
        assert a.stats == b.stats and np.array_equal(a.descriptors, b.descriptors)


# -- 5. one meaning of speed-up; --passes 0; the same columns everywhere -------------------

def test_passes_0_prints_no_infinite_ratio_and_no_writes():
    code, out, err = run(["compare", "--guest-size", "2G", "--passes", "0", "--no-progress"])
    assert code == 0, err
    assert "infx" not in out and "inf" not in out
    assert "no guest writes" in out.splitlines()[0] and "between passes" not in out.splitlines()[0]
    kernel = next(l for l in out.splitlines() if l.startswith("KERNEL"))
    assert kernel.split()[-3:] == ["-", "-", "identical"]
    d = json.loads(run(["compare", "--guest-size", "2G", "--passes", "0", "--json"])[1])
    assert d["rows"][0]["speedup"] is None
    # one CLEAR pass in initially-all-set mode has no writes either
    w = Workload(guest_size="2G", passes=1)
    assert "no guest writes" in w.describe()


def test_preset_tables_have_the_default_columns():
    _, default, _ = run(["compare", "--guest-size", "2G", "--strategies", "KERNEL", "--no-progress"])
    _, preset, _ = run(["compare", "--preset", "rfc-16g-thp", "--strategies", "KERNEL", "--passes", "1",
                        "--writes", "0", "--no-progress"])
    header = next(l for l in default.splitlines() if l.startswith("strategy"))
    headers = [l for l in preset.splitlines() if l.startswith("strategy")]
    assert len(headers) == 2 and all(h.split("  ")[0] == header.split("  ")[0] for h in headers)
    cols = lambda h: [c.strip() for c in h.split("  ") if c.strip()]  # noqa: E731
    assert cols(headers[0]) == cols(headers[1]) == cols(header)
    assert "reduction" in cols(header) and "speed-up" in cols(header)


# -- 6. FWB: hook calls and the maintenance done -------------------------------------------

@pytest.mark.parametrize("fwb", [False, True])
def test_cmos_done_next_to_hook_calls(fwb):
    # Building 4 GiB of pages maps 1 Mi cacheable pages: one dcache hook call
    # each, which does nothing on FWB hardware (clean_dcache_guest_page()).
    r = Workload(guest_size="4G", backing="4k", passes=1, fwb=fwb).run()
    assert r.build.summary["cmos"] == 1 << 20
    assert r.build.summary["cmos_done"] == (0 if fwb else 1 << 20)
    # The icache hook of an executable mapping does maintenance with FWB too.
    vm = VM(fwb=fwb)
    vm.pt.map(0, 8192, 1 << 40, s2fast.RWX, memcache=MemCache(4))
    snap = vm.snapshot()
    assert snap["icache_calls"] == 2 and snap["dcache_calls"] == 2
    assert snap["cmo_done"] == (2 if fwb else 4)
    # Both columns are in the tables and both figures in the JSON rows.
    argv = ["compare", "--guest-size", "2G", "--backing", "4k", "--strategies", "KERNEL", "--phases",
            "--no-progress"] + (["--fwb"] if fwb else [])
    code, text, err = run(argv)
    assert code == 0, err
    assert all(col in text for col in ("CMO calls", "CMOs done"))
    build = next(l for l in text.splitlines() if l.split()[:2] == ["KERNEL", "build"])
    assert build.split()[5:7] == (["524,288", "0"] if fwb else ["524,288", "524,288"])
    rows = json.loads(run(argv + ["--json"])[1])["rows"]
    assert "cmos_done" in rows[0] and "cmos" in rows[0]


def test_fwb_help_says_what_is_counted(capsys):
    with pytest.raises(SystemExit):
        s2fast.cli.build_parser().parse_args(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(no CMOs)" not in text
    assert "the dcache hook is still called (CMO calls) but does no maintenance (CMOs done)" in text


# -- 7. the README: from_image example, --backing mix, when SKIP_NEW_TABLE is unsafe --------

def test_readme_from_image_example_runs_on_the_docs_dump(tmp_path):
    from test_docs import python_blocks, run_blocks

    example = next(b for b in python_blocks(ROOT / "README.md") if "from_image" in b)
    assert "docs/external-images.md makes" in example      # says whose registers they are
    docs = python_blocks(ROOT / "docs" / "external-images.md")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    # the docs' example image and its ELF core "vmcore", then the README's example
    printed, _ = run_blocks(docs[:3] + [example], tmp_path)
    assert "IPA 0x40001234 -> PA 0x10000001234 (level 1, 0x40000000 bytes, RW X:none)" in printed
    assert "stage-2 dump: 40-bit IPA, 4K granule" in printed
    assert "L1 block pa=0x10000000000 size=1G" in printed


def test_readme_documents_the_mix_syntax():
    import re
    text = (ROOT / "README.md").read_text()
    m = re.search(r"`--backing (mix:[^`]+)`", text)
    assert m, "the README must show the --backing mix syntax"
    code, out, err = run(["compare", "--guest-size", "4G", "--backing", m.group(1), "--strategies", "KERNEL",
                          "--no-progress"])
    assert code == 0, err


def test_skip_new_table_initially_set_unsafe_only_for_a_lone_word():
    """With a 2 MiB chunk (a 2-page split cache) a 1 GiB block is first made a
    table of 2 MiB blocks; SKIP_NEW_TABLE skips that table. In initially-all-
    set mode a later word of the same 2 MiB range splits the block, so a full
    CLEAR ends identical; a lone word per 2 MiB range leaves it unsplit."""
    def clear(strategy, every):
        vm = VM(strategy=strategy, eager_split_chunk=2 * MiB, initially_set=True)
        slot = vm.add_memslot(4 * GiB, "1g")
        vm.enable_dirty_logging()
        bm = np.zeros_like(slot.dirty_bitmap)
        bm[::every] = np.uint64(1) if every > 1 else np.uint64(0xFFFFFFFFFFFFFFFF)
        vm.clear_dirty_log(slot, bm)
        return vm.pt

    assert diff_tables(clear("KERNEL", 1), clear("SKIP_LEVEL_NEW_TABLE", 1)).identical
    lone = diff_tables(clear("KERNEL", 8), clear("SKIP_LEVEL_NEW_TABLE", 8))   # 8 words = 2 MiB
    assert lone.unsplit == {2: 4}         # the first 2 MiB block of each 1 GiB block
    text = (ROOT / "README.md").read_text()
    assert "test_skip_new_table_initially_set_unsafe_only_for_a_lone_word" in text


# -- 8. UNSAFE marker, footnote, --fail-on-difference ---------------------------------------

UNSAFE_RUN = ["compare", "--guest-size", "4G", "--no-initially-set", "--writes", "0", "--passes", "1",
              "--strategies", "SKIP_NEW_TABLE", "--no-progress"]


def test_unsafe_rows_are_marked_and_footnoted():
    code, out, err = run(UNSAFE_RUN)
    assert code == 0 and err == ""
    lines = out.splitlines()
    row = next(l for l in lines if l.startswith("SKIP_LEVEL_NEW_TABLE"))
    assert row.endswith("UNSAFE*: 4 x 2 MiB unsplit")
    note = next(l for l in lines if l.startswith("* UNSAFE: SKIP_LEVEL_NEW_TABLE"))
    assert "4 x 2 MiB unsplit" in note and "left whole" in note


def test_fail_on_difference_gates():
    code, out, err = run(UNSAFE_RUN + ["--fail-on-difference"])
    assert code == 1 and "UNSAFE*" in out
    assert err == "s2fast: final table differs from KERNEL's under SKIP_LEVEL_NEW_TABLE (--fail-on-difference)\n"
    code, _, err = run(UNSAFE_RUN[:-2] + ["SKIP_LEVEL", "--no-progress", "--fail-on-difference"])
    assert code == 0 and err == ""
    code, _, _ = run(["compare", "--preset", "rfc-16g-hugetlb", "--strategies", "SNT", "--passes", "1",
                      "--writes", "0", "--no-progress", "--fail-on-difference"])
    assert code == 1


# -- 9. small things ---------------------------------------------------------------------------

def test_dump_says_1_run():
    code, out, _ = run(["dump", "--guest-size", "1G", "--backing", "1G"])
    assert code == 0
    assert ": 1 run, 1 leaf mapping 1G, 0 annotations" in out.splitlines()[0]


def test_dump_image_directory(tmp_path):
    code, out, err = run(["dump", "--image", str(tmp_path)])
    assert code == 2 and out == ""
    assert "is a directory, not a memory image file" in one_line_error(err)


def test_dump_header_says_vttbr_low_bits_were_ignored(tmp_path):
    from s2fast import PhysMem
    guest = Stage2PageTable(40)
    guest.map(GiB, GiB, 1 << 40, s2fast.RW, memcache=MemCache(2))
    meta = guest.export_image(str(tmp_path / "g.img"))
    pm = PhysMem.from_file(str(tmp_path / "g.img"), base_pa=meta["base_pa"])
    clean = Stage2PageTable.from_image(pm, vttbr=meta["vttbr"] | 1 | (3 << 48), vtcr=meta["vtcr"])
    assert "ignored" not in clean.dump().splitlines()[0]          # CnP and the VMID are not BADDR
    odd = Stage2PageTable.from_image(pm, vttbr=meta["vttbr"] | 0x40, vtcr=meta["vtcr"])
    assert odd.root_pa == clean.root_pa
    title = odd.dump().splitlines()[0]
    assert f"bits 0x40 are below the root table's alignment and were ignored (root at {clean.root_pa:#x})" in title
