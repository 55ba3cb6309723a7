"""s2fast.drgn against drgn programs built at test time.

Each program's types come from DWARF that gcc compiles from a small C file
reproducing the member paths and types s2fast.drgn reads in the KVM structures
of one kernel layout (Linux 6.1, 6.6, 6.12, mainline: ``start_level`` u32 or
s8, ``pgd`` a pointer or ``kvm_pteref_t``, VTCR in ``kvm_arch`` or in
``kvm_s2_mmu``, ``nested_mmus``, pKVM's ``host_kvm`` / ``host_mmu``). Its
memory holds ``struct kvm`` objects on ``vm_list`` (virtual segment) and
stage-2 tables built and exported by s2fast, each moved to its own physical
address (physical segments). Every table opened through drgn must give the
same leaves, annotations, translations and listing as the same pages opened
with ``Stage2PageTable.from_image``."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

drgn = pytest.importorskip("drgn")
if shutil.which("gcc") is None:
    pytest.skip("gcc is needed to build the kernel-layout DWARF", allow_module_level=True)

import s2fast
import s2fast.drgn as kd
from s2fast import MemCache, OutsideMemoryError, PhysMem, Prot, Stage2PageTable
from s2fast.image import decode_vtcr, table_oa

GiB, MiB = 1 << 30, 1 << 20
VBASE = 0xFFFF_0000_1000_0000          # the kernel objects (virtual segment)
VSIZE = 4 * MiB
PAGE_OFFSET = 0xFFFF_8000_0000_0000    # a linear map for pgt->pgd

# Per layout: the C switches. The member paths are those of the kernel
# headers of that version (arch/arm64/include/asm/kvm_host.h, kvm_pgtable.h,
# include/linux/kvm_host.h, arch/arm64/kvm/hyp/include/nvhe/mem_protect.h).
LAYOUTS = {
    "6.1": dict(S8_LEVEL=0, PTEREF=0, MMU_VTCR=0, ARCH_VTCR=1, SPLIT=0, NESTED=0, HOST="host_kvm"),
    "6.6": dict(S8_LEVEL=0, PTEREF=1, MMU_VTCR=0, ARCH_VTCR=1, SPLIT=1, NESTED=0, HOST="host_mmu"),
    "6.12": dict(S8_LEVEL=1, PTEREF=1, MMU_VTCR=1, ARCH_VTCR=0, SPLIT=1, NESTED=1, HOST="host_mmu"),
    "mainline": dict(S8_LEVEL=1, PTEREF=1, MMU_VTCR=1, ARCH_VTCR=0, SPLIT=1, NESTED=1, HOST="host_mmu"),
}

C_SOURCE = r"""
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64; typedef signed char s8; typedef long long s64;
typedef int pid_t; typedef u64 phys_addr_t; typedef u64 gfn_t; typedef unsigned long size_t;
typedef struct { s64 counter; } atomic64_t;
typedef struct { int counter; } atomic_t;
typedef struct { long counter; } atomic_long_t;
struct list_head { struct list_head *next, *prev; };
struct hlist_node { struct hlist_node *next, **pprev; };
struct hlist_head { struct hlist_node *first; };
struct rb_node { unsigned long __rb_parent_color; struct rb_node *rb_right; struct rb_node *rb_left; }
    __attribute__((aligned(sizeof(long))));
