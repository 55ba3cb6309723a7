"""Exceptions raised by s2fast (kernel outcomes are return codes, not these)."""
from __future__ import annotations


class CorruptTableError(Exception):
    """A table descriptor points outside the descriptor pool or at a freed
    page, or an entry was written without the reference it holds on its table
    page (so removing it would free a live table): the walker refused.

    ``ipa`` and ``level`` locate the entry, ``desc`` is the descriptor."""

    def __init__(self, ipa: int, level: int, desc: int) -> None:
        self.ipa = ipa
        self.level = level
        self.desc = desc
        super().__init__(
            f"corrupt table at IPA {ipa:#x}, level {level}, descriptor {desc:#x}: it points "
            "outside the pool or at a freed page, or was written without its page reference")


class OutsideMemoryError(CorruptTableError):
    """A table in an external image leads outside its physical memory: a
    table descriptor (or the root from VTTBR) names a page that no segment
    holds whole. ``desc`` is the descriptor (the root's PA for the root)."""

    def __init__(self, ipa: int, level: int, desc: int) -> None:
        if desc & 3 != 3:       # not a table descriptor: the root page's PA
            msg = (f"the root table page at PA {desc:#x} (IPA {ipa:#x}, level {level}) is outside "
                   "the image's physical memory: check VTTBR and the memory's base PA")
        else:
            msg = (f"table descriptor {desc:#x} at IPA {ipa:#x}, level {level}, leads outside "
                   "the image's physical memory")
        Exception.__init__(self, msg)
        self.ipa = ipa
        self.level = level
        self.desc = desc


class InsufficientMemoryError(MemoryError):
    """A run was refused before it started: its estimated memory (``needed``
    bytes) is more than the machine has available (``available``).
    ``largest`` is the largest guest of the same kind that fits (0: none)."""

    def __init__(self, message: str, needed: int, available: int, largest: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest = largest


class ReadOnlyTableError(TypeError):
    """A change was asked of a table that lives in an external image."""


class PhysMemReadError(LookupError):
    """A read of physical memory that no single segment of a ``PhysMem``
    holds: the range is outside every segment or straddles two of them (or,
    for a zero-copy view, is not 8-byte aligned in the segment's buffer).

    ``pa`` is the first byte of the read and ``nbytes`` its length."""

    def __init__(self, pa: int, nbytes: int = 8, detail: str = "") -> None:
        self.pa = pa
        self.nbytes = nbytes
        self.detail = detail
        msg = f"physical read of {nbytes} byte(s) at PA {pa:#x} is not inside one memory segment"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self):  # keep pickling (multiprocessing) working with the extra arguments
        return (type(self), (self.pa, self.nbytes, self.detail))
