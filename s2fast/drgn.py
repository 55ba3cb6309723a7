"""Every KVM guest's stage 2 from a live kernel or a vmcore, through drgn.

``for_each_kvm(prog)`` lists the ``struct kvm`` on ``vm_list``;
``kvm_stage2(kvm)`` opens a VM's stage-2 table read-only as a
``Stage2PageTable`` (walks, ``leaves()``, ``translate``/``translate_batch``,
``dump()``); ``kvm_nested_stage2s(kvm)`` opens each valid nested-virtualisation
MMU; ``pkvm_host_stage2(prog)`` opens the pKVM host stage 2 in protected
mode; ``kvm_memslots(kvm)`` and ``vm_info(kvm)`` describe a VM.

Where the table comes from (arch/arm64/kvm/mmu.c, kvm_init_stage2_mmu()):
``kvm->arch.mmu`` is a ``struct kvm_s2_mmu``; its ``pgt`` (``struct
kvm_pgtable``) holds ``ia_bits``, ``start_level`` and ``pgd`` (the root's
kernel address, ``mmu->pgd_phys`` its PA); the VMID is ``mmu->vmid.id``; the
VTCR value is ``kvm->arch.vtcr`` up to Linux 6.7 and ``mmu->vtcr`` from 6.8.
Member names and types that differ between Linux 6.1, 6.6, 6.12 and mainline
(``start_level`` u32 or s8, ``pgd`` a pointer or ``kvm_pteref_t``, where VTCR
lives, ``nested_mmus``) are looked up by name; a member no supported layout
explains raises ``KernelLayoutError`` naming it.

Memory: the table pages are read through drgn (``prog.read(pa, size,
physical=True)``), one page at a time with a cache, from the root down, and
handed to ``Stage2PageTable.from_image`` as a ``PhysMem`` of those pages; the
engine then works on them unchanged. On a live kernel the tables are a
snapshot taken when the table is opened. A table page drgn cannot read is
left out, so walks that reach it raise ``OutsideMemoryError``.

drgn is an optional dependency (``pip install 's2fast[drgn]'``); importing
this module does not need it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .errors import OutsideMemoryError
from .image import decode_vtcr, table_oa

INSTALL_HINT = "pip install 's2fast[drgn]'"
SUPPORTED = "Linux 6.1, 6.6, 6.12 and mainline"

# include/uapi/linux/kvm.h
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
MEMSLOT_FLAGS = ((KVM_MEM_LOG_DIRTY_PAGES, "dirty-log"), (KVM_MEM_READONLY, "readonly"),
                 (KVM_MEM_GUEST_MEMFD, "guest-memfd"))
VTTBR_CNP_BIT = 1


class KernelLayoutError(ValueError):
    """The kernel's structures lack a member s2fast.drgn reads (a kernel
    layout it does not know); the message names the member."""


def _drgn() -> Any:
    try:
        import drgn
    except ImportError:
        raise ImportError(f"s2fast.drgn needs drgn, which is not installed: {INSTALL_HINT}") from None
    return drgn


# ---------------------------------------------------------------------------
# Members by name, with errors that name what is missing

def _struct_type(obj: Any) -> Any:
    """The struct type of ``obj`` (typedefs and one pointer stripped)."""
    drgn = _drgn()
    t = obj.type_.unaliased()
    if t.kind == drgn.TypeKind.POINTER:
        t = t.type.unaliased()
    return t


def _type_name(t: Any) -> str:
    try:
        return t.type_name()
    except Exception:
        return str(t.kind)


def _has(obj: Any, name: str) -> bool:
    t = _struct_type(obj)
    return t.kind in (_drgn().TypeKind.STRUCT, _drgn().TypeKind.UNION) and t.has_member(name)


def _member(obj: Any, path: str) -> Any:
    """``obj.a.b.c`` for ``path`` "a.b.c" (pointers followed), or
    KernelLayoutError naming the member that is not there."""
    cur = obj
    for part in path.split("."):
        if not _has(cur, part):
            raise KernelLayoutError(
                f"{_type_name(_struct_type(cur))} has no member {part!r} (reading {path!r} of "
                f"{_type_name(_struct_type(obj))}): not a kernel layout s2fast.drgn knows ({SUPPORTED})")
        cur = cur.member_(part)
    return cur


def _require(obj: Any, *paths: str) -> None:
    """KernelLayoutError unless the type of ``obj`` has every member path
    (checked on the types, before any value is read)."""
    drgn = _drgn()
    for path in paths:
        t = obj.type_
        for part in path.split("."):
            t = t.unaliased()
            if t.kind == drgn.TypeKind.POINTER:
                t = t.type.unaliased()
            if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION) or not t.has_member(part):
                raise KernelLayoutError(
                    f"{_type_name(t)} has no member {part!r} (reading {path!r} of "
                    f"{_type_name(_struct_type(obj))}): not a kernel layout s2fast.drgn knows ({SUPPORTED})")
            t = t.member(part).type


def _int(obj: Any, path: str) -> int:
    return int(_member(obj, path).value_())


# ---------------------------------------------------------------------------
# Physical memory through drgn

class PhysReader:
    """Reads physical memory through drgn a page at a time and keeps every
    page read (or found unreadable), so a page is fetched once."""

    def __init__(self, prog: Any) -> None:
        self.prog = prog
        self.cache: dict[tuple[int, int], Optional[np.ndarray]] = {}

    def page(self, pa: int, size: int) -> Optional[np.ndarray]:
        """The ``size`` bytes at ``pa`` as little-endian uint64 words, or
        None when drgn cannot read them (not in the dump, no such memory)."""
        key = (pa, size)
        if key not in self.cache:
            drgn = _drgn()
            try:
                data = self.prog.read(pa, size, True)
            except (drgn.FaultError, ValueError, OverflowError):
                self.cache[key] = None
            else:
                self.cache[key] = np.frombuffer(data, dtype="<u8").copy()
        return self.cache[key]


def read_table_pages(reader: PhysReader, root_pa: int, vtcr: int) -> tuple[np.ndarray, np.ndarray]:
    """Every table page reachable from the root that can be read: (PAs,
    pages) sorted by PA, pages as a (N, granule/8) uint64 array. Pages
    reached twice are read once (from_image then refuses the aliasing)."""
    v = decode_vtcr(vtcr)
    G = v.granule
    seen: set[int] = set()
    got: dict[int, np.ndarray] = {}
    frontier = [root_pa + i * G for i in range(v.pgd_pages)]
    level = v.start_level
    while frontier:
        nxt = []
        for pa in frontier:
            if pa in seen:
                continue
            seen.add(pa)
            page = reader.page(pa, G)
            if page is None:
                continue                # not readable: walks reaching it report it
            got[pa] = page
            if level < 3:
                desc = page[(page & np.uint64(3)) == np.uint64(3)]
                nxt += table_oa(desc, G).tolist()
        frontier = nxt
        level += 1
        if level > 3:
            break
    pas = np.array(sorted(got), dtype=np.uint64)
    pages = (np.stack([got[int(p)] for p in pas]) if got
             else np.zeros((0, G // 8), dtype=np.uint64))
    return pas, pages


def open_stage2(prog: Any, root_pa: int, vtcr: int, vmid: int = 0, *, reader: Optional[PhysReader] = None,
                xnx: Optional[bool] = None, fwb: Optional[bool] = None, allow_aliases: bool = False) -> Any:
    """A read-only Stage2PageTable for the table at ``root_pa`` under
    ``vtcr``, its pages read through drgn."""
    from .pgtable import Stage2PageTable
    from .physmem import PhysMem

    reader = reader or PhysReader(prog)
    v = decode_vtcr(vtcr)
    pas, pages = read_table_pages(reader, root_pa, vtcr)
    if not len(pas):
        # Nothing readable: one page nothing can lead to (PAs end at bit 52),
        # so every walk reports the root outside memory.
        pas = np.array([(1 << 64) - v.granule], dtype=np.uint64)
        pages = np.zeros((1, v.granule // 8), dtype=np.uint64)
    pm = PhysMem.from_pages(pas, pages)
    return Stage2PageTable.from_image(pm, vttbr=root_pa | (vmid & 0xFFFF) << 48, vtcr=vtcr, xnx=xnx, fwb=fwb,
                                      allow_aliases=allow_aliases)


# ---------------------------------------------------------------------------
# VMs

def for_each_kvm(prog: Any) -> Iterator[Any]:
    """Every ``struct kvm *`` on the kernel's ``vm_list``, in list order."""
    from drgn.helpers.linux.list import list_for_each_entry

    try:
        head = prog["vm_list"]
    except KeyError:
        raise LookupError("the kernel has no 'vm_list' symbol: KVM is not built in, or its debug "
                          "info is not loaded") from None
    if not prog.type("struct kvm").unaliased().has_member("vm_list"):
        raise KernelLayoutError(f"struct kvm has no member 'vm_list': not a kernel layout s2fast.drgn "
                                f"knows ({SUPPORTED})")
    yield from list_for_each_entry("struct kvm", head.address_of_(), "vm_list")


