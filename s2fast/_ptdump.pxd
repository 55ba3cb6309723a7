# cython: language_level=3
# Whole-table views (arch/arm64/kvm/ptdump.c's role): read every table
# without the walker and without counting events.

from ._types cimport u64, PT

cdef u64 count_table_pages(PT *pt) except? 0
cdef object collect_entries(PT *pt, bint valid, bint skip_unreadable)
cdef object table_view(PT *pt, u64 pa, u64 entries, object owner)
