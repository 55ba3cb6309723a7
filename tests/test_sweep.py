"""Sweeps (issue 14): a grid run three ways gives one table; an interrupted
sweep resumes to the same table; failing points are reported and the rest
complete; bad grids are one-line errors that write nothing; plots mark
final-table differences; the optional extras stay optional."""
import io
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import s2fast  # noqa: E402
from s2fast.cli import main  # noqa: E402
from s2fast.results import TIMING_COLUMNS, pct_change  # noqa: E402
from s2fast.sweeps import GridError, LocalProcesses, plan, read_table, sweep  # noqa: E402
from support.sweep_faults import die_on_seed_3  # noqa: E402

TREE = str(pathlib.Path(s2fast.__file__).resolve().parent.parent)
ENV = dict(os.environ, PYTHONPATH=TREE + os.pathsep + os.environ.get("PYTHONPATH", ""))

#: 24 points of small guests; SKIP_LEVEL_NEW_TABLE leaves blocks unsplit on some
GRID = {"guest_size": ["256M", "512M", "1G"], "backing": ["1g", "2m", "4k", "mix:1g=50,2m=30,4k=20"],
        "chunk": ["2M", "1G"], "writes": 16, "initially_set": False,
        "strategy": ["SKIP_LEVEL", "SKIP_LEVEL_NEW_TABLE"]}
GRID_TOML = """\
guest_size = ["256M", "512M", "1G"]
backing = ["1g", "2m", "4k", "mix:1g=50,2m=30,4k=20"]
chunk = ["2M", "1G"]
writes = 16
initially_set = false
strategy = ["SKIP_LEVEL", "SKIP_LEVEL_NEW_TABLE"]
"""
#: strategies x phases (build, enable, then writes and clear for each of 2 passes)
ROWS_PER_POINT = 3 * 6


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def untimed(df):
    return df.drop(columns=list(TIMING_COLUMNS))


@pytest.fixture(scope="module")
def serial_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "serial.parquet"
    res = sweep(GRID, path, executor="serial")
    assert not res.failed and not res.skipped
    return res, path


def test_grid_three_ways_gives_one_table(serial_table):
    from distributed import Client, LocalCluster

    res, path = serial_table
    table = res.table
    assert len(res.points) == 24 and len(table) == 24 * ROWS_PER_POINT
    assert table.equals(read_table(path))                       # the file is the table
    assert list(table["point"].unique()) == list(range(24))
    assert set(table["strategy"]) == {"KERNEL", "SKIP_LEVEL", "SKIP_LEVEL_NEW_TABLE"}
    # the outcome check is in the table: eager split in 2 MiB chunks leaves blocks unsplit under SNT only
    diff = table[~table["identical"]]
    assert set(diff["strategy"]) == {"SKIP_LEVEL_NEW_TABLE"} and set(diff["chunk"]) == {2 << 20}
    assert diff["outcome"].str.startswith("differs: ").all()

    procs = sweep(GRID, executor=LocalProcesses(2)).table
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask = sweep(GRID, executor=client).table
    for other in (procs, dask):
        pd.testing.assert_frame_equal(untimed(table), untimed(other))
        assert (other["wall_s"] > 0).any() and (other["peak_rss_bytes"] > 0).all()


def test_interrupted_sweep_resumes_to_the_same_table(tmp_path, serial_table):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_TOML)
    out = tmp_path / "results.parquet"
    cmd = [sys.executable, "-m", "s2fast", "sweep", str(grid), "-o", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the points finished so far are in" in err and "Traceback" not in err
    partial = read_table(out)
    done = partial["key"].nunique()
    assert 0 < done < 24, f"the interrupt landed after {done} of 24 points"
    assert (partial.groupby("key").size() == ROWS_PER_POINT).all()     # whole points only
    assert not list(tmp_path.glob(".results.parquet.*"))               # no temporary left behind

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"ran {24 - done}, reused {done} from {out}, failed 0" in rerun.stdout
    pd.testing.assert_frame_equal(untimed(read_table(out)), untimed(serial_table[0].table))


def test_rerun_runs_nothing_and_a_foreign_grid_is_refused(tmp_path, serial_table):
    res, path = serial_table
    copy = tmp_path / "r.parquet"
    copy.write_bytes(path.read_bytes())
    again = sweep(GRID, copy, executor="serial")
    assert not again.ran and len(again.reused) == 24
    pd.testing.assert_frame_equal(again.table, res.table)
    before = copy.read_bytes()
    with pytest.raises(ValueError, match="holds results of 24 points that are not in this grid"):
        sweep({**GRID, "writes": 32}, copy, executor="serial")
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_TOML.replace("writes = 16", "writes = 32"))
    code, out, err = run(["sweep", str(grid), "-o", str(copy), "--serial"])
    assert code == 2 and out == "" and err.count("\n") == 1 and "that are not in this grid" in err
    assert copy.read_bytes() == before