def _vtcr(mmu: Any, arch: Any) -> int:
    """VTCR_EL2 for a kvm_s2_mmu: its own (Linux 6.8+) or its VM's ``struct
    kvm_arch`` one (up to 6.7)."""
    if _has(mmu, "vtcr"):
        return _int(mmu, "vtcr")
    if arch is not None and _has(arch, "vtcr"):
        return _int(arch, "vtcr")
    raise KernelLayoutError(f"neither struct kvm_s2_mmu nor struct kvm_arch has a member 'vtcr': not a "
                            f"kernel layout s2fast.drgn knows ({SUPPORTED})")


def _is_kernel(prog: Any) -> bool:
    drgn = _drgn()
    return bool(prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL)


def _root_pa(prog: Any, mmu: Any, pgt: Any, virt_to_phys: Any) -> int:
    """The root's PA: pgt->pgd translated (drgn's virt_to_phys on a kernel,
    or the caller's function), checked against mmu->pgd_phys, which
    kvm_init_stage2_mmu() sets to __pa(pgt->pgd). Without a translation,
    pgd_phys."""
    pgd = _int(pgt, "pgd")
    pgd_phys = _int(mmu, "pgd_phys")
    if virt_to_phys is None and _is_kernel(prog):
        from drgn.helpers.linux.mm import virt_to_phys as v2p

        virt_to_phys = lambda va: int(v2p(prog, va))   # noqa: E731
    if virt_to_phys is False or virt_to_phys is None:
        return pgd_phys
    pa = int(virt_to_phys(pgd))
    if pgd_phys and pa != pgd_phys:
        raise ValueError(f"pgt->pgd {pgd:#x} translates to PA {pa:#x} but mmu->pgd_phys is {pgd_phys:#x}")
    return pa


