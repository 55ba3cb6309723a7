"""Tables in external memory: from_image's register decoding, read-only
behaviour, trees only, reads outside memory, copy() and export_image()."""
import json

import numpy as np
import pytest

import s2fast
from s2fast import CorruptTableError, MemCache, OutsideMemoryError, ReadOnlyTableError, Stage2PageTable
from s2fast.image import decode_vtcr, decode_vttbr
from s2fast.physmem import PhysMem

G = 4096
RW_PAGE = 0x40000000000000 | 0x7C3 | (1 << 10)    # XN, AF, SH inner, S2AP RW, MemAttr 0xF... page


def vtcr(t0sz, sl0, tg0=0, ps=5, ha=True):
    return t0sz | sl0 << 6 | tg0 << 14 | ps << 16 | (1 << 21 if ha else 0) | 1 << 31


def image_40bit():
    """A 40-bit, 4 KiB image at PA 0x8000_0000: 2 root pages (level 1), one
    level-2 and one level-3 table mapping IPA 0x4000_0000 + 4 pages."""
    base = 0x80000000
    mem = np.zeros(8 * 512, dtype=np.uint64)          # 8 pages
    root, l2, l3 = base, base + 2 * G, base + 3 * G
    mem[1] = l2 | 3                                    # IPA 1 GiB -> l2
    mem[2 * 512 + 0] = l3 | 3                          # -> l3
    for i in range(4):
        mem[3 * 512 + i] = (0x1_0000_0000 + i * G) | 0x7C7 | (1 << 10) | (1 << 54)
    return mem, base, root


def open_40bit(**kw):
    mem, base, root = image_40bit()
    return Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=root, vtcr=vtcr(24, 1), **kw), mem


def test_open_walk_leaves_translate():
    pt, _ = open_40bit()
    assert pt.read_only and (pt.ia_bits, pt.start_level, pt.pgd_pages) == (40, 1, 2)
    leaves = pt.leaves()
    assert leaves["ipa"].tolist() == [0x40000000 + i * G for i in range(4)]
    assert (leaves["level"] == 3).all()
    assert pt.table_pages() == 4
    r = pt.translate(0x40001234, "read")
    assert r.ok and r.pa == 0x1_0000_1234 and r.level == 3
    cv = s2fast.CountVisitor()
    assert pt.walk(0, 1 << 40, cv) == 0
    assert cv.valid == {3: 4}


def test_vttbr_vmid_and_cnp_are_ignored():
    mem, base, root = image_40bit()
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=(0xABCD << 48) | root | 1,
                                    vtcr=vtcr(24, 1))
    assert pt.root_pa == root
    assert len(pt.leaves()) == 4


def test_every_write_is_refused_and_nothing_changes():
    pt, mem = open_40bit()
    before = mem.copy()
    mc = MemCache(10)
    ops = [
        lambda: pt.map(0, G, 0, s2fast.RW, memcache=mc),
        lambda: pt.unmap(0, 1 << 40),
        lambda: pt.wrprotect(0, 1 << 40),
        lambda: pt.relax_perms(0x40000000, s2fast.RW),
        lambda: pt.mkyoung(0x40000000),
        lambda: pt.test_clear_young(0x40000000, G, True),
        lambda: pt.split(0, 1 << 40, mc),
        lambda: pt.set_owner(0, G, 1, mc),
        lambda: pt.create_unlinked(0, 2, s2fast.RW, mc),
        lambda: pt.destroy(),
        lambda: pt.walk(0x40000000, G, lambda ctx, visit: ctx.set(0)),
    ]
    for op in ops:
        with pytest.raises(ReadOnlyTableError):
            op()
    assert (mem == before).all()
    assert pt.test_clear_young(0x40000000, G, False) is True     # reading is allowed
    assert len(pt.leaves()) == 4


def test_ctx_ptep_is_the_entry_pa():
    pt, _ = open_40bit()
    seen = []
    pt.walk(0x40000000, 2 * G, lambda ctx, visit: seen.append(ctx.ptep))
    assert seen == [0x80000000 + 3 * G, 0x80000000 + 3 * G + 8]
    pool = Stage2PageTable(40)
    pool.map(0, G, 0, s2fast.RW, memcache=MemCache(4), force_pte=True)
    got = []
    pool.walk(0, G, lambda ctx, visit: got.append(ctx.ptep))
    entry = (got[0] - s2fast._walk.TABLE_PA_BASE) // 8
    assert pool.descriptors[entry] == pool.get_leaf(0)[1]


