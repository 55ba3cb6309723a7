"""describe(): one stage-2 descriptor decoded, on descriptors the engine
writes and on hand-built ones for every kind, granule and encoding."""
import dataclasses

import pytest

from s2fast import MemCache, Prot, Stage2PageTable
from s2fast.describe import Descriptor, describe, exec_perms, human_size, memtype_name

VALID, TABLE = 1, 3
AF = 1 << 10
R, W = 1 << 6, 1 << 7
SH_INNER = 3 << 8
XN0, XN1 = 1 << 53, 1 << 54


def leaf(pa, memattr=0xF, extra=0, level=3):
    return pa | (TABLE if level == 3 else VALID) | memattr << 2 | R | W | SH_INNER | AF | extra


def test_block_string_and_fields():
    d = describe(leaf(0x80000000, level=2), 2)
    assert str(d) == "L2 block pa=0x80000000 size=2M R W X(el1,el0) Normal-WB AF SH=inner SW=0x0"
    assert (d.kind, d.pa, d.size, d.level) == ("block", 0x80000000, 2 << 20, 2)
    assert d.readable and d.writable and d.exec_el1 and d.exec_el0 and d.af
    assert d.memattr == 0xF and d.memtype == "Normal-WB" and d.shareability == 3 and d.sw == 0
    assert d.owner is None and not d.locked and d.is_leaf and d.valid


def test_table_and_invalid_and_annotations():
    t = describe(0x4000000A000 | TABLE, 1)
    assert t.kind == "table" and t.pa == 0x4000000A000 and t.size == 1 << 30
    assert str(t) == "L1 table -> 0x4000000a000"
    z = describe(0, 3)
    assert z.kind == "invalid" and z.pa is None and z.owner is None and not z.locked
    a = describe(1 << 2, 3)
    assert a.kind == "annotation" and a.owner == 1 and not a.locked
    assert str(a) == "L3 invalid owner=1 (annotation 0x4)"
    big = describe(0xFF << 2, 2)
    assert big.owner == 0xFF and big.size == 2 << 20
    lk = describe(1 << 10, 2)
    assert lk.kind == "annotation" and lk.locked and lk.owner == 0
    assert "locked" in str(lk) and "0x400" in str(lk)
    # Bits outside the owner field still make an annotation; the owner is bits 9:2.
    odd = describe(1 << 40 | 5 << 2, 3)
    assert odd.kind == "annotation" and odd.owner == 5


def test_reserved_and_bad_blocks_per_granule():
    assert describe(0x40000000 | VALID, 3).kind == "reserved"
    assert describe(0x40000000 | VALID, 0).kind == "bad-block"
    assert describe(0x40000000 | VALID, 1).kind == "block"
    assert describe(0x40000000 | VALID, -1).kind == "bad-block"
    for g in (16384, 65536):
        assert describe(0x40000000 | VALID, 1, granule=g).kind == "bad-block"
        assert describe(0x40000000 | VALID, 2, granule=g).kind == "block"
        assert describe(0x40000000 | VALID, 3, granule=g).kind == "reserved"
        assert describe(0x40000000 | TABLE, 3, granule=g).kind == "page"
    s = str(describe(0x40000000 | VALID, 0))
    assert "bad-block" in s and "level 0" in s and "4K" in s


@pytest.mark.parametrize("granule, level, size", [
    (4096, 3, 4096), (4096, 2, 2 << 20), (4096, 1, 1 << 30), (4096, 0, 512 << 30),
    (16384, 3, 16384), (16384, 2, 32 << 20), (16384, 1, 64 << 30),
    (65536, 3, 65536), (65536, 2, 512 << 20), (65536, 1, 4 << 40),
])
def test_sizes_per_level_and_granule(granule, level, size):
    assert describe(TABLE, level, granule=granule).size == size


def test_64k_granule_pa_51_48_in_bits_15_12():
    d = describe(0x0000_1234_5678_0000 | 0xA << 12 | TABLE | AF, 3, granule=65536)
    assert d.pa == 0xA_1234_5678_0000
    # With 4K the same bits are part of the address.
    assert describe(0x0000_1234_5678_0000 | 0xA << 12 | TABLE, 3).pa == 0x1234_5678_A000
    # 16K: bits below 14 are not address bits.
    assert describe(0x4000_3000 | TABLE, 3, granule=16384).pa == 0x4000_0000


def test_block_pa_drops_bits_below_the_block():
    assert describe(0x80000000 | 0x1F000 | VALID, 2).pa == 0x80000000
    assert describe(0xC0000000 | 0x200000 | VALID, 1).pa == 0xC0000000


@pytest.mark.parametrize("xn, xnx, el1, el0", [
    (0, True, True, True), (1, True, False, True), (2, True, False, False), (3, True, True, False),
    (0, False, True, True), (1, False, True, True), (2, False, False, False), (3, False, False, False),
])
def test_execute_per_el(xn, xnx, el1, el0):
    d = describe(leaf(0x1000, extra=xn << 53), 3, xnx=xnx)
    assert (d.exec_el1, d.exec_el0) == (el1, el0)
    assert exec_perms(xn, xnx) == (el1, el0)


