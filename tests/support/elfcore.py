"""Write small ELF64 little-endian AArch64 core files (ET_CORE) for tests.

The layout is what kdump's /proc/vmcore and QEMU's dump-guest-memory produce
and what pyelftools reads: the ELF header, the program headers right after
it, then each PT_LOAD's bytes at its p_offset. Physical addresses go in
p_paddr; p_vaddr is set to the same value unless given."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr, 56 bytes

ET_CORE = 4
EM_AARCH64 = 183
PT_LOAD = 1
PT_NOTE = 4
PF_R, PF_W, PF_X = 4, 2, 1

Bytes = Union[bytes, bytearray, memoryview]


@dataclass
class Load:
    """One PT_LOAD: ``data`` at physical address ``pa``. ``memsz`` defaults to
    len(data); ``vaddr`` defaults to ``pa``."""

    pa: int
    data: Bytes
    vaddr: Optional[int] = None
    memsz: Optional[int] = None


def _as_bytes(data: object) -> bytes:
    if hasattr(data, "tobytes"):          # numpy arrays
        return data.tobytes()             # type: ignore[union-attr]
    return bytes(data)                    # type: ignore[arg-type]


def elf_core_bytes(loads: Iterable[Union[Load, tuple]], *, align: int = 4096, note: Optional[bytes] = None,
                   machine: int = EM_AARCH64) -> bytes:
    """The bytes of a core file holding ``loads`` (``Load`` or ``(pa, data)``).

    Each PT_LOAD's file offset is a multiple of ``align`` (1 packs them
    back to back). ``note`` adds a PT_NOTE with those bytes first, as real
    cores have one."""
    items = [x if isinstance(x, Load) else Load(*x) for x in loads]
    n_ph = len(items) + (1 if note is not None else 0)
    off = EHDR.size + n_ph * PHDR.size
    phdrs = []
    chunks: list[tuple[int, bytes]] = []
    if note is not None:
        phdrs.append(PHDR.pack(PT_NOTE, 0, off, 0, 0, len(note), len(note), 4))
        chunks.append((off, note))
        off += len(note)
    for ld in items:
        data = _as_bytes(ld.data)
        if data and align > 1:
            off = -(-off // align) * align
        memsz = len(data) if ld.memsz is None else ld.memsz
        vaddr = ld.pa if ld.vaddr is None else ld.vaddr
        phdrs.append(PHDR.pack(PT_LOAD, PF_R | PF_W | PF_X, off if data else 0, vaddr, ld.pa, len(data),
                               memsz, max(align, 1)))
        if data:
            chunks.append((off, data))
            off += len(data)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)   # ELFCLASS64, ELFDATA2LSB, EV_CURRENT, SYSV
    ehdr = EHDR.pack(ident, ET_CORE, machine, 1, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, n_ph, 64, 0, 0)
    out = bytearray(off)
    out[:EHDR.size] = ehdr
    for i, ph in enumerate(phdrs):
        out[EHDR.size + i * PHDR.size: EHDR.size + (i + 1) * PHDR.size] = ph
    for o, data in chunks:
        out[o:o + len(data)] = data
    return bytes(out)


def write_elf_core(path: Union[str, "os.PathLike[str]"], loads: Sequence[Union[Load, tuple]], *,
                   align: int = 4096, note: Optional[bytes] = None) -> str:
    """Write a core file holding ``loads`` to ``path``; returns the path.

    ``loads`` are ``Load`` objects or ``(pa, data)`` pairs; ``data`` is bytes
    or a numpy array (its raw bytes are written)."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(elf_core_bytes(loads, align=align, note=note))
    return path
