"""Type stub for s2fast/_events.pyx (event counters)."""

WARN_SITES: tuple[str, ...]

def tlb_flush_vmid_range_counts(addr: int, size: int, page_shift: int,
                                tlb_range: bool) -> tuple[int, int, int]: ...
