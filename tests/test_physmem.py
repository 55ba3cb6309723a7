"""PhysMem: segments, zero-copy constructors (array, raw file, pages, ELF
core), reads that never leave a segment, and bad input named in errors."""
import os
import struct

import numpy as np
import pytest

from s2fast.errors import PhysMemReadError
from s2fast.physmem import PhysMem, Segment

from support.elfcore import Load, elf_core_bytes, write_elf_core


def words(n, start=0):
    return np.arange(start, start + n, dtype=np.uint64)


# -- PhysMem(segments) --------------------------------------------------------

def test_segments_sorted_adjacent_kept_separate_and_not_copied():
    a = np.zeros(4096, dtype=np.uint8)
    b = words(512)
    pm = PhysMem([(0x2000, b), (0x1000, a)])
    assert [s.pa for s in pm.segments] == [0x1000, 0x2000]
    assert [s.size for s in pm.segments] == [4096, 4096]
    assert len(pm.segments) == 2 and pm.size == 8192
    assert np.shares_memory(pm.segments[0].data, a)
    assert np.shares_memory(pm.segments[1].data, b)
    assert pm.read_u64(0x2008) == 1
    # A read across the boundary of two adjacent segments is refused.
    with pytest.raises(PhysMemReadError) as ei:
        pm.read_u64(0x1ffc)
    assert ei.value.pa == 0x1ffc and "0x1ffc" in str(ei.value)
    assert pm.find(0x1ffc) is None and pm.find(0x1ff8) is pm.segments[0]


def test_segment_views_are_read_only_and_leave_the_caller_array_writable():
    a = words(16)
    pm = PhysMem.from_array(a, 0)
    assert not pm.segments[0].data.flags.writeable
    a[0] = 7
    assert a.flags.writeable and pm.read_u64(0) == 7


@pytest.mark.parametrize("segs, text", [
    ([(0x1000, np.zeros(0x1000, np.uint8)), (0x1800, np.zeros(16, np.uint8))], "0x1800"),
    ([(0x1000, np.zeros(16, np.uint8)), (0x1000, np.zeros(16, np.uint8))], "overlap"),
    ([(-1, np.zeros(16, np.uint8))], "-1"),
    ([(1 << 64, np.zeros(16, np.uint8))], str(1 << 64)),
    ([((1 << 64) - 8, np.zeros(16, np.uint8))], "beyond 2**64"),
    ([(0, np.zeros(0, np.uint8))], "empty"),
    ([], "at least one"),
    ([(0, np.zeros((4, 4), np.uint8)[:, ::2])], "ascontiguousarray"),
])
def test_bad_segments_raise_value_error_naming_the_value(segs, text):
    with pytest.raises(ValueError) as ei:
        PhysMem(segs)
    assert text in str(ei.value)


@pytest.mark.parametrize("segs, text", [
    ([(0, b"abcd")], "bytes"),
    ([(0, [1, 2, 3])], "list"),
    ([(0x1000,)], "pair"),
    ([("0x1000", np.zeros(8, np.uint8))], "str"),
    ([(True, np.zeros(8, np.uint8))], "bool"),
    ([(0, np.array([object()]))], "object"),
])
def test_non_arrays_raise_type_error(segs, text):
    with pytest.raises(TypeError) as ei:
        PhysMem(segs)
    assert text in str(ei.value)


def test_segment_checks_its_own_fields():
    with pytest.raises(ValueError, match="uint8"):
        Segment(0, words(4))
    with pytest.raises(TypeError, match="int"):
        Segment(1.5, np.zeros(4, np.uint8))
    s = Segment(0x1000, np.zeros(32, np.uint8))
    assert s.size == 32 and s.end == 0x1020 and 0x101f in s and 0x1020 not in s


# -- reads -----------------------------------------------------------------

def test_read_u64_is_little_endian_and_bounds_checked():
    raw = np.frombuffer(struct.pack("<QQ", 0x1122334455667788, 0xdeadbeef), dtype=np.uint8)
    pm = PhysMem.from_array(raw, 0x8000)
    assert pm.read_u64(0x8000) == 0x1122334455667788
    assert pm.read_u64(0x8008) == 0xdeadbeef
    assert pm.read_u64(0x8001) == 0xef11223344556677   # unaligned read inside the segment
    for bad in (0x7ff8, 0x8009, 0x8010, 0, (1 << 64) - 8):
        with pytest.raises(PhysMemReadError) as ei:
            pm.read_u64(bad)
        assert ei.value.pa == bad
        assert isinstance(ei.value, LookupError)
    with pytest.raises(ValueError, match="-8"):
        pm.read_u64(-8)
    with pytest.raises(TypeError, match="float"):
        pm.read_u64(1.0)