def _vmid(mmu: Any, vtcr: int) -> int:
    # kvm_get_vttbr(): the VMID is the low kvm_arm_vmid_bits of vmid.id
    # (the rest is the allocator's generation); VTCR.VS says 16 or 8 bits.
    vid = _member(mmu, "vmid.id")
    if _has(vid, "counter"):
        vid = vid.member_("counter")
    return int(vid.value_()) & (0xFFFF if vtcr >> 19 & 1 else 0xFF)


def mmu_stage2(mmu: Any, arch: Any = None, *, pgt: Any = None, reader: Optional[PhysReader] = None,
               virt_to_phys: Any = None, xnx: Optional[bool] = None, fwb: Optional[bool] = None,
               allow_aliases: bool = False) -> Any:
    """The stage 2 of a ``struct kvm_s2_mmu``. ``arch`` is the ``struct
    kvm_arch`` holding the VTCR on kernels that keep it per VM (default
    ``mmu->arch``); ``pgt`` the ``struct kvm_pgtable`` when it is not
    ``mmu->pgt``."""
    prog = mmu.prog_
    _require(mmu, "vmid.id", "pgd_phys", "pgt.ia_bits", "pgt.start_level", "pgt.pgd")
    if arch is None and _has(mmu, "arch") and _int(mmu, "arch"):
        arch = _member(mmu, "arch")
    vtcr = _vtcr(mmu, arch)
    if pgt is None:
        pgt = _member(mmu, "pgt")
        if not pgt.value_():
            raise ValueError(f"kvm_s2_mmu at {_addr(mmu):#x} has no page table (pgt is NULL)")
    v = decode_vtcr(vtcr)
    ia_bits, start_level = _int(pgt, "ia_bits"), _int(pgt, "start_level")
    if (ia_bits, start_level) != (v.ia_bits, v.start_level):
        raise ValueError(f"pgt has ia_bits {ia_bits}, start_level {start_level} but VTCR {vtcr:#x} gives "
                         f"{v.ia_bits} and {v.start_level}")
    if _is_kernel(prog):
        try:
            page_size = int(prog["PAGE_SIZE"].value_())
        except (KeyError, LookupError):
            page_size = v.granule
        if page_size != v.granule:
            raise ValueError(f"VTCR {vtcr:#x} has a {v.granule}-byte granule but PAGE_SIZE is {page_size}")
    root = _root_pa(prog, mmu, pgt, virt_to_phys)
    pt = open_stage2(prog, root, vtcr, _vmid(mmu, vtcr), reader=reader, xnx=xnx, fwb=fwb,
                     allow_aliases=allow_aliases)
    pt.kvm_s2_mmu = mmu
    return pt


