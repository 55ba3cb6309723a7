"""The s2fast command: tables, JSON/CSV, presets, plots and one-line usage
errors with exit code 2."""
import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import s2fast
from s2fast import Strategy
from s2fast.cli import main

SMALL = ["compare", "--guest-size", "2G", "--writes", "64", "--no-progress"]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_compare_table_lists_every_strategy():
    code, out, err = run(SMALL)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("s2fast compare: 2 GiB guest at 0x40000000, backing 1g, eager-split chunk 2 MiB")
    assert lines[1] == "phases: enable, clear 1, writes 2, clear 2 (build excluded)"
    header = next(i for i, l in enumerate(lines) if l.startswith("strategy"))
    for col in ("entries read", "callbacks", "TLBIs", "CMOs", "pages alloc", "time (s)", "speed-up",
                "final table vs KERNEL"):
        assert col in lines[header]
    rows = lines[header + 2: header + 2 + len(Strategy)]
    assert [r.split()[0] for r in rows] == [s.name for s in Strategy]
    assert rows[0].split()[-2:] == ["1.00x", "identical"]
    assert all(r.endswith("identical") for r in rows)


def test_json_and_csv_carry_the_same_numbers():
    code, out, _ = run(SMALL + ["--json", "--strategies", "skip_level"])
    assert code == 0
    d = json.loads(out)
    assert list(d["strategies"]) == ["KERNEL", "SKIP_LEVEL"]
    assert d["workload"]["guest_size"] == 2 << 30 and d["workload"]["initially_set"] is True
    k = d["strategies"]["KERNEL"]
    assert k["summary"]["entries_read"] == sum(p["summary"]["entries_read"] for p in k["phases"])
    code, out, _ = run(SMALL + ["--csv", "--strategies", "skip_level"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["strategy"] for r in rows] == ["KERNEL", "SKIP_LEVEL"]
    assert int(rows[0]["entries_read"]) == k["summary"]["entries_read"]
    assert rows[1]["identical"] == "True"
    code, out, _ = run(SMALL + ["--csv", "--phases", "--strategies", "KERNEL"])
    assert [r["phase"] for r in csv.DictReader(io.StringIO(out))] == ["build", "enable", "clear 1", "writes 2",
                                                                       "clear 2"]


def test_phases_table():
    code, out, _ = run(SMALL + ["--phases", "--strategies", "KERNEL"])
    assert code == 0
    assert any(l.split()[:2] == ["KERNEL", "build"] for l in out.splitlines())
    assert sum(1 for l in out.splitlines() if l.startswith("KERNEL ")) == 1 + 5


def test_unsplit_blocks_show_in_the_table():
    code, out, _ = run(["compare", "--guest-size", "4G", "--no-initially-set", "--writes", "0", "--passes", "1",
                        "--strategies", "SKIP_NEW_TABLE", "--no-progress"])
    assert code == 0
    row = next(l for l in out.splitlines() if l.startswith("SKIP_LEVEL_NEW_TABLE"))
    assert row.endswith("UNSAFE*: 4 x 2 MiB unsplit")


def test_preset_shows_unsplit_blocks_and_reductions():
    code, out, err = run(["compare", "--preset", "rfc-16g-hugetlb", "--strategies", "SNT", "--writes", "64",
                          "--no-progress"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("s2fast compare --preset rfc-16g-hugetlb: 16 GiB memslot, 1 GiB blocks (hugetlb); "
                        "eager-split chunk 2 MiB")
    # The enable table comes first; find its reduction column by its header.
    header = next(l for l in lines if l.startswith("strategy"))
    col = re.split(r"\s{2,}", header.strip()).index("reduction")
    kernel = next(l for l in lines if l.startswith("KERNEL"))
    snt = next(l for l in lines if l.startswith("SKIP_LEVEL_NEW_TABLE"))
    assert kernel.split()[col] == "0.0%" and kernel.endswith("identical")
    assert snt.endswith("UNSAFE*: 16 x 2 MiB unsplit")
    assert float(snt.split()[col].rstrip("%")) > 40
    assert any(l.startswith("* UNSAFE: SKIP_LEVEL_NEW_TABLE (enable)") for l in lines)


def test_presets_command_lists_them():
    code, out, _ = run(["presets"])
    assert code == 0
    names = [l.split()[0] for l in out.splitlines()[2:]]
    assert names == ["rfc-64g-4k", "rfc-64g-thp", "rfc-64g-hugetlb", "rfc-16g-4k", "rfc-16g-thp",
                     "rfc-16g-hugetlb"]


def test_help_of_every_command_prints(capsys):
    # A '%' in a help string that argparse formats crashed `s2fast --help`.
    from s2fast.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "compare" in a.choices)
    for argv in [["--help"]] + [[name, "--help"] for name in sub.choices]:
        with pytest.raises(SystemExit) as ei:
            parser.parse_args(argv)
        assert ei.value.code == 0
        assert capsys.readouterr().out.startswith("usage: s2fast")


def test_progress_bar_is_drawn_and_erased():
    out, err = io.StringIO(), io.StringIO()
    assert main(SMALL[:-1] + ["--progress", "--strategies", "KERNEL"], out=out, err=err) == 0
    text = err.getvalue()
    assert text.startswith("\r[") and "%" in text and text.endswith("\r")
    assert text.rstrip("\r").split("\r")[-1].strip() == ""


@pytest.mark.parametrize("argv,message", [
    (["compare", "--guest-size", "12X"], "--guest-size: size '12X' is not a size"),
    (["compare", "--chunk", "3M"], "eager-split chunk 3145728 is not 0 or a block size"),
    (["compare", "--backing", "5g"], "backing '5g' is not 1g, 2m, 4k"),
    (["compare", "--backing", "mix:1g=60,4k=60"], "backing percentages add up to 120"),
    (["compare", "--strategies", "KERNEL,FAST"], "--strategies: strategy 'FAST' is not one of"),
    (["compare", "--passes", "-1"], "--passes: -1 is less than 0"),
    (["compare", "--writes", "lots"], "--writes: 'lots' is not a whole number"),
    (["compare", "--guest-size", "2G", "--writes", "999999"], "writes 999999 is more than the guest's 524288 pages"),
    (["compare", "--guest-size", "3M"], "guest size 3145728 is not a positive multiple of 2 MiB"),
    (["compare", "--pattern", "zigzag"], "argument --pattern: invalid choice: 'zigzag'"),
    (["compare", "--json", "--csv"], "not allowed with argument"),
    (["compare", "--preset", "rfc-1t"], "--preset: 'rfc-1t' is not one of rfc-64g-4k"),
    (["compare", "--preset", "rfc-16g-thp", "--guest-size", "2G"], "--guest-size cannot be combined with --preset"),
    (["compare", "--preset", "rfc-16g-thp", "--plot", "x.png"], "cannot be combined with --preset"),
    (["compare", "--plot-sizes", "1G,2G"], "--plot-sizes needs --plot"),
    (["compare", "--plot", "/no/such/folder/x.png"], "folder '/no/such/folder' does not exist"),
    (["compare", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "a command is required"),
])
def test_bad_arguments_one_line_exit_2(argv, message):
    code, out, err = run(argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("s2fast: error: ")
    assert message in err


def test_module_entry_point_exit_codes(tmp_path):
    # the child imports the same s2fast as this process (installed, or the built tree)
    where = str(pathlib.Path(s2fast.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=where + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ROOT = tmp_path
    bad = subprocess.run([sys.executable, "-m", "s2fast", "compare", "--chunk", "7X"], capture_output=True,
                         text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == ["s2fast: error: argument --chunk: size '7X' is not a size like 64G, 2M, 4K "
                                       "or a number of bytes"]
    ok = subprocess.run([sys.executable, "-m", "s2fast", "presets"], capture_output=True, text=True, cwd=ROOT,
                        env=env)
    assert ok.returncode == 0 and "rfc-64g-hugetlb" in ok.stdout
    ver = subprocess.run([sys.executable, "-m", "s2fast", "--version"], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert ver.returncode == 0 and ver.stdout.startswith("s2fast ")


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cost.png"
    code, out, _ = run(["compare", "--guest-size", "1G", "--writes", "16", "--strategies", "SKIP_LEVEL",
                        "--plot", str(png), "--plot-sizes", "256M,512M,1G", "--no-progress"])
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.rstrip().endswith(f"plot: {png} (256 MiB, 512 MiB, 1 GiB)")


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, out, err = run(SMALL + ["--plot", str(tmp_path / "x.png")])
    assert code == 2 and out == ""
    assert err == "s2fast: error: --plot needs matplotlib: pip install 's2fast[plot]'\n"


def test_compare_granule_64k():
    """A 64 KiB host: 512 MiB blocks, a 512 MiB chunk; one table page per
    block split, and the counts in JSON match the table."""
    argv = ["compare", "--granule", "64K", "--guest-size", "2G", "--backing", "512m", "--writes", "64",
            "--no-progress"]
    code, out, err = run(argv)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("s2fast compare: 2 GiB guest (64 KiB pages) at 0x40000000, backing 512m, "
                               "eager-split chunk 512 MiB, initially-all-set")
    rows = [l for l in lines if l.split() and l.split()[0] in Strategy.__members__]
    assert [r.split()[0] for r in rows] == [s.name for s in Strategy]
    assert all(r.endswith("identical") for r in rows)
    assert all(r.split()[6] == "4" for r in rows)           # pages alloc: one per 512 MiB block
    code, out, _ = run(argv + ["--json", "--strategies", "SKIP_LEVEL"])
    d = json.loads(out)
    assert d["workload"]["granule"] == 65536 and d["workload"]["chunk"] == 512 << 20
    clear1 = next(p for p in d["strategies"]["KERNEL"]["phases"] if p["name"] == "clear 1")["counts"]
    assert clear1["mask_words"] == (2 << 30) // (64 * 65536) and clear1["pages_alloc"] == 4
    # the default backing of a 16 KiB host is its largest block, 32 MiB
    code, out, _ = run(["compare", "--granule", "16K", "--guest-size", "256M", "--writes", "16",
                        "--strategies", "KERNEL", "--no-progress"])
    assert code == 0 and "backing 32m, eager-split chunk 32 MiB" in out.splitlines()[0]


@pytest.mark.parametrize("argv,message", [
    (["compare", "--granule", "64K", "--backing", "1g"], "backing '1g' is not a page or block size of a 64 KiB host"),
    (["compare", "--granule", "16K", "--chunk", "2M"], "eager-split chunk 2097152 is not 0 or a block size the "
                                                       "kernel accepts (16 KiB, 32 MiB on a 16 KiB host)"),
    (["compare", "--granule", "64K", "--guest-size", "3G", "--backing", "64k", "--chunk", "0", "--guest-size",
      "768M"], "guest size 805306368 is not a positive multiple of 512 MiB"),
    (["compare", "--granule", "8K"], "argument --granule: granule 8192 is not a host page size"),
    (["compare", "--granule", "big"], "argument --granule: size 'big' is not a size"),
    (["compare", "--preset", "rfc-16g-thp", "--granule", "64K"], "--granule cannot be combined with --preset"),
])
def test_bad_granule_arguments_one_line_exit_2(argv, message):
    code, out, err = run(argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("s2fast: error: ")
    assert message in err
