# cdef declarations of cyserve/fastpath/tokenizer/spm.pyx (SentencePiece-style merges by score).
cimport cython
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from cyserve.fastpath.tokenizer.byte_table cimport ByteSlot

from cyserve.fastpath.tokenizer.idvec cimport IdVec


@cython.final
cdef class SpmModel:
    cdef int32_t _vocab_size
    cdef int32_t* _rank           # [vocab] merge priority of a token: lower merges first
    cdef ByteSlot* _slots        # piece bytes (spelled with U+2581) -> id, open addressing
    cdef uint64_t _slot_mask
    cdef uint8_t* _text
    cdef int32_t _byte_ids[256]   # byte -> id of <0xXX>, or -1
    cdef int32_t _unk_id

    # scratch, sized to the longest text seen
    cdef Py_ssize_t _buf_cap
    cdef uint8_t* _buf            # the escaped text
    cdef Py_ssize_t _sym_cap
    cdef int32_t* _sym_id         # token id of the symbol, -1 when the char is not a token
    cdef int32_t* _sym_prev
    cdef int32_t* _sym_next
    cdef uint32_t* _sym_off       # byte offset in _buf
    cdef uint32_t* _sym_len       # bytes; 0 once merged into its left neighbour
    cdef uint32_t* _sym_chars     # code points
    cdef uint64_t* _heap

    cdef int32_t _lookup(self, const uint8_t* p, Py_ssize_t n) noexcept nogil
    cdef int _reserve(self, Py_ssize_t num_bytes) noexcept nogil
    cdef void _push_pair(self, int32_t k, Py_ssize_t* heap_size) noexcept nogil
    # Append the ids of one text fragment (valid UTF-8, special tokens already split out): spaces
    # become U+2581, `prefix` puts one in front, then bigrams merge best-ranked first, leftmost
    # on ties; a char left without a token falls back to its <0xXX> bytes. -1: out of memory.
    cdef int encode(self, const uint8_t* s, Py_ssize_t n, bint prefix, IdVec* out) noexcept nogil