def test_tables_must_form_a_tree():
    mem, base, root = image_40bit()
    mem[2] = (base + 2 * G) | 3            # a second root entry -> the same level-2 table
    pm = PhysMem.from_array(mem, base)
    # The error names the page and both entries that lead to it, first one last.
    with pytest.raises(ValueError, match="table page 0x80002000 is reached from the entry at PA "
                       "0x80000010 [(]level 1[)] and from the entry at PA 0x80000008: the tables "
                       "do not form a tree"):
        Stage2PageTable.from_image(pm, vttbr=root, vtcr=vtcr(24, 1))
    pt = Stage2PageTable.from_image(pm, vttbr=root, vtcr=vtcr(24, 1), allow_aliases=True)
    assert len(pt.leaves()) == 8            # both paths listed


def test_descriptor_back_at_an_ancestor_is_refused():
    mem, base, root = image_40bit()
    mem[2 * 512 + 5] = root | 3              # level-2 entry -> the root page
    with pytest.raises(ValueError, match="table page 0x80000000 is reached from the entry at PA "
                       "0x80002028 [(]level 2[)] and from the root: the tables do not form a tree"):
        Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=root, vtcr=vtcr(24, 1))


def test_descriptor_outside_memory_is_a_clear_walk_error_and_an_external_abort():
    mem, base, root = image_40bit()
    mem[2 * 512 + 1] = 0x7_0000_0000 | 3     # level-2 entry -> nowhere
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=root, vtcr=vtcr(24, 1))
    with pytest.raises(OutsideMemoryError) as e:
        pt.walk(0x40000000, 4 << 20, s2fast.CountVisitor())
    assert isinstance(e.value, CorruptTableError) and e.value.level == 2
    assert e.value.desc == 0x7_0000_0003
    r = pt.translate(0x40200000)
    assert (r.fault, r.fault_level, r.fsc) == (s2fast.Fault.EXTERNAL, 3, 0x17)
    with pytest.raises(OutsideMemoryError):
        pt.leaves()
    assert len(pt.leaves(skip_unreadable=True)) == 4


def test_root_outside_memory():
    mem, base, _ = image_40bit()
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=0x4000_0000, vtcr=vtcr(24, 1))
    with pytest.raises(OutsideMemoryError):
        pt.walk(0, G, lambda ctx, visit: 0)
    r = pt.translate(0)
    assert (r.fault, r.fsc) == (s2fast.Fault.EXTERNAL, 0x15)
    with pytest.raises(OutsideMemoryError):
        pt.leaves()
    assert pt.leaves(skip_unreadable=True).size == 0


@pytest.mark.parametrize("t0sz", range(16, 33))
def test_every_t0sz_16_to_32_decodes(t0sz):
    ia = 64 - t0sz
    # The start level the kernel would use, as SL0 (4 KiB pages).
    g = s2fast.geometry(ia)
    v = decode_vtcr(vtcr(t0sz, 2 - g.start_level))
    assert (v.ia_bits, v.start_level, v.pgd_pages) == (ia, g.start_level, g.pgd_pages)


def test_43_bit_ipa_with_16_concatenated_pages():
    # 43 bits starting at level 1: 2**(43-30) entries = 16 pages of 512.
    v = decode_vtcr(vtcr(21, 1))
    assert (v.ia_bits, v.start_level, v.pgd_pages, v.root_align) == (43, 1, 16, 16 * G)
    mem = np.zeros(17 * 512, dtype=np.uint64)
    base = 0x4000_0000
    last = (1 << 43) - (1 << 30)             # the last 1 GiB block of the space
    mem[(last >> 30)] = 0x8000_0000 | 0x7C5 | (1 << 10)
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=base | 0x8000, vtcr=v.value)
    assert pt.root_pa == base                # bits below the 64 KiB alignment are dropped
    r = pt.translate(last + 0x1234)
    assert r.ok and r.pa == 0x8000_1234 and r.level == 1
    assert pt.leaves()["ipa"].tolist() == [last]