def test_failing_task_is_reported_and_the_rest_complete(tmp_path, monkeypatch):
    import s2fast.sweeps as sw

    real = sw.compare

    def compare(workload, strategies):
        if workload.guest_size == 512 << 20 and workload.backing.pct_4k == 100:
            raise ValueError("split_host_pages cannot be met")        # an invalid point that slipped through
        return real(workload, strategies)

    monkeypatch.setattr(sw, "compare", compare)
    grid = tmp_path / "grid.toml"
    grid.write_text('guest_size = ["256M", "512M"]\nbacking = ["1g", "4k"]\nchunk = "2M"\nwrites = 16\n'
                    'strategy = "SKIP_LEVEL"\n')
    out = tmp_path / "r.csv"
    code, stdout, err = run(["sweep", str(grid), "-o", str(out), "--serial", "--no-progress"])
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == ("s2fast: point 3 (guest_size=512M, backing=4k, chunk=2M, writes=16) failed: "
                        "ValueError: split_host_pages cannot be met")
    assert lines[-1] == "s2fast: 1 of 4 points failed (listed above); rerun to retry them"
    assert "ran 3, reused 0 from" in stdout and "failed 1" in stdout
    assert sorted(read_table(out)["point"].unique()) == [0, 1, 2]


def test_killed_worker_fails_only_its_point():
    grid = {"guest_size": "256M", "seed": list(range(8)), "writes": 16, "strategy": "SKIP_LEVEL"}
    seen = []
    res = sweep(grid, executor=LocalProcesses(2, initializer=die_on_seed_3), on_failure=seen.append)
    assert [f.point.kwargs["seed"] for f in res.failed] == [3] and seen == res.failed, res.failed
    assert "worker process died while running it" in res.failed[0].error
    assert sorted(res.table["seed"].unique()) == [0, 1, 2, 4, 5, 6, 7]


@pytest.mark.parametrize("toml,message", [
    ('guest_size = ["1G"]\nguest_sise = ["2G"]\n', "unknown field 'guest_sise'"),
    ('guest_size = ["1G"]\nseed = []\n', "seed: the list is empty"),
    ('guest_size = ["1G"]\npasses = ["two"]\n', "passes: 'two' is a str, not an integer"),
    ('guest_size = [1.5]\n', "guest_size: 1.5 is a float, not a size"),
    ('initially_set = ["yes"]\n', "initially_set: 'yes' is a str, not true or false"),
    ('backing = ["5g"]\n', "backing: backing '5g' is not 1g, 2m, 4k"),
    ('strategy = ["FAST"]\n', "strategy: strategy 'FAST' is not one of"),
    ('granule = ["8K"]\n', "granule: granule 8192 is not a host page size"),
    ('preset = ["rfc-16g-thp"]\nguest_size = ["1G"]\n', "guest_size cannot be combined with preset"),
    ('profile = ["fastest-machine"]\n', "profile: profile 'fastest-machine' is not one of"),
    ('seed = [0, 1, 2]\n', "3 points is more than the limit of 2"),
    ('guest_size = "1G\n', "not a TOML grid file"),
])
def test_bad_grid_is_a_one_line_error_and_writes_nothing(tmp_path, serial_table, toml, message):
    grid = tmp_path / "grid.toml"
    grid.write_text(toml)
    out = tmp_path / "r.parquet"
    code, stdout, err = run(["sweep", str(grid), "-o", str(out), "--max-points", "2", "--serial"])
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith(f"s2fast: error: {grid}: ") and message in err
    assert not out.exists()
    # an existing table is left exactly as it was
    out.write_bytes(serial_table[1].read_bytes())
    assert run(["sweep", str(grid), "-o", str(out), "--max-points", "2", "--serial"])[0] == 2
    assert out.read_bytes() == serial_table[1].read_bytes()


