"""Argument checks shared by every layer: each raises a one-line TypeError
or ValueError naming the argument and the bad value, before anything
changes."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._pool import MemCache
from .flags import ALL_WALK_FLAGS, PROT_ALL

U64_MAX = (1 << 64) - 1


def as_int(name: str, v: Any) -> int:
    # timedelta64 is an np.integer subclass; it is a duration, not a number of things.
    if isinstance(v, (bool, np.timedelta64)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(v).__name__} {v!r}")
    return int(v)


def integer(name: str, v: Any, lo: int = 0, hi: Optional[int] = None, *, hex: bool = False) -> int:
    """An int (numpy integers too, bools not) in lo..hi (no upper bound when
    hi is None); ``hex`` writes the range in hex in the error."""
    v = as_int(name, v)
    if v < lo or (hi is not None and v > hi):
        span = f"{lo:#x}..{hi:#x}" if hex and hi is not None else f"{lo}..{hi if hi is not None else 'inf'}"
        raise ValueError(f"{name} {v!r} is outside {span}")
    return v


def u64(name: str, v: Any) -> int:
    v = as_int(name, v)
    if not 0 <= v <= U64_MAX:
        raise ValueError(f"{name} {v!r} is outside 0..2**64-1")
    return v


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(v).__name__} {v!r}")
    return bool(v)


def prot(v: Any) -> int:
    v = u64("prot", v)
    if v & ~PROT_ALL:
        raise ValueError(f"prot {v:#x} has unknown bits {v & ~PROT_ALL:#x}")
    return v


def walk_flags(v: Any, known: int = ALL_WALK_FLAGS) -> int:
    v = u64("flags", v)
    if v & ~known:
        raise ValueError(f"walk flags {v:#x} have unknown bits {v & ~known:#x}")
    return v


def memcache(v: Any, allow_none: bool = True) -> Optional[MemCache]:
    if v is None and allow_none:
        return None
    if not isinstance(v, MemCache):
        raise TypeError(f"memcache must be an s2fast.MemCache{' or None' if allow_none else ''}, "
                        f"not {type(v).__name__} {v!r}")
    return v


def level(v: Any, name: str = "level") -> int:
    """A table level, -1..3."""
    return integer(name, v, -1, 3)
