"""The engine's fault path (s2fast/_mmu.pyx, run by VM.access_pages) against
the plain-Python model of mmu.c's (tests/models/mmu_fault.py), access by
access: same counters (engine and VM), same descriptors, same dirty bitmaps,
over hypothesis-drawn VMs, logging states and access streams."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import mmu_fault
from s2fast.mmu import VM

MiB, GiB = 1 << 20, 1 << 30

# (granule, backing, slot size): every leaf kind a fault can map on each host
CASES = [(4096, "1g", 2 * GiB), (4096, "2m", 16 * MiB), (4096, "4k", 4 * MiB),
         (4096, "mix:1g=50,2m=25,4k=25", 4 * GiB), (16384, "32m", 128 * MiB),
         (16384, "mix:32m=50,16k=50", 256 * MiB), (65536, "512m", 1 * GiB), (65536, "64k", 512 * MiB)]


def make_vm(granule, backing, size, populate, logging, initially_set, chunk, seed):
    """Two memslots; the first logs dirty pages when ``logging`` (after one
    CLEAR, which write-protects it)."""
    vm = VM(40, granule=granule, initially_set=initially_set, eager_split_chunk=chunk)
    vm.add_memslot(size, backing, base=GiB, populate=populate, seed=seed)
    vm.add_memslot(size, backing, base=GiB + 2 * max(size, GiB), populate=populate, seed=seed + 1)
    if logging:
        vm.enable_dirty_logging(0)
        vm.clear_dirty_log(0)
    return vm


def state(vm):
    return (vm.snapshot(), vm.pt.descriptors.copy(),
            [None if s.dirty_bitmap is None else s.dirty_bitmap.copy() for s in vm.memslots])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), populate=st.sampled_from([True, True, False]),
       logging=st.sampled_from([True, True, False]),
       initially_set=st.booleans(), split=st.booleans(), seed=st.integers(0, 2**16),
       n=st.integers(1, 600), hot=st.integers(1, 64), write_pct=st.sampled_from([0, 30, 70, 100]),
       batches=st.integers(1, 4), disable=st.booleans())
def test_engine_fault_path_equals_the_model(case, populate, logging, initially_set, split, seed, n, hot,
                                            write_pct, batches, disable):
    granule, backing, size = case
    chunk = (2 * MiB if granule == 4096 else granule) if split else 0
    vms = [make_vm(granule, backing, size, populate, logging, initially_set, chunk, seed) for _ in range(2)]
    rng = np.random.default_rng(seed)
    slots = vms[0].memslots
    # accesses bunched on a few "hot" blocks, so that faults meet each other's tables
    blocks = rng.integers(0, size // (2 * MiB if granule == 4096 else granule * 64), hot)
    span = min(size, 2 * MiB if granule == 4096 else granule * 64)
    which = rng.integers(0, 2, n)
    off = (blocks[rng.integers(0, hot, n)] * span + rng.integers(0, span // granule, n) * granule) % size
    ipas = np.array([slots[w].base for w in which], dtype=np.uint64) + off.astype(np.uint64)
    writes = rng.random(n) * 100 < write_pct
    engine, model = vms
    # with disable: the second half runs after logging stops, when faults
    # map blocks again over the tables logging left (and free them)
    halves = np.array_split(np.arange(n), 2) if disable and logging else [np.arange(n)]
    for h, idx in enumerate(halves):
        if h:
            for vm in vms:
                vm.disable_dirty_logging(0)
        for part in np.array_split(idx, batches):
            engine.access_pages(ipas[part], writes[part])
        for ip, w in zip(ipas[idx].tolist(), writes[idx].tolist()):
            mmu_fault.guest_access(model, ip, w)
    (c1, d1, b1), (c2, d2, b2) = state(engine), state(model)
    assert c1 == c2
    assert np.array_equal(d1, d2)
    for x, y in zip(b1, b2):
        assert (x is None and y is None) or np.array_equal(x, y)


def test_model_catches_a_wrong_fault_path(monkeypatch):
    """The comparison above fails on a changed decision: a model that maps
    a whole block where a logging slot needs a page differs from the engine
    (in its counts, its table and its bitmap)."""
    vm_e = make_vm(4096, "1g", 2 * GiB, True, True, True, 0, 1)
    vm_m = make_vm(4096, "1g", 2 * GiB, True, True, True, 0, 1)
    ipas = np.array([GiB, GiB + 4096], dtype=np.uint64)
    vm_e.access_pages(ipas, True)
    monkeypatch.setattr(mmu_fault, "fault_size", lambda vm, slot, ipa: vm.host.kind_sizes[slot.kind_at(ipa)])
    for ip in ipas.tolist():
        mmu_fault.guest_access(vm_m, ip, True)
    (c1, d1, b1), (c2, d2, b2) = state(vm_e), state(vm_m)
    assert c1 != c2 and c1["faults_perm_block"] == 1 and c2["faults_perm"] == 1
    assert not np.array_equal(d1, d2) and not np.array_equal(b1[0], b2[0])


def test_vcpu_cache_topped_up_only_when_the_fault_may_need_a_table():
    """user_mem_abort()'s topup_memcache = !fault_is_perm || (logging_active
    && write_fault): after logging stops, a write to a write-protected page
    is a permission fault relax_perms() fixes, with no top-up."""
    vm = make_vm(4096, "4k", 4 * MiB, True, True, True, 0, 5)     # CLEAR write-protected slot 0
    vm.disable_dirty_logging(0)
    vm.vcpu_cache.topup(1)
    vm.access_pages([GiB], True)
    assert vm.counters["faults_perm"] == 1 and vm.counters["vcpu_cache_topups"] == 0
    assert vm.vcpu_cache.nobjs == 1
    vm2 = make_vm(4096, "4k", 4 * MiB, False, True, True, 0, 5)
    vm2.vcpu_cache.topup(1)
    vm2.access_pages([GiB], False)                              # translation fault: topped up
    assert vm2.counters["vcpu_cache_topups"] == 1 and vm2.vcpu_cache.nobjs >= 38


def test_access_pages_refuses_bad_input_and_changes_nothing():
    vm = make_vm(4096, "2m", 16 * MiB, True, True, True, 0, 3)
    before = state(vm)
    with pytest.raises(ValueError, match="outside every memslot"):
        vm.access_pages([GiB, 5 * GiB], True)
    with pytest.raises(ValueError, match="IPA space"):
        vm.access_pages([1 << 41], True)
    with pytest.raises(TypeError, match="writes"):
        vm.access_pages([GiB], [1])
    with pytest.raises(ValueError, match="2 values for 1"):
        vm.access_pages([GiB], [True, False])
    with pytest.raises(TypeError, match="integer"):
        vm.access_pages([1.5], True)
    after = state(vm)
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert all(np.array_equal(x, y) for x, y in zip(before[2], after[2]) if x is not None)


def test_read_fault_on_a_logging_slot_maps_the_page_read_only():
    """user_mem_abort(): while logging, a read fault maps the page without
    write permission (only a write fault may make it writable, so that the
    write is seen and logged); the write that follows faults again, on
    permission, and marks the page dirty."""
    vm = make_vm(4096, "4k", 4 * MiB, False, True, True, 0, 7)    # slot 0 logging, nothing mapped
    vm.access_pages([GiB], False)
    assert vm.counters["faults_translation"] == 1 and vm.counters["faults_read"] == 1
    level, desc = vm.translate(GiB)
    assert level == 3 and desc & 1 and not desc & (1 << 7)            # valid, S2AP_W clear
    assert vm.memslots[0].dirty_pages() == 0
    vm.access_pages([GiB], True)
    assert vm.counters["faults_perm"] == 1 and vm.translate(GiB)[1] & (1 << 7)
    assert vm.memslots[0].dirty_pages() == 1
