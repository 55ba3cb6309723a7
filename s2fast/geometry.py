"""Stage-2 geometry as the kernel and the architecture compute it: per
granule, the sizes and shifts of each level, the start level and root
concatenation for an IPA size, block levels and output addresses.

Everything that depends on the page size (4, 16 or 64 KiB) is decided here,
from one table of the three granules (``GRANULE_RULES``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

GRANULES = (4096, 16384, 65536)
PA_RANGE_BITS = 48
#: descriptor address bits without FEAT_LPA2 (64 KiB pages add PA[51:48] in bits 15:12)
OA_MASK = (1 << 48) - 1
ADDR_51_48 = 0xF << 12


@dataclass(frozen=True)
class GranuleRules:
    """What differs between the three granules."""

    tg0: int                # VTCR_EL2.TG0 encoding
    sl0_level: int          # the start level VTCR_EL2.SL0 = 0 selects (SL0 counts up from it)
    min_block_level: int    # KVM_PGTABLE_MIN_BLOCK_LEVEL: no blocks above it (64K level 1 needs 52-bit PAs)


GRANULE_RULES = {4096: GranuleRules(0, 2, 1), 16384: GranuleRules(2, 3, 2), 65536: GranuleRules(1, 3, 2)}
#: VTCR_EL2.TG0 -> granule
TG0_GRANULE = {r.tg0: g for g, r in GRANULE_RULES.items()}


def page_shift(granule: int) -> int:
    return granule.bit_length() - 1


def level_shift(level: int, granule: int) -> int:
    """ARM64_HW_PGTABLE_LEVEL_SHIFT(level): log2 of the IPA bytes one entry
    at ``level`` maps (the shift of that level's table index)."""
    return (page_shift(granule) - 3) * (4 - level) + 3


def entry_sizes(granule: int) -> np.ndarray:
    """IPA bytes one entry maps, as a uint64 array indexed by level + 1
    (levels -1..3; 0 where the size does not fit 64 bits)."""
    return np.array([1 << level_shift(lv, granule) if level_shift(lv, granule) < 64 else 0
                     for lv in range(-1, 4)], dtype=np.uint64)


def block_allowed(level: int, granule: int, ps_bits: int = 48) -> bool:
    """Whether the architecture lets ``level`` hold a block: levels 1-2 with
    4 KiB pages, level 2 with 16 or 64 KiB, and with 64 KiB level 1 too on a
    CPU with 52-bit PAs (FEAT_LPA), which an output size of 52 bits implies."""
    if granule == 65536 and level == 1 and ps_bits == 52:
        return True
    return level >= GRANULE_RULES[granule].min_block_level


def address_bits(granule: int) -> int:
    """The descriptor bits that hold the output (or next-table) address."""
    return OA_MASK & ~(granule - 1) | (ADDR_51_48 if granule == 65536 else 0)


def output_address(desc: Union[int, np.ndarray], granule: int) -> Union[int, np.ndarray]:
    """The output (or next-table) address of a descriptor or of a uint64
    array of them (kvm_pte_to_phys(); 52-bit with 64 KiB pages)."""
    c = np.uint64 if isinstance(desc, np.ndarray) else int
    pa = desc & c(OA_MASK & ~(granule - 1))
    if granule == 65536:
        pa |= ((desc & c(ADDR_51_48)) >> c(12)) << c(48)
    return pa


@dataclass(frozen=True)
class Geometry:
    """What kvm_get_vtcr() and kvm_pgtable_stage2_init() derive from the IPA size."""

    granule: int
    ia_bits: int
    start_level: int
    pgd_pages: int
    ptrs_per_table: int
    vtcr: int

    @property
    def page_shift(self) -> int:
        return page_shift(self.granule)

    def level_shift(self, level: int) -> int:
        """ARM64_HW_PGTABLE_LEVEL_SHIFT(level)."""
        return level_shift(level, self.granule)

    def level_size(self, level: int) -> int:
        return 1 << self.level_shift(level)

    @property
    def min_block_level(self) -> int:
        return GRANULE_RULES[self.granule].min_block_level

    @property
    def root_entries(self) -> int:
        """Entries of the root level inside the IPA space (all root pages)."""
        return 1 << (self.ia_bits - self.level_shift(self.start_level))


def geometry(ia_bits: int, granule: int = 4096) -> Geometry:
    """Start level, concatenated PGD pages and VTCR_EL2 for a guest IPA size,
    computed the kernel's way (PARange 48 bits, 16-bit VMIDs, HA set)."""
    shift = page_shift(granule)
    rules = GRANULE_RULES[granule]
    levels = max(2, (ia_bits - 8) // (shift - 3))  # stage2_pgtable_levels()
    start_level = 4 - levels
    above = level_shift(start_level - 1, granule)
    pgd_pages = (((1 << ia_bits) - 1) >> above) + 1 if above < 64 else 1
    vtcr = (1 << 31                       # RES1
            | 5 << 16                     # PS: 48-bit PA
            | 1 << 21                     # HA
            | 1 << 19                     # VS: 16-bit VMID
            | rules.tg0 << 14
            | 3 << 12 | 1 << 10 | 1 << 8  # SH0 inner, ORGN0/IRGN0 WBWA
            | (rules.sl0_level - start_level) << 6
            | (64 - ia_bits))
    return Geometry(granule, ia_bits, start_level, pgd_pages, 1 << (shift - 3), vtcr)
