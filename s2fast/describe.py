"""Decode one stage-2 descriptor: ``describe(pte, level)``.

The bit layout is the Arm stage-2 descriptor format as KVM writes it
(arch/arm64/include/asm/kvm_pgtable.h, arch/arm64/kvm/hyp/pgtable.c):

* bits 1:0   valid / table-or-page;
* bits 5:2   MemAttr, bits 7:6 S2AP (read, write), bits 9:8 shareability,
  bit 10 AF;
* bits 47:page_shift the output (or next-table) address; with a 64 KiB
  granule, bits 15:12 hold PA[51:48];
* bits 54:53 XN[1:0], bits 58:55 software bits;
* an invalid entry KVM annotates holds an owner id in bits 9:2; bit 10 set in
  an invalid entry is the "locked" value of a break-before-make in progress.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


from . import checks
from .geometry import ADDR_51_48, GRANULES, block_allowed, level_shift, output_address  # noqa: F401 (their old home)
from .sizes import format_size

U64_MAX = (1 << 64) - 1

PTE_VALID = 1 << 0
PTE_TYPE = 1 << 1
MEMATTR_SHIFT, MEMATTR_MASK = 2, 0xF << 2
S2AP_R = 1 << 6
S2AP_W = 1 << 7
SH_SHIFT, SH_MASK = 8, 3 << 8
AF = 1 << 10
XN_SHIFT, XN_MASK = 53, 3 << 53
SW_SHIFT, SW_MASK = 55, 0xF << 55
OWNER_SHIFT, OWNER_MASK = 2, 0xFF << 2
INVALID_LOCKED = 1 << 10

SHAREABILITY = {0: "non", 1: "reserved", 2: "outer", 3: "inner"}

_DEVICE_TYPES = ("Device-nGnRnE", "Device-nGnRE", "Device-nGRE", "Device-GRE")
_CACHE = {1: "NC", 2: "WT", 3: "WB"}


def memtype_name(memattr: int, fwb: bool = False) -> str:
    """A name for the 4-bit stage-2 MemAttr field.

    Without FWB the field is outer (bits 3:2) and inner (bits 1:0)
    cacheability, outer 0 meaning Device; KVM writes 0xF (Normal-WB), 0x5
    (Normal-NC) and 0x1 (Device-nGnRE). With FEAT_S2FWB (HCR_EL2.FWB set)
    bit 2 clear is Device, 0b101 Normal-NC, 0b110 forced Normal-WB, 0b111
    "as stage 1"; KVM writes 0x6, 0x5 and 0x1. Bit 3 with FWB, and 0b0100
    without, are the FEAT_MTE_PERM no-tag-access variants."""
    memattr &= 0xF
    if fwb:
        low = memattr & 0x7
        if not low & 0x4:
            name = _DEVICE_TYPES[low & 3]
            return name if not memattr & 0x8 else f"reserved({memattr:#x})"
        if low == 0x4:
            return f"reserved({memattr:#x})"
        name = {5: "Normal-NC", 6: "Normal-WB", 7: "Normal-asS1"}[low]
        if memattr & 0x8:
            return name + "-NoTagAccess" if low == 6 else f"reserved({memattr:#x})"
        return name
    outer, inner = memattr >> 2, memattr & 3
    if outer == 0:
        return _DEVICE_TYPES[inner]
    if memattr == 0x4:
        return "Normal-NoTagAccess"
    if inner == 0:
        return f"reserved({memattr:#x})"
    if outer == inner:
        return f"Normal-{_CACHE[outer]}"
    return f"Normal-o{_CACHE[outer]}-i{_CACHE[inner]}"


def exec_perms(xn: int, xnx: bool = True) -> tuple[bool, bool]:
    """(exec at EL1, exec at EL0) for XN[1:0] = ``xn`` (descriptor bits 54:53).

    With FEAT_XNX: 00 both, 01 EL0 only, 10 neither, 11 EL1 only. Without
    it only XN[1] counts: clear both, set neither."""
    xn &= 3
    if not xnx:
        return (not xn & 2, not xn & 2)
    return {0: (True, True), 1: (False, True), 2: (False, False), 3: (True, False)}[xn]


PS_SIZES = (32, 36, 40, 42, 44, 48, 52)


def human_size(n: int) -> str:
    """4K, 2M, 1G, 512G, 16E ... the largest unit that divides ``n``; else bytes."""
    return format_size(n, compact=True)


@dataclass(frozen=True)
class Descriptor:
    """One decoded stage-2 descriptor (see ``describe``)."""

    pte: int
    level: int
    granule: int
    kind: str                       # invalid, annotation, table, block, page, reserved, bad-block
    pa: Optional[int]               # output address, or the next table's; None when invalid
    size: int                       # IPA bytes the entry covers
    readable: bool
    writable: bool
    exec_el1: bool
    exec_el0: bool
    memattr: Optional[int]          # MemAttr bits 5:2 of a leaf
    memtype: Optional[str]          # its name (depends on FWB)
    shareability: int               # bits 9:8
    af: bool
    sw: int                         # bits 58:55
    owner: Optional[int]            # annotation owner id (bits 9:2)
    locked: bool                    # the invalid "locked" value (bit 10)

    @property
    def valid(self) -> bool:
        return bool(self.pte & PTE_VALID)

    @property
    def is_leaf(self) -> bool:
        return self.kind in ("block", "page")

    def __str__(self) -> str:
        head = f"L{self.level} {self.kind}"
        if self.kind == "invalid":
            return f"{head} (0x0)"
        if self.kind == "annotation":
            what = "locked" if self.locked else f"owner={self.owner}"
            return f"L{self.level} invalid {what} (annotation {self.pte:#x})"
        if self.kind == "table":
            return f"{head} -> {self.pa:#x}"
        if self.kind in ("reserved", "bad-block"):
            why = ("level-3 encoding 0b01 is reserved" if self.kind == "reserved"
                   else f"no blocks at level {self.level} with a {human_size(self.granule)} granule"
                   + (" unless PAs are 52 bits" if self.granule == 65536 and self.level == 1 else ""))
            return f"{head} pa={self.pa:#x} ({why}; descriptor {self.pte:#x})"
        if self.exec_el1 and self.exec_el0:
            x = "X(el1,el0)"
        elif self.exec_el1:
            x = "X(el1)"
        elif self.exec_el0:
            x = "X(el0)"
        else:
            x = "XN"
        parts = [head, f"pa={self.pa:#x}", f"size={human_size(self.size)}",
                 "R" if self.readable else "-", "W" if self.writable else "-", x,
                 str(self.memtype), "AF" if self.af else "noAF",
                 f"SH={SHAREABILITY[self.shareability]}", f"SW={self.sw:#x}"]
        return " ".join(parts)


def _check(pte: Any, level: Any, granule: Any) -> tuple[int, int, int]:
    pte, level, granule = checks.u64("pte", pte), checks.level(level), checks.integer("granule", granule)
    if granule not in GRANULES:
        raise ValueError(f"granule {granule!r} is not one of {GRANULES}")
    return pte, level, granule


def describe(pte: int, level: int, *, granule: int = 4096, fwb: bool = False, xnx: bool = True,
             ps_bits: int = 48) -> Descriptor:
    """Decode the stage-2 descriptor ``pte`` found at ``level``.

    ``granule`` is the page size (4096, 16384 or 65536), ``fwb`` whether the
    table uses FEAT_S2FWB MemAttr encodings, ``xnx`` whether the CPU has
    FEAT_XNX (both XN bits count), ``ps_bits`` the output size the table
    is used with (VTCR_EL2.PS: 32 to 52 bits; with 64 KiB pages and 52 bits a
    level-1 block is valid)."""
    pte, level, granule = _check(pte, level, granule)
    if checks.integer("ps_bits", ps_bits) not in PS_SIZES:
        raise ValueError(f"ps_bits {ps_bits!r} is not an output size VTCR_EL2.PS can select {PS_SIZES}")
    fwb, xnx = checks.boolean("fwb", fwb), checks.boolean("xnx", xnx)
    shift = level_shift(level, granule)
    size = 1 << shift
    common = dict(pte=pte, level=level, granule=granule, size=size)
    if not pte & PTE_VALID:
        kind = "invalid" if pte == 0 else "annotation"
        return Descriptor(**common, kind=kind, pa=None, readable=False, writable=False, exec_el1=False,
                          exec_el0=False, memattr=None, memtype=None, shareability=0, af=False, sw=0,
                          owner=(pte & OWNER_MASK) >> OWNER_SHIFT if pte else None,
                          locked=bool(pte & INVALID_LOCKED))
    pa = output_address(pte, granule)
    if pte & PTE_TYPE and level < 3:
        return Descriptor(**common, kind="table", pa=pa, readable=False, writable=False, exec_el1=False,
                          exec_el0=False, memattr=None, memtype=None, shareability=0, af=False, sw=0,
                          owner=None, locked=False)
    if pte & PTE_TYPE:
        kind = "page"
    elif level == 3:
        kind = "reserved"
    elif not block_allowed(level, granule, ps_bits):
        kind = "bad-block"
    else:
        kind = "block"
    if kind == "block":
        pa &= ~(size - 1)            # the bits below a block's size are not address bits
    memattr = (pte & MEMATTR_MASK) >> MEMATTR_SHIFT
    x1, x0 = exec_perms((pte & XN_MASK) >> XN_SHIFT, bool(xnx))
    return Descriptor(**common, kind=kind, pa=pa, readable=bool(pte & S2AP_R), writable=bool(pte & S2AP_W),
                      exec_el1=x1, exec_el0=x0, memattr=memattr, memtype=memtype_name(memattr, bool(fwb)),
                      shareability=(pte & SH_MASK) >> SH_SHIFT, af=bool(pte & AF),
                      sw=(pte & SW_MASK) >> SW_SHIFT, owner=None, locked=False)