def kvm_stage2(kvm: Any, **kw: Any) -> Any:
    """The VM's stage 2 (``kvm->arch.mmu``) as a read-only Stage2PageTable.
    Keywords: ``reader`` (a PhysReader to share its page cache),
    ``virt_to_phys`` (a function for pgt->pgd; default drgn's on a kernel,
    False to take mmu->pgd_phys), ``xnx``, ``fwb``, ``allow_aliases``."""
    return mmu_stage2(_member(kvm, "arch.mmu"), _member(kvm, "arch"), **kw)


def kvm_nested_mmus(kvm: Any) -> list[tuple[int, Any]]:
    """(index, ``struct kvm_s2_mmu``) of each valid nested MMU (Linux 6.9+
    with nested virtualisation); [] for kernels without them."""
    arch = _member(kvm, "arch")
    if not _has(arch, "nested_mmus"):
        return []
    base = _member(arch, "nested_mmus")
    n = _int(arch, "nested_mmus_size")
    if not base.value_():
        return []
    out = []
    for i in range(n):
        mmu = base[i]
        # kvm_s2_mmu_valid(): CnP set in tlb_vttbr marks an unused entry.
        if _int(mmu, "tlb_vttbr") & VTTBR_CNP_BIT:
            continue
        if not _int(mmu, "pgt") or not _int(mmu, "pgd_phys"):
            continue
        out.append((i, mmu))
    return out


def kvm_nested_stage2s(kvm: Any, **kw: Any) -> list[tuple[int, Any]]:
    """(index, Stage2PageTable) for each valid nested MMU."""
    return [(i, mmu_stage2(mmu, _member(kvm, "arch"), **kw)) for i, mmu in kvm_nested_mmus(kvm)]


def _host_mmu(prog: Any) -> Any:
    # The nVHE hypervisor's symbols carry the __kvm_nvhe_ prefix in vmlinux;
    # struct host_kvm became struct host_mmu in Linux 6.2.
    for name in ("__kvm_nvhe_host_mmu", "__kvm_nvhe_host_kvm"):
        try:
            return prog[name]
        except KeyError:
            continue
    return None


def protected_mode(prog: Any) -> bool:
    """True when the kernel runs KVM in protected mode (kvm-arm.mode=protected)."""
    try:
        mode = int(prog["kvm_mode"].value_())
        return mode == int(prog.constant("KVM_MODE_PROTECTED").value_())
    except (KeyError, LookupError):
        return False


def pkvm_host_stage2(prog: Any, **kw: Any) -> Any:
    """The pKVM host stage 2 (the hypervisor's host_mmu) when the kernel
    runs in protected mode, else None. Its pgd is a hypervisor address, so
    the root is host_mmu.arch.mmu.pgd_phys."""
    host = _host_mmu(prog)
    if host is None or not protected_mode(prog):
        return None
    mmu = _member(host, "arch.mmu")
    if not _int(mmu, "pgd_phys"):
        return None
    kw["virt_to_phys"] = False
    return mmu_stage2(mmu, _member(host, "arch"), pgt=_member(host, "pgt"), **kw)


# ---------------------------------------------------------------------------
# Memslots and the VM table

@dataclass(frozen=True)
class KernelMemslot:
    """A ``struct kvm_memory_slot`` of a VM."""

    as_id: int
    id: int
    guest_phys_addr: int
    npages: int
    size: int
    userspace_addr: int
    flags: int

    @property
    def dirty_logging(self) -> bool:
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def flag_names(self) -> list[str]:
        names = [n for bit, n in MEMSLOT_FLAGS if self.flags & bit]
        unknown = self.flags & ~sum(bit for bit, _ in MEMSLOT_FLAGS)
        return names + ([f"{unknown:#x}"] if unknown else [])

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flag_names"] = self.flag_names
        return d


