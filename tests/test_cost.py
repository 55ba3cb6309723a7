"""The cost model: events, profiles, predictions, calibration and its errors."""
from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest

from s2fast import Workload, compare
from s2fast.cli import main
from s2fast.cost import EVENT_NAMES, EVENTS, Profile, ProfileError, events, load_profile, shipped_profiles
from s2fast.cost.model import PROFILE_DIR
from s2fast.variants import Strategy
from s2fast.vm import VM, COUNTERS

pytest.importorskip("scipy")
from s2fast.cost.calibrate import (Measurement, MeasurementError, calibrate, predict,  # noqa: E402
                                   read_measurements)

DATA = os.path.join(os.path.dirname(__file__), "..", "s2fast", "cost", "data")
GiB, MiB = 1 << 30, 1 << 20


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------
# Events

def test_every_event_is_registered_with_meaning_and_kernel_function():
    for name, e in EVENTS.items():
        assert e.name == name and e.meaning and e.kernel
    assert set(events({})) == set(EVENT_NAMES) and not any(events({}).values())


def _enabled(backing):
    """A 2 MiB slot with dirty logging enabled eagerly, and what enabling counted."""
    vm = VM(40, eager_split_chunk=2 * MiB, initially_set=False)
    vm.add_memslot(2 * MiB, backing)
    s0 = vm.snapshot()
    vm.enable_dirty_logging()
    return vm, {k: v - s0[k] for k, v in vm.snapshot().items()}


def test_stores_and_cmpxchg_counted_on_the_enable_and_fault_paths():
    vm, d = _enabled("4k")
    assert d["entries_written"] == 512 and d["cmpxchg"] == 0       # wrprotect of 512 writable pages
    assert d["dirty_bitmap_bytes"] == 0 and d["wp_calls"] == 1
    ev = events(d)
    assert ev["walk_call"] == 2 and ev["lock_drop"] == 1 and ev["topup_page"] == 2
    s1 = vm.snapshot()
    assert vm.write(1 * GiB + 4096) == 0                            # permission fault: relax_perms, shared
    d = {k: v - s1[k] for k, v in vm.snapshot().items()}
    assert d["cmpxchg"] == 1 and d["entries_written"] == 1 and events(d)["fault"] == 1
    s2 = vm.snapshot()
    vm.clear_dirty_log()
    d = {k: v - s2[k] for k, v in vm.snapshot().items()}
    assert d["dirty_bitmap_bytes"] == 512 // 8 and d["mask_words"] == 1 and d["entries_written"] == 1
    assert "dirty_bitmap_bytes" in COUNTERS


def test_split_stores_match_the_tables_it_fills():
    # a 2 MiB block split to pages: each of the new table's 512 entries is
    # written twice, as stage2_map_walker_try_leaf() does even for an empty
    # entry (stage2_try_break_pte() stores KVM_INVALID_PTE_LOCKED, then
    # stage2_make_pte() the page), then the break (locked entry) and the
    # make (table entry) of the old one
    _, d = _enabled("2m")
    assert d["mc_used"] == 1 and d["tlbi_vmid_ipa"] == 1
    assert d["entries_written"] == 1 + 2 * 512 + 2                   # wrprotect of the block, split


# ---------------------------------------------------------------------------
# Profiles and predictions

def test_shipped_profiles_load_and_say_where_each_cost_comes_from():
    assert {"generic", "rfc-v1", "rfc-v2"} <= set(shipped_profiles())
    for name in shipped_profiles():
        p = load_profile(name)
        assert set(p.costs) == set(EVENT_NAMES)
        assert all(p.sources[k].strip() for k in EVENT_NAMES), name
        assert all(v >= 0 for v in p.costs.values())
    assert "fitted to rfc-v2.csv" in load_profile("rfc-v2").sources["entry_visit"]


