"""A pure-Python model of the Arm stage-2 translation table walk, written from
the architecture (not from s2fast): the oracle for ``Stage2PageTable.translate``.

``translate(read_u64, ipa, access, vttbr=..., vtcr=...)`` walks one IPA the way
the MMU does and returns a dict with the fields of ``s2fast.TRANSLATE_DTYPE``.
``read_u64(pa)`` returns the 64-bit little-endian word at ``pa`` or raises
``LookupError`` when nothing is there (a synchronous external abort on the
walk).

What is modelled (ARM ARM, stage-2 translation with VTCR_EL2/VTTBR_EL2):

* VTCR_EL2: T0SZ [5:0], SL0 [7:6], TG0 [15:14], PS [18:16], HA [21]. The
  input size is 64 - T0SZ (25..48). The start level is 2 - SL0 for the 4 KiB
  granule and 3 - SL0 for 16/64 KiB. A start level and input size that the
  architecture does not allow together (level -1, a 16/64 KiB walk from level
  0, a 16 KiB level-1 start with IA <= 40 bits, a 64 KiB level-1 start with
  IA <= 42, a 4 KiB level-0 start with IA <= 42, more than 16 concatenated
  top-level tables or less than one entry) is refused with ``ValueError``,
  as are TG0 = 0b11 and PS = 0b111.
* The output (physical) address size is PS, capped at 48 bits for the 4 and
  16 KiB granules when VTCR.DS (bit 32) is 0; DS = 1 (the FEAT_LPA2
  descriptor format, OA[51:50] in bits 9:8) is refused with ``ValueError``. With the 64 KiB granule (FEAT_LPA) the
  descriptor bits [15:12] are PA[51:48] of the next table or output address,
  and so are VTTBR bits [5:2] for the base when PS selects 52 bits.
* VTTBR_EL2.BADDR: the base is aligned to the size of the (concatenated)
  top-level table; bits below that alignment are treated as zero. VMID
  [63:48] and CnP [0] are not part of the address.
* Fault priority on each step: external abort on the descriptor read, then
  translation (invalid entry, level-3 reserved encoding, block where the
  granule has none), then address size (next table or output address at or
  above the PA size), then access flag (AF clear without hardware AF update),
  then permission (S2AP, XN).
* Hardware access-flag update (VTCR.HA): an access that does not fault on an
  AF-clear leaf sets AF in the descriptor; the row's ``desc`` is the updated
  descriptor and ``af_updated`` is True. A faulting access updates nothing
  (the ASL checks permissions before AArch64.SetAccessFlag).
* Permissions: S2AP[0] (bit 6) read, S2AP[1] (bit 7) write. XN[1:0] (bits
  54:53) with FEAT_XNX: 00 execute at EL1 and EL0, 01 at EL0 only, 10 at
  neither, 11 at EL1 only. Without FEAT_XNX only XN[1] counts: set means no
  execution at either EL. Execute permission does not depend on S2AP.
* The contiguous hint does not change a translation and is ignored.

FSC values: translation 0x04+level, address size 0x00+level, access flag
0x08+level, permission 0x0C+level, external abort on a walk 0x14+level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

NONE, TRANSLATION, ADDRESS_SIZE, ACCESS_FLAG, PERMISSION, EXTERNAL = range(6)
FAULT_NAMES = ("NONE", "TRANSLATION", "ADDRESS_SIZE", "ACCESS_FLAG", "PERMISSION", "EXTERNAL")
FSC_BASE = {TRANSLATION: 0x04, ADDRESS_SIZE: 0x00, ACCESS_FLAG: 0x08, PERMISSION: 0x0C,
            EXTERNAL: 0x14}

ACCESSES = ("read", "write", "exec_el1", "exec_el0")
TG0_SHIFT = {0b00: 12, 0b01: 16, 0b10: 14}
PS_BITS = (32, 36, 40, 42, 44, 48, 52)

FIELDS = ("ipa", "ok", "pa", "level", "block_size", "desc", "readable", "writable", "exec_el1",
          "exec_el0", "fault", "fault_level", "fsc", "af_updated")


def _mask(hi: int, lo: int) -> int:
    """Bits hi..lo set (empty when hi < lo)."""
    if hi < lo:
        return 0
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


@dataclass(frozen=True)
class Regs:
    """VTTBR_EL2/VTCR_EL2 decoded into the walk parameters."""

    ia_bits: int
    shift: int          # granule shift: 12, 14 or 16
    start_level: int
    start_entries_log2: int   # log2 of the entries in the (concatenated) start table
    oa_bits: int        # effective output address size
    ha: bool
    base: int           # the start table's physical address

    @property
    def stride(self) -> int:
        return self.shift - 3

    @property
    def granule(self) -> int:
        return 1 << self.shift

    @property
    def root_pages(self) -> int:
        return max(1, 1 << max(0, self.start_entries_log2 - self.stride))

    def level_shift(self, level: int) -> int:
        return (3 - level) * self.stride + self.shift

    def block_ok(self, level: int) -> bool:
        """Blocks: 4K at levels 1-2, 16K and 64K at level 2, and 64K at level 1
        too when the CPU has 52-bit PAs (FEAT_LPA), which PS = 52 implies."""
        if self.shift == 16 and level == 1 and self.oa_bits == 52:
            return True
        return level >= (1 if self.shift == 12 else 2)


def decode(vttbr: int, vtcr: int) -> Regs:
    """Decode the two registers; ``ValueError`` for what cannot be walked."""
    t0sz = vtcr & 0x3F
    ia_bits = 64 - t0sz
    if not 25 <= ia_bits <= 48:
        raise ValueError(f"T0SZ {t0sz} gives a {ia_bits}-bit IPA space (25..48 supported)")
    tg0 = (vtcr >> 14) & 3
    if tg0 not in TG0_SHIFT:
        raise ValueError("TG0 0b11 is reserved")
    shift = TG0_SHIFT[tg0]
    if shift != 16 and (vtcr >> 32) & 1:
        raise ValueError("VTCR.DS = 1: the FEAT_LPA2 descriptor format is not modelled")
    ps = (vtcr >> 16) & 7
    if ps >= len(PS_BITS):
        raise ValueError("PS 0b111 is reserved")
    oa_bits = PS_BITS[ps]
    if shift != 16:
        oa_bits = min(oa_bits, 48)
    sl0 = (vtcr >> 6) & 3
    start = (2 if shift == 12 else 3) - sl0
    stride = shift - 3
    if start < 0:
        raise ValueError(f"SL0 {sl0} gives start level {start}")
    if shift != 12 and start == 0:
        raise ValueError("16K/64K walks cannot start at level 0")
    entries_log2 = ia_bits - ((3 - start) * stride + shift)
    if not 1 <= entries_log2 <= stride + 4:
        raise ValueError(f"start level {start} with {ia_bits} IPA bits gives 2**{entries_log2} "
                         "entries in the start table")
    align = entries_log2 + 3
    if shift == 16 and oa_bits == 52:
        align = max(align, 6)
        base = (vttbr & _mask(47, align)) | (((vttbr >> 2) & 0xF) << 48)
    else:
        base = vttbr & _mask(47, align)
    ha = bool((vtcr >> 21) & 1)
    return Regs(ia_bits, shift, start, entries_log2, oa_bits, ha, base)


def _next_address(desc: int, lo: int, shift: int) -> int:
    """The address a table/block/page descriptor holds, aligned to 2**lo."""
    addr = desc & _mask(47, lo)
    if shift == 16:
        addr |= ((desc >> 12) & 0xF) << 48
    return addr


def exec_perms(desc: int, xnx: bool) -> tuple[bool, bool]:
    """(exec at EL1, exec at EL0) for a leaf."""
    xn = (desc >> 53) & 3
    if not xnx:
        return (False, False) if xn & 2 else (True, True)
    return {0b00: (True, True), 0b01: (False, True), 0b10: (False, False),
            0b11: (True, False)}[xn]


def _row(ipa: int) -> dict:
    return dict(ipa=ipa, ok=False, pa=0, level=0, block_size=0, desc=0, readable=False,
                writable=False, exec_el1=False, exec_el0=False, fault=NONE, fault_level=-1,
                fsc=0xFF, af_updated=False)


def _fault(row: dict, kind: int, level: int) -> dict:
    row["ok"] = False
    row["fault"] = kind
    row["level"] = level
    row["fault_level"] = level
    row["fsc"] = FSC_BASE[kind] + level
    return row


def access_name(access) -> str:
    """'read' / 'write' / 'exec_el1' / 'exec_el0' from a string or an enum member."""
    if isinstance(access, str):
        name = access.lower()
    else:
        name = getattr(access, "name", str(access)).lower()
    if name not in ACCESSES:
        raise ValueError(f"unknown access {access!r}")
    return name


def translate(read_u64: Callable[[int], int], ipa: int, access="read", *, vttbr: int, vtcr: int,
              ha: Optional[bool] = None, xnx: bool = True, regs: Optional[Regs] = None) -> dict:
    """Translate one IPA. ``ha`` None takes VTCR_EL2.HA. ``regs`` may carry a
    pre-decoded ``decode(vttbr, vtcr)``."""
    r = regs if regs is not None else decode(vttbr, vtcr)
    access = access_name(access)
    use_ha = r.ha if ha is None else bool(ha)
    row = _row(ipa)
    if ipa >> r.ia_bits:
        return _fault(row, TRANSLATION, 0)
    level = r.start_level
    if r.base >> r.oa_bits:
        return _fault(row, ADDRESS_SIZE, 0)      # the VTTBR's fault: FSC 0x00 at any start level
    table = r.base
    top = r.ia_bits
    while True:
        lo = r.level_shift(level)
        index = (ipa & _mask(top - 1, lo)) >> lo
        try:
            desc = int(read_u64(table + 8 * index)) & ((1 << 64) - 1)
        except LookupError:
            return _fault(row, EXTERNAL, level)
        row["desc"] = desc
        if not desc & 1 or (level == 3 and desc & 3 == 1):
            return _fault(row, TRANSLATION, level)
        if level == 3 or desc & 3 == 1:
            break
        nxt = _next_address(desc, r.shift, r.shift)
        if nxt >> r.oa_bits:
            return _fault(row, ADDRESS_SIZE, level)
        table = nxt
        top = lo
        level += 1
    if not r.block_ok(level):
        return _fault(row, TRANSLATION, level)
    lo = r.level_shift(level)
    out = _next_address(desc, lo, r.shift)
    # The address-size check covers the whole output address field (bits of a
    # block's field below its size are not address bits but RES0; they sit
    # below every supported PA size).
    if _next_address(desc, r.shift, r.shift) >> r.oa_bits:
        return _fault(row, ADDRESS_SIZE, level)
    size = 1 << lo
    row["level"] = level
    row["pa"] = out | (ipa & (size - 1))
    row["block_size"] = size
    row["readable"] = bool(desc & (1 << 6))
    row["writable"] = bool(desc & (1 << 7))
    row["exec_el1"], row["exec_el0"] = exec_perms(desc, xnx)
    if not desc & (1 << 10) and not use_ha:
        return _fault(row, ACCESS_FLAG, level)
    allowed = {"read": row["readable"], "write": row["writable"], "exec_el1": row["exec_el1"],
               "exec_el0": row["exec_el0"]}[access]
    if not allowed:
        return _fault(row, PERMISSION, level)
    if not desc & AF:
        row["desc"] = desc | AF          # HA: the walk writes AF and uses the updated entry
        row["af_updated"] = True
    row["ok"] = True
    return row


class Memory:
    """Sparse physical memory for the reference: segments of uint64 words."""

    def __init__(self) -> None:
        self.segments: list[tuple[int, object]] = []   # (base_pa, sequence of u64)

    def add(self, base_pa: int, words) -> "Memory":
        self.segments.append((base_pa, words))
        return self

    def __call__(self, pa: int) -> int:
        for base, words in self.segments:
            off = pa - base
            if 0 <= off and off + 8 <= 8 * len(words):
                if off % 8:
                    raise LookupError(f"unaligned read at {pa:#x}")
                return int(words[off // 8])
        raise LookupError(f"no memory at {pa:#x}")


def pool_reader(pt, table_pa_base: int) -> Callable[[int], int]:
    """read_u64 over an s2fast pool: live table pages only (refcount > 0)."""
    desc = pt.descriptors
    refc = pt._core.refcounts
    shift = pt.granule.bit_length() - 1
    per_page = pt.granule // 8

    def read(pa: int) -> int:
        if pa < table_pa_base:
            raise LookupError(f"{pa:#x} is below the pool")
        off = pa - table_pa_base
        page = off >> shift
        if page >= len(refc) or refc[page] <= 0:
            raise LookupError(f"{pa:#x} is not a live pool page")
        return int(desc[page * per_page + ((off & ((1 << shift) - 1)) >> 3)])

    return read


def valid_start_levels(ia_bits: int, granule: int) -> list[int]:
    """The start levels a VTCR may give an ia_bits-bit IPA space with this granule."""
    out = []
    for start in range(4):
        try:
            decode(0, make_vtcr(ia_bits, granule, start_level=start))
            out.append(start)
        except ValueError:
            pass
    return out


def make_vtcr(ia_bits: int, granule: int = 4096, *, start_level: Optional[int] = None, ps: int = 5,
              ha: bool = False) -> int:
    """A VTCR_EL2 value for a walk; start level defaults to the fewest levels
    the architecture allows with up to 16 concatenated top-level tables."""
    shift = granule.bit_length() - 1
    stride = shift - 3
    tg0 = {12: 0b00, 16: 0b01, 14: 0b10}[shift]
    if start_level is None:
        for lvl in range(3, -1, -1):
            n = ia_bits - ((3 - lvl) * stride + shift)
            if 1 <= n <= stride + 4:
                try:
                    decode(0, _vtcr_raw(ia_bits, tg0, shift, lvl, ps, ha))
                except ValueError:
                    continue
                start_level = lvl
                break
        else:
            raise ValueError(f"no start level for {ia_bits} bits, granule {granule}")
    return _vtcr_raw(ia_bits, tg0, shift, start_level, ps, ha)


def _vtcr_raw(ia_bits: int, tg0: int, shift: int, start_level: int, ps: int, ha: bool) -> int:
    sl0 = (2 if shift == 12 else 3) - start_level
    return (64 - ia_bits) | (sl0 & 3) << 6 | tg0 << 14 | ps << 16 | int(ha) << 21 | 1 << 31


# -- hand-built images --------------------------------------------------------

AF = 1 << 10
S2AP_R = 1 << 6
S2AP_W = 1 << 7
XN0 = 1 << 53
XN1 = 1 << 54
NORMAL = 0xF << 2 | 3 << 8          # MemAttr normal write-back, inner shareable


def xn_bits(xn: int) -> int:
    return (xn & 3) << 53


class ImageBuilder:
    """Table pages laid out in one uint64 array at ``base_pa`` (aligned to the
    start table), root page(s) first. ``entry(ipa, level)`` creates the tables
    down to ``level`` for ``ipa`` and returns the PA of its entry there."""

    def __init__(self, granule: int, ia_bits: int, *, start_level: Optional[int] = None, ps: int = 5,
                 ha: bool = False, base_pa: int = 0x8000_0000, pages: int = 64) -> None:
        import numpy as np

        self.granule = granule
        self.vtcr = make_vtcr(ia_bits, granule, start_level=start_level, ps=ps, ha=ha)
        self.regs = decode(base_pa, self.vtcr)
        assert self.regs.base == base_pa, "base_pa must be aligned to the start table"
        self.base_pa = base_pa
        self.per_page = granule // 8
        self.words = np.zeros(pages * self.per_page, dtype=np.uint64)
        self.next_page = self.regs.root_pages
        self.tables: dict[tuple[int, int], int] = {}   # (level, ipa aligned) -> table PA

    @property
    def vttbr(self) -> int:
        return self.base_pa

    @property
    def end_pa(self) -> int:
        return self.base_pa + 8 * len(self.words)

    def new_page(self) -> int:
        if self.next_page * self.per_page >= len(self.words):
            raise ValueError("image is full")
        pa = self.base_pa + self.next_page * self.granule
        self.next_page += 1
        return pa

    def table_desc(self, pa: int) -> int:
        return self.addr_field(pa) | 3

    def addr_field(self, pa: int) -> int:
        """An address as the descriptor holds it (64K: PA[51:48] in bits 15:12)."""
        low = pa & _mask(47, 0)
        if self.regs.shift == 16:
            low |= ((pa >> 48) & 0xF) << 12
        return low

    def leaf_desc(self, level: int, oa: int, attrs: int = NORMAL | AF | S2AP_R | S2AP_W) -> int:
        return self.addr_field(oa) | attrs | (3 if level == 3 else 1)

    def entry_pa(self, table_pa: int, level: int, ipa: int) -> int:
        r = self.regs
        lo = r.level_shift(level)
        top = r.ia_bits if level == r.start_level else lo + r.stride
        return table_pa + 8 * ((ipa & _mask(top - 1, lo)) >> lo)

    def entry(self, ipa: int, level: int) -> int:
        r = self.regs
        table = r.base
        for lvl in range(r.start_level, level):
            pa = self.entry_pa(table, lvl, ipa)
            d = self.get(pa)
            if d & 3 == 3:
                table = d & _mask(47, r.shift)
            else:
                assert d == 0, f"entry at level {lvl} for {ipa:#x} is already a leaf"
                nxt = self.new_page()
                self.set(pa, self.table_desc(nxt))
                table = nxt
        return self.entry_pa(table, level, ipa)

    def set(self, pa: int, desc: int) -> None:
        self.words[(pa - self.base_pa) // 8] = desc

    def get(self, pa: int) -> int:
        return int(self.words[(pa - self.base_pa) // 8])

    def put(self, ipa: int, level: int, desc: int) -> int:
        pa = self.entry(ipa, level)
        self.set(pa, desc)
        return pa

    def reader(self) -> Memory:
        return Memory().add(self.base_pa, self.words)
