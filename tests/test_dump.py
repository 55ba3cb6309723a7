"""The ptdump-like listing: run merging checked against a per-leaf Python
model, annotations, FWB/XNX decoding, JSON, speed on a big table, and the
``s2fast dump`` command on a pool guest, an exported image and an ELF core."""
import io
import json
import time

import numpy as np
import pytest

from s2fast import MemCache, Prot, Stage2PageTable
from s2fast.cli import main
from s2fast.describe import describe
from s2fast.dump import DumpRun, dump_runs, format_dump

from support.elfcore import write_elf_core

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10
RW = Prot.R | Prot.W


def mc():
    return MemCache(0, on_empty="allocate")


def model_runs(pt):
    """The listing computed one leaf at a time with describe()."""
    entries = []
    for ipa, lv, pte in pt.leaves().tolist():
        d = describe(pte, lv, granule=pt.granule, fwb=pt.fwb, xnx=pt.xnx)
        key = (lv, d.kind, d.readable, d.writable, d.exec_el1, d.exec_el0, d.memattr, d.af, d.sw)
        entries.append((ipa, ipa + d.size, key, "leaf", d.pa))
    for ipa, lv, pte in pt.annotations().tolist():
        entries.append((ipa, ipa + describe(pte, lv, granule=pt.granule).size, (lv, pte), "ann", None))
    entries.sort()
    runs = []
    for start, end, key, what, pa in entries:
        if runs and runs[-1][1] == start and runs[-1][2] == key and runs[-1][3] == what:
            runs[-1][1] = end
            runs[-1][4] += 1
        else:
            runs.append([start, end, key, what, 1, pa])
    return [(s, e, n, p) for s, e, _, _, n, p in runs]


def as_tuples(runs):
    return [(r.start, r.end, r.entries, r.pa) for r in runs]


def mixed_table(xnx=False, fwb=False):
    pt = Stage2PageTable(40, xnx=xnx, fwb=fwb)
    m = mc()
    assert pt.map(1 * GiB, 2 * GiB, 1 << 40, RW, memcache=m) == 0                 # two 1G blocks
    assert pt.map(3 * GiB, 8 * MiB, (1 << 40) + 2 * MiB, RW, memcache=m) == 0     # four 2M blocks
    assert pt.map(3 * GiB + 8 * MiB, 64 * KiB, 0x5000_0000, RW, memcache=m, force_pte=True) == 0
    assert pt.map(3 * GiB + 8 * MiB + 64 * KiB, 16 * KiB, 0x6000_0000, Prot.R | Prot.X, memcache=m,
                  force_pte=True) == 0
    assert pt.map(4 * GiB, 2 * MiB, 0x0900_0000 & ~(2 * MiB - 1), Prot.R | Prot.W | Prot.DEVICE, memcache=m) == 0
    assert pt.set_owner(5 * GiB, 16 * KiB, 1, m) == 0
    # The last annotated entry becomes a "locked" invalid entry (a break-before-make in flight).
    assert pt.walk(5 * GiB + 12 * KiB, 4 * KiB, lambda ctx, visit: ctx.set(1 << 10)) == 0
    return pt


def test_runs_of_a_mixed_table():
    pt = mixed_table()
    runs = dump_runs(pt)
    got = [(r.start, r.end, r.level, r.kind, r.entries) for r in runs]
    assert got == [
        (1 * GiB, 3 * GiB, 1, "block", 2),
        (3 * GiB, 3 * GiB + 8 * MiB, 2, "block", 4),
        (3 * GiB + 8 * MiB, 3 * GiB + 8 * MiB + 64 * KiB, 3, "page", 16),
        (3 * GiB + 8 * MiB + 64 * KiB, 3 * GiB + 8 * MiB + 80 * KiB, 3, "page", 4),
        (4 * GiB, 4 * GiB + 2 * MiB, 2, "block", 1),
        (5 * GiB, 5 * GiB + 12 * KiB, 3, "annotation", 3),
        (5 * GiB + 12 * KiB, 5 * GiB + 16 * KiB, 3, "annotation", 1),
    ]
    assert as_tuples(runs) == model_runs(pt)
    rx = runs[3]
    assert rx.readable and not rx.writable and rx.exec_el1 and rx.exec_el0 and rx.pa == 0x6000_0000
    dev = runs[4]
    assert dev.memtype == "Device-nGnRE" and not dev.exec_el1 and dev.memattr == 0x1
    assert runs[0].memtype == "Normal-WB" and runs[0].af and runs[0].sw == 0
    assert [r.owner for r in runs[5:]] == [1, 0] and [r.annotation for r in runs[5:]] == [4, 0x400]
    assert [r.locked for r in runs[5:]] == [False, True]
    assert all(r.size == r.end - r.start for r in runs)


