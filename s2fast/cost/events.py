"""The cost events: every thing the measured paths do that takes time.

Each event is derived exactly from the counts a run already keeps (the
engine's ``Stats`` plus ``entries_written``/``cmpxchg``, and the VM's mmu.c
counters, see ``s2fast.vm.COUNTERS``), so events are as exact and
deterministic as the counts. ``EVENTS`` is the one registry: name -> what
it is, the kernel function that incurs it, and how it is derived.

The paths are dirty-tracking enable (kvm_mmu_wp_memory_region() then
kvm_mmu_split_memory_region()), KVM_CLEAR_DIRTY_LOG (per mask word:
kvm_arch_mmu_enable_log_dirty_pt_masked(): write-protect then split the
word's range) and guest write faults (user_mem_abort())."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Event:
    name: str
    meaning: str
    kernel: str
    derive: Callable[[Mapping[str, int]], int]


def _sum(*keys: str) -> Callable[[Mapping[str, int]], int]:
    return lambda c: sum(int(c.get(k, 0)) for k in keys)


_FAULTS = ("faults_perm", "faults_perm_block", "faults_translation")

EVENTS: dict[str, Event] = {e.name: e for e in (
    Event("entry_visit", "a descriptor read on the way down (first visit of an entry, table or leaf)",
          "__kvm_pgtable_visit (READ_ONCE(*ptep))", _sum("visits")),
    Event("entry_reload", "the re-read of an entry after its callback (hot in L1)",
          "__kvm_pgtable_visit (reload)", _sum("reloads")),
    Event("callback_leaf", "an indirect call of the visitor for a leaf",
          "kvm_pgtable_visitor_cb (LEAF)", _sum("callbacks_leaf")),
    Event("callback_table", "an indirect call of the visitor for a table (pre or post order)",
          "kvm_pgtable_visitor_cb (TABLE_PRE/POST)", _sum("callbacks_table_pre", "callbacks_table_post")),
    Event("entry_written", "a descriptor store (WRITE_ONCE, or a cmpxchg that succeeded)",
          "stage2_try_set_pte / stage2_make_pte / stage2_attr_walker", _sum("entries_written")),
    Event("cmpxchg", "a cmpxchg attempt on a shared (fault-path) walk",
          "stage2_try_set_pte (shared)", _sum("cmpxchg")),
    Event("walk_call", "one walk from the root: a write-protect piece, a split chunk or a fault",
          "kvm_pgtable_walk (stage2_apply_range pieces, kvm_pgtable_stage2_split, user_mem_abort)",
          _sum("wp_calls", "split_calls", *_FAULTS)),
    Event("tlbi_ipa", "a TLBI by IPA and its DSB (break-before-make of a block, relaxed permissions)",
          "kvm_tlb_flush_vmid_ipa / __kvm_tlb_flush_vmid_ipa_nsh", _sum("tlbi_vmid_ipa", "tlbi_vmid_ipa_nsh")),
    Event("tlbi_vmid", "a whole-VMID TLB flush and its DSB",
          "kvm_flush_remote_tlbs_memslot / __kvm_tlb_flush_vmid", _sum("tlbi_vmid", "mmu_tlbi_vmid")),
    Event("tlbi_range", "a range TLBI (FEAT_TLBIRANGE) and its DSB",
          "kvm_tlb_flush_vmid_range", _sum("tlbi_vmid_range", "mmu_tlbi_vmid_range")),
    Event("cmo_call", "a cache maintenance call (D-cache clean+inval to PoC or I-cache inval to PoU)",
          "dcache_clean_inval_poc / icache_inval_pou", _sum("cmo_calls")),
    Event("cmo_byte", "a byte of cache maintenance", "dcache_clean_inval_poc / icache_inval_pou",
          _sum("cmo_bytes")),
    Event("memcache_page", "a table page taken from a memory cache", "kvm_mmu_memory_cache_alloc (mm_ops->zalloc_page)",
          _sum("mc_used")),
    Event("page_free", "a table page given back", "mm_ops->put_page / free_page", _sum("pages_free")),
    Event("topup_call", "a memory-cache top-up (split cache: with mmu_lock dropped)",
          "__kvm_mmu_topup_memory_cache", _sum("split_cache_topups", "vcpu_cache_topups")),
    Event("topup_page", "a page from the page allocator, zeroed (__GFP_ZERO), into a memory cache",
          "__kvm_mmu_topup_memory_cache -> __get_free_page", _sum("split_cache_topup_pages", "vcpu_cache_topup_pages")),
    Event("lock_drop", "write_unlock + cond_resched + write_lock of mmu_lock between split chunks",
          "kvm_mmu_split_huge_pages (need_split_memcache_topup_or_resched)", _sum("split_cache_topups")),
    Event("mask_word", "one 64-page bitmap word with bits to clear",
          "kvm_arch_mmu_enable_log_dirty_pt_masked", _sum("mask_words")),
    Event("bitmap_byte", "a byte of the dirty bitmap scanned by CLEAR", "kvm_clear_dirty_log_protect",
          _sum("dirty_bitmap_bytes")),
    Event("fault", "a guest write fault handled by KVM (exit, handler, re-entry)", "user_mem_abort",
          _sum(*_FAULTS)),
)}

EVENT_NAMES: tuple[str, ...] = tuple(EVENTS)


def events(counts: Mapping[str, int]) -> dict[str, int]:
    """Every event of ``EVENTS`` from one count dict (a ``Phase.counts``,
    ``RunResult.totals`` or ``VM.snapshot()`` difference)."""
    return {name: e.derive(counts) for name, e in EVENTS.items()}


def describe_events() -> str:
    """The registry as a plain-text table."""
    w = max(len(n) for n in EVENTS)
    return "\n".join(f"{n.ljust(w)}  {e.meaning} [{e.kernel}]" for n, e in EVENTS.items())