def test_point_limit_yes_missing_file_and_output_name(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('guest_size = "256M"\nwrites = 0\nseed = [0, 1, 2]\nstrategy = "SKIP_LEVEL"\n')
    code, stdout, err = run(["sweep", str(grid), "-o", str(tmp_path / "r.csv"), "--max-points", "2", "--yes",
                             "--serial"])
    assert code == 0 and "ran 3, reused 0" in stdout and err == ""
    for argv, message in ((["sweep", str(tmp_path / "nope.toml"), "-o", "r.csv"], "nope.toml: no such grid file"),
                          (["sweep", str(grid), "-o", str(tmp_path / "r.xlsx")], "must end in .parquet or .csv"),
                          (["sweep", str(grid)], "the following arguments are required: -o/--output")):
        code, stdout, err = run(argv)
        assert code == 2 and err.count("\n") == 1 and message in err


def test_invalid_combinations_are_skipped_with_a_reason():
    grid, points, skipped = plan({"guest_size": "1G", "granule": ["4K", "64K"], "chunk": ["2M", "1G", 2 << 20],
                                  "backing": "2m"})
    assert len(points) == 2
    labels = [s.label for s in skipped]
    assert "guest_size=1G, granule=64K, chunk=1G, backing=2m" in labels
    reason = dict((s.label, s.reason) for s in skipped)
    assert reason["guest_size=1G, granule=64K, chunk=1G, backing=2m"].startswith(
        "backing '2m' is not a page or block size of a 64 KiB host")
    # 2M and 2097152 are one experiment: one point, the other skipped as the same
    assert (reason["guest_size=1G, granule=4K, chunk=2097152, backing=2m"]
            == "the same experiment as guest_size=1G, granule=4K, chunk=2M, backing=2m")
    with pytest.raises(GridError, match="no valid point"):
        plan({"granule": "64K", "chunk": "2M"})


def test_preset_points():
    res = sweep({"preset": ["rfc-16g-thp"], "writes": 16, "strategy": "SKIP_LEVEL"}, executor="serial")
    t = res.table
    assert set(t["measurement"]) == {"enable", "clear"} and set(t["preset"]) == {"rfc-16g-thp"}
    direct = s2fast.run_preset("rfc-16g-thp", ["SKIP_LEVEL"], writes=16).to_pandas()
    cols = ["measurement", "strategy", "phase", "entries_read", "callbacks", "identical"]
    pd.testing.assert_frame_equal(t[cols].reset_index(drop=True), direct[cols])


def test_to_pandas_and_pct_change():
    cmp = s2fast.compare(s2fast.Workload(guest_size="1G", writes=16), ["SKIP_LEVEL"])
    df = cmp.to_pandas()
    assert len(df) == 2 * 5
    for r in cmp.phase_rows():
        row = df[(df["strategy"] == r["strategy"]) & (df["phase"] == r["phase"])].iloc[0]
        assert row["entries_read"] == r["entries_read"] and row["callbacks"] == r["callbacks"]
    pc = pct_change(df).set_index("phase")["pct"]
    k, s = (df[df["strategy"] == n].set_index("phase")["entries_read"] for n in ("KERNEL", "SKIP_LEVEL"))
    assert pc["clear 1"] == pytest.approx(100 * (s["clear 1"] - k["clear 1"]) / k["clear 1"])
    total = [sum(x[p] for p in x.index if p != "build") for x in (k, s)]
    assert pc["total"] == pytest.approx(100 * (total[1] - total[0]) / total[0])
    row = next(r for r in cmp.rows() if r["strategy"] == "SKIP_LEVEL")
    assert pc["total"] == pytest.approx(-row["reduction_pct"])


def test_progress_bar_on_request_quiet_otherwise(capsys):
    grid = {"guest_size": "256M", "writes": 0, "seed": [0, 1], "strategy": "SKIP_LEVEL"}
    sweep(grid, executor="serial", progress=True)
    err = capsys.readouterr().err
    assert "sweep: 100%" in err and "2/2" in err
    sweep(grid, executor="serial")                  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind", ["bars", "size", "heatmap"])
def test_plot_kinds_mark_differences(tmp_path, serial_table, kind):
    pytest.importorskip("matplotlib")
    _, path = serial_table
    png, svg = tmp_path / f"{kind}.png", tmp_path / f"{kind}.svg"
    for f in (png, svg):
        code, out, err = run(["plot", str(path), "--kind", kind, "-o", str(f)])
        assert code == 0 and err == "" and out == f"plot: {f}\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    assert "% change in entries read vs KERNEL" in text
    mark = "≠" if kind == "heatmap" else "final table differs from KERNEL"
    assert mark in text
    # a table where every final table is KERNEL's has no mark
    same = read_table(path)
    same = same[same["strategy"] != "SKIP_LEVEL_NEW_TABLE"]
    clean = tmp_path / "clean.csv"
    same.to_csv(clean, index=False)
    assert run(["plot", str(clean), "--kind", kind, "-o", str(svg)])[0] == 0
    assert mark not in svg.read_text()


def test_plot_bad_input(tmp_path, serial_table):
    _, path = serial_table
    for argv, message in ((["plot", str(path), "--kind", "pie", "-o", "x.png"], "invalid choice: 'pie'"),
                          (["plot", str(path), "--kind", "bars", "-o", "x.gif"], "must end in .png or .svg"),
                          (["plot", str(tmp_path / "no.parquet"), "--kind", "bars", "-o", str(tmp_path / "x.png")],
                           "no.parquet: no such file"),
                          (["plot", str(path), "--kind", "bars", "--metric", "speed", "-o", str(tmp_path / "x.png")],
                           "no 'speed' column"),
                          (["plot", str(path), "--kind", "heatmap", "--param", "colour", "-o",
                            str(tmp_path / "x.png")], "param 'colour' is not a parameter column")):
        code, out, err = run(argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"pandas", "pyarrow", "dask", "distributed", "tqdm", "matplotlib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else real(name, *a)
"""


def test_import_and_main_job_need_no_optional_extra(tmp_path):
    script = BLOCKER + """
import io
import s2fast
from s2fast.cli import main
out, err = io.StringIO(), io.StringIO()
assert main(["compare", "--guest-size", "1G", "--writes", "16"], out=out, err=err) == 0, err.getvalue()
assert "SKIP_LEVEL_NEW_TABLE" in out.getvalue() and err.getvalue() == ""
for argv, msg in ((["compare", "--guest-size", "1G", "--progress"], "--progress needs tqdm"),
                  (["sweep", "g.toml", "-o", "r.parquet"], "s2fast sweep needs pandas"),
                  (["plot", "r.parquet", "--kind", "bars", "-o", "x.png"], "s2fast plot needs matplotlib")):
    err = io.StringIO()
    assert main(argv, out=io.StringIO(), err=err) == 2 and msg in err.getvalue(), err.getvalue()
try:
    s2fast.sweep({"seed": [0]})
except ImportError as e:
    assert "pip install 's2fast[sweep]'" in str(e)
else:
    raise AssertionError("sweep ran without pandas")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_readme_grid_is_the_example_file():
    import re

    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    root = pathlib.Path(__file__).resolve().parent.parent      # the checkout, not where s2fast is installed
    block = re.search(r"```toml\n(.*?)```", (root / "README.md").read_text(), re.S).group(1)
    example = root / "examples" / "sweep.toml"
    assert tomllib.loads(block) == tomllib.loads(example.read_text())
    grid, points, skipped = plan(example)
    assert len(points) == 24 and not skipped and len(grid.strategies) == 6
    assert (root / "docs" / "sweep-bars.png").stat().st_size < 100_000


def test_scheduler_address(tmp_path):
    from distributed import LocalCluster

    grid = tmp_path / "grid.toml"
    grid.write_text('guest_size = "256M"\nwrites = 16\nseed = [0, 1, 2]\nstrategy = "SKIP_LEVEL"\n')
    out = tmp_path / "r.parquet"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        code, stdout, err = run(["sweep", str(grid), "-o", str(out), "--scheduler", cluster.scheduler_address])
    assert code == 0 and err == "" and "ran 3, reused 0" in stdout
    assert read_table(out)["key"].nunique() == 3


def test_profile_fills_predicted_seconds_with_the_cost_model():
    # Each row's predicted seconds are the profile's price of that phase's
    # counts: the same numbers compare() gives for the same workload.
    grid = {"guest_size": "512M", "writes": 16, "strategy": "SKIP_LEVEL", "profile": ["generic", "rfc-v2"]}
    df = sweep(grid, executor="serial").table
    assert set(df["profile"]) == {"generic", "rfc-v2"} and df["predicted_s"].notna().all()
    w = s2fast.Workload(guest_size="512M", writes=16)
    for prof in ("generic", "rfc-v2"):
        pred = s2fast.compare(w, ["SKIP_LEVEL"], profile=prof).predicted()
        for _, row in df[(df["profile"] == prof) & (df["phase"] != "build")].iterrows():
            assert row["predicted_s"] == pytest.approx(pred[row["strategy"]]["phases"][row["phase"]], rel=1e-12)