def test_output_addresses_need_not_be_contiguous():
    pt = Stage2PageTable(40)
    m = mc()
    pt.map(GiB, 2 * MiB, 0x8000_0000, RW, memcache=m)
    pt.map(GiB + 2 * MiB, 2 * MiB, 0x2000_0000, RW, memcache=m)
    (run,) = dump_runs(pt)
    assert (run.start, run.end, run.entries, run.pa) == (GiB, GiB + 4 * MiB, 2, 0x8000_0000)


def test_a_gap_level_change_or_attribute_change_splits_a_run():
    pt = Stage2PageTable(40)
    m = mc()
    pt.map(GiB, 16 * KiB, 0x1000_0000, RW, memcache=m, force_pte=True)
    pt.map(GiB + 20 * KiB, 8 * KiB, 0x1000_5000, RW, memcache=m, force_pte=True)      # gap of one page
    pt.map(GiB + 2 * MiB, 2 * MiB, 0x4000_0000, RW, memcache=m)                      # block after pages
    pt.map(GiB + 4 * MiB, 2 * MiB, 0x4020_0000, RW, memcache=m, force_pte=True)       # pages again
    pt.wrprotect(GiB + 4 * MiB + 8 * KiB, 4 * KiB)                                   # one read-only page
    runs = dump_runs(pt)
    assert [(r.start - GiB, r.end - GiB, r.kind, r.writable) for r in runs] == [
        (0, 16 * KiB, "page", True), (20 * KiB, 28 * KiB, "page", True),
        (2 * MiB, 4 * MiB, "block", True),
        (4 * MiB, 4 * MiB + 8 * KiB, "page", True), (4 * MiB + 8 * KiB, 4 * MiB + 12 * KiB, "page", False),
        (4 * MiB + 12 * KiB, 6 * MiB, "page", True)]
    assert as_tuples(runs) == model_runs(pt)


def test_access_flag_and_software_bits_split_runs():
    pt = Stage2PageTable(40)
    m = mc()
    pt.map(GiB, 4 * 4 * KiB, 0x1000_0000, RW, memcache=m, force_pte=True)
    pt.map(GiB + 16 * KiB, 4 * KiB, 0x1000_4000, RW | Prot.SW1, memcache=m, force_pte=True)
    assert pt.test_clear_young(GiB + 4 * KiB, 4 * KiB, True)
    runs = dump_runs(pt)
    assert [(r.start - GiB, r.af, r.sw) for r in runs] == [(0, True, 0), (4 * KiB, False, 0), (8 * KiB, True, 0),
                                                         (16 * KiB, True, 2)]
    assert as_tuples(runs) == model_runs(pt)


def test_xnx_decides_whether_xn0_splits_runs():
    for xnx, n in ((True, 2), (False, 1)):
        pt = Stage2PageTable(40, xnx=xnx)
        m = mc()
        pt.map(GiB, 4 * KiB, 0x1000_0000, Prot.R | Prot.X, memcache=m, force_pte=True)
        pt.map(GiB + 4 * KiB, 4 * KiB, 0x1000_1000, Prot.R | Prot.PX, memcache=m, force_pte=True)
        runs = dump_runs(pt)
        assert len(runs) == n, xnx
        assert as_tuples(runs) == model_runs(pt)
        if xnx:
            assert (runs[1].exec_el1, runs[1].exec_el0) == (True, False)
            assert "el1,el0" in format_dump(pt) and "\n" in format_dump(pt)


def test_fwb_memtype_names():
    pt = mixed_table(fwb=True)
    runs = dump_runs(pt)
    assert runs[0].memattr == 0x6 and runs[0].memtype == "Normal-WB"
    assert "Normal-WB" in format_dump(pt)


@pytest.mark.parametrize("seed", range(6))
def test_random_tables_match_the_per_leaf_model(seed):
    rng = np.random.default_rng(seed)
    pt = Stage2PageTable(40, xnx=bool(seed % 2))
    m = mc()
    prots = [Prot.R, RW, Prot.R | Prot.X, RW | Prot.PX, RW | Prot.UX, RW | Prot.SW0, Prot.R | Prot.DEVICE]
    for _ in range(40):
        unit = [4 * KiB, 2 * MiB][int(rng.integers(2))]
        ipa = GiB + int(rng.integers(0, 256)) * 2 * MiB + int(rng.integers(0, 8)) * unit % (2 * MiB)
        size = unit * int(rng.integers(1, 4))
        prot = prots[int(rng.integers(len(prots)))]
        pt.map(ipa, size, 0x4000_0000 + int(rng.integers(0, 64)) * 2 * MiB, prot, memcache=m,
               force_pte=bool(rng.integers(2)))
    for _ in range(5):
        pt.set_owner(8 * GiB + int(rng.integers(0, 16)) * 4 * KiB, 4 * KiB * int(rng.integers(1, 3)),
                     int(rng.integers(1, 3)), m)
    for _ in range(3):
        pt.test_clear_young(GiB + int(rng.integers(0, 512)) * MiB, 4 * MiB, True)
    assert as_tuples(dump_runs(pt)) == model_runs(pt)