def test_read_bytes_and_contains():
    pm = PhysMem.from_array(np.arange(256, dtype=np.uint8), 0x100)
    assert pm.read(0x110, 4) == bytes([16, 17, 18, 19])
    assert pm.read(0x1ff, 1) == b"\xff"
    assert pm.read(0x150, 0) == b""
    with pytest.raises(PhysMemReadError):
        pm.read(0x1ff, 2)
    assert 0x100 in pm and 0x1ff in pm
    assert 0xff not in pm and 0x200 not in pm and -1 not in pm and "0x100" not in pm


def test_u64_view_is_a_read_only_view_without_copy():
    a = words(1024, 100)
    pm = PhysMem.from_array(a, 0x40000)
    v = pm.u64_view(0x40000 + 16, 8)
    assert v.dtype == np.dtype("<u8") and v.tolist() == list(range(102, 110))
    assert np.shares_memory(v, a)
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v[0] = 1
    with pytest.raises(PhysMemReadError):
        pm.u64_view(0x40000 + 8 * 1020, 8)            # runs off the end
    with pytest.raises(PhysMemReadError) as ei:
        pm.u64_view(0x40004, 2)                        # not 8-byte aligned in the buffer
    assert "aligned" in str(ei.value)
    with pytest.raises(ValueError, match="count 0"):
        pm.u64_view(0x40000, 0)


def test_u64_view_alignment_is_relative_to_the_buffer_not_the_pa():
    buf = np.zeros(4096 + 8, dtype=np.uint8)
    buf[8:16] = np.frombuffer(struct.pack("<Q", 0xabc), np.uint8)
    # The segment starts 4 bytes into an 8-aligned buffer, at an aligned PA.
    pm = PhysMem([(0x1000, buf[4:])])
    with pytest.raises(PhysMemReadError):
        pm.u64_view(0x1000, 1)
    assert pm.u64_view(0x1004, 1).tolist() == [0xabc]
    assert pm.read_u64(0x1004) == 0xabc


def test_find_and_repr():
    pm = PhysMem([(0x1000 * (i * 2 + 1), np.zeros(0x1000, np.uint8)) for i in range(6)])
    assert pm.find(0x3000).pa == 0x3000 and pm.find(0x3ff8).pa == 0x3000
    assert pm.find(0x2000) is None and pm.find(0x3ffc) is None and pm.find(0) is None
    assert pm.find(0x3000, 0x1000) is pm.segments[1] and pm.find(0x3000, 0x1001) is None
    r = repr(pm)
    assert r.startswith("PhysMem(6 segments, 24 KiB: [0x1000-0x2000), [0x3000-0x4000)")
    assert "2 more" in r


# -- from_array ----------------------------------------------------------------

def test_from_array_views_any_contiguous_array():
    a = words(64).reshape(8, 8)
    pm = PhysMem.from_array(a, 0x10000)
    assert pm.size == 512 and np.shares_memory(pm.segments[0].data, a)
    assert pm.read_u64(0x10000 + 8 * 9) == 9
    with pytest.raises(ValueError) as ei:
        PhysMem.from_array(a[:, ::2], 0)
    assert "np.ascontiguousarray" in str(ei.value)
    with pytest.raises(TypeError, match="list"):
        PhysMem.from_array([1, 2, 3], 0)
    with pytest.raises(ValueError, match="-4096"):
        PhysMem.from_array(a, -4096)


# -- from_file -----------------------------------------------------------------

