"""Type stub for s2fast/_walk.pyx (the walker)."""
import enum

TABLE_PA_BASE: int

class WalkFlag(enum.IntEnum):
    F_LEAF: int
    F_TABLE_PRE: int
    F_TABLE_POST: int
    F_SHARED: int
    F_HANDLE_FAULT: int
    F_SKIP_BBM_TLBI: int
    F_SKIP_CMO: int
    F_SKIP_LEVEL3: int
    F_SKIP_LEVEL2: int
    F_SKIP_LEVEL1: int
    F_SKIP_NEW_TABLE: int
    F_SKIP_LEVEL0: int
    F_PAGE: int
    F_BLOCK: int