def kvm_memslots(kvm: Any, page_size: Optional[int] = None) -> list[KernelMemslot]:
    """The VM's memslots in every address space, by guest physical address
    (the active set: ``kvm->memslots[as]``, walked along its ``gfn_tree``).
    ``page_size`` turns gfns into addresses (default: the VM's granule)."""
    from drgn.helpers.linux.rbtree import rbtree_inorder_for_each_entry

    if page_size is None:
        page_size = decode_vtcr(_vtcr(_member(kvm, "arch.mmu"), _member(kvm, "arch"))).granule
    shift = page_size.bit_length() - 1
    arr = _member(kvm, "memslots")
    out = []
    for as_id in range(arr.type_.unaliased().length or 0):
        slots = arr[as_id]
        if not slots.value_():
            continue
        idx = _int(slots, "node_idx")
        root = _member(slots, "gfn_tree")
        for s in rbtree_inorder_for_each_entry("struct kvm_memory_slot", root.address_of_(), f"gfn_node[{idx}]"):
            npages = _int(s, "npages")
            out.append(KernelMemslot(as_id, _int(s, "id"), _int(s, "base_gfn") << shift, npages,
                                     npages << shift, _int(s, "userspace_addr"), _int(s, "flags")))
    return out


def kvm_pid(kvm: Any) -> Optional[int]:
    """The pid of the process that created the VM (kvm->userspace_pid)."""
    if _has(kvm, "userspace_pid"):
        return _int(kvm, "userspace_pid")
    if _has(kvm, "stats_id"):                   # "kvm-<pid>"
        text = _member(kvm, "stats_id").string_().decode(errors="replace")
        if text.startswith("kvm-") and text[4:].isdigit():
            return int(text[4:])
    return None


def mapped_bytes_by_level(pt: Any, skip_unreadable: bool = False) -> dict[int, int]:
    """Bytes mapped by valid leaves at each level."""
    leaves = pt.leaves(skip_unreadable=skip_unreadable)
    g = pt.geometry
    return {lvl: int(np.count_nonzero(leaves["level"] == lvl)) * g.level_size(lvl)
            for lvl in range(max(g.start_level, 0), 4)}


@dataclass
class VmInfo:
    """One line of ``s2fast vms``: a VM (or a nested MMU, or the pKVM host)."""

    id: str
    kvm: Optional[int]
    pid: Optional[int]
    vmid: Optional[int]
    ia_bits: Optional[int] = None
    start_level: Optional[int] = None
    granule: Optional[int] = None
    root_pa: Optional[int] = None
    vtcr: Optional[int] = None
    mapped: dict = field(default_factory=dict)
    memslots: list = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mapped"] = {str(k): v for k, v in self.mapped.items()}
        d["memslots"] = [m.to_dict() for m in self.memslots]
        return d


def _addr(obj: Any) -> int:
    t = obj.type_.unaliased()
    return int(obj.value_()) if t.kind == _drgn().TypeKind.POINTER else int(obj.address_)


def _fill(info: VmInfo, opener: Callable[[], Any]) -> Optional[Any]:
    try:
        pt = opener()
        info.ia_bits, info.start_level, info.granule = pt.ia_bits, pt.start_level, pt.granule
        info.root_pa, info.vtcr, info.vmid = pt.root_pa, pt.vtcr, pt.vttbr >> 48 & 0xFFFF
        try:
            info.mapped = mapped_bytes_by_level(pt)
        except OutsideMemoryError as e:       # what can be read is still listed
            info.error = str(e)
            info.mapped = mapped_bytes_by_level(pt, skip_unreadable=True)
        return pt
    except KernelLayoutError:
        raise
    except (ValueError, OutsideMemoryError) as e:
        info.error = str(e)
        return None


def list_vms(prog: Any, **kw: Any) -> list[VmInfo]:
    """Every VM on vm_list (ids 0, 1, ...), each valid nested MMU (id
    "VM.N") and, in protected mode, the pKVM host stage 2 (id "host")."""
    out = []
    for i, kvm in enumerate(for_each_kvm(prog)):
        info = VmInfo(str(i), _addr(kvm), kvm_pid(kvm), None)
        _fill(info, lambda: kvm_stage2(kvm, **kw))
        try:
            info.memslots = kvm_memslots(kvm, info.granule)
        except KernelLayoutError:
            raise
        except (ValueError, LookupError) as e:
            info.error = info.error or f"memslots: {e}"
        out.append(info)
        for n, mmu in kvm_nested_mmus(kvm):
            sub = VmInfo(f"{i}.{n}", _addr(kvm), info.pid, None)
            _fill(sub, lambda: mmu_stage2(mmu, _member(kvm, "arch"), **kw))
            out.append(sub)
    host = _host_mmu(prog)
    if host is not None and protected_mode(prog):
        info = VmInfo("host", None, None, 0)
        _fill(info, lambda: pkvm_host_stage2(prog, **kw))
        out.append(info)
    return out