@pytest.mark.parametrize("value,match", [
    (vtcr(24, 1, tg0=3), "TG0"),
    (vtcr(24, 1) | 7 << 16, "PS"),
    (vtcr(24, 0), "cannot start at level 2"),      # 40 bits from level 2: 1024 pages
    (vtcr(38, 2), "cannot start at level 0"),       # 26 bits from level 0
    (vtcr(10, 2), "IPA space"),                     # 54 bits
    (vtcr(24, 3), "FEAT_TTST"),
    (vtcr(24, 1) | 1 << 32, "FEAT_LPA2"),
])
def test_bad_vtcr_is_a_clear_value_error(value, match):
    mem, base, root = image_40bit()
    with pytest.raises(ValueError, match=match):
        Stage2PageTable.from_image(PhysMem.from_array(mem, base), vttbr=root, vtcr=value)


def test_bad_arguments():
    mem, base, root = image_40bit()
    pm = PhysMem.from_array(mem, base)
    with pytest.raises(TypeError, match="vttbr"):
        Stage2PageTable.from_image(pm, vttbr="0x80000000", vtcr=vtcr(24, 1))
    with pytest.raises(TypeError, match="needs vttbr"):
        Stage2PageTable.from_image(pm, vtcr=vtcr(24, 1))
    with pytest.raises(TypeError, match="PhysMem"):
        Stage2PageTable.from_image(mem, vttbr=root, vtcr=vtcr(24, 1))
    with pytest.raises(ValueError, match="vttbr"):
        Stage2PageTable.from_image(pm, vttbr=-1, vtcr=vtcr(24, 1))


def test_64k_vttbr_high_bits_with_52_bit_pa():
    v = decode_vtcr(vtcr(16, 2, tg0=1, ps=6))   # 48 bits, 64 KiB, level 1
    assert v.granule == 65536 and v.ps_bits == 52
    assert decode_vttbr((0x3 << 2) | 0x1234_0000, v) == (0x3 << 48) | 0x1234_0000


def pool_table():
    pt = Stage2PageTable(40)
    mc = MemCache(64)
    assert pt.map(0x40000000, 1 << 30, 0x80000000, s2fast.RW, memcache=mc) == 0
    assert pt.map(0x80000000, 4 << 20, 0x1_0000_0000, s2fast.RWX, memcache=mc, force_pte=True) == 0
    assert pt.map(0xC0000000, 2 << 20, 0x2_0000_0000, s2fast.RW, memcache=mc) == 0
    assert pt.set_owner(0x1_0000_0000, 8 * G, 1, mc) == 0
    assert pt.wrprotect(0x80000000, 1 << 20) == 0
    return pt


def test_export_from_image_round_trip(tmp_path):
    pt = pool_table()
    meta = pt.export_image(tmp_path / "img")
    side = json.loads((tmp_path / "img.json").read_text())
    assert side == meta and side["vtcr"] == pt.vtcr and side["root_pa"] == pt.root_pa
    im = Stage2PageTable.from_image(str(tmp_path / "img"))
    assert im.read_only
    assert (im.leaves() == pt.leaves()).all() and (im.annotations() == pt.annotations()).all()
    assert im.table_pages() == pt.table_pages()
    ipas = np.arange(0, 1 << 34, 0x3F01, dtype=np.uint64)
    for acc in ("read", "write", "exec_el1", "exec_el0"):
        assert (im.translate_batch(ipas, acc) == pt.translate_batch(ipas, acc)).all()
    if hasattr(pt, "dump"):
        try:
            assert im.dump() == pt.dump()
        except ImportError:
            pass


def test_freed_pages_are_not_exported(tmp_path):
    pt = pool_table()
    assert pt.unmap(0x80000000, 4 << 20) == 0            # frees the level-3 table
    pt.export_image(tmp_path / "img")
    raw = np.fromfile(tmp_path / "img", dtype=np.uint64).reshape(-1, 512)
    live = pt._core.refcounts > 0
    assert (raw[~live] == 0).all() and (~live).any()


