"""FNV-1a-64, the hash the kernel conformance data uses for leaves and traces
(a test helper: the engine does not hash)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyximport

# The leaf loop is compiled on first use (Cython is a build requirement, so
# every machine that built s2fast can build this); it is cached afterwards.
pyximport.install(language_level=3, build_dir=str(Path(__file__).parent / ".pyxbld"), inplace=False)
from support._fnv_hash import fnv1a_columns  # noqa: E402

FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a_values(h: int, *values: int) -> int:
    """Fold 64-bit values (little-endian bytes, negatives in two's complement)
    into an FNV-1a-64 hash."""
    for v in values:
        v &= MASK64
        for i in range(8):
            h = ((h ^ ((v >> (8 * i)) & 0xFF)) * FNV_PRIME) & MASK64
    return h


def fnv1a_leaves(h: int, leaves: np.ndarray) -> int:
    """FNV-1a-64 over (ipa, level, pte) of every row of a leaves() array."""
    return fnv1a_columns(h, np.ascontiguousarray(leaves["ipa"], dtype=np.uint64),
                         np.ascontiguousarray(leaves["level"], dtype=np.int8),
                         np.ascontiguousarray(leaves["pte"], dtype=np.uint64))