def open_vm(prog: Any, vm_id: str, **kw: Any) -> tuple[Any, list[KernelMemslot]]:
    """(table, memslots) for an id of ``s2fast vms``: "N", "N.M" (nested
    MMU M of VM N), a struct kvm address (0x...) or "host"."""
    if vm_id == "host":
        pt = pkvm_host_stage2(prog, **kw)
        if pt is None:
            raise ValueError("--vm host: the kernel does not run KVM in protected mode (no pKVM host stage 2)")
        return pt, []
    main, _, nested = vm_id.partition(".")
    kvms = list(for_each_kvm(prog))
    try:
        want = int(main, 0)
    except ValueError:
        raise ValueError(f"--vm {vm_id!r} is not a VM id (N, N.M, a struct kvm address or 'host')") from None
    if main.lower().startswith("0x"):
        match = [k for k in kvms if _addr(k) == want]
    else:
        match = kvms[want:want + 1]
    if not match:
        raise ValueError(f"--vm {vm_id!r}: no such VM ({len(kvms)} on vm_list; see s2fast vms)")
    kvm = match[0]
    if nested:
        mmus = dict(kvm_nested_mmus(kvm))
        if not nested.isdigit() or int(nested) not in mmus:
            raise ValueError(f"--vm {vm_id!r}: VM {main} has no valid nested MMU {nested} "
                             f"(valid: {sorted(mmus) or 'none'})")
        pt = mmu_stage2(mmus[int(nested)], _member(kvm, "arch"), **kw)
        return pt, []
    pt = kvm_stage2(kvm, **kw)
    return pt, kvm_memslots(kvm, pt.granule)


# ---------------------------------------------------------------------------
# The command line: s2fast vms, s2fast dump --vm

def add_kernel_source(group: Any, where: Any) -> None:
    """--vmcore / --live (in the mutually exclusive ``where``), --vmlinux."""
    where.add_argument("--vmcore", default=None, metavar="FILE",
                       help="a kernel crash dump (kdump vmcore) read with drgn; needs " + INSTALL_HINT)
    where.add_argument("--live", action="store_true", default=False,
                       help="the running kernel through /proc/kcore (root), read with drgn")
    group.add_argument("--vmlinux", default=None, metavar="FILE",
                       help="--vmcore/--live: the kernel's debug info (default: drgn's search)")


def add_vms_parser(sub: Any) -> None:
    v = sub.add_parser("vms", help="list the KVM guests of a vmcore or the live kernel (needs drgn)",
                       description="One line per VM on vm_list (and per valid nested MMU, and the pKVM host "
                                   "stage 2 in protected mode): owning pid, VMID, IPA bits, start level, root "
                                   "PA, bytes mapped per level and the memslots. Needs " + INSTALL_HINT + ".")
    src = v.add_argument_group("source")
    where = src.add_mutually_exclusive_group(required=True)
    add_kernel_source(src, where)
    v.add_argument("--json", action="store_true", help="print JSON instead of the table")


def open_program(vmcore: Optional[str], vmlinux: Optional[str], live: bool) -> Any:
    """A drgn Program for a vmcore or the live kernel, debug info loaded.
    ImportError (with the install hint) without drgn; ValueError otherwise."""
    drgn = _drgn()
    prog = drgn.Program()
    try:
        if live:
            prog.set_kernel()
        else:
            prog.set_core_dump(vmcore)
    except (OSError, ValueError, drgn.FaultError) as e:
        raise ValueError(f"cannot open {'/proc/kcore' if live else repr(vmcore)}: {e}") from None
    try:
        if vmlinux:
            prog.load_debug_info([vmlinux])
        else:
            prog.load_default_debug_info()
    except drgn.MissingDebugInfoError as e:
        # Partial debug info (some modules) is fine as long as vmlinux is there.
        try:
            prog.type("struct kvm")
        except LookupError:
            raise ValueError(f"no kernel debug info: {e}; pass --vmlinux FILE") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load debug info: {e}") from None
    return prog


