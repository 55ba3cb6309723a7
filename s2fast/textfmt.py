"""Plain-text tables for the command's reports."""
from __future__ import annotations

from typing import Sequence


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A plain-text table with a dashed rule under the header."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(wd) if r else c.ljust(wd) for c, wd, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * wd for wd in widths])] + [line(r) for r in rows])
