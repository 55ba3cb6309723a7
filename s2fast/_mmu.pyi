"""Type stub for s2fast/_mmu.pyx (mmu.c's fault path)."""

FAULT_COUNTERS: tuple[str, ...]
FAULT_FLAGS: int
