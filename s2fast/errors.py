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
