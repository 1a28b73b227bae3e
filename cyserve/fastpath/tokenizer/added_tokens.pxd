# cdef declarations of cyserve/fastpath/tokenizer/added_tokens.pyx (added tokens found in text).
cimport cython
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from cyserve.fastpath.tokenizer.byte_table cimport ByteSlot


@cython.final
cdef class AddedTokens:
    cdef readonly Py_ssize_t count
    cdef ByteSlot* _slots        # token bytes -> id, open addressing
    cdef uint64_t _slot_mask
    cdef uint8_t* _text
    cdef uint32_t _len_off[257]   # the lengths of tokens starting with byte b: _lens[_len_off[b]:_len_off[b + 1]]
    cdef uint32_t* _lens          # longest first

    cdef int32_t _lookup(self, const uint8_t* p, Py_ssize_t n) noexcept nogil
    # The leftmost token written in s[pos:n] (the longest one there): its start, with its end in
    # end[0] and its id in token_id[0]; -1 when there is none.
    cdef Py_ssize_t find(self, const uint8_t* s, Py_ssize_t n, Py_ssize_t pos,
                         Py_ssize_t* end, int32_t* token_id) noexcept nogil
