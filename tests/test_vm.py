"""The workload layer (s2fast.vm): mmu.c's dirty-logging sequences on small
guests, with every count checked against a closed form in P = PTRS_PER_PTE
(512) and the guest size."""
import json

import numpy as np
import pytest

import s2fast
from s2fast import (PRESETS, VM, Backing, MemCache, Stage2PageTable, Strategy, Workload, compare,
                    diff_tables, parse_size, run_preset)
from s2fast.vm import (MAX_TLBI_RANGE_PAGES, PHYS_OFFSET, VCPU_CACHE_CAPACITY, pattern_pages,
                       split_nr_page_tables, summarize)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
P = 512                      # entries per table (4 KiB granule)
WORD = 64 * 4096             # bytes one dirty-bitmap word covers
WORDS_PER_GIB = GiB // WORD  # 4096
ALL = list(Strategy)
NOT_KERNEL = [s for s in Strategy if s is not Strategy.KERNEL]


def delta(vm, fn, *args, **kw):
    before = vm.snapshot()
    ret = fn(*args, **kw)
    after = vm.snapshot()
    return ret, {k: v - before[k] for k, v in after.items() if k != "pages_live"}


def vm_with(size, backing, **kw):
    vm = VM(**kw)
    slot = vm.add_memslot(size, backing)
    return vm, slot


def split_walk_cost(strategy, last_level_entries):
    """(visits, reloads, callbacks) of one split walk over a range inside
    one 2 MiB region of already-split memory (level-1 and level-2 table
    entries above ``last_level_entries`` pages)."""
    if strategy is Strategy.KERNEL:
        return 2 + last_level_entries, last_level_entries, last_level_entries
    if strategy is Strategy.SKIP_RETURN:
        return 2, 2, 2          # TABLE_PRE on both tables; SKIP_CHILDREN at level 2
    return 2, 0, 0              # level 3 never entered


# -- building ------------------------------------------------------------------------

@pytest.mark.parametrize("backing,levels", [("1g", {1: 3}), ("2m", {2: 3 * P}), ("4k", {3: 3 * P * P})])
def test_build_pure_backings(backing, levels):
    vm, slot = vm_with(3 * GiB, backing)
    leaves = vm.pt.leaves()
    assert dict(zip(*np.unique(leaves["level"], return_counts=True))) == levels
    assert leaves["ipa"][0] == slot.base == GiB
    # every leaf writable, and each page's host address is PHYS_OFFSET + IPA (+2 MiB for THP)
    assert np.all(leaves["pte"] & (1 << 7))
    pa = leaves["pte"] & np.uint64(((1 << 48) - 1) & ~0xFFF)
    shift = 2 * MiB if backing == "2m" else 0
    assert np.array_equal(pa, leaves["ipa"] + np.uint64(PHYS_OFFSET + shift))
    assert slot.block_counts() == {"1g": levels.get(1, 0), "2m": levels.get(2, 0), "4k": levels.get(3, 0)}


def test_build_mix_by_percentage_is_exact_and_seeded():
    spec = "mix:1g=50,2m=25,4k=25"
    units = 8 * GiB // (2 * MiB)                   # 4096 units of 2 MiB
    vm, slot = vm_with(8 * GiB, spec)
    n1g, n4k_units = round(0.5 * units / P), round(0.25 * units)
    n2m = units - n1g * P - n4k_units
    assert slot.block_counts() == {"1g": n1g, "2m": n2m, "4k": n4k_units * P}
    counts = dict(zip(*np.unique(vm.pt.leaves()["level"], return_counts=True)))
    assert counts == {1: n1g, 2: n2m, 3: n4k_units * P}
    # the same seed places them the same; another seed elsewhere
    again = VM().add_memslot(8 * GiB, spec)
    other = VM().add_memslot(8 * GiB, spec, seed=7)
    assert np.array_equal(slot.kinds, again.kinds)
    assert not np.array_equal(slot.kinds, other.kinds)
    assert other.block_counts() == slot.block_counts()


def test_build_1g_falls_back_to_2m_where_no_aligned_gib_fits():
    vm = VM()
    slot = vm.add_memslot(2 * GiB, "1g", base=GiB + 512 * MiB)   # only [2 GiB, 3 GiB) is whole and aligned
    assert slot.block_counts() == {"1g": 1, "2m": P, "4k": 0}
    assert sorted(set(vm.pt.leaves()["level"].tolist())) == [1, 2]


def test_backing_parse():
    assert Backing.parse("hugetlb") == Backing.parse("1g") == Backing(100, 0, 0)
    assert Backing.parse("THP") == Backing(0, 100, 0)
    assert Backing.parse({"4k": 60, "2m": 40}) == Backing(0, 40, 60)
    assert str(Backing.parse("mix:1g=10,4k=90")) == "mix:1g=10,4k=90"
    with pytest.raises(ValueError, match="add up to 90"):
        Backing.parse("mix:1g=50,4k=40")
    with pytest.raises(ValueError, match="'8m'"):
        Backing.parse("mix:8m=100")
    with pytest.raises(ValueError, match="'5g'"):
        Backing.parse("5g")
    with pytest.raises(TypeError, match="backing must be a string"):
        Backing.parse(3)


