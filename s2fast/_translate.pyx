# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Architectural translation: what the MMU's stage-2 walk does with the same
tables (not KVM's software walker; the role of the kernel's nested.c and
at.c walkers). Tables are read through mm_ops, so an image's tables
translate in place."""

from libc.string cimport memset

import numpy as np
cimport numpy as cnp

from ._types cimport (Geom, Gran, G4K, G16K, G64K, LAST_LEVEL, MM_POOL, PTE_VALID, S2AP_R, S2AP_W, S2_AF,
                      g_level_shift, g_table_shift, g_page_shift, g_ptrs, g_pte_to_phys)
from ._mm cimport Mm, MM_POOL_TAG, MM_OTHER, MM_ANY, mm_table, mm_phys_to_virt

cnp.import_array()

cdef extern from *:
    void __builtin_prefetch(const void *addr) nogil

cdef unsigned char FSC_BASE[6]
FSC_BASE[:] = [0xFF, 0x04, 0x00, 0x08, 0x0C, 0x14]

TRANSLATE_DTYPE = np.dtype([
    ("ipa", "<u8"), ("ok", "?"), ("pa", "<u8"), ("level", "i1"), ("block_size", "<u8"),
    ("desc", "<u8"), ("readable", "?"), ("writable", "?"), ("exec_el1", "?"), ("exec_el0", "?"),
    ("fault", "u1"), ("fault_level", "i1"), ("fsc", "u1"), ("af_updated", "?")], align=True)
assert TRANSLATE_DTYPE.itemsize == sizeof(TRow)

cdef inline bint oa_too_big(Gran *t, PT *pt, u64 desc) noexcept nogil:
    # The output (or next-table) address, 52-bit with 64 KiB, against PS.
    cdef u64 oa = g_pte_to_phys(t, desc)
    return pt.ps_bits < 52 and (oa >> pt.ps_bits) != 0

cdef inline bint arch_block_ok(Gran *t, PT *pt, int level) noexcept nogil:
    # A 64 KiB level-1 block (4 TiB) is valid on a CPU with 52-bit PAs
    # (FEAT_LPA); a table used with PS = 52 says the CPU has them.
    if g_page_shift(t) == 16 and level == 1 and pt.ps_bits == 52:
        return True
    return level >= pt.g.min_block_level

cdef inline void t_fault(TRow *r, int kind, int level) noexcept nogil:
    r.fault = kind
    r.fault_level = level
    r.level = level
    r.fsc = FSC_BASE[kind] + level

cdef void translate_one(Gran *t, const Mm *b, PT *pt, TCfg *cfg, u64 ipa, TRow *r) noexcept nogil:
    cdef int level = pt.g.start_level
    cdef int shift
    cdef u64 idx, desc = 0, bs, xn, tpa
    cdef u64 *table
    cdef u64 *entry
    cdef bint allowed
    memset(r, 0, sizeof(TRow))
    r.ipa = ipa
    r.fault_level = -1
    r.fsc = FSC_NONE
    if pt.g.ia_bits < 64 and (ipa >> pt.g.ia_bits) != 0:
        t_fault(r, FAULT_TRANSLATION, 0)
        return
    if cfg.root_too_big:
        # The architecture reports a base address beyond PS at level 0 (FSC
        # 0x00, "level 0 or translation table base register"), whatever the
        # start level; the kernel's nested walker reports the start level.
        t_fault(r, FAULT_ADDRESS_SIZE, 0)
        return
    shift = g_level_shift(t, level)
    if cfg.cached and (ipa >> (g_level_shift(t, cfg.c_level) + g_table_shift(t))) == cfg.c_tag:
        level = cfg.c_level
        table = cfg.c_table
        tpa = cfg.c_tpa
        desc = cfg.c_desc
        r.desc = desc
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    else:
        # The start level indexes the concatenated root pages as one table.
        idx = ipa >> shift if shift < 64 else 0
        table = pt.pgd[idx >> g_table_shift(t)]
        tpa = pt.root_pa + ((idx >> g_table_shift(t)) << g_page_shift(t))
        idx &= g_ptrs(t) - 1
    while True:
        cfg.cached = True
        cfg.c_level = level
        cfg.c_tag = ipa >> (shift + g_table_shift(t)) if shift + g_table_shift(t) < 64 else 0
        cfg.c_table = table
        cfg.c_tpa = tpa
        cfg.c_desc = desc
        if table != NULL:
            entry = table + idx
        else:
            # The page is not wholly in memory: the MMU reads one descriptor,
            # which may still be there (an image cut short).
            entry = mm_phys_to_virt(b, pt, tpa + idx * 8, 8)
        if entry == NULL:
            t_fault(r, FAULT_EXTERNAL, level)
            return
        desc = entry[0]
        r.desc = desc
        if not (desc & PTE_VALID) or (level == LAST_LEVEL and (desc & 3) == 1):
            t_fault(r, FAULT_TRANSLATION, level)
            return
        if level == LAST_LEVEL or (desc & 3) == 1:
            break
        if oa_too_big(t, pt, desc):
            t_fault(r, FAULT_ADDRESS_SIZE, level)
            return
        tpa = g_pte_to_phys(t, desc)
        table = mm_table(b, pt, tpa)
        level += 1
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    if not arch_block_ok(t, pt, level):
        t_fault(r, FAULT_TRANSLATION, level)
        return
    if oa_too_big(t, pt, desc):
        t_fault(r, FAULT_ADDRESS_SIZE, level)
        return
    r.level = level
    bs = (<u64>1) << shift
    r.block_size = bs
    r.pa = (g_pte_to_phys(t, desc) & ~(bs - 1)) | (ipa & (bs - 1))
    r.readable = (desc & S2AP_R) != 0
    r.writable = (desc & S2AP_W) != 0
    xn = (desc >> 53) & 3
    if cfg.xnx:
        r.exec_el1 = xn == 0 or xn == 3
        r.exec_el0 = xn == 0 or xn == 1
    else:
        r.exec_el1 = (xn & 2) == 0
        r.exec_el0 = (xn & 2) == 0
    if not (desc & S2_AF) and not cfg.ha:
        t_fault(r, FAULT_ACCESS_FLAG, level)
        return
    if cfg.access == ACCESS_READ:
        allowed = r.readable
    elif cfg.access == ACCESS_WRITE:
        allowed = r.writable
    elif cfg.access == ACCESS_EXEC_EL1:
        allowed = r.exec_el1
    else:
        allowed = r.exec_el0
    if not allowed:
        t_fault(r, FAULT_PERMISSION, level)
        return
    if not (desc & S2_AF):
        # Hardware AF update (cfg.ha, else the AF fault above): only for an
        # access that does not fault, and the TLB holds the updated entry.
        r.desc = desc | S2_AF
        r.af_updated = True
    r.ok = True

# A batch of scattered IPAs is bound by one cache miss each, on the
# last-level entry. The table descriptors above it are few and stay cached,
# so following them for an IPA some way ahead and prefetching its entry
# overlaps those misses.
cdef enum:
    PREFETCH_AHEAD = 12

cdef inline void prefetch_entry(Gran *t, const Mm *b, PT *pt, u64 ipa) noexcept nogil:
    cdef int level = pt.g.start_level
    cdef int shift = g_level_shift(t, level)
    cdef u64 idx, desc
    cdef u64 *table
    if pt.g.ia_bits < 64 and (ipa >> pt.g.ia_bits) != 0:
        return
    idx = ipa >> shift if shift < 64 else 0
    table = pt.pgd[idx >> g_table_shift(t)]
    idx &= g_ptrs(t) - 1
    while table != NULL and level < LAST_LEVEL:
        desc = table[idx]
        if (desc & 3) != 3:
            break
        table = mm_table(b, pt, g_pte_to_phys(t, desc))
        level += 1
        shift = g_level_shift(t, level)
        idx = (ipa >> shift) & (g_ptrs(t) - 1)
    if table != NULL:
        __builtin_prefetch(table + idx)

cdef void translate_all(Gran *t, const Mm *b, PT *pt, TCfg *cfg, const u64 *ipas, TRow *rows,
                        Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int tag_shift = g_level_shift(t, LAST_LEVEL) + g_table_shift(t)
    cdef u64 ahead, last_tag = <u64>-1
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            # Sequential IPAs stay in one last-level table for long runs and
            # hit the walk cache in translate_one(): no prefetch needed there.
            ahead = ipas[i + PREFETCH_AHEAD]
            if (ahead >> tag_shift) != last_tag:
                last_tag = ahead >> tag_shift
                prefetch_entry(t, b, pt, ahead)
        translate_one(t, b, pt, cfg, ipas[i], &rows[i])



cdef void tcfg_init(PT *pt, TCfg *cfg, int access, bint ha, bint xnx) noexcept nogil:
    memset(cfg, 0, sizeof(TCfg))
    cfg.access = access
    cfg.ha = ha
    cfg.xnx = xnx
    cfg.root_too_big = pt.ps_bits < 52 and (pt.root_pa >> pt.ps_bits) != 0


cdef void translate_ipa(PT *pt, TCfg *cfg, u64 ipa, TRow *r) noexcept nogil:
    if pt.g.page_shift == 12:
        translate_one(<G4K *>NULL, MM_ANY, pt, cfg, ipa, r)
    elif pt.g.page_shift == 14:
        translate_one(<G16K *>NULL, MM_ANY, pt, cfg, ipa, r)
    else:
        translate_one(<G64K *>NULL, MM_ANY, pt, cfg, ipa, r)


cdef object translate_out(Py_ssize_t n, int access, object out):
    """The result array: out when it fits, else a fresh one. translate_batch()
    explains a bad out in detail; the check here only keeps the C loop inside
    the buffer for any caller of the core."""
    if not 0 <= access <= 3:
        raise ValueError(f"access {access} is outside 0..3")
    if out is None:
        return np.empty(n, dtype=TRANSLATE_DTYPE)
    if not (isinstance(out, np.ndarray) and out.dtype == TRANSLATE_DTYPE and out.shape == (n,)
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writable C-contiguous TRANSLATE_DTYPE array of len(ipas) rows")
    return out


cdef void translate_ipas(PT *pt, int access, bint ha, bint xnx, const u64 *ipas, object out,
                         Py_ssize_t n) noexcept:
    """Translate n IPAs into out's rows, with the GIL released."""
    cdef TCfg cfg
    cdef TRow *rows = <TRow *>cnp.PyArray_DATA(out)
    tcfg_init(pt, &cfg, access, ha, xnx)
    with nogil:
        if pt.mm_kind == MM_POOL:
            translate_granule(MM_POOL_TAG, pt, &cfg, ipas, rows, n)
        else:
            translate_granule(MM_OTHER, pt, &cfg, ipas, rows, n)


cdef void translate_granule(const Mm *b, PT *pt, TCfg *cfg, const u64 *ipas, TRow *rows,
                            Py_ssize_t n) noexcept nogil:
    if pt.g.page_shift == 12:
        translate_all(<G4K *>NULL, b, pt, cfg, ipas, rows, n)
    elif pt.g.page_shift == 14:
        translate_all(<G16K *>NULL, b, pt, cfg, ipas, rows, n)
    else:
        translate_all(<G64K *>NULL, b, pt, cfg, ipas, rows, n)
