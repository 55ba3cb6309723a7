"""Architectural stage-2 translation: the result of the MMU's walk of a
table for an IPA and an access kind (read, write, execute at EL1 or EL0),
with the architectural fault and ESR_ELx.FSC when it fails."""
from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import _translate
from .checks import u64 as _u64

TRANSLATE_DTYPE: np.dtype = _translate.TRANSLATE_DTYPE
FSC_NONE = 0xFF        # the fsc of a row that did not fault


class Access(enum.IntEnum):
    READ = 0
    WRITE = 1
    EXEC_EL1 = 2
    EXEC_EL0 = 3


class Fault(enum.IntEnum):
    """Fault kinds; each has an FSC base to which the level is added."""

    NONE = 0
    TRANSLATION = 1      # FSC 0x04 + level
    ADDRESS_SIZE = 2     # FSC 0x00 + level
    ACCESS_FLAG = 3      # FSC 0x08 + level
    PERMISSION = 4       # FSC 0x0C + level
    EXTERNAL = 5         # FSC 0x14 + level: synchronous external abort on a table walk


@dataclass(frozen=True)
class Translation:
    """One translated IPA (a row of TRANSLATE_DTYPE); ``t["pa"]`` works too."""

    ipa: int
    ok: bool
    pa: int
    level: int
    block_size: int
    desc: int
    readable: bool
    writable: bool
    exec_el1: bool
    exec_el0: bool
    fault: Fault
    fault_level: int
    fsc: int
    af_updated: bool = False   # VTCR.HA: AF was clear in memory and this access set it (``desc`` has it)

    @classmethod
    def from_row(cls, row: np.void) -> "Translation":
        vals = {f.name: row[f.name].item() for f in fields(cls)}
        vals["fault"] = Fault(vals["fault"])
        return cls(**vals)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __str__(self) -> str:
        if self.ok:
            perms = ("R" if self.readable else "-") + ("W" if self.writable else "-")
            x = ",".join(el for el, on in (("el1", self.exec_el1), ("el0", self.exec_el0)) if on)
            return (f"IPA {self.ipa:#x} -> PA {self.pa:#x} (level {self.level}, "
                    f"{self.block_size:#x} bytes, {perms} X:{x or 'none'}"
                    f"{', AF set by the walk' if self.af_updated else ''})")
        return (f"IPA {self.ipa:#x}: {self.fault.name.lower().replace('_', ' ')} fault at level "
                f"{self.fault_level} (FSC {self.fsc:#04x}, descriptor {self.desc:#x})")


def parse_access(access: Any) -> int:
    if isinstance(access, Access):
        return int(access)
    if isinstance(access, str):
        try:
            return int(Access[access.upper()])
        except KeyError:
            pass
        raise ValueError(f"access {access!r} is not one of read, write, exec_el1, exec_el0")
    raise TypeError(f"access must be a str or s2fast.Access, not {type(access).__name__} {access!r}")


def as_ipas(ipas: Any) -> np.ndarray:
    """IPAs as a contiguous 1-D uint64 array (no copy when they already are).

    A numpy array must hold integers. Anything else (a list, a range, one int)
    is checked item by item like every other address argument, so a Python
    int of 2**63 or more is taken as it is (numpy alone would make such a
    list float64) and a bad item is named."""
    if isinstance(ipas, np.ndarray):
        if ipas.ndim > 1:
            raise ValueError(f"ipas must be one-dimensional, not an array of shape {ipas.shape}")
        if ipas.size == 0:
            return np.zeros(0, dtype=np.uint64)
        # kind, not issubdtype: timedelta64 counts as an integer type to numpy.
        if ipas.dtype.kind not in "iu":
            raise TypeError(f"ipas must be integers, not an array of {ipas.dtype}")
        if ipas.dtype.kind == "i" and ipas.min() < 0:
            raise ValueError(f"ipas holds a negative value {int(ipas.min())}")
        return np.ascontiguousarray(ipas, dtype=np.uint64).reshape(-1)
    if isinstance(ipas, (int, np.integer)):
        return np.array([_u64("ipa", ipas)], dtype=np.uint64)
    try:
        items = list(ipas)
    except TypeError:
        raise TypeError(f"ipas must be a uint64 array or a sequence of ints, not "
                        f"{type(ipas).__name__} {ipas!r}") from None
    return np.array([_u64(f"ipas[{i}]", v) for i, v in enumerate(items)], dtype=np.uint64)


def check_out(out: Any, ipas: np.ndarray) -> None:
    """``out`` must be a writable row per IPA, apart from the IPAs."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array of TRANSLATE_DTYPE, not {type(out).__name__}")
    if out.dtype != TRANSLATE_DTYPE:
        raise TypeError(f"out must have dtype s2fast.TRANSLATE_DTYPE, not {out.dtype}")
    if out.shape != ipas.shape:
        raise ValueError(f"out has shape {out.shape}; {ipas.size} IPAs need shape {ipas.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writable")
    if np.may_share_memory(out, ipas):
        raise ValueError("out overlaps the ipas array: rows would overwrite IPAs not yet read")
