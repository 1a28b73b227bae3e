# Byte strings -> ids by open addressing (FNV-1a), shared by the tokenizer modules (C only, no GIL).
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp


cdef struct ByteSlot:
    uint64_t hash
    uint32_t off          # the key's bytes in the table's text
    uint32_t len          # 0 = free slot
    int32_t id


cdef inline uint64_t hash_bytes(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL       # FNV-1a
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    # FNV's low bits mix poorly and the slot index is taken from them
    return h ^ (h >> 29)


cdef inline int32_t byte_table_find(const ByteSlot* slots, uint64_t mask, const uint8_t* text,
                                    const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """The id of key p[:n], or -1 when the table lacks it."""
    cdef uint64_t h = hash_bytes(p, n)
    cdef uint64_t idx = h & mask
    while slots[idx].len:
        if slots[idx].hash == h and slots[idx].len == n and memcmp(text + slots[idx].off, p, n) == 0:
            return slots[idx].id
        idx = (idx + 1) & mask
    return -1
