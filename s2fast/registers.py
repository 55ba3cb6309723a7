"""VTTBR_EL2 and VTCR_EL2 as a CPU holds them, decoded into what a stage-2
walk needs. The register layouts and the start-level rules are the
architecture's (the kernel's nested-virtualisation walker,
arch/arm64/kvm/nested.c, applies the same ones)."""
from __future__ import annotations

from dataclasses import dataclass

from .checks import u64
from .geometry import GRANULE_RULES, OA_MASK, TG0_GRANULE, Geometry, level_shift

# VTCR_EL2.PS -> output-address bits.
PS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}


@dataclass(frozen=True)
class Vtcr:
    """The fields of VTCR_EL2 that shape a stage-2 walk."""

    value: int
    t0sz: int
    sl0: int
    granule: int
    ps_bits: int
    ha: bool

    @property
    def ia_bits(self) -> int:
        return 64 - self.t0sz

    @property
    def page_shift(self) -> int:
        return self.granule.bit_length() - 1

    @property
    def start_level(self) -> int:
        # SL0 counts levels up from level 2 (4 KiB) or level 3 (16/64 KiB).
        return GRANULE_RULES[self.granule].sl0_level - self.sl0

    @property
    def root_shift(self) -> int:
        """Address bits below the root table's index: level_shift(start_level)."""
        return level_shift(self.start_level, self.granule)

    @property
    def root_entries(self) -> int:
        """Root-level entries inside the IPA space (all concatenated pages)."""
        return 1 << (self.ia_bits - self.root_shift)

    @property
    def pgd_pages(self) -> int:
        """Concatenated root pages."""
        return 1 << max(0, self.ia_bits - self.root_shift - (self.page_shift - 3))

    @property
    def root_align(self) -> int:
        """Bytes the root is aligned to (its size, concatenation included)."""
        return self.pgd_pages * self.granule if self.ia_bits - self.root_shift >= self.page_shift - 3 \
            else 8 << (self.ia_bits - self.root_shift)

    def geometry(self) -> Geometry:
        return Geometry(self.granule, self.ia_bits, self.start_level, self.pgd_pages, self.granule // 8,
                        self.value)


def decode_vtcr(vtcr: int) -> Vtcr:
    """Decode VTCR_EL2; a ValueError names what is not a valid stage-2 setup."""
    vtcr = u64("vtcr", vtcr)
    t0sz, sl0 = vtcr & 0x3F, (vtcr >> 6) & 3
    tg0, ps = (vtcr >> 14) & 3, (vtcr >> 16) & 7
    if tg0 not in TG0_GRANULE:
        raise ValueError(f"vtcr {vtcr:#x}: TG0 {tg0:#b} is a reserved granule encoding")
    if ps not in PS_BITS:
        raise ValueError(f"vtcr {vtcr:#x}: PS {ps} is a reserved output-size encoding")
    granule = TG0_GRANULE[tg0]
    ds = vtcr >> 32 & 1
    if ds and granule != 65536:
        raise ValueError(f"vtcr {vtcr:#x}: DS=1 selects the FEAT_LPA2 descriptor format, "
                         "which is not supported")
    # Without LPA2, 4 and 16 KiB descriptors hold 48 address bits: PS=52 reads as 48.
    ps_bits = 48 if PS_BITS[ps] == 52 and granule != 65536 else PS_BITS[ps]
    v = Vtcr(vtcr, t0sz, sl0, granule, ps_bits, bool(vtcr >> 21 & 1))
    ia, level, stride = v.ia_bits, v.start_level, v.page_shift - 3
    if not 25 <= ia <= 48:
        raise ValueError(f"vtcr {vtcr:#x}: T0SZ {t0sz} gives a {ia}-bit IPA space; "
                         "25 to 48 bits are supported")
    # The architecture's limits on the start level for each granule.
    if v.granule == 4096 and sl0 == 3:
        raise ValueError(f"vtcr {vtcr:#x}: SL0 3 with 4 KiB pages (level 3 start) needs FEAT_TTST, "
                         "which is not supported")
    # The IPA size must leave the start level at least one index bit and at
    # most 16 concatenated tables' worth (the ASL's S2InconsistentSL); the
    # start levels that also depend on the CPU's PAMax are taken as present.
    bad_level = level == 0 and v.granule != 4096
    start_bits = ia - v.root_shift
    if bad_level or not 1 <= start_bits <= stride + 4:
        raise ValueError(f"vtcr {vtcr:#x}: a {ia}-bit IPA space cannot start at level {level} "
                         f"with {v.granule // 1024} KiB pages (SL0 {sl0})")
    return v


def decode_vttbr(vttbr: int, v: Vtcr) -> int:
    """The root table's PA from VTTBR_EL2: VMID (63:48) and CnP (0) dropped,
    bits below the root's alignment ignored; with 64 KiB pages and 52-bit PAs
    BADDR[51:48] sits in bits 5:2."""
    vttbr = u64("vttbr", vttbr)
    root = vttbr & OA_MASK & ~(v.root_align - 1) & ~1
    if v.ps_bits == 52:
        # Bits 5:2 are BADDR[51:48], so the root is at least 64-byte aligned.
        root = (root & ~0x3F) | ((vttbr >> 2) & 0xF) << 48
    return root


def vttbr_ignored_bits(vttbr: int, v: Vtcr) -> int:
    """The BADDR bits of VTTBR_EL2 that decode_vttbr() ignored because they
    are below the root table's alignment (0 for a well-formed register)."""
    vttbr = u64("vttbr", vttbr)
    baddr = vttbr & OA_MASK & ~1
    if v.ps_bits == 52:
        baddr = (baddr & ~0x3C) | ((vttbr >> 2) & 0xF) << 48
    return baddr & ~decode_vttbr(vttbr, v)