def test_execute_strings():
    assert "X(el0)" in str(describe(leaf(0x1000, extra=XN0), 3))
    assert " XN " in str(describe(leaf(0x1000, extra=XN1), 3))
    assert "X(el1)" in str(describe(leaf(0x1000, extra=XN0 | XN1), 3))


def test_permissions_af_sw_shareability():
    d = describe(0x1000 | TABLE | R, 3)
    assert d.readable and not d.writable and not d.af and d.shareability == 0
    assert str(d).startswith("L3 page pa=0x1000 size=4K R - ")
    assert "noAF" in str(d) and "SH=non" in str(d)
    d = describe(0x1000 | TABLE | W | 0b1010 << 55 | 2 << 8, 3)
    assert not d.readable and d.writable and d.sw == 0b1010 and d.shareability == 2
    assert "SW=0xa" in str(d) and "SH=outer" in str(d)


@pytest.mark.parametrize("memattr, fwb, name", [
    (0xF, False, "Normal-WB"), (0x5, False, "Normal-NC"), (0x1, False, "Device-nGnRE"),
    (0x0, False, "Device-nGnRnE"), (0xA, False, "Normal-WT"), (0xD, False, "Normal-oWB-iNC"),
    (0x4, False, "Normal-NoTagAccess"), (0x8, False, "reserved(0x8)"),
    (0x6, True, "Normal-WB"), (0x5, True, "Normal-NC"), (0x1, True, "Device-nGnRE"),
    (0x7, True, "Normal-asS1"), (0xE, True, "Normal-WB-NoTagAccess"), (0x4, True, "reserved(0x4)"),
    (0xF, True, "reserved(0xf)"),
])
def test_memtype_names(memattr, fwb, name):
    assert memtype_name(memattr, fwb) == name
    assert describe(leaf(0x1000, memattr=memattr), 3, fwb=fwb).memtype == name


def test_descriptors_the_engine_writes():
    mc = MemCache(0, on_empty="allocate")
    for fwb in (False, True):
        pt = Stage2PageTable(40, fwb=fwb, xnx=True)
        pt.map(0x40000000, 1 << 30, 1 << 40, Prot.R | Prot.W, memcache=mc)
        pt.map(0x80000000, 4096, 0x9000000, Prot.R | Prot.W | Prot.DEVICE, memcache=mc)
        assert pt.map(0x80200000, 2 << 20, 0xA0000000, Prot.R | Prot.NC, memcache=mc) == 0
        pt.map(0x80400000, 4096, 0xB0000000, Prot.R | Prot.PX, memcache=mc)
        pt.set_owner(0x90000000, 4096, 1, mc)
        got = {ipa: describe(pte, lv, fwb=fwb) for ipa, lv, pte in pt.leaves().tolist()}
        normal = got[0x40000000]
        assert (normal.kind, normal.pa, normal.size, normal.memtype) == ("block", 1 << 40, 1 << 30, "Normal-WB")
        assert normal.readable and normal.writable and not normal.exec_el1 and not normal.exec_el0
        dev = got[0x80000000]
        assert (dev.kind, dev.pa, dev.memtype, dev.writable) == ("page", 0x9000000, "Device-nGnRE", True)
        nc = got[0x80200000]
        assert (nc.kind, nc.memtype, nc.exec_el1, nc.exec_el0, nc.writable) == ("block", "Normal-NC", False, False, False)
        px = got[0x80400000]
        assert (px.exec_el1, px.exec_el0) == (True, False)
        (ipa, lv, pte), = pt.annotations().tolist()
        a = describe(pte, lv)
        assert (ipa, a.kind, a.owner) == (0x90000000, "annotation", 1)


def test_descriptor_is_a_frozen_dataclass():
    d = describe(0, 3)
    assert isinstance(d, Descriptor)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.pte = 1


@pytest.mark.parametrize("args, kw, exc, text", [
    (("0x1", 3), {}, TypeError, "'0x1'"),
    ((1.0, 3), {}, TypeError, "1.0"),
    ((True, 3), {}, TypeError, "True"),
    ((-1, 3), {}, ValueError, "-1"),
    ((1 << 64, 3), {}, ValueError, str(1 << 64)),
    ((0, 4), {}, ValueError, "level 4"),
    ((0, -2), {}, ValueError, "level -2"),
    ((0, "3"), {}, TypeError, "'3'"),
    ((0, 3), {"granule": 8192}, ValueError, "8192"),
    ((0, 3), {"granule": "4k"}, TypeError, "'4k'"),
    ((0, 3), {"fwb": 1}, TypeError, "fwb"),
    ((0, 3), {"xnx": None}, TypeError, "xnx"),
])
def test_bad_input_names_the_value(args, kw, exc, text):
    with pytest.raises(exc) as ei:
        describe(*args, **kw)
    assert text in str(ei.value)


def test_human_size():
    assert [human_size(n) for n in (4096, 2 << 20, 1 << 30, 12288, 1536 << 20, 100)] == \
        ["4K", "2M", "1G", "12K", "1536M", "100B"]
