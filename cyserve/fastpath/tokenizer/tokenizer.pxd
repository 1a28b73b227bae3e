# cdef declarations of cyserve/fastpath/tokenizer/tokenizer.pyx (byte-level BPE and SentencePiece).
cimport cython
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from cyserve.fastpath.tokenizer.idvec cimport IdVec
from cyserve.fastpath.tokenizer.spm cimport SpmModel


cdef struct MergeSlot:
    uint64_t key          # left_id << 32 | right_id; MERGE_EMPTY when the slot is free
    int32_t rank          # position in tokenizer.ggml.merges: lower merges first
    int32_t merged_id


cdef struct CacheSlot:
    uint64_t hash
    uint32_t key_off      # word bytes in Tokenizer._cache_keys
    uint32_t ids_off      # its ids in Tokenizer._cache_ids
    uint16_t key_len      # 0 = free slot
    uint16_t num_ids


@cython.final
cdef class Tokenizer:
    cdef readonly int vocab_size
    cdef readonly object bos_token_id
    cdef readonly object eos_token_id
    cdef readonly object unknown_token_id
    cdef readonly object padding_token_id
    cdef readonly bint add_bos_token
    cdef readonly bint add_eos_token
    cdef readonly frozenset eog_token_ids  # ids that end generation: eos, eot, eom, <end_of_turn>, ...
    cdef readonly str model               # tokenizer.ggml.model: "gpt2" or "llama"
    cdef bint _ready
    cdef SpmModel _spm                    # SentencePiece merges (model "llama"), else None
    cdef int _space_prefix                # PREFIX_* of tokenizer.pyx
    cdef readonly str pre                 # pre-tokenizer name as given by tokenizer.ggml.pre
    cdef int _pre_kind                    # pretokenizer.pre_kind_of(pre)

    cdef list _pieces                     # id -> piece, spelled as in the file
    cdef dict _piece_ids                  # piece -> id
    cdef dict _added_ids                  # CONTROL / USER_DEFINED text -> id
    cdef object _special_re               # matches CONTROL and USER_DEFINED tokens in text
    cdef object _user_re                  # matches USER_DEFINED tokens only (or None)

    cdef int32_t _byte_ids[256]           # byte -> id of its one-byte token
    cdef MergeSlot* _merges
    cdef uint64_t _merge_mask
    cdef int _merge_shift

    cdef uint8_t* _piece_data             # decoded bytes of every piece, back to back
    cdef uint32_t* _piece_off             # [vocab_size + 1] offsets into _piece_data
    cdef uint8_t* _special                # [vocab_size] 1 where the token is CONTROL

    # BPE scratch, sized to the longest word seen
    cdef Py_ssize_t _scratch_cap
    cdef int32_t* _sym_id
    cdef int32_t* _sym_prev
    cdef int32_t* _sym_next
    cdef uint64_t* _heap

    # word cache: word bytes -> ids
    cdef CacheSlot* _cache
    cdef uint8_t* _cache_keys
    cdef int32_t* _cache_ids
    cdef Py_ssize_t _cache_used
    cdef uint32_t _cache_key_top
    cdef uint32_t _cache_ids_top

    cdef int _build_pieces(self, list encoded, list types) except -1
    cdef int _build_added(self, list types) except -1
    cdef int _build_byte_ids(self, dict bpe_ids, dict byte_of) except -1
    cdef int _build_merges(self, list merges, dict bpe_ids) except -1
    cdef void _clear_cache(self) noexcept nogil
    cdef int _grow_scratch(self, Py_ssize_t n) noexcept nogil
    cdef int _bpe_word(self, const uint8_t* word, Py_ssize_t n, IdVec* out) noexcept nogil
    cdef void _cache_insert(self, const uint8_t* word, Py_ssize_t n, uint64_t h,
                            const int32_t* ids, Py_ssize_t num_ids) noexcept nogil
    cdef int _encode_utf8(self, const uint8_t* text, Py_ssize_t n, IdVec* out) noexcept nogil
    cdef int _encode_str(self, str text, IdVec* out, bint at_start) except -1
    cdef Py_ssize_t _check_id(self, object token_id) except -1
    cdef bytes _piece_bytes(self, Py_ssize_t i)


@cython.final
cdef class IncrementalDecoder:
    cdef Tokenizer _tokenizer
    cdef bint _skip_special
    cdef bint _strip_space        # drop the leading space the prefix rule made (until text comes)
    cdef bytes _pending
