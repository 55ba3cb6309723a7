"""Type stub for s2fast/_visitors.pyx (visitors for walk()). Read-only
attributes (Cython properties) are annotated as attributes."""
from typing import Any

import numpy as np

LEAF_DTYPE: np.dtype

class VisitCtx:
    addr: int
    start: int
    end: int
    level: int
    old: int
    flags: int
    ptep: int
    arg: Any
    def set(self, new: int) -> None: ...
    def split(self, memcache: Any) -> int: ...

class BuiltinVisitor: ...

class CountVisitor(BuiltinVisitor):
    def reset(self) -> None: ...
    valid: dict[int, int]
    invalid: dict[int, int]
    tables: dict[int, int]
    total_valid: int

class CollectVisitor(BuiltinVisitor):
    def result(self) -> np.ndarray: ...
    def reset(self) -> None: ...
