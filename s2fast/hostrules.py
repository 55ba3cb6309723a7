"""mmu.c's size rules for a host of one page size, which is also the stage-2
granule: PAGE_SIZE, PMD_SIZE, PUD_SIZE, the eager-split chunk sizes and the
split cache's size, and the pieces stage2_apply_range() works in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checks import as_int
from .geometry import GRANULES, geometry
from .sizes import GiB, MiB, format_size, parse_size

# The 4 KiB host's sizes (HostRules / host_rules() give every granule's).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SIZE = 2 * MiB
PUD_SIZE = 1 * GiB
#: eager-split chunk sizes KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE accepts on a 4 KiB host (0: off)
SPLIT_CHUNKS = (0, PAGE_SIZE, PMD_SIZE, PUD_SIZE)


@dataclass(frozen=True)
class HostRules:
    """What mmu.c's rules look like on a host of one page size (the stage-2
    granule): PAGE_SIZE, PMD_SIZE, PUD_SIZE (0 where level-1 blocks do not
    exist: KVM_PGTABLE_MIN_BLOCK_LEVEL is 2 for 16 and 64 KiB), the block
    sizes KVM maps (kvm_supported_block_sizes(): the page and every block
    level), and the size of stage2_apply_range()'s pieces (one entry of
    KVM_PGTABLE_MIN_BLOCK_LEVEL)."""

    granule: int
    page_shift: int
    ptrs_per_table: int
    pmd_size: int
    pud_size: int
    wp_piece: int

    @property
    def page_size(self) -> int:
        return self.granule

    @property
    def chunks(self) -> tuple[int, ...]:
        """KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE's accepted values: 0 (off) or
        a size kvm_is_block_size_supported() accepts."""
        return (0,) + self.kind_sizes[: 3 if self.pud_size else 2]

    @property
    def kind_sizes(self) -> tuple[int, ...]:
        """Leaf size of each backing kind (pages, PMD blocks, PUD blocks)."""
        return (self.granule, self.pmd_size, self.pud_size)

    @property
    def kind_names(self) -> tuple[str, ...]:
        """Backing names of the kinds: ("4k", "2m", "1g"); "" for none."""
        return tuple(format_size(n, compact=True).lower() if n else "" for n in self.kind_sizes)

    @property
    def unit(self) -> int:
        """A memslot's backing is chosen per PMD_SIZE unit."""
        return self.pmd_size

    @property
    def units_per_pud(self) -> int:
        return self.pud_size // self.pmd_size if self.pud_size else 0

    def kind_list(self) -> str:
        """'1g, 2m or 4k' for a 4 KiB host, '32m or 16k' for 16 KiB."""
        names = [n for n in reversed(self.kind_names) if n]
        return ", ".join(names[:-1]) + " or " + names[-1]

    def describe(self) -> str:
        return f"{format_size(self.granule)} host"


def host_rules(granule: Any = 4096) -> HostRules:
    """The mmu.c rules of a host whose page size is ``granule`` (4096,
    16384 or 65536; a size string such as "64K" is accepted)."""
    if isinstance(granule, str):
        granule = parse_size(granule)
    granule = as_int("granule", granule)
    rules = _HOSTS.get(granule)
    if rules is None:
        raise ValueError(f"granule {granule} is not a host page size KVM supports "
                         f"(4K, 16K or 64K: {', '.join(str(g) for g in GRANULES)})")
    return rules


def _make_host(granule: int) -> HostRules:
    g = geometry(48, granule)
    min_block = g.min_block_level
    return HostRules(granule, g.page_shift, g.ptrs_per_table, g.level_size(2),
                     g.level_size(1) if min_block < 2 else 0, g.level_size(min_block))


_HOSTS = {gr: _make_host(gr) for gr in GRANULES}
HOST_4K = _HOSTS[4096]


def check_chunk(v: Any, granule: int = 4096) -> int:
    """An eager-split chunk size (KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE) for the host."""
    v = parse_size(v)
    h = host_rules(granule)
    if v not in h.chunks:
        sizes = ", ".join(format_size(c) for c in h.chunks[1:])
        where = "" if granule == 4096 else f" on a {h.describe()}"
        raise ValueError(f"eager-split chunk {v} is not 0 or a block size the kernel accepts "
                         f"({sizes}{where})")
    return v


def split_nr_page_tables(chunk: int, granule: int = 4096) -> int:
    """kvm_mmu_split_nr_page_tables(): pages to split a chunk of blocks to
    pages: one per PMD_SIZE it touches, plus one per PUD_SIZE where the
    host has level-1 blocks (4 KiB granule only)."""
    h = host_rules(granule)
    n = -(-chunk // h.pmd_size)
    if h.pud_size:
        n += -(-chunk // h.pud_size)
    return n
