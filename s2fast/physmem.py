"""Physical memory for tables that live outside s2fast's pool.

A ``PhysMem`` is a sorted list of non-overlapping segments, each a physical
address and a flat, read-only ``uint8`` numpy buffer. The buffers are views of
what the caller gave (an array, a memory-mapped raw file, an ELF core's
PT_LOAD contents, a stack of table pages): nothing is ever copied, so a
multi-gigabyte dump opens instantly and costs only the pages a walk touches.

Reads that no single segment holds raise ``s2fast.PhysMemReadError``; they are
never served from a neighbouring segment or from outside a buffer."""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from .checks import U64_MAX, integer
from .errors import PhysMemReadError
from .geometry import GRANULES
from .sizes import format_size

PA_LIMIT = 1 << 64
PAGE_SIZES = GRANULES
_LE_U64 = np.dtype("<u8")

PathLike = Union[str, "os.PathLike[str]"]


def _int(name: str, v: Any, lo: int = 0, hi: int = U64_MAX) -> int:
    return integer(name, v, lo, hi, hex=True)


def _as_bytes(name: str, array: Any) -> np.ndarray:
    """``array`` as a flat read-only uint8 view of the same memory."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(array).__name__}")
    if array.dtype.hasobject:
        raise TypeError(f"{name} has dtype {array.dtype}, which holds Python objects, not bytes")
    if array.size == 0 or array.nbytes == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} (shape {array.shape}, strides {array.strides}) is not C-contiguous; "
                         "pass np.ascontiguousarray(array) (that copies it)")
    flat = array.reshape(-1)
    data = flat.view(np.uint8) if flat.dtype != np.uint8 else flat[:]
    data.flags.writeable = False
    return data


@dataclass(frozen=True, eq=False)
class Segment:
    """``data.size`` bytes of physical memory starting at ``pa``. ``data`` is a
    1-D, C-contiguous uint8 array (possibly read-only or an ``np.memmap``)."""

    pa: int
    data: np.ndarray

    def __post_init__(self) -> None:
        pa = _int("segment pa", self.pa)
        object.__setattr__(self, "pa", pa)
        d = self.data
        if not isinstance(d, np.ndarray):
            raise TypeError(f"segment data must be a numpy array, not {type(d).__name__}")
        if d.dtype != np.uint8 or d.ndim != 1 or not d.flags.c_contiguous:
            raise ValueError(f"segment data must be a 1-D C-contiguous uint8 array, not {d.dtype} "
                             f"shape {d.shape} strides {d.strides}")
        if d.size == 0:
            raise ValueError(f"segment at PA {pa:#x} is empty")
        if pa + d.size > PA_LIMIT:
            raise ValueError(f"segment at PA {pa:#x} of {d.size:#x} bytes ends beyond 2**64")

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def end(self) -> int:
        """The first PA after the segment."""
        return self.pa + int(self.data.size)

    def __contains__(self, pa: object) -> bool:
        return isinstance(pa, (int, np.integer)) and not isinstance(pa, bool) and self.pa <= int(pa) < self.end

    def __repr__(self) -> str:
        kind = "memmap" if isinstance(self.data, np.memmap) else "array"
        return f"Segment(pa={self.pa:#x}, size={self.size:#x}, {kind})"


class PhysMem:
    """Physical memory as sorted, non-overlapping ``Segment``s.

    ``PhysMem([(pa, array), ...])`` takes any C-contiguous numpy arrays (or
    ``Segment``s); adjacent segments stay separate and nothing is copied. Use
    the constructors ``from_array``, ``from_file``, ``from_pages`` and
    ``from_elf`` for the usual sources."""

    __slots__ = ("_segments", "_starts", "_size")

    def __init__(self, segments: Iterable[Any]) -> None:
        if isinstance(segments, (np.ndarray, str, bytes)) or not hasattr(segments, "__iter__"):
            raise TypeError(f"segments must be an iterable of (pa, array) pairs, not {type(segments).__name__}")
        segs = []
        for i, item in enumerate(segments):
            if isinstance(item, Segment):
                segs.append(item)
                continue
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"segment {i} must be a (pa, array) pair or a Segment, not {item!r:.80}")
            pa, array = item
            pa = _int(f"segment {i} pa", pa)
            segs.append(Segment(pa, _as_bytes(f"segment {i} array", array)))
        if not segs:
            raise ValueError("PhysMem needs at least one segment")
        segs.sort(key=lambda s: s.pa)
        for a, b in zip(segs, segs[1:]):
            if a.end > b.pa:
                raise ValueError(f"segments overlap: [{a.pa:#x}, {a.end:#x}) and [{b.pa:#x}, {b.end:#x})")
        self._segments = tuple(segs)
        self._starts = [s.pa for s in segs]
        self._size = sum(s.size for s in segs)

    # -- constructors -----------------------------------------------------------

    @classmethod
    def from_array(cls, array: np.ndarray, base_pa: int = 0) -> "PhysMem":
        """One segment at ``base_pa`` over the bytes of ``array`` (any dtype,
        C-contiguous; viewed, not copied)."""
        base_pa = _int("base_pa", base_pa)
        return cls([Segment(base_pa, _as_bytes("array", array))])

    @classmethod
    def from_file(cls, path: PathLike, base_pa: int = 0, *, offset: int = 0,
                  size: Optional[int] = None) -> "PhysMem":
        """A raw memory image: the file's bytes ``[offset, offset+size)`` at
        ``base_pa``, memory-mapped read-only (no copy)."""
        path = os.fspath(path)
        base_pa = _int("base_pa", base_pa)
        offset = _int("offset", offset)
        if size is not None:
            size = _int("size", size)
        file_size = _file_size(path)
        if file_size == 0:
            raise ValueError(f"{path!r} is empty")
        if offset >= file_size:
            raise ValueError(f"offset {offset:#x} is at or beyond the end of {path!r} ({file_size:#x} bytes)")
        if size is None:
            size = file_size - offset
        if size == 0:
            raise ValueError(f"size 0 given for {path!r}: a segment must hold at least one byte")
        if offset + size > file_size:
            raise ValueError(f"offset {offset:#x} + size {size:#x} is beyond the end of {path!r} "
                             f"({file_size:#x} bytes)")
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(size,))
        return cls([Segment(base_pa, data)])

    @classmethod
    def from_pages(cls, pa: Any, pages: np.ndarray) -> "PhysMem":
        """Pages scattered in physical memory: ``pa`` holds N page addresses,
        ``pages`` (uint64, shape (N, W)) their contents, W*8 the page size
        (4096, 16384 or 65536). Rows at consecutive PAs that are also
        consecutive in memory become one segment; every segment is a view."""
        if not isinstance(pages, np.ndarray):
            raise TypeError(f"pages must be a numpy uint64 array of shape (N, W), not {type(pages).__name__}")
        if pages.dtype != _LE_U64:
            raise TypeError(f"pages must have dtype uint64 (little-endian), not {pages.dtype}")
        if pages.ndim != 2:
            raise ValueError(f"pages must have shape (N, W), not {pages.shape}")
        n, w = pages.shape
        page_size = w * 8
        if page_size not in PAGE_SIZES:
            raise ValueError(f"pages rows are {w} words ({page_size} bytes); a page is 4096, 16384 or 65536 bytes")
        if n == 0:
            raise ValueError("pages is empty (shape (0, W))")
        if pages.strides[1] != 8:
            raise ValueError(f"pages rows are not contiguous (strides {pages.strides}); "
                             "pass np.ascontiguousarray(pages) (that copies it)")
        if isinstance(pa, np.ndarray):
            if pa.dtype.kind not in "ui":
                raise TypeError(f"pa must be an integer array, not dtype {pa.dtype}")
            if pa.dtype.kind == "i" and pa.size and int(pa.min()) < 0:
                raise ValueError(f"pa holds a negative address {int(pa.min())}")
            pas = pa.astype(np.uint64, copy=False)
        else:
            try:
                items = list(pa)
            except TypeError:
                raise TypeError(f"pa must be an array of page addresses, not {type(pa).__name__} {pa!r}") from None
            pas = np.array([_int(f"pa[{i}]", v) for i, v in enumerate(items)], dtype=np.uint64)
        if pas.shape != (n,):
            raise ValueError(f"pa has shape {pas.shape} but pages has {n} rows")
        bad = np.flatnonzero(pas % np.uint64(page_size))
        if bad.size:
            raise ValueError(f"pa[{bad[0]}] = {int(pas[bad[0]]):#x} is not aligned to the page size {page_size:#x}")
        if int(pas.max()) > PA_LIMIT - page_size:
            i = int(np.argmax(pas))
            raise ValueError(f"pa[{i}] = {int(pas[i]):#x}: the page ends beyond 2**64")
        order = np.argsort(pas, kind="stable")
        spas = pas[order]
        dup = np.flatnonzero(spas[1:] == spas[:-1])
        if dup.size:
            raise ValueError(f"page address {int(spas[dup[0]]):#x} is given twice "
                             f"(pa[{int(order[dup[0]])}] and pa[{int(order[dup[0] + 1])}])")
        # A new segment starts where the next PA is not the next page, or the
        # next page's row is not the next row in memory.
        rows_follow = pages.strides[0] == page_size
        brk = np.ones(n, dtype=bool)
        if n > 1 and rows_follow:
            brk[1:] = (spas[1:] != spas[:-1] + np.uint64(page_size)) | (order[1:] != order[:-1] + 1)
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], n)
        segs = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            r0 = int(order[s])
            block = pages[r0:r0 + (e - s)]
            data = block.reshape(-1).view(np.uint8)
            data.flags.writeable = False
            segs.append(Segment(int(spas[s]), data))
        return cls(segs)

    @classmethod
    def from_elf(cls, path: PathLike) -> "PhysMem":
        """A kdump vmcore or a QEMU ``dump-guest-memory`` ELF core: each
        PT_LOAD with file contents becomes a segment at its p_paddr, mapped
        from the file (no copy). Where PT_LOADs overlap in physical address
        (a kdump core lists the kernel image inside a RAM range too), the
        bytes of the segment listed first win and the others are trimmed."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        path = os.fspath(path)
        file_size = _file_size(path)
        loads = []
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                for i in range(elf.num_segments()):
                    h = elf.get_segment(i).header
                    if h["p_type"] == "PT_LOAD" and h["p_filesz"] > 0:
                        loads.append((int(h["p_paddr"]), int(h["p_offset"]), int(h["p_filesz"])))
        except ELFError as e:
            raise ValueError(f"{path!r} is not a readable ELF file: {e}") from None
        except Exception as e:  # pyelftools/construct raise assorted errors on truncated headers
            raise ValueError(f"{path!r} is not a readable ELF file (truncated or corrupt headers: "
                             f"{type(e).__name__}: {e})") from None
        if not loads:
            raise ValueError(f"{path!r} has no PT_LOAD segment with file contents")
        for pa, off, n in loads:
            if off + n > file_size:
                raise ValueError(f"{path!r} is truncated: the PT_LOAD at PA {pa:#x} needs file bytes "
                                 f"[{off:#x}, {off + n:#x}) but the file has {file_size:#x}")
            if pa + n > PA_LIMIT:
                raise ValueError(f"{path!r}: the PT_LOAD at PA {pa:#x} of {n:#x} bytes ends beyond 2**64")
        whole = np.memmap(path, dtype=np.uint8, mode="r")
        # Keep the earlier-listed PT_LOAD where two overlap; trim or drop the later one.
        kept: list[tuple[int, int]] = []   # sorted disjoint [start, end), neighbours merged
        segs = []
        for pa, off, n in loads:
            for lo, hi in _uncovered(kept, pa, pa + n):
                data = whole[off + (lo - pa): off + (hi - pa)]
                segs.append(Segment(lo, data))
            _cover(kept, pa, pa + n)
        return cls(segs)

    # -- queries ------------------------------------------------------------------

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    @property
    def size(self) -> int:
        """Total bytes over all segments."""
        return self._size

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def find(self, pa: int, nbytes: int = 8) -> Optional[Segment]:
        """The segment holding all of ``[pa, pa+nbytes)``, or None."""
        pa = _int("pa", pa)
        nbytes = _int("nbytes", nbytes, 1, PA_LIMIT)
        return self._find(pa, nbytes)

    def _find(self, pa: int, nbytes: int) -> Optional[Segment]:
        i = bisect.bisect_right(self._starts, pa) - 1
        if i < 0:
            return None
        s = self._segments[i]
        return s if pa + nbytes <= s.end else None

    def _locate(self, pa: int, nbytes: int) -> tuple[Segment, int]:
        s = self._find(pa, nbytes)
        if s is None:
            raise PhysMemReadError(pa, nbytes)
        return s, pa - s.pa

    def read_u64(self, pa: int) -> int:
        """The little-endian 64-bit word at ``pa``."""
        s, off = self._locate(_int("pa", pa), 8)
        return int.from_bytes(s.data[off:off + 8].tobytes(), "little")

    def read(self, pa: int, nbytes: int) -> bytes:
        """``nbytes`` bytes at ``pa`` (a copy; they must lie in one segment)."""
        pa = _int("pa", pa)
        nbytes = _int("nbytes", nbytes, 0, PA_LIMIT)
        if nbytes == 0:
            return b""
        s, off = self._locate(pa, nbytes)
        return s.data[off:off + nbytes].tobytes()

    def u64_view(self, pa: int, count: int) -> np.ndarray:
        """A read-only uint64 view (no copy) of ``count`` words at ``pa``. The
        words must lie in one segment, 8-byte aligned in its buffer."""
        pa = _int("pa", pa)
        count = _int("count", count, 1, PA_LIMIT >> 3)
        s, off = self._locate(pa, count * 8)
        if (s.data.ctypes.data + off) % 8:
            raise PhysMemReadError(pa, count * 8, "not 8-byte aligned in the segment's buffer")
        v = s.data[off:off + count * 8].view(_LE_U64)
        v.flags.writeable = False
        return v

    def __contains__(self, pa: object) -> bool:
        if isinstance(pa, bool) or not isinstance(pa, (int, np.integer)):
            return False
        pa = int(pa)
        return 0 <= pa <= U64_MAX and self._find(pa, 1) is not None

    def __repr__(self) -> str:
        shown = ", ".join(f"[{s.pa:#x}-{s.end:#x})" for s in self._segments[:4])
        more = f", ... {len(self._segments) - 4} more" if len(self._segments) > 4 else ""
        n = len(self._segments)
        return f"PhysMem({n} segment{'s' if n != 1 else ''}, {format_size(self._size)}: {shown}{more})"


def _file_size(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path!r}") from None
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a regular file")
    return st.st_size


def _cover(kept: list[tuple[int, int]], lo: int, hi: int) -> None:
    """Add [lo, hi) to ``kept`` (sorted, disjoint), merging what it overlaps or
    touches, so that the list stays as short as the union it describes."""
    i = bisect.bisect_left(kept, (lo, lo))
    if i and kept[i - 1][1] >= lo:
        i -= 1
    j = i
    while j < len(kept) and kept[j][0] <= hi:
        lo, hi = min(lo, kept[j][0]), max(hi, kept[j][1])
        j += 1
    kept[i:j] = [(lo, hi)]


def _uncovered(kept: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) that no interval in ``kept`` (sorted, disjoint) covers."""
    out = []
    i = max(bisect.bisect_right(kept, (lo, PA_LIMIT)) - 1, 0)
    cur = lo
    for a, b in kept[i:]:
        if a >= hi:
            break
        if b <= cur:
            continue
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
        if cur >= hi:
            break
    if cur < hi:
        out.append((cur, hi))
    return out
