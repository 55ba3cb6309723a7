"""Bad input for tables in external memory: hypothesis feeds random page
contents and random VTTBR/VTCR values to ``Stage2PageTable.from_image`` and
then uses the table every way a tool would: translate_batch (all access
kinds, checked against the architectural model in ``tests/models/arch_translate.py``), a
walk with a Python visitor, the C ``CountVisitor``, ``leaves()``,
``annotations()``, ``dump()``, ``copy()`` and writes.

Page contents are biased towards what breaks walkers: table descriptors that
point inside the image, at the root or another ancestor, at themselves,
just outside the image or beyond the PA size, truncated images (down to a
few bytes, not a multiple of 8), pages filled with one repeated descriptor,
and garbage. The outcome of each call must be a result or one of the
exceptions the API documents for it:

* from_image: ``ValueError`` (bad VTCR/VTTBR, tables that are not a tree)
  or ``TypeError``;
* walks, leaves, annotations, dump, copy: ``CorruptTableError`` (its
  subclass ``OutsideMemoryError`` for tables outside memory) or
  ``PhysMemReadError``;
* writes, ``ctx.set``: ``ReadOnlyTableError``;
* translate: never an exception; an unreadable table is an external abort.

Never a crash, a hang or an unbounded walk: random geometries keep IPA
spaces at 32 bits or less when tables may alias (so a fully aliased walk is
at most about a million entries), and a Python visitor stops itself after a
few thousand calls.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from models import arch_translate as arch
from models.arch_translate import ACCESSES, FIELDS, Memory, make_vtcr

import s2fast
from s2fast import CountVisitor, Prot, Stage2PageTable, WalkFlags
from s2fast.errors import CorruptTableError, PhysMemReadError, ReadOnlyTableError
from s2fast.physmem import PhysMem

GRANULES = (4096, 16384, 65536)
WALK_ERRORS = (CorruptTableError, PhysMemReadError)
PY_VISITOR_LIMIT = 3000


class VisitorBoom(Exception):
    """Raised by the fuzz visitor; must come out of walk() unchanged."""


@st.composite
def fuzz_image(draw):
    granule = draw(st.sampled_from(GRANULES))
    shift = granule.bit_length() - 1
    per = granule // 8
    raw_vtcr = draw(st.integers(0, 9)) == 0
    if raw_vtcr:
        # Any 64-bit value, or any T0SZ/SL0/TG0/PS combination.
        if draw(st.booleans()):
            # DS (bit 32) clear: LPA2 is test_translate.py::test_vtcr_ds_lpa2_refused.
            vtcr = draw(st.integers(0, (1 << 64) - 1)) & ~(1 << 32)
        else:
            vtcr = (draw(st.integers(0, 63)) | draw(st.integers(0, 3)) << 6 | draw(st.integers(0, 3)) << 14
                    | draw(st.integers(0, 7)) << 16 | draw(st.integers(0, 1)) << 21 | 1 << 31)
    else:
        ia_bits = draw(st.integers(25, 32))
        starts = arch.valid_start_levels(ia_bits, granule)
        ps = draw(st.sampled_from([0, 2, 5] + ([6] if granule == 65536 else [])))
        vtcr = make_vtcr(ia_bits, granule, start_level=draw(st.sampled_from(starts)), ps=ps,
                         ha=draw(st.booleans()))
    try:
        regs = arch.decode(0, vtcr)
        root_pages = regs.root_pages
        if regs.granule != granule:        # a raw VTCR picks its own granule
            granule, shift, per = regs.granule, regs.shift, regs.granule // 8
    except ValueError:
        regs, root_pages = None, 1
    n_pages = root_pages + draw(st.integers(0, 4))
    base = draw(st.sampled_from([0x8000_0000, 0x4000_0000, 0xF_FFF0_0000 & ~((granule << 4) - 1)]))
    base &= ~((granule << 4) - 1)
    pages = [base + i * granule for i in range(n_pages)]
    words = np.zeros(n_pages * per, dtype=np.uint64)

    def addr(pa):
        pa &= (1 << 52) - 1
        return (pa & ((1 << 48) - 1) & ~(granule - 1)) | ((pa >> 48) << 12 if shift == 16 else 0)

    def desc():
        kind = draw(st.integers(0, 11))
        if kind == 0:
            return 0
        if kind <= 4:            # a table inside the image: root, self, ancestor, sibling
            return addr(draw(st.sampled_from(pages))) | 3
        if kind == 5:            # a table just outside, far away, beyond any PS
            pa = draw(st.sampled_from([base - granule, base + n_pages * granule, 1 << 40, 1 << 47,
                                       (1 << 52) - granule, draw(st.integers(0, (1 << 52) - 1))]))
            return addr(pa) | 3
        if kind in (6, 7):       # a page or block with random attributes
            attrs = draw(st.integers(0, (1 << 64) - 1)) & (0xFFF << 52 | 0xFFC)
            return addr(draw(st.integers(0, (1 << 52) - 1))) | attrs | draw(st.sampled_from([1, 3]))
        if kind == 8:            # an annotation
            return draw(st.integers(0, (1 << 64) - 1)) & ~1
        return draw(st.integers(0, (1 << 64) - 1))

    for _ in range(draw(st.integers(0, 20))):
        p = draw(st.integers(0, n_pages - 1))
        if draw(st.integers(0, 7)) == 0:
            words[p * per:(p + 1) * per] = desc()                 # a whole page of one descriptor
        else:
            j = draw(st.integers(0, per - 1)) if draw(st.booleans()) else draw(st.integers(0, 3))
            words[p * per + j] = desc()
    data = words.view(np.uint8)
    if draw(st.integers(0, 4)) == 0:                              # truncated image
        data = data[:draw(st.integers(1, data.size))]
    vttbr = base
    k = draw(st.integers(0, 5))
    if k == 0:
        vttbr = draw(st.integers(0, (1 << 64) - 1))
    elif k == 1:
        vttbr = base | draw(st.integers(0, 0xFFFF)) << 48 | 1          # VMID and CnP
    elif k == 2:
        vttbr = draw(st.sampled_from(pages)) + draw(st.integers(0, granule - 1))
    return dict(granule=granule, vtcr=vtcr, vttbr=vttbr, base=base, data=data, regs=regs,
                xnx=draw(st.booleans()), fwb=draw(st.booleans()), aliases=draw(st.booleans()))


def _row(r) -> dict:
    return {f: (bool(r[f]) if f in ("ok", "readable", "writable", "exec_el1", "exec_el0") else int(r[f]))
            for f in FIELDS}


class PageMemory:
    """The model's memory for the fuzz: a descriptor is readable when its
    8 bytes lie in the image, as the MMU reads it (translate falls back to
    that read when a table page is cut short; walks need whole pages)."""

    def __init__(self, base: int, data: np.ndarray, granule: int) -> None:
        n = data.size // 8
        self.words = np.frombuffer(data[:n * 8].tobytes(), dtype="<u8")
        self.base, self.end, self.granule = base, base + data.size, granule

    def __call__(self, pa: int) -> int:
        # The MMU reads one descriptor: it only has to be in the image itself
        # (see test_translate.py::test_truncated_table_page).
        if pa < self.base or pa + 8 > self.base + 8 * len(self.words):
            raise LookupError(f"descriptor at {pa:#x} is not in the image")
        return int(self.words[(pa - self.base) // 8])


def _model_reader(base: int, data: np.ndarray, granule: int) -> PageMemory:
    return PageMemory(base, data, granule)


def _pick_walk_range(draw, pt):
    top = 1 << pt.ia_bits
    start = draw(st.sampled_from([0, top // 2, top - pt.granule, draw(st.integers(0, top - 1))]))
    size = draw(st.sampled_from([pt.granule, 1 << 21, top, draw(st.integers(1, top))]))
    return start, size


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_from_image_and_everything_after(data):
    img = data.draw(fuzz_image())
    base, raw = img["base"], img["data"]
    note(f"granule={img['granule']} vtcr={img['vtcr']:#x} vttbr={img['vttbr']:#x} base={base:#x} "
         f"bytes={raw.size} aliases={img['aliases']}")
    pm = PhysMem.from_array(raw, base)
    regs = img["regs"]
    # Aliased tables are only walked where the IPA space is small.
    allow_aliases = img["aliases"] and regs is not None and regs.ia_bits <= 32
    try:
        pt = Stage2PageTable.from_image(pm, vttbr=img["vttbr"], vtcr=img["vtcr"], xnx=img["xnx"],
                                        fwb=img["fwb"], allow_aliases=allow_aliases)
    except (ValueError, TypeError) as e:
        note(f"from_image refused: {e}")
        # Refusing a geometry the architecture allows is only for an alias scan.
        # (PS 52 bits with 4/16 KiB pages: see test_translate.py::test_ps_52_bits_with_4k_16k.)
        if regs is not None and not (regs.shift != 16 and img["vtcr"] >> 16 & 7 == 6):
            assert "tree" in str(e), f"valid geometry refused: {e}"
        return
    assert regs is not None, f"from_image opened VTCR {img['vtcr']:#x}, which the architecture refuses"
    regs = arch.decode(img["vttbr"], img["vtcr"])
    assert pt.read_only
    assert pt.ia_bits == regs.ia_bits and pt.granule == regs.granule

    # translate_batch: every access kind, against the model.
    top = 1 << pt.ia_bits
    ipas = [data.draw(st.integers(0, top - 1)) for _ in range(12)]
    ipas += [0, top - 1, top, (1 << 64) - 1]
    arr = np.array(ipas, dtype=np.uint64)
    reader = _model_reader(base, raw, regs.granule)
    for access in ACCESSES:
        ha = data.draw(st.sampled_from([None, False, True]))
        kw = {} if ha is None else {"ha": ha}
        rows = pt.translate_batch(arr, access, **kw)
        for ipa, row in zip(ipas, rows):
            want = arch.translate(reader, ipa, access, vttbr=img["vttbr"], vtcr=img["vtcr"], ha=ha,
                                  xnx=img["xnx"], regs=regs)
            got = _row(row)
            assert got == want, (f"ipa={ipa:#x} {access} ha={ha}: "
                                 f"{ {k: (got[k], want[k]) for k in FIELDS if got[k] != want[k]} }")

    # A Python visitor over a random range: counts, stops itself, sometimes
    # raises or tries to write.
    start, size = _pick_walk_range(data.draw, pt)
    behaviour = data.draw(st.sampled_from(["count", "raise", "set", "hint"]))
    calls = []

    def visitor(ctx, visit):
        calls.append((ctx.addr, ctx.level, ctx.old))
        if len(calls) >= PY_VISITOR_LIMIT:
            return -1
        if behaviour == "raise" and len(calls) == 3:
            raise VisitorBoom()
        if behaviour == "set" and len(calls) == 2:
            ctx.set(0)
        if behaviour == "hint" and ctx.level < 3 and visit == WalkFlags.TABLE_PRE:
            return s2fast.SKIP_CHILDREN
        return 0

    flags = data.draw(st.sampled_from([WalkFlags.LEAF, WalkFlags.LEAF | WalkFlags.TABLE_PRE,
                                       WalkFlags.LEAF | WalkFlags.TABLE_PRE | WalkFlags.TABLE_POST]))
    try:
        ret = pt.walk(start, size, visitor, flags)
        assert isinstance(ret, int)
        assert ret in (0, -1, s2fast.EINVAL, s2fast.ERANGE), ret
        assert len(calls) <= PY_VISITOR_LIMIT
    except VisitorBoom:
        assert behaviour == "raise" and len(calls) == 3
    except ReadOnlyTableError:
        assert behaviour == "set" and len(calls) == 2
    except WALK_ERRORS as e:
        note(f"walk: {e!r}")

    # The C visitor over the whole space.
    cv = CountVisitor()
    try:
        assert pt.walk(0, top, cv, WalkFlags.LEAF | WalkFlags.TABLE_PRE) in (0,)
        counted = sum(cv.valid.values())
    except WALK_ERRORS as e:
        note(f"count walk: {e!r}")
        counted = None

    # leaves / annotations: complete, or an error; skip_unreadable never fails.
    try:
        leaves = pt.leaves()
        assert leaves.dtype.names[:3] == ("ipa", "level", "pte")
        if counted is not None:
            assert len(leaves) == counted
        assert np.all(leaves["pte"] & np.uint64(1))
        assert np.all(np.diff(leaves["ipa"].astype(np.float64)) > 0) if len(leaves) > 1 else True
    except WALK_ERRORS as e:
        note(f"leaves: {e!r}")
    partial = pt.leaves(skip_unreadable=True)
    assert np.all(partial["pte"] & np.uint64(1))
    pt.annotations(skip_unreadable=True)
    try:
        pt.annotations()
    except WALK_ERRORS:
        pass

    # Valid leaves translate as successes (or AF/permission faults) at the
    # leaf's level, where the architecture agrees they are leaves.
    if len(partial):
        sample = partial[:: max(1, len(partial) // 8)]
        rows = pt.translate_batch(sample["ipa"], "read", ha=True)
        for leaf, row in zip(sample, rows):
            want = arch.translate(reader, int(leaf["ipa"]), "read", vttbr=img["vttbr"], vtcr=img["vtcr"],
                                  ha=True, xnx=img["xnx"], regs=regs)
            assert _row(row) == want

    # dump (if present), copy, writes.
    if hasattr(pt, "dump"):
        try:
            text = pt.dump()
            assert isinstance(text, str)
            pt.dump(json=True)
        except WALK_ERRORS as e:
            note(f"dump: {e!r}")
    try:
        cp = pt.copy()
        assert not cp.read_only
    except WALK_ERRORS + (ValueError,) as e:
        note(f"copy: {e!r}")
    with pytest.raises(ReadOnlyTableError):
        pt.map(0, pt.granule, 0, Prot.R)
    with pytest.raises(ReadOnlyTableError):
        pt.unmap(0, pt.granule)
    with pytest.raises(ReadOnlyTableError):
        pt.wrprotect(0, top)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(vttbr=st.integers(0, (1 << 64) - 1), vtcr=st.integers(0, (1 << 64) - 1),
       nbytes=st.integers(1, 64))
def test_fuzz_registers_on_a_tiny_image(vttbr, vtcr, nbytes):
    """Any register values over a few bytes of memory: open or ValueError,
    exactly as the architecture decodes VTCR; translate is total."""
    vtcr &= ~(1 << 32)          # DS: test_translate.py::test_vtcr_ds_lpa2_refused
    raw = np.full(nbytes, 0xFF, dtype=np.uint8)
    pm = PhysMem.from_array(raw, vttbr & ((1 << 48) - 1) & ~0xFFF)
    try:
        regs = arch.decode(vttbr, vtcr)
    except ValueError:
        regs = None
    ps52_small_granule = regs is not None and regs.shift != 16 and (vtcr >> 16) & 7 == 6
    try:
        pt = Stage2PageTable.from_image(pm, vttbr=vttbr, vtcr=vtcr)
    except ValueError:
        assert regs is None or ps52_small_granule, f"VTCR {vtcr:#x} refused"
        return
    assert regs is not None
    rows = pt.translate_batch(np.array([0, (1 << regs.ia_bits) - 1, 1 << regs.ia_bits], dtype=np.uint64))
    reader = _model_reader(pm.segments[0].pa, raw, regs.granule)
    for ipa, row in zip((0, (1 << regs.ia_bits) - 1, 1 << regs.ia_bits), rows):
        assert _row(row) == arch.translate(reader, ipa, "read", vttbr=vttbr, vtcr=vtcr, regs=regs)


def test_descriptor_naming_its_own_table_is_refused_or_bounded():
    """A level-1 entry whose table is the root itself: not a tree (refused);
    with allow_aliases the walk and translate still end."""
    words = np.zeros(512, dtype=np.uint64)
    words[:] = 0x8000_0000 | 3                # every entry names the root page
    pm = PhysMem.from_array(words, 0x8000_0000)
    vtcr = make_vtcr(32, 4096, start_level=1)   # 4 root entries
    with pytest.raises(ValueError, match="tree"):
        Stage2PageTable.from_image(pm, vttbr=0x8000_0000, vtcr=vtcr)
    pt = Stage2PageTable.from_image(pm, vttbr=0x8000_0000, vtcr=vtcr, allow_aliases=True)
    # Level 3 reads the root page as a page table: 0b11 entries are pages
    # at PA 0x8000_0000.
    r = pt.translate(0x1234_5678, "read")
    assert (bool(r["ok"]), int(r["level"]), int(r["pa"])) == (False, 3, 0x8000_0678)
    assert int(r["fault"]) == s2fast.Fault.ACCESS_FLAG
    cv = CountVisitor()
    assert pt.walk(0, 1 << 32, cv, WalkFlags.LEAF) == 0
    assert cv.valid == {3: 4 * 512 * 512}
