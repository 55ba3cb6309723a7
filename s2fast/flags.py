"""Walk flags, protection bits and errno results, with the kernel's values.

The values are those of ``enum kvm_pgtable_walk_flags`` and
``enum kvm_pgtable_prot`` in ``arch/arm64/include/asm/kvm_pgtable.h``;
errno results are returned negated, as the kernel returns them.
"""
from __future__ import annotations

import enum

from . import _walk


# enum kvm_pgtable_walk_flags has one home, the walker's contract
# (s2fast/_walk.pxd, with the RFC variants' provenance): its members F_<NAME>
# become WalkFlags.<NAME> here.
WalkFlags = enum.IntFlag("WalkFlags", [(f.name[2:], int(f)) for f in _walk.WalkFlag], module=__name__)
WalkFlags.__doc__ = """Flags controlling a depth-first walk (``KVM_PGTABLE_WALK_*``); the walker
variants SKIP_LEVEL3..0, SKIP_NEW_TABLE, PAGE and BLOCK are from the May 2026
RFC "KVM: arm64: Introduce S2 walker SKIP return options" and its review (not
upstream)."""


class Prot(enum.IntFlag):
    """Permissions and attributes of a mapping (``KVM_PGTABLE_PROT_*``)."""

    PX = 1 << 0
    UX = 1 << 1
    X = PX | UX
    W = 1 << 2
    R = 1 << 3
    DEVICE = 1 << 4
    NC = 1 << 5
    SW0 = 1 << 55
    SW1 = 1 << 56
    SW2 = 1 << 57
    SW3 = 1 << 58

    # Alias used by the kernel's name for the bit.
    NORMAL_NC = NC


KERNEL_WALK_FLAGS = int(WalkFlags.LEAF | WalkFlags.TABLE_PRE | WalkFlags.TABLE_POST | WalkFlags.SHARED
                        | WalkFlags.HANDLE_FAULT | WalkFlags.SKIP_BBM_TLBI | WalkFlags.SKIP_CMO)
ALL_WALK_FLAGS = KERNEL_WALK_FLAGS | int(
    WalkFlags.SKIP_LEVEL3 | WalkFlags.SKIP_LEVEL2 | WalkFlags.SKIP_LEVEL1 | WalkFlags.SKIP_LEVEL0
    | WalkFlags.SKIP_NEW_TABLE | WalkFlags.PAGE | WalkFlags.BLOCK)

# Visitor return hints (RFC patch 1). A positive result made only of these
# bits steers the walk and is never an error; they may be OR-ed together.
SKIP_CHILDREN = 1 << 28
SKIP_SIBLINGS = 1 << 29

RW = Prot.R | Prot.W
RWX = Prot.R | Prot.W | Prot.X
PROT_ALL = int(Prot.X | Prot.W | Prot.R | Prot.DEVICE | Prot.NC
               | Prot.SW0 | Prot.SW1 | Prot.SW2 | Prot.SW3)

# Errno results (negated, as pgtable.c returns them).
EPERM = -1
ENOENT = -2
E2BIG = -7
EAGAIN = -11
ENOMEM = -12
EFAULT = -14
EBUSY = -16
EEXIST = -17
EINVAL = -22
ERANGE = -34

ERRNO_NAMES = {
    EPERM: "EPERM", ENOENT: "ENOENT", E2BIG: "E2BIG", EAGAIN: "EAGAIN",
    ENOMEM: "ENOMEM", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST",
    EINVAL: "EINVAL", ERANGE: "ERANGE",
}

# Level passed to a TLBI when the kernel does not know the leaf level.
TLBI_TTL_UNKNOWN = 0x7FFFFFFF