def test_from_file_memory_maps_without_copy(tmp_path):
    p = tmp_path / "ram.img"
    words(4096).tofile(p)
    pm = PhysMem.from_file(p, 0x40000000)
    seg = pm.segments[0]
    assert isinstance(seg.data, np.memmap) and seg.size == 32768
    assert pm.read_u64(0x40000000 + 8 * 77) == 77
    pm2 = PhysMem.from_file(str(p), 0x1000, offset=8 * 100, size=8 * 10)
    assert pm2.size == 80 and pm2.read_u64(0x1000) == 100
    assert pm2.u64_view(0x1000, 10).tolist() == list(range(100, 110))
    with pytest.raises(PhysMemReadError):
        pm2.read_u64(0x1000 + 80)


def test_from_file_bad_input(tmp_path):
    p = tmp_path / "ram.img"
    words(16).tofile(p)
    missing = tmp_path / "nope.img"
    with pytest.raises(FileNotFoundError) as ei:
        PhysMem.from_file(missing)
    assert "nope.img" in str(ei.value)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        PhysMem.from_file(empty)
    with pytest.raises(ValueError, match="0x80"):
        PhysMem.from_file(p, offset=128)
    with pytest.raises(ValueError, match="0x81"):
        PhysMem.from_file(p, offset=0, size=129)
    with pytest.raises(ValueError, match="size 0"):
        PhysMem.from_file(p, size=0)
    with pytest.raises(ValueError, match="regular file"):
        PhysMem.from_file(tmp_path)
    with pytest.raises(ValueError, match="-1"):
        PhysMem.from_file(p, offset=-1)


# -- from_pages ----------------------------------------------------------------

def test_from_pages_merges_consecutive_rows_at_consecutive_pas_as_views():
    pages = np.arange(5 * 512, dtype=np.uint64).reshape(5, 512)
    pa = np.array([0x10000, 0x11000, 0x12000, 0x40000, 0x41000], dtype=np.uint64)
    pm = PhysMem.from_pages(pa, pages)
    assert [(s.pa, s.size) for s in pm.segments] == [(0x10000, 0x3000), (0x40000, 0x2000)]
    for s in pm.segments:
        assert np.shares_memory(s.data, pages)
    assert pm.read_u64(0x12000) == 2 * 512
    assert pm.read_u64(0x41ff8) == 5 * 512 - 1


def test_from_pages_does_not_merge_rows_out_of_memory_order():
    pages = np.arange(3 * 512, dtype=np.uint64).reshape(3, 512)
    # Consecutive PAs but the rows are in the opposite order in memory.
    pm = PhysMem.from_pages([0x3000, 0x2000, 0x1000], pages)
    assert [(s.pa, s.size) for s in pm.segments] == [(0x1000, 0x1000), (0x2000, 0x1000), (0x3000, 0x1000)]
    assert pm.read_u64(0x1000) == 1024 and pm.read_u64(0x3000) == 0
    assert all(np.shares_memory(s.data, pages) for s in pm.segments)


def test_from_pages_strided_rows_stay_separate_views():
    big = np.arange(4 * 512, dtype=np.uint64).reshape(4, 512)
    every_other = big[::2]                      # rows contiguous, not adjacent in memory
    pm = PhysMem.from_pages([0x1000, 0x2000], every_other)
    assert len(pm.segments) == 2
    assert pm.read_u64(0x2000) == 2 * 512
    assert all(np.shares_memory(s.data, big) for s in pm.segments)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_from_pages_every_granule(granule):
    w = granule // 8
    pages = np.arange(2 * w, dtype=np.uint64).reshape(2, w)
    pm = PhysMem.from_pages(np.array([granule * 7, granule * 8], dtype=np.uint64), pages)
    assert len(pm.segments) == 1 and pm.size == 2 * granule
    assert pm.read_u64(granule * 8) == w


def test_from_pages_bad_input():
    pages = np.zeros((2, 512), dtype=np.uint64)
    with pytest.raises(ValueError, match="0x1008"):
        PhysMem.from_pages([0x1008, 0x2000], pages)
    with pytest.raises(ValueError, match="0x3000 is given twice"):
        PhysMem.from_pages([0x3000, 0x3000], pages)
    with pytest.raises(ValueError, match="3 words"):
        PhysMem.from_pages([0], np.zeros((1, 3), dtype=np.uint64))
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        PhysMem.from_pages([0], pages)
    with pytest.raises(TypeError, match="uint32"):
        PhysMem.from_pages([0, 0x1000], np.zeros((2, 1024), dtype=np.uint32))
    with pytest.raises(TypeError, match="list"):
        PhysMem.from_pages([0, 0x1000], [[0] * 512] * 2)
    with pytest.raises(ValueError, match="ascontiguousarray"):
        PhysMem.from_pages([0], np.zeros((1, 1024), dtype=np.uint64)[:, ::2])
    with pytest.raises(ValueError, match="-4096"):
        PhysMem.from_pages(np.array([-4096, 0], dtype=np.int64), pages)
    with pytest.raises(ValueError, match=r"pa\[1\]"):
        PhysMem.from_pages([0, -1], pages)


