"""s2fast: an exact, fast simulator of the Linux KVM arm64 stage-2 page-table
walker (arch/arm64/kvm/hyp/pgtable.c)."""
from ._pool import MemCache
from ._visitors import BuiltinVisitor, CollectVisitor, CountVisitor, VisitCtx
from .describe import Descriptor, describe
from .dump import DumpRun, dump_runs, format_dump
from .errors import CorruptTableError, OutsideMemoryError, PhysMemReadError, ReadOnlyTableError
from .physmem import PhysMem, Segment
from .flags import (E2BIG, EAGAIN, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM, ERANGE,
                    ERRNO_NAMES, RW, RWX, SKIP_CHILDREN, SKIP_SIBLINGS, TLBI_TTL_UNKNOWN, Prot,
                    WalkFlags)
from .pgtable import Geometry, Stage2PageTable, Stats, geometry, pte_prot
from .translate import FSC_NONE, TRANSLATE_DTYPE, Access, Fault, Translation
from .variants import LeafRun, OutcomeDiff, Strategy, compare_outcomes

__all__ = [
    "Stage2PageTable", "MemCache", "Stats", "Geometry", "geometry", "pte_prot",
    "WalkFlags", "Prot", "RW", "RWX", "VisitCtx", "BuiltinVisitor", "CountVisitor", "CollectVisitor",
    "CorruptTableError", "OutsideMemoryError", "ReadOnlyTableError", "PhysMemReadError",
    "PhysMem", "Segment", "describe", "Descriptor", "DumpRun", "dump_runs", "format_dump",
    "Access", "Fault", "Translation", "TRANSLATE_DTYPE", "FSC_NONE", "Strategy", "compare_outcomes", "OutcomeDiff", "LeafRun",
    "SKIP_CHILDREN", "SKIP_SIBLINGS", "TLBI_TTL_UNKNOWN", "ERRNO_NAMES",
    "EPERM", "ENOENT", "E2BIG", "EAGAIN", "ENOMEM", "EFAULT", "EBUSY", "EEXIST", "EINVAL", "ERANGE",
]
__version__ = "0.1.0"
from .vm import (PRESETS, VM, Backing, Comparison, Memslot, Preset, PresetResult, RunResult, TableDiff,
                 Workload, compare, diff_tables, parse_size, run_preset)

__all__ += ["VM", "Memslot", "Backing", "Workload", "RunResult", "Comparison", "TableDiff", "Preset",
            "PresetResult", "PRESETS", "compare", "run_preset", "diff_tables", "parse_size"]
