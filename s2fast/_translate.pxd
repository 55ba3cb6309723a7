# cython: language_level=3
# Architectural stage-2 translation (what the MMU, and the kernel's nested.c
# and at.c walkers, do with the same tables).

from ._types cimport u64, PT

# Fault kinds and ESR_ELx.FSC bases:
cdef enum:
    FAULT_NONE = 0
    FAULT_TRANSLATION = 1
    FAULT_ADDRESS_SIZE = 2
    FAULT_ACCESS_FLAG = 3
    FAULT_PERMISSION = 4
    FAULT_EXTERNAL = 5
    FSC_NONE = 0xFF

cdef enum:
    ACCESS_READ = 0
    ACCESS_WRITE = 1
    ACCESS_EXEC_EL1 = 2
    ACCESS_EXEC_EL0 = 3

cdef struct TRow:
    # One row of TRANSLATE_DTYPE (numpy aligned layout; checked at import).
    u64 ipa
    unsigned char ok
    u64 pa
    signed char level
    u64 block_size
    u64 desc
    unsigned char readable
    unsigned char writable
    unsigned char exec_el1
    unsigned char exec_el0
    unsigned char fault
    signed char fault_level
    unsigned char fsc
    unsigned char af_updated   # VTCR.HA: the walk would have set AF in memory

cdef struct TCfg:
    int access
    bint ha
    bint xnx
    bint root_too_big       # VTTBR's base address is beyond PS
    # The last table the walk read from, for runs of nearby IPAs: IPAs with
    # the same tag take the same path down to that table.
    bint cached
    int c_level
    u64 c_tag
    u64 *c_table
    u64 c_tpa               # that table's PA
    u64 c_desc              # the descriptor that led to it (0 at the start level)

cdef void tcfg_init(PT *pt, TCfg *cfg, int access, bint ha, bint xnx) noexcept nogil
# One IPA (the MMU's walk for one access; cfg carries its walk cache).
cdef void translate_ipa(PT *pt, TCfg *cfg, u64 ipa, TRow *r) noexcept nogil
cdef object translate_out(Py_ssize_t n, int access, object out)
cdef void translate_ipas(PT *pt, int access, bint ha, bint xnx, const u64 *ipas, object out,
                         Py_ssize_t n) noexcept