def test_copy_is_writable_and_equal():
    pt = pool_table()
    im = Stage2PageTable.from_image(
        PhysMem.from_array(np.array(pt.descriptors), s2fast._walk.TABLE_PA_BASE),
        vttbr=pt.root_pa, vtcr=pt.vtcr, xnx=pt.xnx)
    c = im.copy()
    assert not c.read_only
    assert (c.leaves() == pt.leaves()).all() and (c.annotations() == pt.annotations()).all()
    live = pt._core.refcounts[pt._core.refcounts > 0]
    assert sorted(c._core.refcounts.tolist()) == sorted(live.tolist())
    assert c.pages_live == pt.pages_live
    # It behaves as the kernel's table would: unmapping everything frees all but the root.
    assert c.unmap(0, 1 << 40) == 0 and pt.unmap(0, 1 << 40) == 0
    assert c.pages_live == pt.pages_live == pt.pgd_pages


def test_copy_refuses_a_geometry_the_kernel_never_builds():
    # 43 bits starting at level 0 is a valid VTCR but not KVM's layout.
    mem = np.zeros(4 * 512, dtype=np.uint64)
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, 0x1000_0000), vttbr=0x1000_0000,
                                    vtcr=vtcr(21, 2))
    assert pt.start_level == 0
    with pytest.raises(ValueError, match="start at level 1"):
        pt.copy()


