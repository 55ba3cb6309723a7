"""Sizes in bytes: the package's one parser and one formatter."""
from __future__ import annotations

import re
from typing import Union

import numpy as np

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
# Largest first: a size is shown in the largest unit that divides it.
_UNITS = (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10))


def parse_size(text: Union[str, int]) -> int:
    """``"64G"``, ``"64GiB"``, ``"2M"``, ``"4k"``, ``"0"`` or an int -> bytes."""
    if isinstance(text, bool):
        raise TypeError(f"a size must be an int or a string like '64G', not {text!r}")
    if isinstance(text, (int, np.integer)):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return int(text)
    if not isinstance(text, str):
        raise TypeError(f"a size must be an int or a string like '64G', not {type(text).__name__} {text!r}")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"size {text!r} is not a size like 64G, 2M, 4K or a number of bytes")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int, *, compact: bool = False) -> str:
    """Bytes in the largest binary unit that divides them: "2 MiB", "64 GiB",
    "12 KiB", "5 B"; ``compact=True``: "2M", "64G", "12K", "5B" (the dump's
    columns; lower-cased, the names of backings such as "2m")."""
    for unit, shift in _UNITS:
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}" if compact else f"{n >> shift} {unit}iB"
    return f"{n}B" if compact else f"{n} B"