def test_prediction_is_count_times_cost_and_deterministic():
    w = Workload(guest_size=1 * GiB, backing="2m", passes=1, writes=0)
    a = compare(w, ["SKIP_LEVEL"], profile="rfc-v2")
    b = compare(w, ["SKIP_LEVEL"], profile="rfc-v2")
    assert a.predicted() == b.predicted()
    p = load_profile("rfc-v2")
    r = a.results[Strategy.KERNEL]
    ev = events(r.phases[0].counts)
    assert a.predicted()["KERNEL"]["phases"]["enable"] == pytest.approx(
        sum(ev[k] * p.costs[k] for k in EVENT_NAMES) * 1e-9, rel=1e-12)
    rows = {x["strategy"]: x for x in a.rows()}
    assert rows["KERNEL"]["predicted_pct_change"] == 0.0
    assert rows["SKIP_LEVEL"]["predicted_pct_change"] == pytest.approx(
        100 * (rows["SKIP_LEVEL"]["predicted_s"] / rows["KERNEL"]["predicted_s"] - 1))
    assert 0 < rows["SKIP_LEVEL"]["predicted_s"] < rows["KERNEL"]["predicted_s"]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["profile"] == "rfc-v2"
    assert d["strategies"]["SKIP_LEVEL"]["predicted_s"] == rows["SKIP_LEVEL"]["predicted_s"]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _toml(costs):
    return "".join(f'[costs.{k}]\nns = {v}\nsource = "test"\n' for k, v in costs.items())


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(bogus=1.0), "costs.bogus: unknown event"),
    (lambda c: c.update(entry_visit=-1.0), "costs.entry_visit.ns: -1.0 is negative"),
    (lambda c: c.update(entry_visit="nan"), "costs.entry_visit.ns: nan is not a finite number"),
    (lambda c: c.pop("fault"), "costs: no cost for fault"),
])
def test_bad_profile_names_file_and_field(tmp_path, edit, message):
    costs = {k: 1.0 for k in EVENT_NAMES}
    edit(costs)
    path = _write(tmp_path, "p.toml", _toml(costs))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(e.value).startswith(path + ": ") and message in str(e.value)


def test_profile_file_that_is_not_toml_or_json(tmp_path):
    for name, text, msg in (("p.toml", "a,b,c\n1,2,3\n", "not a TOML file"),
                            ("p.json", "[costs", "not a JSON file"),
                            ("p.csv", "x", "a profile is a .toml or .json file")):
        path = _write(tmp_path, name, text)
        with pytest.raises(ProfileError, match="not a TOML file|not a JSON file|a profile is a") as e:
            load_profile(path)
        assert str(e.value).startswith(path) and msg in str(e.value)
    with pytest.raises(ProfileError, match="'fast' is not one of generic"):
        load_profile("fast")
    with pytest.raises(TypeError):
        load_profile(3)


def test_profile_round_trips_through_toml_and_json(tmp_path):
    p = load_profile("rfc-v1")
    for ext in ("toml", "json"):
        path = str(tmp_path / f"x.{ext}")
        p.save(path)
        q = load_profile(path)
        assert q.costs == p.costs and q.sources == p.sources


def test_cli_profile_option():
    code, out, err = run(["compare", "--guest-size", "2G", "--strategies", "SKIP_LEVEL", "--profile", "rfc-v1",
                          "--no-progress"])
    assert code == 0, err
    head = next(l for l in out.splitlines() if l.startswith("strategy"))
    assert "predicted (s)" in head and "vs KERNEL" in head
    kernel = next(l for l in out.splitlines() if l.startswith("KERNEL"))
    assert "+0.0%" in kernel and "profile rfc-v1" in out
    code, out, err = run(["compare", "--guest-size", "2G", "--profile", "nope.toml", "--no-progress"])
    assert code == 2 and out == "" and err == "s2fast: error: --profile: nope.toml: no such profile file\n"


# ---------------------------------------------------------------------------
# Calibration