# -- from_elf ----------------------------------------------------------------

def test_from_elf_maps_each_pt_load_at_its_physical_address(tmp_path):
    table = words(512, 0x1000)
    ram = np.full(8192, 0xAB, dtype=np.uint8)
    core = write_elf_core(tmp_path / "vmcore", [
        Load(0x80000000, ram, vaddr=0xffff800080000000),
        Load(0x40000000, table),
        Load(0x90000000, b"", memsz=0x1000),        # no file contents: skipped
    ], note=b"CORE\0\0\0\0" * 4)
    pm = PhysMem.from_elf(core)
    assert [(s.pa, s.size) for s in pm.segments] == [(0x40000000, 4096), (0x80000000, 8192)]
    assert all(isinstance(s.data, np.memmap) for s in pm.segments)
    assert pm.read_u64(0x40000000 + 8 * 3) == 0x1003
    assert pm.u64_view(0x40000000, 512).tolist() == table.tolist()
    assert pm.read(0x80001ffe, 2) == b"\xab\xab"
    assert 0x90000000 not in pm
    with pytest.raises(PhysMemReadError):
        pm.read_u64(0x90000000)


def test_from_elf_packed_unaligned_offsets(tmp_path):
    core = write_elf_core(tmp_path / "core", [(0x1000, b"\x01" * 12), (0x2000, struct.pack("<Q", 99))], align=1)
    pm = PhysMem.from_elf(core)
    assert pm.read_u64(0x2000) == 99
    assert pm.read(0x1000, 12) == b"\x01" * 12


def test_from_elf_overlapping_loads_keep_the_first(tmp_path):
    # kdump lists the kernel image both on its own and inside a RAM range.
    ram = np.zeros(0x4000, dtype=np.uint8)
    text = np.ones(0x1000, dtype=np.uint8)
    core = write_elf_core(tmp_path / "core", [(0x10000, ram), (0x11000, text), (0x13800, np.full(0x1000, 2, np.uint8))])
    pm = PhysMem.from_elf(core)
    assert [(s.pa, s.end) for s in pm.segments] == [(0x10000, 0x14000), (0x14000, 0x14800)]
    assert pm.read(0x11000, 1) == b"\x00" and pm.read(0x14000, 1) == b"\x02"


def test_from_elf_bad_files(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf file at all" * 10)
    with pytest.raises(ValueError) as ei:
        PhysMem.from_elf(junk)
    assert str(junk) in str(ei.value)
    full = elf_core_bytes([(0x1000, b"x" * 8192)])
    for n in (0, 10, 70, 200, 6000):
        t = tmp_path / f"trunc{n}"
        t.write_bytes(full[:n])
        with pytest.raises(ValueError) as ei:
            PhysMem.from_elf(t)
        assert str(t) in str(ei.value)
    none = tmp_path / "noload"
    none.write_bytes(elf_core_bytes([Load(0x1000, b"", memsz=4096)], note=b"\0" * 12))
    with pytest.raises(ValueError, match="no PT_LOAD"):
        PhysMem.from_elf(none)
    with pytest.raises(FileNotFoundError, match="missing"):
        PhysMem.from_elf(tmp_path / "missing")


def test_elfcore_helper_is_readable_by_pyelftools(tmp_path):
    from elftools.elf.elffile import ELFFile

    path = write_elf_core(tmp_path / "c", [(0x4000, b"abcdefgh")], note=b"\0" * 8)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf.header["e_type"] == "ET_CORE" and elf.header["e_machine"] == "EM_AARCH64"
        assert elf.elfclass == 64 and elf.little_endian
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert len(loads) == 1 and loads[0]["p_paddr"] == 0x4000 and loads[0].data() == b"abcdefgh"
    assert os.path.getsize(path) == 4096 + 8
