"""Memslots as stage 2 sees them (struct kvm_memory_slot): where each lies,
what backs it (``Backing``: hugetlb, THP or pages, or a seeded mix chosen
per PMD_SIZE unit) and its dirty bitmap."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from .checks import integer
from .hostrules import _HOSTS, HOST_4K, HostRules, host_rules
from .sizes import format_size

#: guest memory's host physical address is PHYS_OFFSET + IPA (+PMD_SIZE for PMD blocks)
PHYS_OFFSET = 1 << 40

# Backing kinds, one per PMD_SIZE unit of a memslot: pages, PMD blocks, PUD
# blocks (named and sized here for a 4 KiB host; HostRules.kind_names/_sizes).
K4K, K2M, K1G = 0, 1, 2
KIND_NAMES = HOST_4K.kind_names
KIND_SIZES = HOST_4K.kind_sizes


def _popcount(a: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(a).sum())
    return int(np.unpackbits(a.view(np.uint8)).sum())


@dataclass(frozen=True)
class Backing:
    """How a memslot is backed, as percentages of its size, by kind of leaf:
    ``pct_1g`` level-1 blocks (PUD_SIZE: 1 GiB hugetlb, 4 KiB hosts only),
    ``pct_2m`` level-2 blocks (PMD_SIZE: 2 MiB, 32 MiB or 512 MiB hugetlb or
    THP) and ``pct_4k`` pages of the host's size (memory already split).
    The field names are the 4 KiB host's; ``granule`` says which host.

    ``Backing.parse`` takes ``"1g"`` / ``"hugetlb"``, ``"2m"`` / ``"thp"``,
    ``"4k"`` / ``"split"``, or ``"mix:1g=50,2m=30,4k=20"``; with
    ``granule=16384`` the sizes are ``"32m"`` and ``"16k"``, with 65536
    ``"512m"`` and ``"64k"`` ("hugetlb" is the largest block size)."""

    pct_1g: int = 0
    pct_2m: int = 0
    pct_4k: int = 0
    granule: int = 4096

    def __post_init__(self) -> None:
        for name in ("pct_1g", "pct_2m", "pct_4k"):
            integer(name, getattr(self, name), 0, 100)
        h = host_rules(self.granule)
        object.__setattr__(self, "granule", h.granule)
        total = self.pct_1g + self.pct_2m + self.pct_4k
        n = h.kind_names
        if total != 100:
            if h.pud_size:
                raise ValueError(f"backing percentages add up to {total}, not 100: "
                                 f"1g={self.pct_1g}, 2m={self.pct_2m}, 4k={self.pct_4k}")
            raise ValueError(f"backing percentages add up to {total}, not 100: "
                             f"{n[1]}={self.pct_2m}, {n[0]}={self.pct_4k}")
        if self.pct_1g and not h.pud_size:
            raise ValueError(f"a {h.describe()} has no level-1 (1 GiB) stage-2 blocks: "
                             f"back the memslot with {h.kind_list()}")

    _ALIASES = {"1g": "1g", "hugetlb": "1g", "pud": "1g",
                "2m": "2m", "thp": "2m", "pmd": "2m",
                "4k": "4k", "split": "4k", "pages": "4k", "pte": "4k"}

    @staticmethod
    def _kind(key: Any, h: HostRules) -> Optional[int]:
        """A kind name of this host -> 0 (pages), 1 (PMD) or 2 (PUD)."""
        k = str(key).strip().lower()
        if h.granule == 4096:
            k = Backing._ALIASES.get(k, k)
        elif k in ("hugetlb", "thp", "pmd"):
            return 1
        elif k in ("split", "pages", "pte"):
            return 0
        names = h.kind_names
        return names.index(k) if k and k in names else None

    @classmethod
    def parse(cls, spec: Any, granule: Any = 4096) -> "Backing":
        h = host_rules(granule)
        if isinstance(spec, Backing):
            if spec.granule != h.granule:
                raise ValueError(f"backing {spec} is for a {format_size(spec.granule)} host, "
                                 f"not a {h.describe()}")
            return spec
        if isinstance(spec, Mapping):
            pct = [0, 0, 0]
            for k, v in spec.items():
                kind = cls._kind(k, h)
                if kind is None:
                    raise ValueError(f"backing kind {k!r} is not {h.kind_list()}"
                                     + ("" if h.granule == 4096 else f" (a {h.describe()})"))
                pct[kind] += integer(f"percentage of {h.kind_names[kind]}", v, 0, 100)
            return cls(pct[2], pct[1], pct[0], h.granule)
        if not isinstance(spec, str):
            raise TypeError(f"backing must be a string like '{h.kind_names[-1] or h.kind_names[1]}' or "
                            f"'mix:{h.kind_names[1]}=50,{h.kind_names[0]}=50', "
                            f"not {type(spec).__name__} {spec!r}")
        s = spec.strip().lower()
        if cls._kind(s, h) is not None:
            return cls.parse({s: 100}, h.granule)
        if s.startswith("mix:"):
            pct: dict[str, Any] = {}
            for part in s[4:].split(","):
                k, sep, v = part.partition("=")
                if not sep or not v.strip().isdigit():
                    raise ValueError(f"backing {spec!r}: {part!r} is not KIND=PERCENT")
                if k.strip() in pct:
                    raise ValueError(f"backing {spec!r} names {k.strip()!r} twice")
                pct[k.strip()] = int(v)
            return cls.parse(pct, h.granule)
        if h.granule == 4096:
            raise ValueError(f"backing {spec!r} is not 1g, 2m, 4k (hugetlb, thp, split) "
                             f"or mix:1g=P,2m=P,4k=P")
        big, page = h.kind_names[1], h.kind_names[0]
        raise ValueError(f"backing {spec!r} is not a page or block size of a {h.describe()} (its stage 2 "
                         f"maps {page} pages and {big} blocks only): {big}, {page} (hugetlb, thp, split) "
                         f"or mix:{big}=P,{page}=P")

    def __str__(self) -> str:
        n = _HOSTS[self.granule].kind_names
        parts = [(k, p) for k, p in ((n[2], self.pct_1g), (n[1], self.pct_2m), (n[0], self.pct_4k)) if p]
        if len(parts) == 1:
            return parts[0][0]
        return "mix:" + ",".join(f"{k}={p}" for k, p in parts)


def _assign_kinds(base: int, size: int, backing: Backing, rng: np.random.Generator,
                  h: HostRules = HOST_4K) -> np.ndarray:
    """One backing kind per PMD_SIZE unit (2 MiB on a 4 KiB host). PUD
    blocks go to whole, aligned PUD_SIZE ranges of the slot (chosen at
    random for a mix); page units are drawn at random from the rest; what
    is left is PMD blocks (also the fallback for PUD backing where no
    aligned PUD range fits). Hosts without PUD blocks have only the last two."""
    unit = h.unit
    n_units = -(-size // unit)          # a page-backed slot may end inside a unit
    kinds = np.full(n_units, K2M, dtype=np.uint8)
    per_pud = h.units_per_pud
    if per_pud:
        # units that start a whole, aligned PUD range inside the slot
        first = (-(base // unit)) % per_pud
        gib_starts = np.arange(first, n_units - per_pud + 1, per_pud, dtype=np.int64)
        want_1g = min(len(gib_starts), round(backing.pct_1g * n_units / 100 / per_pud))
        if backing.pct_1g == 100:
            want_1g = len(gib_starts)
        if want_1g:
            chosen = gib_starts if want_1g == len(gib_starts) else np.sort(
                rng.choice(gib_starts, size=want_1g, replace=False))
            idx = (chosen[:, None] + np.arange(per_pud)).ravel()
            kinds[idx] = K1G
    free = np.flatnonzero(kinds != K1G)
    want_4k = min(len(free), round(backing.pct_4k * n_units / 100))
    if backing.pct_4k == 100:
        want_4k = len(free)
    if want_4k == len(free):
        kinds[free] = K4K
    elif want_4k:
        kinds[rng.choice(free, size=want_4k, replace=False)] = K4K
    return kinds


@dataclass(eq=False)
class Memslot:
    """A guest memory region (struct kvm_memory_slot, as far as stage 2 sees
    it). ``kinds`` holds one backing kind per PMD_SIZE unit; pages, gfns
    and the dirty bitmap are in pages of the host's ``granule``."""

    id: int
    base: int
    size: int
    backing: Backing
    seed: int
    kinds: np.ndarray = field(repr=False)
    logging: bool = False
    dirty_bitmap: Optional[np.ndarray] = field(default=None, repr=False)
    granule: int = 4096

    def __post_init__(self) -> None:
        self._h = host_rules(self.granule)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def npages(self) -> int:
        return self.size >> self._h.page_shift

    @property
    def base_gfn(self) -> int:
        return self.base >> self._h.page_shift

    def contains(self, ipa: int) -> bool:
        return self.base <= ipa < self.end

    def block_counts(self) -> dict[str, int]:
        """How the slot was built: PUD blocks, PMD blocks, pages (keys by
        size: "1g", "2m", "4k" on a 4 KiB host; "32m", "16k" on 16 KiB)."""
        h = self._h
        n = np.bincount(self.kinds, minlength=3)
        out = {}
        if h.pud_size:
            out[h.kind_names[2]] = int(n[K1G]) // h.units_per_pud
        out[h.kind_names[1]] = int(n[K2M])
        out[h.kind_names[0]] = min(int(n[K4K]) * (h.unit // h.granule), self.npages)   # page-aligned slots
        return out

    @property
    def dirty_bytes(self) -> memoryview:
        """The dirty bitmap as bytes (bit n of the little-endian words is
        bit n % 8 of byte n // 8): a byte's update costs far less than a
        numpy word's."""
        bm = self.dirty_bitmap
        if getattr(self, "_bytes_of", None) is not bm:
            self._bytes_of = bm
            self._bytes = memoryview(bm.view(np.uint8))
        return self._bytes

    def dirty_pages(self) -> int:
        """Bits set in the dirty bitmap (0 when not logging)."""
        return 0 if self.dirty_bitmap is None else _popcount(self.dirty_bitmap)

    def kind_at(self, ipa: int) -> int:
        return int(self.kinds[(ipa - self.base) // self._h.unit])

    def phys(self, ipa: int) -> int:
        """The host physical address backing ``ipa`` (PHYS_OFFSET + IPA,
        + PMD_SIZE for PMD blocks so that they are not PUD aligned)."""
        h = self._h
        return PHYS_OFFSET + ipa + (h.pmd_size if self.kinds[(ipa - self.base) // h.unit] == K2M else 0)