def test_sidecar_errors(tmp_path):
    pt = pool_table()
    pt.export_image(tmp_path / "img")
    (tmp_path / "img.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        Stage2PageTable.from_image(tmp_path / "img")
    (tmp_path / "img.json").unlink()
    with pytest.raises(ValueError, match="no sidecar"):
        Stage2PageTable.from_image(tmp_path / "img")


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_elf_core_opened_by_path(tmp_path, granule):
    """A core file with the table pages in two PT_LOADs (and some guest RAM
    between them), opened by path: the same leaves, translations and dump
    as the pool table it was written from."""
    from support.elfcore import write_elf_core

    pt = Stage2PageTable(40, granule=granule, xnx=True)
    mc = MemCache(0, on_empty="allocate")
    big = pt.geometry.level_size(2)
    assert pt.map(4 * big, 3 * big, 1 << 40, s2fast.RW, memcache=mc) == 0
    assert pt.map(16 * big, 8 * granule, 1 << 41, s2fast.RWX, memcache=mc, force_pte=True) == 0
    assert pt.set_owner(32 * big, 4 * granule, 1, mc) == 0
    raw = np.array(pt.descriptors).view(np.uint8)
    base = s2fast._walk.TABLE_PA_BASE
    cut = 2 * granule
    path = tmp_path / "vmcore"
    write_elf_core(path, [(0x4000_0000, bytes(64 << 10)), (base, raw[:cut]), (base + cut, raw[cut:])])
    pm = PhysMem.from_elf(str(path))
    assert len(pm.segments) == 3
    im = Stage2PageTable.from_image(pm, vttbr=pt.root_pa | (5 << 48), vtcr=pt.vtcr, xnx=True)
    assert (im.leaves() == pt.leaves()).all() and (im.annotations() == pt.annotations()).all()
    ipas = np.arange(0, 40 * big, granule // 2 + 8, dtype=np.uint64)
    for acc in ("read", "write", "exec_el1", "exec_el0"):
        assert (im.translate_batch(ipas, acc) == pt.translate_batch(ipas, acc)).all()
    assert im.dump() == pt.dump()
    assert im.translate(16 * big + 5).pa == (1 << 41) + 5


# -- regressions from the review of the image backend ---------------------------------

SMALL_ROOT_VTCR = 32 | (1 << 6) | (5 << 16) | (1 << 21)   # 4 KiB, 32-bit IPA, level 1: 4 entries


def test_table_pages_reads_only_the_small_root():
    """A 4-entry root (32 bytes) in a bigger buffer: entries past it are not
    root entries (table_pages once counted a descriptor at entry 10)."""
    mem = np.zeros(3 * 512, dtype=np.uint64)
    mem[10] = 0x1000 | 3                     # past the root: not part of the table
    mem[1] = 0x2000 | 3                      # root entry 1 -> a level-2 table
    pt = Stage2PageTable.from_image(PhysMem.from_array(mem, 0), vttbr=0, vtcr=SMALL_ROOT_VTCR)
    assert pt.table_pages() == 2


def test_small_root_in_a_32_byte_segment():
    """The root's own 32 bytes are all the memory there is: nothing reads past them."""
    root = np.zeros(4, dtype=np.uint64)
    root[0] = 0x4000_0000 | 0x7C5 | (1 << 10)                  # a 1 GiB block
    pt = Stage2PageTable.from_image(PhysMem.from_array(root, 0x1_0000), vttbr=0x1_0000,
                                    vtcr=SMALL_ROOT_VTCR)
    assert pt.table_pages() == 1
    assert pt.leaves()["ipa"].tolist() == [0]
    assert pt.translate(0x1234).pa == 0x4000_1234


def test_tree_scan_covers_a_root_that_is_not_page_aligned():
    base, root, l2 = 0x10000, 0x10040, 0x11000
    mem = np.zeros(3 * 512, dtype=np.uint64)
    r, t = (root - base) // 8, (l2 - base) // 8
    mem[r:r + 4] = l2 | 3                    # four root entries -> one level-2 table
    pm = PhysMem.from_array(mem, base)
    with pytest.raises(ValueError, match="do not form a tree"):
        Stage2PageTable.from_image(pm, vttbr=root, vtcr=SMALL_ROOT_VTCR)
    mem[r + 1:r + 4] = 0
    mem[t:t + 512] = l2 | 3                  # level-2 entries back at their own page
    with pytest.raises(ValueError, match="do not form a tree"):
        Stage2PageTable.from_image(pm, vttbr=root, vtcr=SMALL_ROOT_VTCR)


def test_copy_refuses_tables_outside_memory(tmp_path):
    pt = pool_table()
    pt.export_image(tmp_path / "img")
    raw = np.fromfile(tmp_path / "img", dtype=np.uint64)
    base = s2fast._walk.TABLE_PA_BASE
    # Keep the root and drop everything after it: its children are outside memory.
    pm = PhysMem.from_array(raw[:512 * pt.pgd_pages].copy(), base)
    im = Stage2PageTable.from_image(pm, vttbr=base, vtcr=pt.vtcr)
    with pytest.raises(ValueError, match="outside the image's memory"):
        im.copy()
    with pytest.raises(ValueError, match="outside the image's memory"):
        im.export_image(tmp_path / "again")


def test_vttbr_baddr_51_48_with_a_small_64k_root():
    # 64 KiB, 43-bit IPA from level 1: a 2-entry (16-byte) root; PS 52.
    v = decode_vtcr(21 | (2 << 6) | (1 << 14) | (6 << 16))
    assert (v.start_level, v.root_align) == (1, 16)
    assert decode_vttbr(0x1_0000 | (4 << 2), v) == (4 << 48) | 0x1_0000


def test_destroyed_table_cannot_be_exported_or_copied(tmp_path):
    pt = pool_table()
    pt.destroy()
    with pytest.raises(ValueError, match="destroyed"):
        pt.export_image(tmp_path / "img")
    with pytest.raises(ValueError, match="destroyed"):
        pt.copy()
    assert not (tmp_path / "img").exists()


def test_tables_in_an_unaligned_segment_are_copied_and_read():
    """A PT_LOAD at a file offset that is 4 mod 8 (QEMU pads its notes to 4
    bytes): the table pages in it are copied to aligned memory, the rest of
    the dump stays a view."""
    mem, base, root = image_40bit()
    buf = np.zeros(mem.nbytes + 4, dtype=np.uint8)
    odd = buf[4:]                                   # host address 4 mod 8
    odd[:] = mem.view(np.uint8)
    ram = np.zeros(1 << 20, dtype=np.uint8)
    pm = PhysMem([(base, odd), (0x4000_0000, ram)])
    pt = Stage2PageTable.from_image(pm, vttbr=root, vtcr=vtcr(24, 1))
    assert pt.patched_pages == (base, base + G, base + 2 * G, base + 3 * G)   # 2 root pages, l2, l3
    assert pt.leaves()["ipa"].tolist() == [0x40000000 + i * G for i in range(4)]
    assert pt.translate(0x40001234).pa == 0x1_0000_1234


def test_a_table_page_cut_in_two_by_segments_is_read_whole():
    mem, base, root = image_40bit()
    raw = mem.view(np.uint8)
    half = 2 * G + G // 2                           # inside the level-2 table page
    pm = PhysMem([(base, raw[:half]), (base + half, raw[half:])])
    pt = Stage2PageTable.from_image(pm, vttbr=root, vtcr=vtcr(24, 1))
    assert pt.patched_pages == (base + 2 * G,)
    assert len(pt.leaves()) == 4 and pt.table_pages() == 4