def test_published_tables_leave_one_out_within_5_points():
    """The issue's acceptance: LOO mean absolute error <= 5 points on each
    of the series' tables (counts-only is ~26 and ~14)."""
    for name in ("rfc-v1", "rfc-v2"):
        cal = calibrate(os.path.join(DATA, name + ".csv"))
        assert len(cal.rows) == 6
        assert cal.loo_mae <= 5.0, (name, cal.report())
        assert cal.scale_free and cal.unidentified          # 6 ratios cannot pin 13 costs: said so
        assert "leave-one-out mean absolute error" in cal.report()


def _experiments(size):
    out = []
    for backing in ("1g", "2m", "4k"):
        for init in (True, False):
            w = Workload(guest_size=size, backing=backing, initially_set=init, writes=1024, passes=2)
            for s in (Strategy.KERNEL, Strategy.SKIP_LEVEL):
                out += [(w, s, ph) for ph in w.phase_names()]
    return out


def _measure(items, true, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, (w, s, ph) in enumerate(items):
        t = predict(Measurement(i + 2, w, s, ph, seconds=1.0), true)
        if t > 0:
            out.append(Measurement(i + 2, w, s, ph, seconds=t * (1 + noise * rng.standard_normal())))
    return out


@pytest.fixture(scope="module")
def true_profile():
    rng = np.random.default_rng(7)
    g = load_profile()
    return Profile("true", {k: v * float(np.exp(rng.uniform(-0.7, 0.7))) for k, v in g.costs.items()})


@pytest.mark.parametrize("noise,bound", [(0.0, 0.02), (0.02, 0.02)])
def test_calibration_recovers_a_known_profile(true_profile, noise, bound):
    """Seconds generated from a known profile over s2fast's own counts (1 and
    2 GiB guests); the fit, started from generic, predicts held-out 3 GiB
    experiments within 2% without noise and within the noise (2%) with it."""
    train = _measure(_experiments(1 * GiB) + _experiments(2 * GiB), true_profile, noise)
    test = _measure(_experiments(3 * GiB), true_profile)
    cal = calibrate(train, loo=False)
    errs = [abs(predict(m, cal.profile) / m.value - 1) for m in test]
    assert max(errs) <= bound if noise == 0 else float(np.mean(errs)) <= bound
    if noise == 0:
        for k in cal.exercised:
            if k not in cal.unidentified:
                assert cal.profile.costs[k] == pytest.approx(true_profile.costs[k], rel=0.02), k
        # a wrong profile does not pass the same check
        errs0 = [abs(predict(m, load_profile()) / m.value - 1) for m in test]
        assert max(errs0) > 0.05


def test_calibration_is_deterministic():
    a = calibrate(os.path.join(DATA, "rfc-v2.csv"), loo=False)
    b = calibrate(os.path.join(DATA, "rfc-v2.csv"), loo=False)
    assert a.profile.costs == b.profile.costs


HEADER = "preset,strategy,phase,pct_change\n"


@pytest.mark.parametrize("text,message", [
    (HEADER + "rfc-1g-4k,SKIP_LEVEL,enable,-10\n", "row 2: preset: 'rfc-1g-4k' is not one of"),
    (HEADER + "rfc-16g-4k,FASTEST,enable,-10\n", "row 2: strategy: strategy 'FASTEST' is not one of"),
    (HEADER + "rfc-16g-4k,SKIP_LEVEL,clear 7,-10\n", "row 2: phase: 'clear 7' is not enable, clear"),
    (HEADER + "rfc-16g-4k,SKIP_LEVEL,enable,nan\n", "row 2: pct_change: 'nan' is not a finite number"),
    (HEADER + "rfc-16g-4k,SKIP_LEVEL,enable,\n", "row 2: pct_change: missing time"),
    (HEADER + "rfc-16g-4k,SKIP_LEVEL,enable,-150\n", "row 2: pct_change: '-150' is not above -100"),
    (HEADER + "rfc-16g-4k,KERNEL,enable,-10\n", "row 2: pct_change: is against KERNEL"),
    ("preset,strategy,phase,seconds\n# c\nrfc-16g-4k,KERNEL,enable,-1\n", "row 3: seconds: '-1' is not a positive"),
    ("preset,strategy,phase,seconds,event\n", "row 1: column 'event' is not one of"),
    ("preset,strategy,phase,seconds,backing\nrfc-16g-4k,KERNEL,enable,1,2m\n",
     "row 2: backing: cannot be given with a preset"),
    ("guest_size,backing,strategy,phase,seconds\n3X,1g,KERNEL,enable,1\n", "row 2: guest_size: size '3X'"),
    ("guest_size,backing,strategy,phase,seconds\n1G,1g,KERNEL,writes 9,1\n", "row 2: phase: 'writes 9'"),
    (HEADER + "rfc-16g-4k,SKIP_LEVEL,enable\n", "row 2: 3 fields, the header has 4"),
    ("hello\n", "row 1: not a CSV header"),
    (HEADER, "a header but no measurement rows"),
])
def test_bad_measurements_name_file_row_and_field(tmp_path, text, message):
    path = _write(tmp_path, "m.csv", text)
    with pytest.raises(MeasurementError) as e:
        read_measurements(path)
    assert str(e.value).startswith(path + ": ") and message in str(e.value), str(e.value)
    out = tmp_path / "out.toml"
    code, stdout, err = run(["calibrate", path, "-o", str(out)])
    assert code == 2 and "Traceback" not in err and err.startswith(f"s2fast: error: {path}: ")
    assert not out.exists()


def test_binary_file_is_not_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    code, _, err = run(["calibrate", str(path), "-o", str(tmp_path / "o.toml")])
    assert code == 2 and "not a CSV file" in err and str(path) in err
    assert not (tmp_path / "o.toml").exists()


def test_cli_calibrate_writes_a_profile_that_compare_uses(tmp_path):
    path = _write(tmp_path, "m.csv", "guest_size,backing,initially_set,passes,strategy,phase,seconds\n"
                                     "1G,2m,false,1,KERNEL,enable,0.004\n1G,2m,false,1,SKIP_LEVEL,enable,0.003\n"
                                     "1G,4k,false,1,KERNEL,enable,0.002\n")
    out = str(tmp_path / "mine.json")
    code, text, err = run(["calibrate", path, "-o", out])
    assert code == 0, err
    assert "leave-one-out" in text and f"profile written to {out}" in text
    p = load_profile(out)
    assert p.name == "mine" and all(p.sources[k] for k in EVENT_NAMES)
    code, text, err = run(["compare", "--guest-size", "1G", "--backing", "2m", "--no-initially-set", "--passes",
                           "1", "--writes", "0", "--strategies", "SKIP_LEVEL", "--profile", out, "--csv"])
    assert code == 0, err
    assert "predicted_s" in text.splitlines()[0]
    for bad, msg in ((["-o", str(tmp_path / "x.txt")], "a profile is written as .toml or .json"),
                     (["-o", str(tmp_path / "x.toml"), "--prior", "nope"], "--prior: profile 'nope'"),
                     (["-o", str(tmp_path / "x.toml"), "--prior-weight", "-1"], "--prior-weight")):
        code, _, err = run(["calibrate", path] + bad)
        assert code == 2 and msg in err
    assert not (tmp_path / "x.toml").exists()


def test_pct_change_rows_are_ratio_constraints():
    """A pct_change row is satisfied by a profile exactly when the
    strategy's predicted time is (1 + p) x KERNEL's: scaling every cost
    leaves the fit unchanged."""
    ms = read_measurements(os.path.join(DATA, "rfc-v2.csv"))
    p = load_profile("rfc-v2")
    twice = Profile("x2", {k: 2 * v for k, v in p.costs.items()})
    for m in ms:
        assert predict(m, twice) == pytest.approx(predict(m, p), abs=1e-9)
        assert not math.isnan(predict(m, p))
