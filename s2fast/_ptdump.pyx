# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Whole-table views: the table pages reachable from the root, and every
leaf (or non-zero invalid entry) in IPA order. They read the tables through
mm_ops like the walker, but count nothing: they are views, not operations.
The caller (the core) holds the table busy."""

from cpython.ref cimport Py_INCREF
from libc.string cimport memset

cimport numpy as cnp

from ._types cimport (root_entries_in_ia, ERR_NONE, ERR_OUTSIDE, LAST_LEVEL, PTE_VALID, set_error, pte_table,
                      g_level_shift, g_pte_to_phys)
from ._mm cimport MM_ANY, mm_table, mm_phys_to_virt
from ._visitors cimport CollectData, collect_push, collected_array, collect_free

cnp.import_array()


cdef object table_view(PT *pt, u64 pa, u64 entries, object owner):
    """A read-only uint64 view of the table page at pa, or None when no table
    page is there; it keeps owner alive. entries (read-only backends only):
    just that many entries, at 8-byte alignment (a root smaller than a page)."""
    cdef u64 *t
    cdef cnp.npy_intp dims[1]
    if entries and not pt.mm_ops.writable:
        if entries > pt.g.ptrs:
            raise ValueError(f"entries {entries} is more than a table holds")
        t = mm_phys_to_virt(MM_ANY, pt, pa, entries * 8)
    else:
        t = mm_table(MM_ANY, pt, pa)
        entries = pt.g.ptrs
    if t == NULL:
        return None
    dims[0] = <cnp.npy_intp>entries
    arr = cnp.PyArray_SimpleNewFromData(1, dims, cnp.NPY_UINT64, <void *>t)
    Py_INCREF(owner)
    cnp.PyArray_SetBaseObject(arr, owner)
    arr.flags.writeable = False
    return arr


cdef u64 count_tables(PT *pt, u64 *table, int level, dict seen, u64 count) except? 0:
    # seen[pa]: bit 7 once counted; bit L+1 once walked as a level-L table (a
    # visitor may alias a page at several levels). count: entries of this
    # table to read.
    cdef u64 i, n = 0, pte, pa
    cdef u64 *child
    cdef int bits, bit = 1 << (level + 2)
    if level >= LAST_LEVEL:
        return 0
    for i in range(count):
        pte = table[i]
        if pte_table(pte, level):
            pa = g_pte_to_phys(&pt.g, pte)
            child = mm_table(MM_ANY, pt, pa)
            if child == NULL:
                continue
            bits = seen.get(pa, 0)
            if not (bits & 0x80):
                n += 1
            seen[pa] = bits | 0x80 | bit
            if not (bits & bit):
                n += count_tables(pt, child, level + 1, seen, pt.g.ptrs)
    return n


cdef u64 count_table_pages(PT *pt) except? 0:
    """Distinct pages reachable from the root, root pages included."""
    cdef u64 i, n = 0
    cdef dict seen = {}
    if not pt.has_pgd:
        return 0
    for i in range(pt.g.pgd_pages):
        if pt.pgd[i] != NULL:
            seen[pt.root_pa + (i << pt.g.page_shift)] = 0x80 | (1 << (pt.g.start_level + 1))
            n += 1
    for i in range(pt.g.pgd_pages):
        if pt.pgd[i] != NULL:
            n += count_tables(pt, pt.pgd[i], pt.g.start_level, seen, pt.root_len)
    return n


cdef void collect(PT *pt, CollectData *data, u64 *table, int level, u64 ipa, bint valid,
                  u64 count) noexcept nogil:
    # count: entries of this table inside the IPA space (a root page of an
    # image may be only partly used).
    cdef u64 i, pte
    cdef u64 *child
    cdef int shift = g_level_shift(&pt.g, level)
    for i in range(count):
        pte = table[i]
        if pte == 0:
            continue
        if pte_table(pte, level):
            child = mm_table(MM_ANY, pt, g_pte_to_phys(&pt.g, pte))
            if child != NULL:
                collect(pt, data, child, level + 1, ipa + (i << shift), valid, pt.g.ptrs)
            elif not pt.mm_ops.writable:
                set_error(pt, ERR_OUTSIDE, ipa + (i << shift), level, pte)
        elif (pte & PTE_VALID) == valid:
            collect_push(data, ipa + (i << shift), level, pte)


cdef object collect_entries(PT *pt, bint valid, bint skip_unreadable):
    """Every valid leaf (valid=True) or every non-zero invalid entry
    (valid=False), in IPA order, as a LEAF_DTYPE array. In an image, a table
    outside memory raises OutsideMemoryError unless skip_unreadable (pool
    tables skip corrupt descriptors, which walks report)."""
    cdef CollectData data
    cdef u64 i
    cdef int sl = pt.g.start_level
    cdef u64 span = g_level_size_of(pt, sl)
    memset(&data, 0, sizeof(CollectData))
    pt.err_kind = ERR_NONE
    try:
        if not pt.mm_ops.writable and not skip_unreadable:
            for i in range(pt.g.pgd_pages):
                if pt.pgd[i] == NULL:
                    from .errors import OutsideMemoryError
                    raise OutsideMemoryError(i * span, sl, pt.root_pa + (i << pt.g.page_shift))
        if pt.has_pgd:
            with nogil:
                for i in range(pt.g.pgd_pages):
                    if pt.pgd[i] != NULL:
                        collect(pt, &data, pt.pgd[i], sl, i * span, valid, root_entries_in_ia(&pt.g))
        if pt.err_kind == ERR_OUTSIDE:
            pt.err_kind = ERR_NONE
            if not skip_unreadable:
                from .errors import OutsideMemoryError
                raise OutsideMemoryError(pt.err_ipa, pt.err_level, pt.err_desc)
        if data.failed:
            raise MemoryError("out of memory collecting leaves")
        return collected_array(&data)
    finally:
        collect_free(&data)


cdef inline u64 g_level_size_of(PT *pt, int level) noexcept nogil:
    # What one root page spans.
    return (<u64>1) << (g_level_shift(&pt.g, level) + pt.g.table_shift)