struct rb_root { struct rb_node *rb_node; };
struct rb_root_cached { struct rb_root rb_root; struct rb_node *rb_leftmost; };
struct interval_tree_node { struct rb_node rb; unsigned long start, last, __subtree_last; };
typedef u64 kvm_pte_t;
#if PTEREF
typedef kvm_pte_t *kvm_pteref_t;
#endif
struct kvm_pgtable_mm_ops { void *(*zalloc_page)(void *arg); };
enum kvm_pgtable_stage2_flags { KVM_PGTABLE_S2_NOFWB = 1, KVM_PGTABLE_S2_IDMAP = 2 };
struct kvm_pgtable {
    u32 ia_bits;
#if S8_LEVEL
    s8 start_level;
#else
    u32 start_level;
#endif
#if PTEREF
    kvm_pteref_t pgd;
#else
    kvm_pte_t *pgd;
#endif
    struct kvm_pgtable_mm_ops *mm_ops;
    struct kvm_s2_mmu *mmu;
    enum kvm_pgtable_stage2_flags flags;
    void *force_pte_cb;
};
struct kvm_vmid { atomic64_t id; };
struct kvm_mmu_memory_cache { int nobjs; void *objects[40]; };
struct kvm_s2_mmu {
    struct kvm_vmid vmid;
    phys_addr_t PGD_PHYS;
    struct kvm_pgtable *pgt;
#if MMU_VTCR
    u64 vtcr;
#endif
    int *last_vcpu_ran;
#if SPLIT
    struct kvm_mmu_memory_cache split_page_cache;
    u64 split_page_chunk_size;
#endif
#if NESTED
    u64 tlb_vttbr;
    u64 tlb_vtcr;
    _Bool nested_stage2_enabled;
    _Bool pending_unmap;
    atomic_t refcnt;
#endif
    struct kvm_arch *arch;
};
struct kvm_arch {
    struct kvm_s2_mmu mmu;
#if NESTED
    struct kvm_s2_mmu *nested_mmus;
    size_t nested_mmus_size;
    int nested_mmus_next;
#endif
#if ARCH_VTCR
    u64 vtcr;
#endif
    int max_vcpus;
};
struct kvm_arch_memory_slot { int unused; };
struct kvm_memory_slot {
    struct hlist_node id_node[2];
    struct interval_tree_node hva_node[2];
    struct rb_node gfn_node[2];
    gfn_t base_gfn;
    unsigned long npages;
    unsigned long *dirty_bitmap;
    struct kvm_arch_memory_slot arch;
    unsigned long userspace_addr;
    u32 flags;
    short id;
    u16 as_id;
};
struct kvm_memslots {
    u64 generation;
    atomic_long_t last_used_slot;
    struct rb_root_cached hva_tree;
    struct rb_root gfn_tree;
    struct hlist_head id_hash[128];
    int node_idx;
};
struct kvm {
    int mmu_lock;
    void *mm;
    unsigned long nr_memslot_pages;
    struct kvm_memslots __memslots[1][2];
    struct kvm_memslots *memslots[1];
    struct list_head vm_list;
    struct kvm_arch arch;
    pid_t userspace_pid;
    char stats_id[48];
};
struct HOST { struct kvm_arch arch; struct kvm_pgtable pgt; struct kvm_pgtable_mm_ops mm_ops; int lock; };
enum kvm_mode { KVM_MODE_DEFAULT, KVM_MODE_PROTECTED, KVM_MODE_NV, KVM_MODE_NONE };
struct kvm *t_kvm; struct kvm_memory_slot *t_slot; struct HOST *t_host; enum kvm_mode *t_mode;
"""


_OBJS: dict = {}


def _compile(name: str, defines: dict) -> str:
    """gcc -g -c of C_SOURCE with ``defines``: the object file whose DWARF
    gives the program its types (compiled once per name)."""
    if name not in _OBJS:
        import tempfile
        d = tempfile.mkdtemp(prefix=f"s2fast-drgn-{name}-")
        src = os.path.join(d, "kvm.c")
        with open(src, "w") as f:
            f.write(C_SOURCE)
        obj = os.path.join(d, "kvm.o")
        flags = [f"-D{a}={b}" for a, b in defines.items()]
        subprocess.run(["gcc", "-g", "-c", *flags, src, "-o", obj], check=True)
        _OBJS[name] = obj
    return _OBJS[name]


def _layout_obj(name: str) -> str:
    return _compile(name, _defines(LAYOUTS[name]))


def _defines(layout: dict, **over) -> dict:
    d = {k: v for k, v in layout.items() if k != "HOST"}
    d["HOST"] = layout["HOST"]
    d["PGD_PHYS"] = "pgd_phys"
    d.update(over)
    return d


# ---------------------------------------------------------------------------
# Tables: built by s2fast, exported, moved to their own PA

def _relocate(words: np.ndarray, old: int, new: int, vtcr: int) -> np.ndarray:
    """An exported image moved from PA ``old`` to ``new`` (table descriptors rewritten)."""
    v = decode_vtcr(vtcr)
    ptrs = v.granule // 8
    out = words.copy()
    frontier = [old + i * v.granule for i in range(v.pgd_pages)]
    for _level in range(v.start_level, 3):
        nxt = []
        for pa in frontier:
            page = out[(pa - old) // 8:(pa - old) // 8 + ptrs]
            m = (page & np.uint64(3)) == np.uint64(3)
            nxt += table_oa(page[m], v.granule).tolist()
            page[m] = page[m] - np.uint64(old) + np.uint64(new)
        frontier = nxt
    return out


def _table(tmp_path, name: str, ia_bits: int, granule: int, build) -> tuple[np.ndarray, int]:
    pt = Stage2PageTable(ia_bits, granule=granule, xnx=True)
    build(pt, MemCache(0, on_empty="allocate"))
    meta = pt.export_image(str(tmp_path / f"{name}.img"))
    words = np.fromfile(str(tmp_path / f"{name}.img"), dtype="<u8")
    return words, meta


def _build_4k(pt, mc):
    pt.map(1 * GiB, 2 * GiB, 1 << 40, Prot.R | Prot.W, memcache=mc)                   # 1 GiB blocks
    pt.map(3 * GiB, 4 * MiB, 1 << 41, Prot.R | Prot.W | Prot.X, memcache=mc)           # 2 MiB blocks
    pt.map(3 * GiB + 8 * MiB, 2 * MiB, 1 << 41, Prot.R | Prot.X, memcache=mc, force_pte=True)
    pt.map(600 * GiB, 64 * 4096, 0x1234_0000, Prot.R, memcache=mc, force_pte=True)       # 2nd root page
    pt.set_owner(4 * GiB, 64 << 10, 1, mc)


def _build_16k(pt, mc):
    pt.map(1 * GiB, 64 * MiB, 1 << 40, Prot.R | Prot.W, memcache=mc)                    # 32 MiB blocks
    pt.map(2 * GiB, 2 * MiB, 1 << 41, Prot.R | Prot.W, memcache=mc, force_pte=True)    # 16 KiB pages


def _build_64k(pt, mc):
    pt.map(1 * GiB, 1 * GiB, 1 << 40, Prot.R | Prot.W, memcache=mc)                     # 512 MiB blocks
    pt.map(4 * GiB, 4 * MiB, 1 << 41, Prot.R, memcache=mc, force_pte=True)             # 64 KiB pages


def _build_host(pt, mc):
    # pKVM's host stage 2: the host's RAM mapped at its own address.
    pt.map(2 * GiB, 2 * GiB, 2 * GiB, Prot.R | Prot.W | Prot.X, memcache=mc)
    pt.map(0x900_0000, 64 << 10, 0x900_0000, Prot.R | Prot.W, memcache=mc, force_pte=True)


def _build_4k_l0(pt, mc):
    pt.map(1 << 43, 2 * MiB, 1 << 42, Prot.R | Prot.W, memcache=mc, force_pte=True)


TABLES = {   # name: (ia_bits, granule, build); 4K/40: start level 1, 2 root pages (concatenated)
    "4k": (40, 4096, _build_4k),
    "16k": (36, 16384, _build_16k),        # 2 levels
    "64k": (42, 65536, _build_64k),        # 2 levels
    "4k-l0": (44, 4096, _build_4k_l0),     # 4 levels
    "host": (40, 4096, _build_host),
}


class Kernel:
    """A drgn program with one layout's types, kernel objects in a virtual
    segment and stage-2 tables in physical segments."""

    def __init__(self, obj_path: str, layout: dict) -> None:
        self.prog = drgn.Program()
        self.prog.extra_module("kvm-layout", 0, create=True).try_file(obj_path, force=True)
        self.layout = layout
        self.vmem = bytearray(VSIZE)
        self.brk = 0x1000
        self.phys: list[tuple[int, bytes]] = []
        self.globals: dict[str, drgn.Object] = {}
        self.prog.add_memory_segment(VBASE, VSIZE, self._vread)
        self.prog.register_object_finder("test-globals", self._find, enable_index=0)

    def _vread(self, address, count, offset, physical):
        return bytes(self.vmem[offset:offset + count])

    def _find(self, prog, name, flags, filename):
        return self.globals.get(name)

    def alloc(self, type_name: str, count: int = 1) -> drgn.Object:
        t = self.prog.type(type_name)
        size = drgn.sizeof(t) * count
        addr = VBASE + self.brk
        self.brk = (self.brk + size + 63) & ~63
        assert self.brk <= VSIZE
        if count == 1:
            return drgn.Object(self.prog, t, address=addr)
        return drgn.Object(self.prog, self.prog.array_type(t, count), address=addr)

    def put(self, ref: drgn.Object, value: int) -> None:
        size = drgn.sizeof(ref)
        off = ref.address_ - VBASE
        t = ref.type_.unaliased()
        signed = t.kind == drgn.TypeKind.INT and t.is_signed
        self.vmem[off:off + size] = int(value).to_bytes(size, "little", signed=signed)

    def add_phys(self, pa: int, words: np.ndarray) -> None:
        data = words.astype("<u8").tobytes()
        self.prog.add_memory_segment(pa, len(data), lambda a, n, o, p, d=data: d[o:o + n], True)

    def add_global(self, name: str, obj: drgn.Object) -> None:
        self.globals[name] = obj


def _init_list(k: Kernel, head: drgn.Object, nodes: list) -> None:
    chain = [head] + nodes
    for i, n in enumerate(chain):
        k.put(n.next, chain[(i + 1) % len(chain)].address_)
        k.put(n.prev, chain[i - 1].address_)


def _fill_mmu(k: Kernel, mmu, pgt, root_pa: int, vtcr: int, vmid: int, geometry, kvm=None) -> None:
    k.put(mmu.vmid.id.counter, (7 << 16) | vmid)          # generation 7 above the VMID bits
    k.put(mmu.pgd_phys, root_pa)
    k.put(mmu.pgt, pgt.address_)
    if k.layout["MMU_VTCR"]:
        k.put(mmu.vtcr, vtcr)
    elif kvm is not None:
        k.put(kvm.arch.vtcr, vtcr)
    k.put(pgt.ia_bits, geometry.ia_bits)
    k.put(pgt.start_level, geometry.start_level)
    k.put(pgt.pgd, PAGE_OFFSET + root_pa)
    k.put(pgt.mmu, mmu.address_)


SLOT_SETS = [   # (base gpa, bytes, flags) per VM; flags 1 = dirty logging, 2 = read-only
    [(1 * GiB, 3 * GiB, 1), (4 * GiB, 64 << 10, 2), (600 * GiB, 1 * MiB, 0)],
    [(1 * GiB, 2 * GiB, 0)],
    [(1 * GiB, 4 * GiB, 3), (8 * GiB, 1 * GiB, 0)],
]


def _fill_memslots(k: Kernel, kvm, page: int, slots: list) -> None:
    ms = kvm.__memslots[0][1]            # the active set is the second one
    k.put(kvm.memslots[0], ms.address_)
    k.put(ms.node_idx, 1)
    objs = []
    for i, (gpa, size, flags) in enumerate(slots):
        s = k.alloc("struct kvm_memory_slot")
        k.put(s.base_gfn, gpa // page)
        k.put(s.npages, size // page)
        k.put(s.userspace_addr, 0x7F00_0000_0000 + i * (1 << 32))
        k.put(s.flags, flags)
        k.put(s.id, i)
        objs.append(s)
    # A valid binary search tree (colour bits are not looked at): the middle
    # slot at the root, the others below it.
    nodes = [s.gfn_node[1] for s in objs]

    def link(lo, hi, parent):
        if lo >= hi:
            return 0
        mid = (lo + hi) // 2
        n = nodes[mid]
        k.put(n.__rb_parent_color, parent)
        k.put(n.rb_left, link(lo, mid, n.address_))
        k.put(n.rb_right, link(mid + 1, hi, n.address_))
        return n.address_

    k.put(ms.gfn_tree.rb_node, link(0, len(nodes), 0))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return make_tables(tmp_path_factory.mktemp("tables"))


def make_tables(tmp) -> dict:
    """name -> (relocated words, base PA, vtcr, reference table from from_image)."""
    out = {}
    for i, (name, (ia, g, build)) in enumerate(TABLES.items()):
        words, meta = _table(tmp, name, ia, g, build)
        base = 0x8000_0000 + i * 0x1000_0000
        moved = _relocate(words, meta["base_pa"], base, meta["vtcr"])
        ref = Stage2PageTable.from_image(PhysMem.from_array(moved, base), vttbr=base, vtcr=meta["vtcr"])
        out[name] = (moved, base, meta["vtcr"], ref)
    return out


def build_kernel(obj_path: str, layout: dict, tables: dict, *, vms=("4k", "16k", "64k"),
                 bad_root: bool = False) -> Kernel:
    k = Kernel(obj_path, layout)
    for moved, base, _, _ in tables.values():
        k.add_phys(base, moved)
    head = k.alloc("struct list_head")
    k.add_global("vm_list", head)
    kvms = []
    for i, name in enumerate(vms):
        moved, base, vtcr, ref = tables[name]
        kvm = k.alloc("struct kvm")
        pgt = k.alloc("struct kvm_pgtable")
        root = 0x7_0000_0000 if bad_root and i == 0 else base
        _fill_mmu(k, kvm.arch.mmu, pgt, root, vtcr, 10 + i, ref.geometry, kvm)
        k.put(kvm.arch.mmu.arch, kvm.arch.address_)
        k.put(kvm.userspace_pid, 4000 + i)
        _fill_memslots(k, kvm, ref.granule, SLOT_SETS[i])
        kvms.append(kvm)
    _init_list(k, head, [kv.vm_list for kv in kvms])
    if layout["NESTED"]:
        # VM 0 runs a nested guest: nested MMU 1 is valid (the 4-level
        # table), MMU 0 and 2 are unused (CnP set in tlb_vttbr).
        moved, base, vtcr, ref = tables["4k-l0"]
        arr = k.alloc("struct kvm_s2_mmu", 3)
        kvm = kvms[0]
        k.put(kvm.arch.nested_mmus, arr.address_)
        k.put(kvm.arch.nested_mmus_size, 3)
        for j in range(3):
            k.put(arr[j].tlb_vttbr, 1 if j != 1 else 0x5_0000_0000)
        pgt = k.alloc("struct kvm_pgtable")
        _fill_mmu(k, arr[1], pgt, base, vtcr, 99, ref.geometry)
    mode = k.alloc("enum kvm_mode")
    k.add_global("kvm_mode", mode)
    k.put(mode, 1)                                                   # KVM_MODE_PROTECTED
    host = k.alloc(f"struct {layout['HOST']}")
    k.add_global(f"__kvm_nvhe_{layout['HOST']}", host)
    moved, base, vtcr, ref = tables["host"]
    k.put(host.arch.mmu.pgd_phys, base)
    k.put(host.arch.mmu.pgt, host.pgt.address_)
    if layout["MMU_VTCR"]:
        k.put(host.arch.mmu.vtcr, vtcr)
    else:
        k.put(host.arch.vtcr, vtcr)
    k.put(host.pgt.ia_bits, ref.ia_bits)
    k.put(host.pgt.start_level, ref.start_level)
    k.put(host.pgt.pgd, 0x8000_0000_1234_0000)                       # a hyp VA: not translatable
    return k


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_kernel(request, tables):
    name = request.param
    layout = LAYOUTS[name]
    return name, build_kernel(_layout_obj(name), layout, tables), tables


def _linear(va: int) -> int:
    return va - PAGE_OFFSET


def _same_table(got, ref) -> None:
    assert (got.ia_bits, got.granule, got.start_level, got.pgd_pages, got.root_pa, got.vtcr) == \
        (ref.ia_bits, ref.granule, ref.start_level, ref.pgd_pages, ref.root_pa, ref.vtcr)
    assert np.array_equal(got.leaves(), ref.leaves())
    assert np.array_equal(got.annotations(), ref.annotations())
    assert len(got.leaves()) > 0
    rng = np.random.default_rng(0)
    span = 1 << ref.ia_bits
    ipas = np.concatenate([ref.leaves()["ipa"], rng.integers(0, span, 4000, dtype=np.uint64),
                           ref.leaves()["ipa"] + np.uint64(ref.granule // 2)])
    for access in ("read", "write", "exec_el1", "exec_el0"):
        a, b = got.translate_batch(ipas, access), ref.translate_batch(ipas, access)
        assert a.tobytes() == b.tobytes(), access
    assert got.dump() == ref.dump()


# ---------------------------------------------------------------------------

def test_every_vm_found_and_identical_to_from_image(layout_kernel):
    name, k, tables = layout_kernel
    kvms = list(kd.for_each_kvm(k.prog))
    assert [kd.kvm_pid(kv) for kv in kvms] == [4000, 4001, 4002]
    for i, (kvm, tname) in enumerate(zip(kvms, ("4k", "16k", "64k"))):
        ref = tables[tname][3]
        for v2p in (_linear, False):            # pgt->pgd translated, or mmu->pgd_phys
            pt = kd.kvm_stage2(kvm, virt_to_phys=v2p)
            assert pt.read_only
            assert pt.vttbr >> 48 == 10 + i, "VMID: the low bits of vmid.id"
            _same_table(pt, ref)


def test_concatenated_root_and_two_level_walks_are_covered(tables):
    g4, g16, g64 = (tables[n][3] for n in ("4k", "16k", "64k"))
    assert g4.pgd_pages == 2 and g4.start_level == 1
    assert set(g4.leaves()["ipa"] >> np.uint64(39)) == {0, 1}, "leaves under both root pages"
    assert g16.start_level == 2 and g64.start_level == 2


def test_nested_mmus_and_pkvm_host(layout_kernel):
    name, k, tables = layout_kernel
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    nested = kd.kvm_nested_stage2s(kvm, virt_to_phys=_linear)
    if LAYOUTS[name]["NESTED"]:
        assert [i for i, _ in nested] == [1]
        assert nested[0][1].vttbr >> 48 == 99
        _same_table(nested[0][1], tables["4k-l0"][3])
    else:
        assert nested == []
    host = kd.pkvm_host_stage2(k.prog)
    assert host is not None and host.vttbr >> 48 == 0
    _same_table(host, tables["host"][3])
    k.put(k.globals["kvm_mode"], 0)                       # not protected: no host stage 2
    try:
        assert kd.pkvm_host_stage2(k.prog) is None
    finally:
        k.put(k.globals["kvm_mode"], 1)


def test_memslots_and_vm_listing(layout_kernel):
    name, k, tables = layout_kernel
    kvms = list(kd.for_each_kvm(k.prog))
    for kvm, want in zip(kvms, SLOT_SETS):
        slots = kd.kvm_memslots(kvm)
        assert [(m.guest_phys_addr, m.size, m.flags) for m in slots] == want
        assert [m.id for m in slots] == list(range(len(want)))
    s = kd.kvm_memslots(kvms[0])
    assert s[0].dirty_logging and not s[0].readonly and s[1].readonly and s[1].flag_names == ["readonly"]
    vms = kd.list_vms(k.prog, virt_to_phys=_linear)
    ids = [v.id for v in vms]
    assert ids == (["0", "0.1", "1", "2", "host"] if LAYOUTS[name]["NESTED"] else ["0", "1", "2", "host"])
    v0 = vms[0]
    ref = tables["4k"][3]
    assert (v0.pid, v0.vmid, v0.ia_bits, v0.start_level, v0.root_pa) == (4000, 10, 40, 1, ref.root_pa)
    lv = ref.leaves()["level"]
    assert v0.mapped == {l: int((lv == l).sum()) * ref.geometry.level_size(l) for l in (1, 2, 3)}
    assert v0.mapped[1] == 2 * GiB and v0.error is None


def test_missing_or_renamed_member_is_named():
    layout = LAYOUTS["6.6"]
    renamed = _compile("renamed", _defines(layout, PGD_PHYS="pgd_pa"))
    k = build_kernel_raw(renamed, layout)
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    with pytest.raises(kd.KernelLayoutError, match=r"struct kvm_s2_mmu has no member 'pgd_phys'"):
        kd.kvm_stage2(kvm)
    no_vtcr = _compile("novtcr", _defines(layout, ARCH_VTCR=0))
    k = build_kernel_raw(no_vtcr, dict(layout, ARCH_VTCR=0))
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    with pytest.raises(kd.KernelLayoutError, match=r"'vtcr'"):
        kd.kvm_stage2(kvm)
    with pytest.raises(kd.KernelLayoutError, match=r"'vtcr'"):
        kd.list_vms(k.prog)


def build_kernel_raw(obj_path: str, layout: dict) -> Kernel:
    """One zero-filled VM on vm_list: enough to reach the layout checks."""
    k = Kernel(obj_path, layout)
    head = k.alloc("struct list_head")
    k.add_global("vm_list", head)
    kvm = k.alloc("struct kvm")
    _init_list(k, head, [kvm.vm_list])
    return k


def test_pgd_outside_memory_is_outside_memory_error(layout_kernel, tables):
    name, _, _ = layout_kernel
    k = build_kernel(_layout_obj(name), LAYOUTS[name], tables, bad_root=True)
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    pt = kd.kvm_stage2(kvm, virt_to_phys=_linear)
    with pytest.raises(OutsideMemoryError, match="root table page at PA 0x700000000"):
        pt.leaves()
    t = pt.translate(1 * GiB, "read")
    assert t.fault == s2fast.Fault.EXTERNAL
    v0 = kd.list_vms(k.prog, virt_to_phys=_linear)[0]
    assert v0.error and "outside" in v0.error and v0.memslots


def test_table_page_unreadable_midway(tables):
    """A page drgn cannot read below the root: walks that reach it raise
    OutsideMemoryError; skip_unreadable lists the rest, identical to the
    reference with that page cut out."""
    name = "6.12"
    k = build_kernel(_layout_obj(name), LAYOUTS[name], tables)
    moved, base, vtcr, ref = tables["4k"]
    # Hide the last table page by overlaying an unreadable segment on it.
    last = base + len(moved) * 8 - 4096

    def fault(address, count, offset, physical):
        raise drgn.FaultError("hidden", address)

    k.prog.add_memory_segment(last, 4096, fault, True)
    pt = kd.kvm_stage2(next(iter(kd.for_each_kvm(k.prog))), virt_to_phys=_linear)
    with pytest.raises(OutsideMemoryError):
        pt.leaves()
    cut = moved.copy()
    cut_pm = PhysMem([(base, cut[:(last - base) // 8])])
    want = Stage2PageTable.from_image(cut_pm, vttbr=base, vtcr=vtcr)
    assert np.array_equal(pt.leaves(skip_unreadable=True), want.leaves(skip_unreadable=True))


def test_reader_caches_pages(tables):
    k = build_kernel(_layout_obj("6.1"), LAYOUTS["6.1"], tables)
    reader = kd.PhysReader(k.prog)
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    kd.kvm_stage2(kvm, reader=reader)
    n = len(reader.cache)
    assert n == tables["4k"][3].table_pages()
    calls = []
    orig = k.prog.read
    reader.prog = type("P", (), {"read": lambda self, *a: calls.append(a) or orig(*a)})()
    kd.kvm_stage2(kvm, reader=reader)
    assert calls == [] and len(reader.cache) == n


# -- the command line ----------------------------------------------------------

def test_cli_vms_and_dump_vm(monkeypatch, tables):
    from s2fast.cli import main
    import io
    import json

    k = build_kernel(_layout_obj("6.12"), LAYOUTS["6.12"], tables)
    monkeypatch.setattr(kd, "open_program", lambda vmcore, vmlinux, live: k.prog)
    out, err = io.StringIO(), io.StringIO()
    assert main(["vms", "--vmcore", "vmcore"], out=out, err=err) == 0, err.getvalue()
    text = out.getvalue()
    assert "5 stage-2 tables" in text and "dirty-log" in text and "0x80000000" in text
    out = io.StringIO()
    assert main(["vms", "--vmcore", "vmcore", "--json"], out=out, err=err) == 0
    vms = json.loads(out.getvalue())
    assert [v["id"] for v in vms] == ["0", "0.1", "1", "2", "host"]
    assert vms[0]["memslots"][0]["flag_names"] == ["dirty-log"]
    out = io.StringIO()
    assert main(["dump", "--vmcore", "vmcore", "--vm", "0"], out=out, err=err) == 0, err.getvalue()
    listing = out.getvalue()
    assert "memslot 0 (as 0)" in listing and "(dirty logging on)" in listing
    assert "slot=0" in listing and "slot=2" in listing
    out = io.StringIO()
    assert main(["dump", "--vmcore", "vmcore", "--vm", "0", "--json"], out=out, err=err) == 0
    d = json.loads(out.getvalue())
    assert d["vmid"] == 10 and all(r["memslots"] for r in d["runs"])
    for bad in (["dump", "--vm", "0"], ["dump", "--vmcore", "x", "--vm", "7"],
                ["dump", "--vmcore", "x", "--vm", "0.5"], ["dump", "--vmcore", "x"],
                ["dump", "--vmlinux", "v"], ["vms"], ["dump", "--vmcore", "x", "--vm", "0", "--vtcr", "1"]):
        err = io.StringIO()
        assert main(bad, out=io.StringIO(), err=err) == 2, bad
        assert err.getvalue().startswith("s2fast: error:") and "\n" == err.getvalue()[-1]


def test_docs_show_what_the_test_program_prints(monkeypatch, tables):
    """docs/drgn.md and the README show this program's output: the drgn
    session's three lines and the two commands, verbatim."""
    import io
    import pathlib
    import re

    from s2fast.cli import main

    root = pathlib.Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "drgn.md").read_text()
    readme = (root / "README.md").read_text()
    k = build_kernel(_layout_obj("6.12"), LAYOUTS["6.12"], tables)
    prog = k.prog
    session = re.search(r"```pycon\n\$ drgn -c vmcore\n(.*?)```", doc, re.S).group(1)
    assert session in readme
    code = [l[4:] for l in session.splitlines() if l.startswith(">>> ")]
    shown = [l for l in session.splitlines() if not l.startswith(">>> ")]
    assert len(code) == 3
    out = io.StringIO()
    ns = {"prog": prog}
    import contextlib
    with contextlib.redirect_stdout(out):
        for line in code:
            exec(line, ns)
    assert out.getvalue().splitlines() == shown
    monkeypatch.setattr(kd, "open_program", lambda vmcore, vmlinux, live: prog)
    for cmd in ("s2fast vms --vmcore vmcore", "s2fast dump --vmcore vmcore --vm 1"):
        block = re.search(r"```\n\$ " + re.escape(cmd) + r"\n(.*?)```", doc, re.S).group(1)
        out = io.StringIO()
        assert main(cmd.split()[1:], out=out, err=io.StringIO()) == 0
        assert out.getvalue() == block, cmd


def test_pgd_and_pgd_phys_must_agree(tables):
    k = build_kernel(_layout_obj("6.6"), LAYOUTS["6.6"], tables)
    kvm = next(iter(kd.for_each_kvm(k.prog)))
    with pytest.raises(ValueError, match=r"pgt->pgd 0xffff800080000000 translates to PA 0x80001000 "
                                         r"but mmu->pgd_phys is 0x80000000"):
        kd.kvm_stage2(kvm, virt_to_phys=lambda va: _linear(va) + 4096)