def test_text_layout():
    text = format_dump(mixed_table())
    lines = text.splitlines()
    assert lines[0].startswith("stage-2 dump: 40-bit IPA, 4K granule, fwb=off, xnx=off: 7 runs, 27 leaves mapping 2107472K, 4 annotations")
    assert lines[1].split() == ["IPA", "range", "size", "level", "type", "R/W", "exec", "memtype", "AF", "SW",
                                "annotation"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["0x0000000040000000-0x00000000c0000000", "2G", "L1", "block", "RW", "-",
                                "Normal-WB", "AF", "0x0"]
    assert lines[6].split() == ["0x00000000c0810000-0x00000000c0814000", "16K", "L3", "page", "R-", "el1,el0",
                                "Normal-WB", "AF", "0x0"]
    assert lines[8].split() == ["0x0000000140000000-0x0000000140003000", "12K", "L3", "invalid", "owner=1",
                                "(0x4)"]
    assert len(lines) == 3 + 7


def test_empty_table():
    pt = Stage2PageTable(40)
    assert dump_runs(pt) == []
    assert format_dump(pt, json=True) == "[]"
    assert "no mappings" in format_dump(pt)


def test_json_is_a_list_of_objects_with_integer_addresses():
    pt = mixed_table()
    data = json.loads(format_dump(pt, json=True))
    assert isinstance(data, list) and len(data) == 7
    first = data[0]
    assert first["start"] == GiB and first["end"] == 3 * GiB and first["size"] == 2 * GiB
    assert first["pa"] == 1 << 40 and first["level"] == 1 and first["kind"] == "block"
    assert first["readable"] is True and first["memattr"] == 0xF and first["annotation"] is None
    assert data[-2]["kind"] == "annotation" and data[-2]["annotation"] == 4 and data[-2]["owner"] == 1
    assert [d["start"] for d in data] == [r.start for r in dump_runs(pt)]
    assert all(isinstance(d[k], int) for d in data for k in ("start", "end", "size", "entries", "level", "sw"))
    assert set(data[0]) == {f for f in DumpRun.__dataclass_fields__} | {"size"}


def test_big_table_is_listed_without_a_python_loop_per_leaf():
    pt = Stage2PageTable(40)
    pt.map(GiB, 8 * GiB, 1 << 40, RW, memcache=mc(), force_pte=True)        # 2 M pages
    pt.wrprotect(GiB + 4 * GiB, 4 * KiB)
    t0 = time.perf_counter()
    runs = dump_runs(pt)
    elapsed = time.perf_counter() - t0
    assert [r.entries for r in runs] == [1 << 20, 1, (1 << 20) - 1]
    assert elapsed < 3.0, elapsed


@pytest.mark.slow
def test_64g_of_4k_pages_dumps_in_seconds():
    pt = Stage2PageTable(40)
    pt.map(GiB, 64 * GiB, 1 << 40, RW, memcache=mc(), force_pte=True)       # 16 M pages
    t0 = time.perf_counter()
    text = format_dump(pt)
    assert time.perf_counter() - t0 < 10
    assert "16777216 leaves mapping 64G" in text


def test_image_round_trip_gives_the_same_dump(tmp_path):
    pt = mixed_table(xnx=True)
    pt.export_image(tmp_path / "s2.img")
    img = Stage2PageTable.from_image(str(tmp_path / "s2.img"))
    assert img.dump() == pt.dump() == format_dump(pt)
    assert img.dump(json=True) == format_dump(pt, json=True)


# -- the s2fast dump command -------------------------------------------------------

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("backing, level, kind, n", [("1G", 1, "block", 4), ("2m", 2, "block", 2048),
                                                     ("4K", 3, "page", 1 << 20)])
def test_cli_pool_guest(backing, level, kind, n):
    code, out, err = run(["dump", "--backing", backing, "--json"])
    assert code == 0 and err == ""
    (r,) = json.loads(out)
    assert (r["start"], r["size"], r["level"], r["kind"], r["entries"]) == (GiB, 4 * GiB, level, kind, n)
    assert r["readable"] and r["writable"]


def test_cli_pool_guest_text_and_size():
    code, out, err = run(["dump", "--guest-size", "2G", "--backing", "1G", "--fwb"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "fwb=on" in lines[0] and len(lines) == 4
    assert lines[3].split()[:4] == ["0x0000000040000000-0x00000000c0000000", "2G", "L1", "block"]


def test_cli_exported_image_and_overrides(tmp_path):
    pt = mixed_table(xnx=True)
    meta = pt.export_image(tmp_path / "s2.img")
    code, out, err = run(["dump", "--image", str(tmp_path / "s2.img")])
    assert code == 0 and err == "" and out == pt.dump() + "\n"
    code, out2, err = run(["dump", "--image", str(tmp_path / "s2.img"), "--no-xnx"])
    assert code == 0 and "xnx=off" in out2 and out2 != out
    # A raw image without a sidecar: registers and base on the command line.
    raw = tmp_path / "raw.img"
    raw.write_bytes((tmp_path / "s2.img").read_bytes())
    code, out3, err = run(["dump", "--image", str(raw), "--base-pa", hex(meta["base_pa"]),
                           "--vttbr", hex(meta["vttbr"] | 5 << 48 | 1), "--vtcr", str(meta["vtcr"]), "--xnx"])
    assert code == 0 and err == "" and out3 == out


def test_cli_elf_core(tmp_path):
    pt = mixed_table()
    meta = pt.export_image(tmp_path / "s2.img")
    pages = np.fromfile(tmp_path / "s2.img", dtype=np.uint8)
    core = write_elf_core(tmp_path / "vmcore", [(meta["base_pa"], pages), (0x4000_0000, b"\0" * 4096)],
                          note=b"\0" * 16)
    code, out, err = run(["dump", "--elf", core, "--vttbr", hex(meta["vttbr"]), "--vtcr", hex(meta["vtcr"]),
                          "--no-xnx", "--json"])
    assert code == 0 and err == ""
    assert out == format_dump(pt, json=True) + "\n"


@pytest.mark.parametrize("argv, text", [
    (["dump", "--backing", "3M"], "'3M'"),
    (["dump", "--guest-size", "3M"], "3 MiB"),
    (["dump", "--guest-size", "2T"], "40-bit"),
    (["dump", "--vttbr", "0x1000"], "--vttbr needs --image or --elf"),
    (["dump", "--elf", "core"], "--elf needs --vttbr and --vtcr"),
    (["dump", "--image", "x", "--elf", "y"], "not allowed with"),
    (["dump", "--image", "/nonexistent/s2.img"], "/nonexistent/s2.img"),
    (["dump", "--elf", "/nonexistent/core", "--vttbr", "0", "--vtcr", "0"], "/nonexistent/core"),
    (["dump", "--elf", "c", "--vttbr", "zz", "--vtcr", "0"], "'zz'"),
    (["dump", "--elf", "c", "--vttbr", "-1", "--vtcr", "0"], "-1"),
    (["dump", "--image", "x", "--guest-size", "4G"], "--guest-size"),
    (["dump", "--elf", "c", "--vttbr", "0", "--vtcr", "0", "--base-pa", "0"], "--base-pa"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, text):
    code, out, err = run(argv)
    assert code == 2 and out == ""
    assert err.startswith("s2fast: error: ") and err.count("\n") == 1
    assert text in err


def test_cli_garbage_files(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF garbage" * 3)
    code, _, err = run(["dump", "--elf", str(junk), "--vttbr", "0", "--vtcr", "0x80023558"])
    assert code == 2 and str(junk) in err and err.count("\n") == 1
    raw = tmp_path / "raw"
    raw.write_bytes(b"\0" * 4096)
    code, _, err = run(["dump", "--image", str(raw)])
    assert code == 2 and "--vttbr" in err


@pytest.mark.parametrize("granule,backing,level,entries", [
    ("16K", None, 2, 4 << 30 >> 25),          # 32 MiB blocks
    ("64K", "512M", 2, 4 << 30 >> 29),        # 512 MiB blocks
    ("64K", "64K", 3, 4 << 30 >> 16),         # pages
])
def test_dump_builtin_guest_per_granule(granule, backing, level, entries):
    argv = ["dump", "--granule", granule, "--json"] + ([] if backing is None else ["--backing", backing])
    code, out, err = run(argv)
    assert code == 0 and err == ""
    runs = json.loads(out)
    assert len(runs) == 1 and runs[0]["level"] == level and runs[0]["entries"] == entries


def test_dump_granule_errors():
    code, out, err = run(["dump", "--granule", "64K", "--backing", "2M"])
    assert code == 2 and "'2M' is not one of 64K, 512M" in err
    code, out, err = run(["dump", "--granule", "16K", "--image", "x.img"])
    assert code == 2 and "--granule" in err


def test_dump_root_outside_memory_names_the_root(tmp_path):
    pt = Stage2PageTable(40)
    pt.export_image(tmp_path / "s2.img")
    code, out, err = run(["dump", "--image", str(tmp_path / "s2.img"), "--vttbr", "0x5000"])
    assert code == 1 and "the root table page at PA 0x4000" in err
