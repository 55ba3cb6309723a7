"""s2fast dirty-log-perf: the kernel's dirty_log_perf_test modelled.

Option parsing against the selftest's getopt letters and constraints, the
memstress layout against addresses worked out by hand, and exact counts of
small runs against closed forms."""
import io
import json

import numpy as np
import pytest

from s2fast import CustomStrategy, Strategy, WalkFlags, Workload, cli, compare, run_preset
from s2fast.dirty_log_perf import (DEFAULT_MODE, GuestRandom, Options, guest_pass, layout, options_from_args,
                                   phase_seconds, run, run_all)
from s2fast.mmu import guest_write
from s2fast.vm import VM

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TOP40 = 1 << 40


def parse(*argv):
    args = cli.build_parser().parse_args(["dirty-log-perf", *argv])
    return options_from_args(args), args


def main(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------
# Options

def test_defaults_are_the_selftests():
    o, a = parse()
    # TEST_HOST_LOOP_N 2, DEFAULT_PER_VCPU_MEM_SIZE 1G, DEFAULT_VM_MEM_SRC anonymous,
    # write_percent 100, guest_random_seed 1, one slot, partitioned, manual protect on
    assert o == Options()
    assert (o.vcpu_bytes, o.vcpus, o.backing_src, o.iterations, o.write_percent, o.seed, o.slots) == \
        (GiB, 1, "anonymous", 2, 100, 1, 1)
    assert o.manual_protect and o.partition and not o.random_access and not o.run_vcpus_while_disabling
    assert o.mode == DEFAULT_MODE == 6 and o.eager_split_chunk == 0 and o.granule == 4096
    assert a.strategies is None and a.profile is None and not a.json
    assert o.command() == "./dirty_log_perf_test"


@pytest.mark.parametrize("argv, field, value", [
    (["-a"], "random_access", True),
    (["-b", "3G"], "vcpu_bytes", 3 * GiB),
    (["-b10M"], "vcpu_bytes", 10 * MiB),
    (["-c", "1,2,3"], "pcpus", "1,2,3"),
    (["-e"], "run_vcpus_while_disabling", True),
    (["-g"], "manual_protect", False),
    (["-i", "5"], "iterations", 5),
    (["-m", "3"], "mode", 3),
    (["-m", "P36V48_4K"], "mode", 12),
    (["-o"], "partition", False),
    (["-p", "0x1000"], "phys_offset", 0x1000),
    (["-r", "7"], "seed", 7),
    (["-s", "anonymous_hugetlb_1gb"], "backing_src", "anonymous_hugetlb_1gb"),
    (["-v", "4"], "vcpus", 4),
    (["-x", "2"], "slots", 2),
    (["-w", "30"], "write_percent", 30),
    (["-w", "0"], "write_percent", 0),
    (["--eager-split-chunk", "2M"], "eager_split_chunk", 2 * MiB),
    (["--granule", "16K"], "granule", 16 * KiB),
])
def test_each_option(argv, field, value):
    o, _ = parse(*argv)
    assert getattr(o, field) == value
    # everything else keeps its default
    d = Options()
    assert all(getattr(o, f) == getattr(d, f) for f in d.__dataclass_fields__ if f != field)


def test_combined_flags_and_s2fast_options():
    o, a = parse("-ao", "-v", "2", "--strategies", "all", "--strategy", "x=LEAF", "--profile", "p", "--json")
    assert o.random_access and not o.partition and o.vcpus == 2
    assert a.strategies == "all" and a.strategy == ["x=LEAF"] and a.profile == "p" and a.json


@pytest.mark.parametrize("argv, message", [
    (["-i", "1"], "The test should have at least two iterations"),
    (["-i", "0"], "Number of iterations must be greater than 0, got '0'"),
    (["-i", "two"], "Number of iterations: 'two' is not a whole number"),
    (["-w", "101"], "Write percentage must be between 0 and 100"),
    (["-w", "-5"], "Write percentage must be non-negative, got '-5'"),
    (["-x", "3"], "Guest memory cannot be evenly divided into 3 slots."),
    (["-s", "nope"], "Unknown backing src type: nope"),
    (["-s", "anonymous_hugetlb_16gb"], "a 4 KiB host has no 16 GiB huge pages"),
    (["-b", "lots"], "-b: size 'lots' is not a size"),
    (["-b", "6K"], "Guest memory size is not host page size aligned."),
    (["-b", "4K", "-m", "8"], "Guest memory size is not guest page size aligned."),
    (["-v", "0"], "Number of vCPUs must be greater than 0, got '0'"),
    (["-v", "513"], "Invalid number of vcpus, must be between 1 and 512"),
    (["-r", "0"], "Random seed must be greater than 0, got '0'"),
    (["-m", "9"], "Guest mode ID 9 is not an arm64 guest mode"),
    (["-m", "0"], "at most 48 IPA bits"),
    (["-m", "99"], "Guest mode ID 99 too big"),
    (["-n"], "nested (L2) vCPUs are x86 only"),
    (["-q"], "unrecognized arguments: -q"),
    (["--eager-split-chunk", "3M"], "eager-split chunk 3145728 is not 0 or a block size"),
    (["--granule", "8K"], "granule 8192 is not a host page size"),
    (["--strategy", "mine"], "strategy 'mine' is neither a built-in one"),
    (["--strategy", "mine="], "strategy 'mine=' is not NAME=FLAGS"),
    (["--strategy", "mine=LEAF|NOPE"], "'NOPE' is not a walk flag"),
    (["--strategies", "fastest"], "'fastest' is not one of KERNEL"),
    (["--strategy-module", "/nonexistent.py"], "is not a file"),
])
def test_bad_values_one_line_exit_2(argv, message):
    rc, out, err = main("dirty-log-perf", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and message in err, err


# ---------------------------------------------------------------------------
# Layout: memstress_create_vm(), worked by hand
#   n       = vcpus * b / guest_page                   (guest pages)
#   end_gfn = 2^pa_bits / guest_page                   (max_gfn + 1)
#   gpa     = align_down((end_gfn - n - 1) * guest_page, backing page size)
#   slot i  = gpa + (n / x) * guest_page * i;  vCPU i = gpa + i * b (-o: gpa, all n pages)

def test_layout_default():
    lay = layout(Options())
    # n = 2^30 / 2^12 = 262144; gpa = (2^28 - 262144 - 1) * 4K = 2^40 - 1G - 4K (4K aligned)
    assert lay.guest_num_pages == 262144 and lay.gpa == TOP40 - GiB - 4 * KiB == 0xFFBFFFF000
    assert lay.slots == ((0xFFBFFFF000, GiB),) and lay.vcpus == ((0xFFBFFFF000, 262144),)
    assert lay.leaf == "page" and lay.pages_per_slot == 262144 and lay.size == GiB


def test_layout_hugetlb_1g_four_vcpus():
    lay = layout(Options(vcpu_bytes=GiB, vcpus=4, backing_src="anonymous_hugetlb_1gb"))
    # n = 4 * 262144; raw gpa = 2^40 - 4G - 4K; down to 1G: 2^40 - 5G
    assert lay.gpa == TOP40 - 5 * GiB == 0xFEC0000000 and lay.leaf == "pud"
    assert lay.vcpus == tuple((0xFEC0000000 + i * GiB, 262144) for i in range(4))


def test_layout_thp_slots():
    lay = layout(Options(vcpu_bytes=64 * MiB, vcpus=2, slots=4, backing_src="anonymous_thp"))
    # n = 32768; raw gpa = 2^40 - 128M - 4K; down to 2M: 2^40 - 130M; slots of 8192 pages = 32M
    gpa = TOP40 - 130 * MiB
    assert lay.gpa == gpa == 0xFFF7E00000 and lay.leaf == "pmd"
    assert lay.slots == tuple((gpa + i * 32 * MiB, 32 * MiB) for i in range(4))
    assert lay.vcpus == ((gpa, 16384), (gpa + 64 * MiB, 16384)) and lay.pages_per_slot == 8192


def test_layout_overlapped():
    lay = layout(Options(vcpu_bytes=2 * MiB, vcpus=3, partition=False))
    # n = 3 * 512 = 1536; gpa = 2^40 - 6M - 4K; every vCPU covers the whole region
    assert lay.gpa == TOP40 - 6 * MiB - 4 * KiB
    assert lay.vcpus == ((TOP40 - 6 * MiB - 4 * KiB, 1536),) * 3


def test_layout_64k_mode_and_host():
    lay = layout(Options(vcpu_bytes=512 * MiB, mode=14, granule="64K", backing_src="anonymous_hugetlb_512mb"))
    # P36V48_64K: end_gfn = 2^36 / 2^16 = 2^20; n = 8192; raw = 2^36 - 512M - 64K; down to 512M: 2^36 - 1G
    assert (lay.pa_bits, lay.guest_page, lay.host_page) == (36, 64 * KiB, 64 * KiB)
    assert lay.gpa == (1 << 36) - GiB == 0xFC0000000 and lay.leaf == "pmd"


def test_layout_16k_guest_on_4k_host():
    lay = layout(Options(vcpu_bytes=MiB, mode="P40V48_16K", slots=2))
    # n = 64 guest pages of 16K; gpa = (2^26 - 64 - 1) * 16K = 2^40 - 1M - 16K; slots of 512K
    assert lay.guest_num_pages == 64 and lay.gpa == TOP40 - MiB - 16 * KiB
    assert lay.slots == ((lay.gpa, 512 * KiB), (lay.gpa + 512 * KiB, 512 * KiB))
    assert lay.pages_per_slot == 128          # host pages per slot's bitmap


# ---------------------------------------------------------------------------
# Counts against closed forms

def counts(r, name):
    return r.phase(name).counts


def test_sequential_writes_every_page_faults_once_per_iteration_after_a_clear():
    r = run(Options(vcpu_bytes=8 * MiB))
    n, words = 2048, 2048 // 64
    pop = counts(r, "populate")
    assert pop["faults_translation"] == n and pop["guest_writes"] == n and pop["pages_marked_dirty"] == 0
    assert counts(r, "enable")["entries_read"] == 0           # initially-all-set: nothing until CLEAR
    d1 = counts(r, "dirty 1")                                 # still writable: no exit at all
    assert d1["writes_no_fault"] == n and d1["faults_perm"] == 0
    assert counts(r, "get 1")["dirty_pages_reported"] == n    # the bitmap starts all set
    c1 = counts(r, "clear 1")
    assert c1["mask_words"] == words and c1["wp_calls"] == words and c1["mmu_tlbi_vmid"] == 1
    d2 = counts(r, "dirty 2")
    assert d2["faults_perm"] == d2["pages_marked_dirty"] == d2["tlbi_vmid_ipa_nsh"] == n
    assert counts(r, "get 2")["dirty_pages_reported"] == n and counts(r, "clear 2")["mask_words"] == words
    assert [p.name for p in r.phases] == ["populate", "enable", "dirty 1", "get 1", "clear 1",
                                          "dirty 2", "get 2", "clear 2", "disable"]


def test_no_manual_protect_get_protects_and_there_is_no_clear():
    r = run(Options(vcpu_bytes=8 * MiB, manual_protect=False, iterations=3))
    n = 2048
    assert counts(r, "enable")["wp_calls"] == 1               # one 1 GiB piece holds the slot
    for it in (1, 2, 3):
        assert counts(r, f"dirty {it}")["faults_perm"] == counts(r, f"dirty {it}")["pages_marked_dirty"] == n
        assert counts(r, f"get {it}")["mask_words"] == n // 64
    assert not any(p.name.startswith("clear") for p in r.phases)


def test_write_percent_zero_dirties_nothing():
    r = run(Options(vcpu_bytes=4 * MiB, write_percent=0))
    d2 = counts(r, "dirty 2")
    assert d2["guest_reads"] == d2["reads_no_fault"] == 1024 and d2["pages_marked_dirty"] == 0
    assert counts(r, "get 2")["dirty_pages_reported"] == 0 and counts(r, "clear 2")["mask_words"] == 0


def test_thp_eager_split_counts_under_every_strategy():
    res = run_all(Options(vcpu_bytes=64 * MiB, backing_src="anonymous_thp", eager_split_chunk="2M"), "all")
    n, blocks = 16384, 32
    for name, r in res.runs.items():
        pop = counts(r, "populate")
        assert pop["faults_translation"] == blocks and pop["writes_no_fault"] == n - blocks
        c1 = counts(r, "clear 1")
        # each 64-page mask word lies in one 2 MiB chunk: one split call per word,
        # one table of pages per block
        assert c1["mask_words"] == c1["split_calls"] == n // 64 and c1["pages_alloc"] == blocks, name
        assert counts(r, "dirty 2")["faults_perm"] == n
        assert res.diffs[name].identical
    assert len(res.runs) == 6


def test_hugetlb_1g_split_and_skip_new_table_caught():
    res = run_all(Options(vcpu_bytes=GiB, backing_src="anonymous_hugetlb_1gb", eager_split_chunk="2M",
                          write_percent=0), ["SKIP_LEVEL_NEW_TABLE"])
    k = res.runs["KERNEL"]
    assert res.layout.gpa == TOP40 - 2 * GiB              # 2^40 - 1G - 4K down to 1G
    assert counts(k, "populate")["faults_translation"] == 1
    c1 = counts(k, "clear 1")
    assert c1["mask_words"] == c1["split_calls"] == 4096 and c1["pages_alloc"] == 1 + 512
    # CLEAR splits 64 pages at a time: a later word's split reaches the 2 MiB
    # block an earlier one left behind in SKIP_NEW_TABLE's new table
    assert res.diffs["SKIP_LEVEL_NEW_TABLE"].identical
    # -g: enabling splits the slot chunk by chunk with a 2-page cache; the
    # first chunk's 2 MiB block stays in the skipped new table
    res = run_all(Options(vcpu_bytes=GiB, backing_src="anonymous_hugetlb_1gb", eager_split_chunk="2M",
                          write_percent=0, manual_protect=False), ["SKIP_LEVEL_NEW_TABLE"])
    en = counts(res.runs["KERNEL"], "enable")
    assert en["split_calls"] == 512 and en["pages_alloc"] == 1 + 512
    assert res.diffs["SKIP_LEVEL_NEW_TABLE"].describe() == "differs: 1 x 2 MiB unsplit"


def _memstress_reference(seed, pages, iterations, write_percent):
    """memstress_guest_code's draws, one by one: populate (in order, 100 %
    writes), then random-access iterations -> written pages per iteration."""
    x = seed
    def u32():
        nonlocal x
        x = x * 48271 % ((1 << 31) - 1)
        return x
    for _ in range(pages):
        u32()
    out = []
    for _ in range(iterations):
        written = set()
        for _ in range(pages):
            page = u32() % pages
            if u32() % 100 < write_percent:
                written.add(page)
        out.append(written)
    return out


def test_random_access_replays_the_guests_generator():
    r = run(Options(vcpu_bytes=4 * MiB, random_access=True, write_percent=50, seed=3))
    _, it2 = _memstress_reference(3, 1024, 2, 50)
    d2 = counts(r, "dirty 2")
    assert d2["faults_perm"] == d2["pages_marked_dirty"] == len(it2)
    assert counts(r, "get 2")["dirty_pages_reported"] == len(it2)
    assert d2["guest_writes"] + d2["guest_reads"] == 1024


def test_overlapped_vcpus_and_slots():
    r = run(Options(vcpu_bytes=4 * MiB, vcpus=2, partition=False, slots=4))
    per = r.phase("dirty 2").per_vcpu
    # vCPUs run one after another: vCPU 0 faults every page, vCPU 1 finds them writable
    assert [p["faults_perm"] for p in per] == [2048, 0] and per[1]["writes_no_fault"] == 2048
    c1 = counts(r, "clear 1")
    assert c1["clear_calls"] == 4 and c1["mask_words"] == 2048 // 64


def test_guest_random_matches_the_recurrence():
    g, x = GuestRandom(5), 5
    got = g.take(70000).tolist() + g.take(3).tolist()
    ref = []
    for _ in range(70003):
        x = x * 48271 % ((1 << 31) - 1)
        ref.append(x)
    assert got == ref


@pytest.mark.parametrize("backing, logging", [("2m", True), ("1g", True), ("2m", False), ("4k", False)])
def test_guest_pass_equals_one_access_at_a_time(backing, logging):
    """The batched pass makes the same calls as the VM's fault handler run
    access by access: same counts, same final table (blocks broken up by
    faults, reads of what a write left unmapped, THP faulted in)."""
    rng = np.random.default_rng(7)
    base, size = GiB, 2 * GiB if backing == "1g" else 8 * MiB
    pages = rng.integers(0, size // 4096, 3000)
    pages[:500] = np.arange(500)                           # a run inside one block
    ipas = (pages * 4096 + base).astype(np.uint64)
    writes = rng.random(len(ipas)) < 0.4
    vms = []
    for batched in (True, False):
        vm = VM(40, eager_split_chunk=0)
        slot = vm.add_memslot(size, backing, base=base, populate=logging)
        if logging:
            vm.enable_dirty_logging()
            vm.clear_dirty_log()
        if batched:
            guest_pass(vm, ipas, writes)
        else:
            for ip, w in zip(ipas.tolist(), writes.tolist()):
                guest_write(vm, slot, ip, w)
        vms.append(vm)
    a, b = vms
    assert a.snapshot() == b.snapshot()
    assert np.array_equal(a.pt.descriptors, b.pt.descriptors)
    assert a.counters["faults_perm"] + a.counters["faults_translation"] + a.counters["faults_perm_block"] > 0


def test_predicted_time_hook_takes_the_slowest_vcpu():
    class Profile:
        name = "toy"
        def seconds(self, c):
            return 1e-6 * c["faults_perm"] + 1e-9 * c["entries_read"]
    r = run(Options(vcpu_bytes=4 * MiB, vcpus=2, partition=False))
    p = r.phase("dirty 2")
    want = max(1e-6 * c["faults_perm"] + 1e-9 * c["entries_read"] for c in p.per_vcpu)
    assert phase_seconds(p, Profile()) == pytest.approx(want) and want > 0
    assert phase_seconds(p, None) is None


# ---------------------------------------------------------------------------
# Custom strategies, everywhere

def test_custom_strategy_equal_to_builtin_gives_identical_counts():
    mine = Strategy.custom("mine", WalkFlags.LEAF | WalkFlags.SKIP_LEVEL3, 3)
    res = run_all(Options(vcpu_bytes=64 * MiB, backing_src="anonymous_thp", eager_split_chunk="2M",
                          iterations=3), ["SKIP_LEVEL", mine])
    a, b = res.runs["SKIP_LEVEL"], res.runs["mine"]
    assert [p.counts for p in a.phases] == [p.counts for p in b.phases]
    w = Workload(guest_size=2 * GiB, passes=2, writes=500)
    cmp = compare(w, [(WalkFlags.LEAF, 2), Strategy.MAX_LEVEL])
    rows = {r["strategy"]: r for r in cmp.rows()}
    assert rows["flags=0x1,max_level=2"]["entries_read"] == rows["MAX_LEVEL"]["entries_read"]
    assert rows["flags=0x1,max_level=2"]["identical"]
    pr = run_preset("rfc-16g-thp", [mine], writes=100)
    assert [r["strategy"] for r in pr.rows()] == ["KERNEL", "mine"]


def test_wrong_python_split_visitor_is_caught_as_a_differing_table():
    def lazy_split(ctx, visit):           # "splits" nothing
        return 0
    bad = CustomStrategy("lazy", split_visitor=lazy_split)
    cmp = compare(Workload(guest_size=2 * GiB, passes=1, writes=0), [bad])
    assert not cmp.diffs[bad].identical and "unsplit" in cmp.diffs[bad].describe()
    res = run_all(Options(vcpu_bytes=64 * MiB, backing_src="anonymous_thp", eager_split_chunk="2M",
                          write_percent=0), [bad])
    assert not res.diffs["lazy"].identical


def kernel_split_in_python(ctx, visit):
    """stage2_split_walker() as a Python split visitor: the kernel's split of
    each entry, through ctx.split()."""
    return ctx.split(ctx.arg.memcache)


def skip_return_in_python(ctx, visit):
    """The RFC's first patch (the engine's stage2_split_skip_walker) restated
    in Python: SKIP_CHILDREN for a table of pages, and after building a
    whole page-level subtree."""
    from s2fast.flags import SKIP_CHILDREN
    if visit == WalkFlags.TABLE_PRE:
        return SKIP_CHILDREN if ctx.level + 1 == 3 else 0
    mc = ctx.arg.memcache
    full = False
    if ctx.level < 3 and ctx.old & 1:
        nr = (1 << (ctx.arg.page_shift - 3)) + 1 if ctx.level == 1 else 1
        full = ctx.level >= (1 if ctx.arg.page_shift == 12 else 2) and mc.nobjs >= nr
    ret = ctx.split(mc)
    return SKIP_CHILDREN if ret == 0 and full else ret


@pytest.mark.parametrize("builtin, py", [(Strategy.KERNEL, CustomStrategy("py-kernel", split_visitor=kernel_split_in_python)),
                                         (Strategy.SKIP_RETURN, CustomStrategy("py-skip", WalkFlags.LEAF | WalkFlags.TABLE_PRE,
                                                                               split_visitor=skip_return_in_python))])
def test_python_split_visitor_restating_a_builtin_gives_its_counts(builtin, py):
    """A Python split visitor that splits through ctx.split() (the kernel's
    stage2_split_walker on the entry) reproduces the built-in strategy it
    restates: every count of every phase, and the final table."""
    opts = Options(vcpu_bytes=GiB, backing_src="anonymous_hugetlb_1gb", eager_split_chunk="2M")
    res = run_all(opts, [builtin, py])
    a, b = res.runs[builtin.name], res.runs[py.name]
    assert [p.counts for p in a.phases] == [p.counts for p in b.phases]
    assert res.diffs[py.name].identical
    assert a.phase("clear 1").counts["pages_alloc"] == 513       # 1 GiB: a table of blocks, 512 of pages
    ga, gb = (VM(40, strategy=s, initially_set=False) for s in (builtin, py))
    for vm in (ga, gb):
        vm.add_memslot(2 * GiB, "mix:1g=50,2m=25,4k=25", seed=3)
        vm.enable_dirty_logging()
    assert ga.snapshot() == gb.snapshot() and np.array_equal(ga.pt.descriptors, gb.pt.descriptors)


def wrprotect_in_python(ctx, visit):
    """stage2_attr_walker() clearing S2AP_W, restated: -EAGAIN (ignored by
    a walk without HANDLE_FAULT) for an invalid entry, a store only when the
    entry changes."""
    if not ctx.old & 1:
        return -11
    new = ctx.old & ~(1 << 7)
    if new != ctx.old:
        ctx.set(new)
    return 0


def test_python_wrprotect_visitor_restating_the_kernels_gives_its_counts():
    py = CustomStrategy("py-wp", wrprotect_visitor=wrprotect_in_python)
    for opts in (Options(vcpu_bytes=256 * MiB, backing_src="anonymous_thp", eager_split_chunk="2M"),
                 Options(vcpu_bytes=256 * MiB, manual_protect=False, write_percent=50, random_access=True)):
        res = run_all(opts, [py])
        a, b = res.runs["KERNEL"], res.runs["py-wp"]
        assert [p.counts for p in a.phases] == [p.counts for p in b.phases]
        assert res.diffs["py-wp"].identical and sum(p.counts["wp_calls"] for p in a.phases) > 0


def test_wrong_python_wrprotect_visitor_is_caught():
    lazy = CustomStrategy("no-wp", wrprotect_visitor=lambda ctx, visit: 0)
    res = run_all(Options(vcpu_bytes=64 * MiB, backing_src="anonymous_thp"), [lazy])
    assert not res.diffs["no-wp"].identical     # blocks left writable
    # the guest's writes after CLEAR: every page faults under KERNEL, none here
    assert res.runs["KERNEL"].phase("dirty 2").faults == 64 * MiB // 4096
    assert res.runs["no-wp"].phase("dirty 2").faults == 0


def test_ctx_split_needs_a_cache_and_is_valid_only_in_its_callback():
    kept = []

    def keep(ctx, visit):
        kept.append(ctx)
        return ctx.split(None)
    vm = VM(40, strategy=CustomStrategy("bad", split_visitor=keep), initially_set=False, eager_split_chunk="2M")
    vm.add_memslot(GiB, "1g")
    with pytest.raises(TypeError, match="needs the split cache"):
        vm.enable_dirty_logging()
    with pytest.raises(RuntimeError, match="only valid during its callback"):
        kept[0].split(vm.split_cache)


def test_strategy_values_refused():
    with pytest.raises(ValueError, match="built-in strategy's"):
        CustomStrategy("kernel")
    with pytest.raises(ValueError, match="max_level 7"):
        CustomStrategy("x", WalkFlags.LEAF, 7)
    with pytest.raises(ValueError, match="table visits"):
        CustomStrategy("x", WalkFlags.LEAF | WalkFlags.TABLE_POST)
    with pytest.raises(TypeError, match="strategy must be"):
        compare(Workload(guest_size=2 * GiB), [3.5])


# ---------------------------------------------------------------------------
# The command

def test_cli_report_in_the_selftests_order(tmp_path):
    mod = tmp_path / "mine.py"
    mod.write_text("from s2fast import CustomStrategy, WalkFlags\n"
                   "STRATEGIES = [CustomStrategy('mod', WalkFlags.LEAF, 2)]\n")
    rc, out, err = main("dirty-log-perf", "-b", "8M", "-s", "anonymous_thp", "--eager-split-chunk", "2M",
                        "--strategy", "mine=LEAF|SKIP_LEVEL3", "--strategy-module", str(mod), "-c", "0")
    assert rc == 0 and err == ""
    lines = [l.split(":")[0] for l in out.splitlines()]
    order = ["Test iterations", "Testing guest mode", "guest physical test memory", "Populate memory time",
             "Enabling dirty logging time", "Iteration 1 dirty memory time", "Iteration 1 get dirty log time",
             "Iteration 1 clear dirty log time", "Iteration 2 dirty memory time",
             "Iteration 2 get dirty log time", "Iteration 2 clear dirty log time",
             "Disabling dirty logging time"]
    pos = [lines.index(o) for o in order]
    assert pos == sorted(pos)
    assert "Get dirty log over 2 iterations took" in out and "Clear dirty log over 2 iterations took" in out
    assert "times need a cost-model profile" in out and "-c 0: vCPU pinning has no effect" in out
    assert "memslot 0 (guest code" in out
    assert "exact counts, strategy mine" in out and "exact counts, strategy mod" in out
    assert "side by side" in out and "final tables vs KERNEL: mine: identical, mod: identical" in out


def test_cli_json_with_a_profile_predicts_each_phase_from_its_counts():
    from s2fast.cost.model import load_profile
    rc, out, err = main("dirty-log-perf", "-b", "4M", "--json", "--profile", "generic")
    assert rc == 0, err
    d = json.loads(out)
    ph = d["strategies"]["KERNEL"]["phases"]
    assert [p["name"] for p in ph][0] == "populate" and ph[0]["counts"]["faults_translation"] == 1024
    # One vCPU: the phase's prediction is the profile's price of its counts.
    assert ph[0]["predicted_s"] == pytest.approx(load_profile("generic").seconds(ph[0]["counts"]))
    assert ph[0]["predicted_s"] > 0 and d["profile"] == "generic"
    assert d["layout"]["gpa"] == TOP40 - 4 * MiB - 4 * KiB


def test_cli_unknown_profile_is_a_usage_error():
    rc, out, err = main("dirty-log-perf", "-b", "4M", "--profile", "graviton3")
    assert rc == 2 and out == "" and "graviton3" in err and len(err.strip().splitlines()) == 1


def test_cli_compare_takes_custom_strategies():
    rc, out, err = main("compare", "--guest-size", "2G", "--passes", "1", "--writes", "0",
                        "--strategy", "lvl2=LEAF,max_level=2")
    assert rc == 0, err
    assert "lvl2" in out and "KERNEL" in out and "SKIP_RETURN" not in out


def test_cli_strategy_takes_a_builtin_name_too():
    rc, out, err = main("dirty-log-perf", "-b", "4M", "--strategy", "skip-level", "--strategy", "KERNEL")
    assert rc == 0, err
    assert "exact counts, strategy SKIP_LEVEL" in out and "final tables vs KERNEL: SKIP_LEVEL: identical" in out
    rc, out, err = main("dirty-log-perf", "-b", "4M", "--strategy", "bogus")
    assert rc == 2 and out == "" and "'bogus' is neither a built-in one" in err and len(err.strip().splitlines()) == 1


def test_readme_run_prints_what_the_readme_shows():
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    cmd, shown = re.search(r"```sh\n(s2fast dirty-log-perf[^\n]*)\n```\n\n```\n(.*?)```", text, re.S).groups()
    rc, out, err = main(*cmd.split()[1:])
    assert rc == 0 and out == shown


def test_table_split_takes_a_custom_strategy():
    from s2fast import MemCache, Stage2PageTable
    tables = []
    for s in (Strategy.SKIP_LEVEL, Strategy.custom("same", WalkFlags.LEAF | WalkFlags.SKIP_LEVEL3)):
        pt = Stage2PageTable(40)
        pt.map(GiB, 2 * GiB, 1 << 40, 0xC, memcache=MemCache(8))
        pt.reset_stats()
        assert pt.split(GiB, 2 * GiB, MemCache(2 * 513), strategy=s) == 0
        tables.append(pt)
    a, b = tables
    assert a.stats == b.stats and np.array_equal(a.descriptors, b.descriptors)


@pytest.mark.parametrize("granule, src, chunk, size", [(16384, "anonymous_hugetlb_32mb", "32M", 64 * MiB),
                                                       (65536, "anonymous_thp", "512M", GiB)])
def test_runs_on_16k_and_64k_hosts(granule, src, chunk, size):
    """A whole run on a 16/64 KiB host (new_vm once built a PUD Backing these
    hosts refuse, so every such run failed). Closed forms with -w 100, 4 KiB
    guest pages: populate maps one PMD block per PMD_SIZE; after a CLEAR,
    each host page faults once; CLEAR hands one mask word per 64 host pages."""
    r = run(Options(vcpu_bytes=size, granule=granule, backing_src=src, eager_split_chunk=chunk))
    pmd = {16384: 32 * MiB, 65536: 512 * MiB}[granule]
    assert r.phase("populate").faults == size // pmd
    assert r.phase("populate").counts["guest_writes"] == size // 4096
    assert r.phase("dirty 1").faults == 0
    d2 = r.phase("dirty 2").counts
    assert r.phase("dirty 2").faults == d2["pages_marked_dirty"] == size // granule
    assert r.phase("clear 1").counts["mask_words"] == size // granule // 64
    assert r.phase("clear 1").counts["split_calls"] == size // granule // 64


def test_ctx_split_leaves_tables_alone_and_refuses_a_changed_entry():
    """ctx.split() on a table entry (a TABLE_PRE visit) returns 0 and changes
    nothing, as the kernel's visitor never sees one; a second split of the
    same entry in one callback is refused (it would build a table from a
    block that is no longer there, and leak the first)."""
    from s2fast import MemCache, Prot, Stage2PageTable
    pt = Stage2PageTable(40)
    pt.map(GiB, GiB, 1 << 40, int(Prot.R | Prot.W), memcache=MemCache(16))          # one 1 GiB block
    pt.map(4 * GiB, 2 * MiB, 1 << 41, int(Prot.R | Prot.W), memcache=MemCache(16), force_pte=True)
    before = pt.descriptors.copy(), pt.pages_live
    rets = []
    pt.walk(4 * GiB, 2 * MiB, lambda ctx, visit: rets.append(ctx.split(MemCache(600))), WalkFlags.TABLE_PRE)
    assert rets and set(rets) == {0}
    assert np.array_equal(pt.descriptors[:len(before[0])], before[0]) and pt.pages_live == before[1]

    def twice(ctx, visit):
        assert ctx.split(MemCache(600)) == 0
        ctx.split(MemCache(600))
    with pytest.raises(RuntimeError, match="entry changed since the walker read it"):
        pt.walk(GiB, 4096, twice, WalkFlags.LEAF)
    assert pt.table_pages() == pt.pages_live                  # nothing leaked


def test_guest_write_checks_its_arguments():
    vm = VM(40)
    slot = vm.add_memslot(2 * MiB, "4k", base=GiB)
    with pytest.raises(TypeError, match="ipa"):
        guest_write(vm, slot, float(GiB))
    with pytest.raises(TypeError, match="write"):
        guest_write(vm, slot, GiB, "no")
    assert vm.counters["guest_writes"] == 0
