"""Exceptions raised by s2fast (kernel outcomes are return codes, not these)."""
from __future__ import annotations


class CorruptTableError(Exception):
    """A table descriptor points outside the descriptor pool or at a freed
    page (or a refcount would go negative): the walker refused to follow it.

    ``ipa`` and ``level`` locate the entry, ``desc`` is the descriptor."""

    def __init__(self, ipa: int, level: int, desc: int) -> None:
        self.ipa = ipa
        self.level = level
        self.desc = desc
        super().__init__(
            f"corrupt table descriptor {desc:#x} at IPA {ipa:#x}, level {level}: "
            "it does not point at a live page of this table's pool")