def _program_from_args(args: Any) -> Any:
    if not args.live and args.vmcore is None:
        raise ValueError("give --vmcore FILE or --live")
    return open_program(args.vmcore, args.vmlinux, args.live)


def _fmt_bytes(n: int) -> str:
    """Exact: the largest unit that divides n (2304K, not 2.2M)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}"


def vms_text(vms: list[VmInfo], render_table: Callable[..., str]) -> str:
    headers = ["ID", "pid", "VMID", "IPA", "SL", "granule", "root PA", "L0", "L1", "L2", "L3", "memslots"]
    rows = []
    for v in vms:
        slots = " ".join(f"{m.id}:{m.guest_phys_addr:#x}+{_fmt_bytes(m.size)}"
                         + (f"[{','.join(m.flag_names)}]" if m.flags else "") for m in v.memslots)
        if v.error:
            slots = (slots + "  " if slots else "") + "error: " + v.error
        lv = [(_fmt_bytes(v.mapped[l]) if v.mapped.get(l) else "-") if l in v.mapped else "" for l in range(4)]
        rows.append([v.id, "-" if v.pid is None else str(v.pid), "-" if v.vmid is None else str(v.vmid),
                     "-" if v.ia_bits is None else str(v.ia_bits),
                     "-" if v.start_level is None else str(v.start_level),
                     "-" if v.granule is None else f"{v.granule // 1024}K",
                     "-" if v.root_pa is None else f"{v.root_pa:#x}", *lv, slots])
    table = render_table(headers, rows, [False, True, True, True, True, True, True, True, True, True, True, False])
    return f"{len(vms)} stage-2 table{'s' if len(vms) != 1 else ''} (bytes mapped per level L0-L3)\n{table}"


def cmd_vms(args: Any, out: Any, render_table: Callable[..., str]) -> int:
    import json

    prog = _program_from_args(args)
    vms = list_vms(prog)
    out.write((json.dumps([v.to_dict() for v in vms], indent=1) if args.json
               else vms_text(vms, render_table)) + "\n")
    return 0


def memslot_of(slots: list[KernelMemslot], start: int, end: int) -> list[int]:
    """The ids of the memslots that [start, end) overlaps."""
    return [m.id for m in slots if m.guest_phys_addr < end and start < m.end]


def dump_vm_text(args: Any) -> str:
    """``s2fast dump --vm ID``: the VM's listing, each run with its memslots."""
    import json
    import re

    from .dump import dump_runs, format_dump

    prog = _program_from_args(args)
    kw = {k: getattr(args, k) for k in ("xnx", "fwb") if getattr(args, k, None) is not None}
    pt, slots = open_vm(prog, args.vm, **kw)
    head = [f"VM {args.vm}: VMID {pt.vttbr >> 48 & 0xFFFF}, root PA {pt.root_pa:#x}, VTCR {pt.vtcr:#x}"]
    head += [f"memslot {m.id} (as {m.as_id}): {m.guest_phys_addr:#x}-{m.end:#x} uaddr {m.userspace_addr:#x} "
             f"flags {m.flags:#x}{' ' + ','.join(m.flag_names) if m.flags else ''}"
             f"{' (dirty logging on)' if m.dirty_logging else ''}" for m in slots]
    if args.json:
        runs = []
        for r in dump_runs(pt):
            d = r.to_dict()
            d["memslots"] = memslot_of(slots, r.start, r.end)
            runs.append(d)
        return json.dumps({"vm": args.vm, "vmid": pt.vttbr >> 48 & 0xFFFF, "root_pa": pt.root_pa,
                           "vtcr": pt.vtcr, "memslots": [m.to_dict() for m in slots], "runs": runs}, indent=1)
    lines = format_dump(pt).split("\n")
    row = re.compile(r"^(0x[0-9a-f]+)-(0x[0-9a-f]+)\s")
    for i, line in enumerate(lines):
        m = row.match(line)
        if line.startswith("IPA range"):
            lines[i] = f"{line.rstrip()}  memslot"
        elif m:
            ids = memslot_of(slots, int(m.group(1), 16), int(m.group(2), 16))
            lines[i] = f"{line.rstrip()}  slot={','.join(map(str, ids)) or '-'}"
    return "\n".join(head + lines)
