# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Event counters as Python: the WARN sites' texts, the statistics dict, and
the TLB range-flush chunking shared with the mmu.c model (s2fast.vm)."""

from ._types cimport LEVEL_UNINIT, MAX_TLBI_RANGE_PAGES

WARN_SITES = (
    "kvm_mmu_memory_cache_alloc:0 WARN_ON(!mc->nobjs)",
    "pgtable.c:stage2_try_break_pte WARN_ON(!kvm_pgtable_walk_shared(ctx))",
    "pgtable.c:stage2_make_pte WARN_ON(!stage2_pte_is_locked(*ctx->ptep))",
    "pgtable.c:stage2_map_walker_try_leaf WARN_ON_ONCE(!stage2_try_set_pte(ctx, new))",
    "pgtable.c:stage2_map_walk_leaf WARN_ON(ctx->level == KVM_PGTABLE_LAST_LEVEL)",
    "pgtable.c:kvm_pgtable_stage2_test_clear_young WARN_ON(kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_destroy_range WARN_ON(kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_free_unlinked WARN_ON(__kvm_pgtable_walk(...))",
    "pgtable.c:kvm_pgtable_stage2_free_unlinked WARN_ON(mm_ops->page_count(pgtable) != 1)",
    "pgtable.c:__kvm_pgtable_walk WARN_ON_ONCE(level < KVM_PGTABLE_FIRST_LEVEL || level > KVM_PGTABLE_LAST_LEVEL)",
    "pgtable.c:stage2_block_get_nr_page_tables WARN_ON_ONCE(level < KVM_PGTABLE_MIN_BLOCK_LEVEL || level > KVM_PGTABLE_LAST_LEVEL)",
)


cdef void tlb_flush_vmid_range(Counters *c, bint tlb_range, int page_shift, u64 addr,
                               u64 size) noexcept nogil:
    # kvm_tlb_flush_vmid_range(): a range TLBI in chunks of at most
    # MAX_TLBI_RANGE_PAGES when the CPU has them, otherwise one flush of the
    # whole VMID.
    cdef u64 pages, inval
    if not tlb_range:
        c.tlbi_vmid += 1
        log_tlbi(c, TLBI_VMID, 0, 0)
        return
    pages = size >> page_shift
    while pages > 0:
        inval = pages if pages < MAX_TLBI_RANGE_PAGES else MAX_TLBI_RANGE_PAGES
        c.tlbi_range += 1
        c.tlbi_range_pages += inval
        log_tlbi(c, TLBI_RANGE, addr, <s64>inval)
        addr += inval << page_shift
        pages -= inval


def tlb_flush_vmid_range_counts(u64 addr, u64 size, int page_shift, bint tlb_range):
    """kvm_tlb_flush_vmid_range() of [addr, addr + size) with pages of
    2**page_shift bytes: the TLBIs it issues, as (whole-VMID flushes, range
    TLBIs, pages those range TLBIs cover)."""
    cdef Counters c
    if not 12 <= page_shift <= 16:
        raise ValueError(f"page_shift {page_shift} is outside 12..16")
    c.tlbi_vmid = c.tlbi_range = c.tlbi_range_pages = 0
    c.tlbi_log_total = 0
    c.tlbi_log_n = 0
    tlb_flush_vmid_range(&c, tlb_range, page_shift, addr, size)
    return c.tlbi_vmid, c.tlbi_range, c.tlbi_range_pages


cdef dict counters_dict(const Counters *c, u64 pages_live):
    cdef int lv, i
    d = {
        "visits": c.visits,
        "reloads": c.reloads,
        "entries_read": c.visits + c.reloads,
        "callbacks_leaf": c.cb_leaf,
        "callbacks_table_pre": c.cb_pre,
        "callbacks_table_post": c.cb_post,
    }
    for lv in range(4):
        d[f"callbacks_level_{lv}"] = c.cb_level[lv + 1]
    d.update({
        "tlbi_vmid_ipa": c.tlbi_ipa,
        "tlbi_vmid_ipa_nsh": c.tlbi_ipa_nsh,
        "tlbi_vmid_range": c.tlbi_range,
        "tlbi_vmid": c.tlbi_vmid,
        "tlbi_range_pages": c.tlbi_range_pages,
        "cmo_calls": c.dcache_calls + c.icache_calls,
        "cmo_bytes": c.dcache_bytes + c.icache_bytes,
        "dcache_calls": c.dcache_calls,
        "dcache_bytes": c.dcache_bytes,
        "icache_calls": c.icache_calls,
        "icache_bytes": c.icache_bytes,
        "pages_alloc": c.pages_alloc,
        "pages_free": c.pages_free,
        "pages_live": pages_live,
        "mc_used": c.mc_used,
        "mc_exhausted": c.mc_exhausted,
        "unlinked_tables_freed": c.unlinked_freed,
        "warnings": c.warnings,
        "tlbi_log_total": c.tlbi_log_total,
        "cmo_log_total": c.cmo_log_total,
    })
    names = ("vmid_ipa", "vmid_ipa_nsh", "vmid_range", "vmid")
    d["tlbi_log"] = [(names[c.tlbi_log[i].kind], c.tlbi_log[i].a,
                      None if c.tlbi_log[i].b == LEVEL_UNINIT else c.tlbi_log[i].b)
                     for i in range(c.tlbi_log_n)]
    d["cmo_log"] = [("dcache" if c.cmo_log[i].kind == CMO_DCACHE else "icache",
                     c.cmo_log[i].a, <u64>c.cmo_log[i].b) for i in range(c.cmo_log_n)]
    d["warning_sites"] = [WARN_SITES[c.warn_log[i]] for i in range(c.warn_log_n)]
    return d
