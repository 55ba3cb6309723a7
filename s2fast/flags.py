"""Walk flags, protection bits and errno results, with the kernel's values.

The values are those of ``enum kvm_pgtable_walk_flags`` and
``enum kvm_pgtable_prot`` in ``arch/arm64/include/asm/kvm_pgtable.h``;
errno results are returned negated, as the kernel returns them.
"""
from __future__ import annotations

import enum


class WalkFlags(enum.IntFlag):
    """Flags controlling a depth-first walk (``KVM_PGTABLE_WALK_*``)."""

    LEAF = 1 << 0
    TABLE_PRE = 1 << 1
    TABLE_POST = 1 << 2
    SHARED = 1 << 3
    HANDLE_FAULT = 1 << 4
    SKIP_BBM_TLBI = 1 << 5
    SKIP_CMO = 1 << 6


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