def test_memslot_bad_input():
    vm = VM()
    vm.add_memslot(2 * GiB, "1g")
    with pytest.raises(ValueError, match="overlaps memslot 0"):
        vm.add_memslot(GiB, "1g", base=2 * GiB)
    with pytest.raises(ValueError, match="multiple of 2 MiB"):
        vm.add_memslot(3 * MiB, "4k")
    with pytest.raises(ValueError, match="not 2 MiB aligned"):
        vm.add_memslot(2 * MiB, "4k", base=10 * GiB + 4096)
    with pytest.raises(ValueError, match="does not fit a 40-bit"):
        vm.add_memslot(2 * GiB, "1g", base=(1 << 40) - GiB)
    with pytest.raises(ValueError, match="size 'lots'"):
        vm.add_memslot("lots")
    with pytest.raises(ValueError, match="eager-split chunk 3145728"):
        VM(eager_split_chunk=3 * MiB)
    with pytest.raises(ValueError, match="'fastest' is not one of KERNEL"):
        VM(strategy="fastest")
    with pytest.raises(TypeError, match="strategy must be"):
        VM(strategy=3)
    with pytest.raises(TypeError, match="initially_set must be a bool"):
        VM(initially_set="yes")
    # a second slot goes after the first by default
    s = vm.add_memslot(2 * MiB, "4k")
    assert s.base == 3 * GiB and vm.slot_of(3 * GiB) is s and vm.slot_of(0) is None


def test_parse_size():
    assert parse_size("64G") == parse_size("64GiB") == parse_size("64 gb") == 64 * GiB
    assert parse_size("2m") == 2 * MiB and parse_size("4K") == 4096 and parse_size("0") == 0
    assert parse_size(12345) == 12345
    with pytest.raises(ValueError, match="'1.5G'"):
        parse_size("1.5G")
    with pytest.raises(TypeError):
        parse_size(True)


def test_split_nr_page_tables():
    # kvm_mmu_split_nr_page_tables(): one per 1 GiB and one per 2 MiB the chunk touches
    assert split_nr_page_tables(4096) == 1 + 1
    assert split_nr_page_tables(2 * MiB) == 1 + 1
    assert split_nr_page_tables(GiB) == 1 + P
    assert split_nr_page_tables(0) == 0


# -- the hardware walk ------------------------------------------------------------------

def test_translate_reads_descriptors_without_counting():
    vm, slot = vm_with(2 * GiB, "mix:1g=50,4k=50")
    ipas = (slot.base, slot.base + GiB + 12345 * 4096, slot.base + 2 * GiB - 4096, 0)
    expect = []
    for ipa in ipas:
        ret, pte, level = vm.pt.get_leaf(ipa)
        expect.append((level, pte if ret == 0 and pte & 1 else 0))
    before = vm.snapshot()
    assert [vm.translate(ipa) for ipa in ipas] == expect
    assert expect[-1] == (1, 0) and {lv for lv, _ in expect[:3]} == {1, 3}
    assert vm.snapshot() == before


# -- enabling dirty logging ------------------------------------------------------------------

def test_enable_initially_set_does_nothing_but_fill_the_bitmap():
    vm, slot = vm_with(2 * GiB + 2 * MiB, "1g", eager_split_chunk=2 * MiB, initially_set=True)
    _, d = delta(vm, vm.enable_dirty_logging)
    assert all(v == 0 for v in d.values())
    assert slot.dirty_pages() == slot.npages == (2 * GiB + 2 * MiB) // 4096
    with pytest.raises(ValueError, match="already logging"):
        vm.enable_dirty_logging(slot)


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_enable_eager_split_of_already_split_memory(strategy):
    """Without initially-all-set: kvm_mmu_wp_memory_region() (one wrprotect
    per GiB, then one remote flush), then kvm_mmu_split_huge_pages() in 2 MiB
    chunks over pages: nothing to split, but KERNEL re-reads every page."""
    n = 2
    vm, slot = vm_with(n * GiB, "4k", strategy=strategy, eager_split_chunk=2 * MiB, initially_set=False)
    _, d = delta(vm, vm.enable_dirty_logging)
    chunks = n * GiB // (2 * MiB)
    sv, sr, sc = split_walk_cost(strategy, P)
    assert d["wp_calls"] == n and d["mmu_tlbi_vmid"] == 1
    assert d["split_calls"] == chunks and d["split_cache_topups"] == 1 and d["split_cache_topup_pages"] == 2
    assert d["visits"] == n * (1 + P + P * P) + chunks * sv
    assert d["reloads"] == n * P * P + chunks * sr
    assert d["entries_read"] == d["visits"] + d["reloads"]
    assert d["callbacks_leaf"] + d["callbacks_table_pre"] == n * P * P + chunks * sc
    assert d["pages_alloc"] == d["tlbi_vmid_ipa"] == d["cmo_calls"] == 0
    assert slot.dirty_pages() == 0
    assert not np.any(vm.pt.leaves()["pte"] & (1 << 7))      # all write-protected


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_enable_eager_split_1g_blocks_chunk_1g(strategy):
    """A 1 GiB chunk tops the cache up to 1 + P pages: each block takes the
    full path (create_unlinked builds its whole subtree)."""
    n = 2
    vm, slot = vm_with(n * GiB, "1g", strategy=strategy, eager_split_chunk=GiB, initially_set=False)
    _, d = delta(vm, vm.enable_dirty_logging)
    outer = {Strategy.KERNEL: 1 + P + P * P, Strategy.SKIP_RETURN: 1,
             Strategy.SKIP_LEVEL_NEW_TABLE: 1}.get(strategy, 1 + P)
    wp = 1                                           # one block entry per GiB
    assert d["visits"] == n * (wp + outer + P + P * P)
    assert d["split_calls"] == n and d["split_cache_topups"] == n
    assert d["split_cache_topup_pages"] == n * (1 + P) == d["pages_alloc"] == d["mc_used"]
    assert d["tlbi_vmid_ipa"] == n and d["mmu_tlbi_vmid"] == 1
    assert set(vm.pt.leaves()["level"].tolist()) == {3}


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_enable_eager_split_1g_blocks_chunk_2m(strategy):
    """A 2 MiB chunk gives the cache 2 pages: a block takes the one-page path
    (a table of 2 MiB blocks). KERNEL walks into it and splits the chunk's
    block; SKIP_LEVEL_NEW_TABLE does not, leaving the first 2 MiB of every
    GiB unsplit - and write-protected."""
    n = 2
    vm, slot = vm_with(n * GiB, "1g", strategy=strategy, eager_split_chunk=2 * MiB, initially_set=False)
    _, d = delta(vm, vm.enable_dirty_logging)
    skipped = n if strategy is Strategy.SKIP_LEVEL_NEW_TABLE else 0
    assert d["split_calls"] == n * P
    assert d["pages_alloc"] == n * (1 + P) - skipped == d["tlbi_vmid_ipa"]
    # what was given to the cache was used or is still there
    assert d["split_cache_topup_pages"] == d["pages_alloc"] + vm.split_cache.nobjs
    levels = vm.pt.leaves()["level"]
    assert int((levels == 2).sum()) == skipped and int((levels == 3).sum()) == (n * P - skipped) * P
    assert not np.any(vm.pt.leaves()["pte"] & (1 << 7))
    kernel, _ = vm_with(n * GiB, "1g", eager_split_chunk=2 * MiB, initially_set=False)
    kernel.enable_dirty_logging()
    diff = diff_tables(kernel.pt, vm.pt)
    assert diff.identical == (skipped == 0)
    if skipped:
        assert diff.unsplit == {2: n} and diff.unmapped == {} and diff.changed == 0
        assert diff.describe() == f"differs: {n} x 2 MiB unsplit"


