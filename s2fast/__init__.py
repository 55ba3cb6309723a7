"""s2fast: an exact, fast simulator of the Linux KVM arm64 stage-2 page-table
walker (arch/arm64/kvm/hyp/pgtable.c)."""
try:
    from ._pool import MemCache
    from ._visitors import BuiltinVisitor, CollectVisitor, CountVisitor, VisitCtx
except ModuleNotFoundError as _e:
    if not (_e.name or "").startswith(__name__ + "._"):
        raise
    # Python run from the top of a checkout imports the source folder, which
    # holds the compiled engine only after an editable or in-place build.
    raise ImportError(
        f"s2fast was imported from {__path__[0]}, which has no compiled engine ({_e.name}): in a "
        "checkout, install with 'pip install -e .' (or build in place: pip install 'Cython>=3.1' numpy "
        "setuptools, then python setup.py build_ext --inplace), or run Python outside the checkout") from None
from .describe import Descriptor, describe
from .dump import DumpRun, dump_runs, format_dump
from .errors import (CorruptTableError, InsufficientMemoryError, OutsideMemoryError, PhysMemReadError,
                     ReadOnlyTableError)
from .physmem import PhysMem, Segment
from .flags import (E2BIG, EAGAIN, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM, ERANGE,
                    ERRNO_NAMES, RW, RWX, SKIP_CHILDREN, SKIP_SIBLINGS, TLBI_TTL_UNKNOWN, Prot,
                    WalkFlags)
from .pgtable import Geometry, Stage2PageTable, Stats, geometry, pte_prot
from .translate import FSC_NONE, TRANSLATE_DTYPE, Access, Fault, Translation
from .variants import LeafRun, OutcomeDiff, Strategy, compare_outcomes
from .strategy import CustomStrategy

__all__ = [
    "Stage2PageTable", "MemCache", "Stats", "Geometry", "geometry", "pte_prot",
    "WalkFlags", "Prot", "RW", "RWX", "VisitCtx", "BuiltinVisitor", "CountVisitor", "CollectVisitor",
    "CorruptTableError", "InsufficientMemoryError", "OutsideMemoryError", "ReadOnlyTableError", "PhysMemReadError",
    "PhysMem", "Segment", "describe", "Descriptor", "DumpRun", "dump_runs", "format_dump",
    "Access", "Fault", "Translation", "TRANSLATE_DTYPE", "FSC_NONE", "Strategy", "CustomStrategy", "compare_outcomes", "OutcomeDiff", "LeafRun",
    "SKIP_CHILDREN", "SKIP_SIBLINGS", "TLBI_TTL_UNKNOWN", "ERRNO_NAMES",
    "EPERM", "ENOENT", "E2BIG", "EAGAIN", "ENOMEM", "EFAULT", "EBUSY", "EEXIST", "EINVAL", "ERANGE",
]
__version__ = "0.1.0"
from .comparison import Comparison, compare
from .memslot import Backing, Memslot
from .mmu import VM
from .presets import PRESETS, Preset, PresetResult, run_preset
from .sizes import parse_size
from .variants import TableDiff, diff_tables
from .workload import RunResult, Workload
from . import vm  # noqa: F401  (s2fast.vm: the workload layer's names under their old module)

from .sweeps import sweep  # noqa: E402  (pandas and the rest load when a sweep runs)

__all__ += ["sweep", "VM", "Memslot", "Backing", "Workload", "RunResult", "Comparison", "TableDiff", "Preset",
            "PresetResult", "PRESETS", "compare", "run_preset", "diff_tables", "parse_size"]
