"""Type stub for s2fast/_pool.pyx (the page pool backend, the memory cache). Read-only
attributes (Cython properties) are annotated as attributes."""

TABLE_PA_BASE: int

class MemCache:
    def __init__(self, pages: int = 0, on_empty: str = "fail") -> None: ...
    nobjs: int
    on_empty: str
    def topup(self, pages: int) -> None: ...