# -- CLEAR_DIRTY_LOG ---------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_clear_pass_over_already_split_memory(strategy):
    """The issue's closed form: one CLEAR pass over N GiB of already-split
    memory (initially-all-set) hands every 64-page word to the arch hook;
    KERNEL's split walk reads the word's 64 level-3 entries on top of the
    write-protect walk, the other strategies none."""
    n = 2
    vm, slot = vm_with(n * GiB, "4k", strategy=strategy, eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging()
    words, d = delta(vm, vm.clear_dirty_log)
    w = n * WORDS_PER_GIB
    assert words == w == d["mask_words"] == d["wp_calls"] == d["split_calls"]
    wp_visits, wp_reloads = 2 + 64, 64
    sv, sr, sc = split_walk_cost(strategy, 64)
    assert d["visits"] == w * (wp_visits + sv)
    assert d["reloads"] == w * (wp_reloads + sr)
    assert d["callbacks_level_3"] == w * (64 + (64 if strategy is Strategy.KERNEL else 0))
    assert d["callbacks_leaf"] + d["callbacks_table_pre"] == w * (64 + sc)
    assert d["mmu_tlbi_vmid"] == 1 and d["clear_calls"] == 1
    assert d["pages_alloc"] == d["tlbi_vmid_ipa"] == d["split_cache_topups"] - 1 == 0
    assert slot.dirty_pages() == 0
    # a second pass with nothing dirty does nothing at all
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == 0 and d["entries_read"] == d["mmu_tlbi_vmid"] == 0


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_clear_first_pass_splits_1g_blocks_chunk_2m(strategy):
    """First pass over a 1 GiB block, 2 MiB chunk (a 2-page cache). Word 0
    write-protects the whole block and splits it the one-page way (a table
    of P 2 MiB blocks); the first word of every 2 MiB region splits that
    block; the other 7 words of a region meet pages. SKIP_LEVEL_NEW_TABLE
    does not enter the new table, so region 0's block is split by word 1:
    same final table, but word 1's write-protect met a block, not 64 pages."""
    vm, slot = vm_with(GiB, "1g", strategy=strategy, eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging()
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == WORDS_PER_GIB
    assert d["pages_alloc"] == 1 + P == d["tlbi_vmid_ipa"]
    assert set(vm.pt.leaves()["level"].tolist()) == {3}
    assert not np.any(vm.pt.leaves()["pte"] & (1 << 7))
    # entries read (visits + reloads), piece by piece
    wp_pages = (2 + 64) + 64         # level-1 and level-2 tables, 64 pages and their reloads
    wp_1g = 1 + 1                    # the block and its reload
    wp_2m = 1 + 1 + 1                # level-1 table, the 2 MiB block and its reload
    nested = 2 * P                   # create_unlinked(): P entries, P reloads
    split_1g = 2 + nested            # the block's visit and reload, and its new table's fill
    split_2m = 1 + 2 + nested        # level-1 table, then the 2 MiB block as above
    pages = 2 * 64                   # the new level-3 table's 64 entries in range, read back
    if strategy is Strategy.KERNEL:
        region0 = wp_1g + split_1g + (2 + nested) + pages + 7 * (wp_pages + 2 + pages)
        region = wp_2m + split_2m + pages + 7 * (wp_pages + 2 + pages)
    elif strategy is Strategy.SKIP_RETURN:
        # TABLE_PRE on the level-1 table (+reload); SKIP_CHILDREN after a full subtree
        region0 = wp_1g + split_1g + (2 + nested) + 7 * (wp_pages + 4)
        region = wp_2m + (split_2m + 1) + 7 * (wp_pages + 4)
    elif strategy is Strategy.SKIP_LEVEL_NEW_TABLE:
        region0 = wp_1g + split_1g + (wp_2m + split_2m) + 6 * (wp_pages + 2)
        region = wp_2m + split_2m + 7 * (wp_pages + 2)
    else:   # PAGE_BLOCK, MAX_LEVEL, SKIP_LEVEL: into the new table, not into level 3
        region0 = wp_1g + split_1g + (2 + nested) + 7 * (wp_pages + 2)
        region = wp_2m + split_2m + 7 * (wp_pages + 2)
    assert d["entries_read"] == region0 + (P - 1) * region


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_writes_then_second_pass_touches_only_dirtied_words(strategy):
    """After the first pass everything is split and read-only: each write is a
    permission fault fixed by relax_perms (3 entries read + 1 reload, one
    local TLBI) and sets one dirty bit; the next pass hands the arch hook only
    those words, write-protecting from the first to the last dirty page."""
    n = 1
    vm, slot = vm_with(n * GiB, "4k", strategy=strategy, eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging()
    vm.clear_dirty_log()
    # 3 pages in word 0 (pages 1, 5, 9), 1 page in word 2 (page 130), page 64*100+63 twice
    pages = [1, 5, 9, 130, 6463, 6463]
    errors, d = delta(vm, vm.write_pages, [slot.base + p * 4096 for p in pages])
    assert errors == 0
    faults = len(set(pages))
    assert d["guest_writes"] == len(pages) and d["writes_no_fault"] == 1
    assert d["faults_perm"] == d["pages_marked_dirty"] == d["tlbi_vmid_ipa_nsh"] == faults
    assert d["visits"] == 3 * faults and d["reloads"] == faults
    assert d["vcpu_cache_topups"] == 1 and d["vcpu_cache_topup_pages"] == VCPU_CACHE_CAPACITY
    assert d["pages_alloc"] == d["cmo_calls"] == 0
    assert slot.dirty_pages() == faults
    words, d = delta(vm, vm.clear_dirty_log)
    spans = [9 - 1 + 1, 1, 1]                     # [ffs, fls] per word
    assert words == 3 == d["wp_calls"] == d["split_calls"]
    sv = sum(split_walk_cost(strategy, k)[0] for k in spans)
    sr = sum(split_walk_cost(strategy, k)[1] for k in spans)
    assert d["visits"] == sum(2 + k for k in spans) + sv
    assert d["reloads"] == sum(spans) + sr
    assert d["mmu_tlbi_vmid"] == 1
    # the pages are read-only again, the rest stayed read-only
    assert not np.any(vm.pt.leaves()["pte"] & (1 << 7))


def test_clear_without_initially_set_only_write_protects():
    vm, slot = vm_with(GiB, "1g", eager_split_chunk=2 * MiB, initially_set=False)
    vm.enable_dirty_logging()
    vm.write_pages([slot.base, slot.base + 3 * 4096])
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == 1 and d["wp_calls"] == 1 and d["split_calls"] == 0
    assert d["visits"] == 2 + 4 and d["reloads"] == 4


def test_clear_with_user_bitmap_clears_only_those_bits():
    vm, slot = vm_with(GiB, "4k", eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging()
    user = np.zeros_like(slot.dirty_bitmap)
    user[3] = np.uint64(0b1010_0000)               # pages 3*64+5 .. 3*64+7
    words, d = delta(vm, vm.clear_dirty_log, slot, user)
    assert words == 1 and slot.dirty_pages() == slot.npages - 2
    assert d["visits"] == 2 + 3 + 2 + 3            # wp of 3 pages, KERNEL split walk of 3 pages
    with pytest.raises(ValueError, match="uint64 array of shape"):
        vm.clear_dirty_log(slot, user[:-1])
    with pytest.raises(ValueError, match="no memslot with id 4"):
        vm.clear_dirty_log(4)


def test_clear_and_get_need_logging():
    vm, slot = vm_with(GiB, "1g")
    with pytest.raises(ValueError, match="memslot 0 is not logging"):
        vm.clear_dirty_log()
    with pytest.raises(ValueError, match="memslot 0 is not logging"):
        vm.get_dirty_log(0)
    vm.enable_dirty_logging()
    assert vm.get_dirty_log(slot).sum(dtype=np.uint64) > 0
    vm.disable_dirty_logging()
    assert slot.dirty_bitmap is None and vm.split_cache.nobjs == 0


def test_range_tlbi_flush_chunks():
    """kvm_tlb_flush_vmid_range(): with range TLBIs, at most 2^21 pages each."""
    vm, slot = vm_with(10 * GiB, "1g", tlb_range=True, initially_set=False)
    _, d = delta(vm, vm.enable_dirty_logging)
    pages = 10 * GiB // 4096
    assert d["mmu_tlbi_vmid_range"] == -(-pages // MAX_TLBI_RANGE_PAGES) == 2
    assert d["mmu_tlbi_range_pages"] == pages and d["mmu_tlbi_vmid"] == 0
    assert d["split_calls"] == 0                    # chunk 0: eager split off


# -- faults on what a split left behind ------------------------------------------------------

def test_split_cache_enomem_is_best_effort_and_faults_break_the_block_up():
    """The host runs out of pages for the split cache: kvm_mmu_split_huge_pages()
    stops at the failed top-up, the second GiB stays a read-only 1 GiB block.
    A write there is a permission fault at block granule: map() of one page
    replaces the block by tables (2 pages, one BBM TLBI, one CMO) and leaves
    the rest unmapped; the next write in that 2 MiB is a translation fault."""
    vm, slot = vm_with(2 * GiB, "1g", eager_split_chunk=GiB, initially_set=False,
                       split_host_pages=(1 + P) + 87)
    _, d = delta(vm, vm.enable_dirty_logging)
    assert d["split_calls"] == 1 and d["split_enomem"] == 1 and d["split_errors"] == 1
    assert d["split_cache_topup_pages"] == 1 + P + 87 and vm.split_cache.nobjs == 87
    assert d["pages_alloc"] == 1 + P
    block = slot.base + GiB
    level, pte = vm.translate(block)
    assert level == 1 and pte & 1 and not pte & (1 << 7)
    ipa = block + 5 * 2 * MiB + 7 * 4096
    _, d = delta(vm, vm.write, ipa)
    assert d["faults_perm_block"] == 1 and d["pages_alloc"] == 2
    assert d["tlbi_vmid_ipa"] == 1 and d["cmo_calls"] == 1 and d["pages_marked_dirty"] == 1
    assert vm.translate(ipa)[0] == 3 and vm.translate(ipa)[1] & (1 << 7)
    assert vm.translate(block) == (2, 0)
    _, d = delta(vm, vm.write, ipa + 4096)
    assert d["faults_translation"] == 1 and d["pages_alloc"] == 0 and d["cmo_calls"] == 1
    _, d = delta(vm, vm.write, block)
    assert d["faults_translation"] == 1 and d["pages_alloc"] == 1
    assert slot.dirty_pages() == 3


def test_write_outside_memslots_and_bad_ipas():
    vm, slot = vm_with(GiB, "1g")
    with pytest.raises(ValueError, match="outside every memslot"):
        vm.write(0)
    with pytest.raises(ValueError, match="outside every memslot"):
        vm.write_pages([slot.end])
    with pytest.raises(TypeError, match="ipa must be an int"):
        vm.write(1.5)
    # not logging: a writable page does not fault
    _, d = delta(vm, vm.write, slot.base)
    assert d["writes_no_fault"] == 1 and d["entries_read"] == 0


# -- access patterns ----------------------------------------------------------------------------

def test_patterns():
    seq = [pattern_pages("sequential", k, 100, 250).tolist() for k in (1, 2, 3)]
    assert seq[0] == list(range(100)) and seq[1] == list(range(100, 200))
    assert seq[2] == list(range(200, 250)) + list(range(50))
    r1, r1b, r2 = (pattern_pages("random", k, 1000, 1 << 20, seed=3) for k in (1, 1, 2))
    assert np.array_equal(r1, r1b) and not np.array_equal(r1, r2)
    assert len(np.unique(r1)) == 1000 and r1.min() >= 0 and r1.max() < 1 << 20
    h1, h2 = (pattern_pages("hot-set", k, 100, 1 << 20, seed=3, hot_pages=300) for k in (1, 2))
    hot = set(h1.tolist()) | set(h2.tolist())
    assert len(np.unique(h1)) == 100 and len(hot) <= 200
    assert set(pattern_pages("hot", 9, 100, 1 << 20, seed=3, hot_pages=300).tolist()) <= set(
        np.concatenate([pattern_pages("hot", k, 100, 1 << 20, seed=3, hot_pages=300) for k in range(1, 40)]).tolist())
    with pytest.raises(ValueError, match="'zigzag'"):
        pattern_pages("zigzag", 1, 1, 10)
    with pytest.raises(ValueError, match="writes 11"):
        pattern_pages("random", 1, 11, 10)


# -- workloads and comparisons --------------------------------------------------------------------

def test_workload_phases_and_validation():
    w = Workload(guest_size="2G", writes=64)
    assert w.phase_names() == ["enable", "clear 1", "writes 2", "clear 2"]
    assert Workload(guest_size="2G", initially_set=False, passes=1).phase_names() == ["enable", "writes 1", "clear 1"]
    assert w.ia_bits == 40 and Workload(guest_size="1T").ia_bits == 41
    with pytest.raises(ValueError, match="writes 600000 is more than the guest's 524288"):
        Workload(guest_size="2G", writes=600000)
    with pytest.raises(ValueError, match="eager-split chunk 12288"):
        Workload(chunk="12K")
    with pytest.raises(ValueError, match="guest size 4096"):
        Workload(guest_size=4096)
    with pytest.raises(ValueError, match="'diagonal'"):
        Workload(pattern="diagonal")
    with pytest.raises(ValueError, match="ia_bits 40 cannot hold"):
        Workload(guest_size="1T", ia_bits=40)


def test_workload_run_counts_add_up():
    w = Workload(guest_size="1G", backing="4k", writes=256, pattern="sequential")
    r = w.run(Strategy.KERNEL)
    clear1 = r.phase("clear 1").counts
    assert clear1["mask_words"] == WORDS_PER_GIB
    writes = r.phase("writes 2").counts
    assert writes["faults_perm"] == 256 and writes["pages_marked_dirty"] == 256
    clear2 = r.phase("clear 2").counts
    assert clear2["mask_words"] == 256 // 64
    assert clear2["visits"] == 4 * 2 * (2 + 64)
    assert r.totals["entries_read"] == sum(p.counts["entries_read"] for p in r.phases)
    assert r.build.counts["callbacks_level_3"] == GiB // 4096
    assert summarize(r.totals)["tlbis"] == r.totals["tlbi_vmid_ipa_nsh"] + 2


def test_compare_reports_unsplit_blocks_and_speedups():
    w = Workload(guest_size="2G", backing="1g", chunk="2M", initially_set=False, passes=1, writes=0)
    c = compare(w, ["SNT", "SKIP_LEVEL"])
    assert list(c.results) == [Strategy.KERNEL, Strategy.SKIP_LEVEL_NEW_TABLE, Strategy.SKIP_LEVEL]
    rows = {r["strategy"]: r for r in c.rows()}
    assert rows["KERNEL"]["speedup"] == 1.0 and rows["KERNEL"]["reduction_pct"] == 0.0
    assert rows["SKIP_LEVEL"]["identical"] and rows["SKIP_LEVEL"]["outcome"] == "identical"
    assert not rows["SKIP_LEVEL_NEW_TABLE"]["identical"]
    assert rows["SKIP_LEVEL_NEW_TABLE"]["outcome"] == "differs: 2 x 2 MiB unsplit"
    k, s = rows["KERNEL"]["entries_read"], rows["SKIP_LEVEL"]["entries_read"]
    assert rows["SKIP_LEVEL"]["speedup"] == pytest.approx(k / s)
    assert rows["SKIP_LEVEL"]["reduction_pct"] == pytest.approx(100 * (1 - s / k))
    # enable of 2 GiB of blocks, chunk 2 MiB: KERNEL re-reads each new level-3 table
    # (P entries + P reloads per 2 MiB chunk) where SKIP_LEVEL does not
    assert k - s == 2 * P * (2 * P)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["strategies"]["SKIP_LEVEL_NEW_TABLE"]["final_table"]["unsplit_blocks"] == {"2 MiB": 2}
    assert [p["name"] for p in d["strategies"]["KERNEL"]["phases"]] == ["enable", "clear 1"]


def test_diff_tables_unmapped_and_changed():
    a, b = Stage2PageTable(40), Stage2PageTable(40)
    for pt in (a, b):
        assert pt.map(0, 2 * MiB, PHYS_OFFSET, s2fast.RW, memcache=MemCache(8), force_pte=True) == 0
    assert diff_tables(a, b).identical
    b.unmap(4096, 3 * 4096)
    b.wrprotect(64 * 4096, 4096)
    d = diff_tables(a, b)
    assert d.unmapped == {3: 3} and d.changed == 1 and d.unsplit == {} and d.extra == {}
    assert d.describe() == "differs: 3 x 4 KiB unmapped, 1 leaves with other attributes"
    with pytest.raises(ValueError, match="not a multiple"):
        diff_tables(a, b, window=4096)


def test_presets_recreate_the_series_set_ups():
    assert sorted(PRESETS) == sorted(f"rfc-{g}g-{t}" for g in (16, 64) for t in ("4k", "thp", "hugetlb"))
    p = PRESETS["rfc-16g-thp"]
    assert p.guest_size == 16 * GiB and str(Backing.parse(p.backing)) == "2m"
    en, cl = p.enable_workload(), p.clear_workload()
    assert not en.initially_set and en.passes == 0 and cl.initially_set and cl.passes == 2
    assert p.clear_workload(passes=3, chunk="1G").passes == 3
    with pytest.raises(ValueError, match="'rfc-1g-4k'"):
        run_preset("rfc-1g-4k")
    with pytest.raises(TypeError, match="unexpected overrides"):
        run_preset("rfc-16g-thp", guest_size=1)


def test_two_memslots_each_flushed_and_cleared():
    """Per-slot bookkeeping: two slots back to back, one of pages and one of a
    1 GiB block; a CLEAR over both hands every word of each to the arch hook
    and flushes each slot once; writes find their slot."""
    vm = VM(eager_split_chunk=2 * MiB)
    a = vm.add_memslot(GiB, "4k")
    b = vm.add_memslot(GiB, "1g")
    assert (a.id, a.base, b.id, b.base) == (0, GiB, 1, 2 * GiB)
    vm.enable_dirty_logging()
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == 2 * WORDS_PER_GIB and d["clear_calls"] == 2 and d["mmu_tlbi_vmid"] == 2
    assert d["pages_alloc"] == 1 + P
    _, d = delta(vm, vm.write_pages, [a.base, b.base, b.base + 4096])
    assert d["faults_perm"] == 3 and (a.dirty_pages(), b.dirty_pages()) == (1, 2)
    words, d = delta(vm, vm.clear_dirty_log, 1)
    assert words == 1 and d["clear_calls"] == 1 and a.dirty_pages() == 1


def test_strategy_can_change_between_steps():
    vm, slot = vm_with(GiB, "4k", eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging()
    vm.strategy = "skip_level"
    _, d = delta(vm, vm.clear_dirty_log)
    assert vm.strategy is Strategy.SKIP_LEVEL and d["callbacks_level_3"] == WORDS_PER_GIB * 64


# -- 16 KiB and 64 KiB hosts -------------------------------------------------------------------
#
# The host's page size is the stage-2 granule. On 16 and 64 KiB hosts stage 2
# has blocks only at level 2 (KVM_PGTABLE_MIN_BLOCK_LEVEL is 2): PMD_SIZE =
# P pages of the granule (32 MiB, 512 MiB), with P = PTRS_PER_PTE (2048, 8192).
# With the default 40-bit IPA space both start at level 2, so a split walk has
# no table entry above the block. Every count below is a formula of P.

from s2fast.vm import format_size  # noqa: E402

GRANULES = {16384: ("32m", "16k"), 65536: ("512m", "64k")}


def ptrs(granule):
    return granule // 8


def pmd(granule):
    return ptrs(granule) * granule


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_host_rules_per_granule(granule):
    from s2fast.vm import host_rules
    h = host_rules(granule)
    Pg = ptrs(granule)
    assert h.page_size == granule and h.ptrs_per_table == Pg and h.pmd_size == pmd(granule)
    if granule == 4096:
        # level-1 blocks exist: chunk sizes 4K, 2M, 1G; write-protect in 1 GiB pieces
        assert h.chunks == (0, 4096, 2 * MiB, GiB) and h.pud_size == GiB == h.wp_piece
        assert split_nr_page_tables(GiB, granule) == 1 + P
    else:
        # kvm_supported_block_sizes(): the page and the level-2 block only
        assert h.chunks == (0, granule, pmd(granule)) and h.pud_size == 0 and h.wp_piece == pmd(granule)
        # kvm_mmu_split_nr_page_tables(): no PUD term; one page per PMD_SIZE touched
        assert split_nr_page_tables(pmd(granule), granule) == 1
        assert split_nr_page_tables(granule, granule) == 1
        assert split_nr_page_tables(3 * pmd(granule), granule) == 3
    assert split_nr_page_tables(0, granule) == 0
    assert host_rules(f"{granule // KiB}K") is h


@pytest.mark.parametrize("granule", list(GRANULES))
def test_granule_bad_combinations_name_the_value(granule):
    big, page = GRANULES[granule]
    with pytest.raises(ValueError, match=f"eager-split chunk {2 * MiB} is not 0 or a block size.*"
                                         f"{granule // KiB} KiB host"):
        VM(granule=granule, eager_split_chunk=2 * MiB)
    with pytest.raises(ValueError, match=f"eager-split chunk {GiB} "):
        Workload(granule=granule, chunk="1G")
    with pytest.raises(ValueError, match=f"backing '1g' is not a page or block size of a {granule // KiB} KiB"):
        Workload(granule=granule, backing="1g")
    with pytest.raises(ValueError, match="backing '2m'"):
        VM(granule=granule).add_memslot(pmd(granule), "2m")
    with pytest.raises(ValueError, match="no level-1"):
        Backing(100, 0, 0, granule)
    with pytest.raises(ValueError, match="backing kind '4k'"):
        Backing.parse(f"mix:{big}=50,4k=50", granule)
    with pytest.raises(ValueError, match=f"multiple of {pmd(granule) // MiB} MiB"):
        VM(granule=granule).add_memslot(pmd(granule) + granule, page)
    with pytest.raises(ValueError, match="granule 8192 is not a host page size"):
        VM(granule=8192)
    with pytest.raises(ValueError, match="is for a 4 KiB host"):
        Backing.parse(Backing(0, 100, 0), granule)


@pytest.mark.parametrize("granule", list(GRANULES))
def test_build_per_granule(granule):
    big, page = GRANULES[granule]
    Pg = ptrs(granule)
    vm = VM(granule=granule)
    assert vm.pt.granule == granule and vm.pt.start_level == 2
    a = vm.add_memslot(4 * pmd(granule), big)
    b = vm.add_memslot(2 * pmd(granule), page)
    assert a.block_counts() == {big: 4, page: 0} and b.block_counts() == {big: 0, page: 2 * Pg}
    assert b.base == a.end and a.npages == 4 * Pg
    leaves = vm.pt.leaves()
    assert dict(zip(*np.unique(leaves["level"], return_counts=True))) == {2: 4, 3: 2 * Pg}
    # output addresses: PHYS_OFFSET + IPA, + PMD_SIZE for the blocks
    shift = np.where(leaves["level"] == 2, pmd(granule), 0).astype(np.uint64)
    pa = leaves["pte"] & np.uint64(((1 << 48) - 1) & ~(granule - 1))
    assert np.array_equal(pa, leaves["ipa"] + np.uint64(PHYS_OFFSET) + shift)
    # the hardware walk on this granule's tables
    ipa = b.base + 5 * granule + 123
    level, pte = vm.translate(ipa)
    assert level == 3 and int(pte) & ~(granule - 1) & ((1 << 48) - 1) == PHYS_OFFSET + b.base + 5 * granule
    assert vm.translate(a.base + pmd(granule) + 7)[0] == 2
    mix = VM(granule=granule).add_memslot(8 * pmd(granule), f"mix:{big}=50,{page}=50", seed=3)
    assert mix.block_counts() == {big: 4, page: 4 * Pg}
    assert str(mix.backing) == f"mix:{big}=50,{page}=50"
    assert str(Backing.parse("hugetlb", granule)) == str(Backing.parse("thp", granule)) == big


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
@pytest.mark.parametrize("granule", list(GRANULES))
def test_enable_eager_split_pmd_blocks_per_granule(granule, strategy):
    """Without initially-all-set, chunk PMD_SIZE: one write-protect per block
    (stage2_apply_range's pieces are one level-2 entry), one remote flush,
    then one split per block. The cache holds kvm_mmu_split_nr_page_tables()
    = 1 page, so it is topped up before every chunk; each block takes the
    one-page path, which is the full split: create_unlinked maps P pages,
    one break-before-make TLBI, one table page. KERNEL then walks the P new
    pages again; every other strategy stays out of the new table."""
    n = 4
    Pg = ptrs(granule)
    vm = VM(granule=granule, strategy=strategy, eager_split_chunk=pmd(granule), initially_set=False)
    slot = vm.add_memslot(n * pmd(granule), GRANULES[granule][0])
    _, d = delta(vm, vm.enable_dirty_logging)
    outer = Pg if strategy is Strategy.KERNEL else 0
    visits = n * (1 + 1 + Pg + outer)          # wrprotect the block; split it; create_unlinked; re-walk
    assert d["visits"] == d["reloads"] == d["callbacks_leaf"] == visits
    assert d["entries_read"] == 2 * visits
    assert d["callbacks_level_2"] == 2 * n and d["callbacks_level_3"] == n * (Pg + outer)
    assert d["pages_alloc"] == d["tlbi_vmid_ipa"] == d["mc_used"] == n
    assert d["wp_calls"] == d["split_calls"] == n and d["mmu_tlbi_vmid"] == 1
    assert d["split_cache_topups"] == d["split_cache_topup_pages"] == n
    assert summarize(d)["tlbis"] == n + 1 and d["cmo_calls"] == 0
    leaves = vm.pt.leaves()
    assert set(leaves["level"].tolist()) == {3} and len(leaves) == n * Pg
    assert not np.any(leaves["pte"] & (1 << 7))
    assert slot.dirty_pages() == 0


@pytest.mark.parametrize("strategy", [Strategy.KERNEL, Strategy.SKIP_LEVEL], ids=lambda s: s.name)
@pytest.mark.parametrize("granule", [4096] + list(GRANULES))
def test_first_clear_pass_per_granule(granule, strategy):
    """Initially-all-set, chunk PMD_SIZE, a slot of n PMD blocks: the first
    CLEAR hands kvm_arch_mmu_enable_log_dirty_pt_masked() one word of 64
    host pages at a time, W = P / 64 words per block. The block's first word
    write-protects the block, then splits it (create_unlinked: P pages) and,
    under KERNEL, walks the word's 64 new pages; each later word
    write-protects its 64 pages under the level-2 table entry and splits
    nothing (KERNEL re-reads the 64 pages, SKIP_LEVEL only the table entry)."""
    n = 4
    Pg = ptrs(granule)
    W = Pg // 64
    vm = VM(granule=granule, strategy=strategy, eager_split_chunk=pmd(granule), initially_set=True)
    big = "2m" if granule == 4096 else GRANULES[granule][0]
    slot = vm.add_memslot(n * pmd(granule), big)
    vm.enable_dirty_logging()
    assert slot.dirty_pages() == slot.npages == n * Pg
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == d["mask_words"] == slot.npages // 64 == n * W
    # 4 KiB: a 40-bit IPA space starts at level 1, one more table entry per walk
    above = 1 if granule == 4096 else 0
    kernel = strategy is Strategy.KERNEL
    first = (above + 1) + (above + 1 + Pg + (64 if kernel else 0))
    later = (above + 1 + 64) + (above + 1 + (64 if kernel else 0))
    assert d["visits"] == n * (first + (W - 1) * later)
    first_leaf = 1 + 1 + Pg + (64 if kernel else 0)
    later_leaf = 64 + (64 if kernel else 0)
    assert d["callbacks_leaf"] == d["reloads"] == n * (first_leaf + (W - 1) * later_leaf)
    assert d["pages_alloc"] == d["tlbi_vmid_ipa"] == n and d["mmu_tlbi_vmid"] == 1
    assert d["wp_calls"] == d["split_calls"] == n * W
    assert d["split_cache_topups"] == n + 1        # the last block's later words top up again
    assert slot.dirty_pages() == 0
    # a second pass over a few written pages: one word each
    pages = [slot.base + k * 64 * granule for k in range(5)]
    _, d = delta(vm, vm.write_pages, pages)
    assert d["faults_perm"] == 5 and d["pages_marked_dirty"] == 5 and slot.dirty_pages() == 5
    words, d = delta(vm, vm.clear_dirty_log)
    assert words == 5 and d["wp_calls"] == d["split_calls"] == 5 and d["pages_alloc"] == 0


@pytest.mark.parametrize("granule", list(GRANULES))
def test_guest_faults_at_granule_size(granule):
    """user_mem_abort(): with logging on, a write to a write-protected block
    maps one page of the granule (a table page from the vCPU cache); without
    logging, a translation fault maps the backing's block."""
    Pg = ptrs(granule)
    big, page = GRANULES[granule]
    vm = VM(granule=granule, eager_split_chunk=0, initially_set=False)
    slot = vm.add_memslot(2 * pmd(granule), big)
    vm.enable_dirty_logging()                        # write-protect only: chunk 0 splits nothing
    ipa = slot.base + pmd(granule) + 3 * granule + 5
    _, d = delta(vm, vm.write, ipa)
    assert d["faults_perm_block"] == 1 and d["pages_alloc"] == 1 and d["pages_marked_dirty"] == 1
    assert d["vcpu_cache_topups"] == 1 and d["vcpu_cache_topup_pages"] == VCPU_CACHE_CAPACITY
    level, pte = vm.translate(ipa)
    assert level == 3 and pte & (1 << 7)
    bm = slot.dirty_bitmap
    off = Pg + 3
    assert slot.dirty_pages() == 1 and int(bm[off // 64]) == 1 << (off % 64)
    # the rest of the broken block is unmapped: the next page faults as a translation fault
    _, d = delta(vm, vm.write, ipa + granule)
    assert d["faults_translation"] == 1 and d["pages_alloc"] == 0 and vm.translate(ipa + granule)[0] == 3
    # no logging: a translation fault maps a whole PMD block again
    vm.pt.unmap(slot.base, pmd(granule))
    vm.disable_dirty_logging()
    _, d = delta(vm, vm.write, slot.base + 7 * granule)
    assert d["faults_translation"] == 1 and vm.translate(slot.base)[0] == 2


@pytest.mark.parametrize("granule", list(GRANULES))
def test_workload_and_compare_per_granule(granule):
    big, page = GRANULES[granule]
    Pg = ptrs(granule)
    w = Workload(guest_size=4 * pmd(granule), granule=f"{granule // KiB}K", writes=64)
    assert w.granule == granule and w.chunk == pmd(granule) and str(w.backing) == big
    assert w.describe().startswith(f"{format_size(4 * pmd(granule))} guest ({granule // KiB} KiB pages) at "
                                   f"0x40000000, backing {big}, eager-split chunk {pmd(granule) // MiB} MiB")
    with pytest.raises(ValueError, match=f"writes {4 * Pg + 1} is more than the guest's {4 * Pg} pages"):
        w.replace(writes=4 * Pg + 1)
    c = compare(w, ["SKIP_LEVEL", "SNT"])
    assert all(r["identical"] for r in c.rows())        # one-page splits: SKIP_NEW_TABLE is safe here
    k = c.results[Strategy.KERNEL]
    clear1 = k.phase("clear 1").counts
    assert clear1["mask_words"] == 4 * Pg // 64 and clear1["pages_alloc"] == 4
    assert k.phase("writes 2").counts["pages_marked_dirty"] == 64
    d = json.loads(json.dumps(c.to_dict()))
    assert d["workload"]["granule"] == granule and d["workload"]["chunk"] == pmd(granule)
    # a 4 KiB workload moved to this host keeps its kinds of leaf by level
    moved = Workload(guest_size="2G", backing="mix:2m=50,4k=50", writes=64).replace(granule=granule)
    assert str(moved.backing) == f"mix:{big}=50,{page}=50" and moved.chunk == pmd(granule)
    assert str(Workload(guest_size="2G").replace(granule=granule).backing) == big


def test_diff_tables_names_levels_by_granule():
    a, b = Stage2PageTable(40, granule=65536), Stage2PageTable(40, granule=65536)
    for pt in (a, b):
        assert pt.map(0, 512 * MiB, PHYS_OFFSET, s2fast.RW, memcache=MemCache(8), force_pte=True) == 0
    b.unmap(65536, 2 * 65536)
    d = diff_tables(a, b)
    assert d.unmapped == {3: 2} and d.describe() == "differs: 2 x 64 KiB unmapped"
    assert d.to_dict()["unmapped"] == {"64 KiB": 2}
