"""SentencePiece-style BPE for vocabularies with `tokenizer.ggml.model = llama` (Gemma, Mistral,
Llama 2, Phi-3): the merge step over C arrays.

Owns one text fragment -> token ids: spaces spelled U+2581 ("▁"), an optional leading "▁", every
code point a symbol, adjacent symbols merged while their concatenation is a token, the best ranked
merge first (leftmost on ties), and byte fallback (<0xXX> tokens) for a char that is no token.
This is llama.cpp's llm_tokenizer_spm bigram queue; the rank is what Hugging Face's BPE built from
the same file uses as merge order: the token's score (a token formed from a longer left part
first), or for Gemma its place in the vocabulary. Special tokens, BOS/EOS, the prefix rule and
decoding belong to cyserve.fastpath.tokenizer.tokenizer.
"""
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from cyserve.fastpath.tokenizer.byte_table cimport byte_table_find, hash_bytes
from cyserve.fastpath.tokenizer.merge_heap cimport heap_pop, heap_push
from cyserve.fastpath.tokenizer.idvec cimport IdVec, idvec_push

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef enum:
    MAX_RANK = 1 << 24            # ranks and ids fit the heap key
    MAX_LEFT_CHARS = 255


cdef inline uint64_t _pair_key(int32_t rank, uint32_t left_chars, int32_t k) noexcept nogil:
    """Heap order: lower rank, then the longer left part, then the leftmost pair."""
    if left_chars > MAX_LEFT_CHARS:
        left_chars = MAX_LEFT_CHARS
    return ((<uint64_t>rank) << 40) | ((<uint64_t>(MAX_LEFT_CHARS - left_chars)) << 32) | <uint32_t>k


cdef inline int _grow(void** slot, size_t num_bytes) noexcept nogil:
    cdef void* p = realloc(slot[0], num_bytes)
    if p == NULL:
        return -1
    slot[0] = p
    return 0


cdef inline int _utf8_width(uint8_t lead) noexcept nogil:
    if lead < 0x80:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4


cdef class SpmModel:
    """pieces[i]: token i as the vocabulary spells it ("▁the"), or None to leave it out of
    merging; ranks[i]: its merge priority (lower first); byte_ids[b]: id of <0xXX> or -1."""

    def __init__(self, pieces, ranks, byte_ids, int unk_id=-1):
        cdef Py_ssize_t V = len(pieces), i, total = 0
        cdef uint64_t cap = 16, h, idx
        cdef bytes data
        if self._slots != NULL:
            raise RuntimeError("SpmModel is already initialised")
        if V == 0 or V >= MAX_RANK:
            raise ValueError(f"vocabulary size {V} out of range (1..{MAX_RANK - 1})")
        if len(ranks) != V or len(byte_ids) != 256:
            raise ValueError(f"{len(ranks)} ranks and {len(byte_ids)} byte ids for {V} pieces; "
                             "need one rank per piece and 256 byte ids")
        encoded = [p.encode("utf-8") if p else None for p in pieces]
        for data in encoded:
            if data is not None:
                total += len(data)
        while cap < 2 * <uint64_t>V:
            cap *= 2
        self._vocab_size = <int32_t>V
        self._rank = <int32_t*>malloc(V * sizeof(int32_t))
        self._slots = <ByteSlot*>malloc(cap * sizeof(ByteSlot))
        self._text = <uint8_t*>malloc(total + 1)
        if self._rank == NULL or self._slots == NULL or self._text == NULL:
            raise MemoryError()
        self._slot_mask = cap - 1
        for idx in range(cap):
            self._slots[idx].len = 0
        total = 0
        for i in range(V):
            if not 0 <= ranks[i] < MAX_RANK:
                raise ValueError(f"rank {ranks[i]} of token {i} out of range (0..{MAX_RANK - 1})")
            self._rank[i] = ranks[i]
            data = encoded[i]
            if data is None or len(data) == 0:
                continue
            h = hash_bytes(<const uint8_t*>data, len(data))
            idx = h & self._slot_mask
            while self._slots[idx].len:
                if (self._slots[idx].hash == h and self._slots[idx].len == len(data)
                        and memcmp(self._text + self._slots[idx].off, <const char*>data, len(data)) == 0):
                    break                               # a repeated piece: the last id wins, as in HF
                idx = (idx + 1) & self._slot_mask
            if not self._slots[idx].len:
                memcpy(self._text + total, <const char*>data, len(data))
                self._slots[idx].off = <uint32_t>total
                self._slots[idx].len = <uint32_t>len(data)
                self._slots[idx].hash = h
                total += len(data)
            self._slots[idx].id = <int32_t>i
        for i in range(256):
            if not -1 <= byte_ids[i] < V:
                raise ValueError(f"byte id {byte_ids[i]} out of range for vocab size {V}")
            self._byte_ids[i] = byte_ids[i]
        self._unk_id = unk_id if 0 <= unk_id < V else -1

    def __dealloc__(self):
        free(self._rank)
        free(self._slots)
        free(self._text)
        free(self._buf)
        free(self._sym_id)
        free(self._sym_prev)
        free(self._sym_next)
        free(self._sym_off)
        free(self._sym_len)
        free(self._sym_chars)
        free(self._heap)

    cdef int32_t _lookup(self, const uint8_t* p, Py_ssize_t n) noexcept nogil:
        return byte_table_find(self._slots, self._slot_mask, self._text, p, n)

    cdef int _reserve(self, Py_ssize_t num_bytes) noexcept nogil:
        """Scratch for an escaped text of num_bytes (at most as many symbols)."""
        cdef Py_ssize_t cap
        cdef void* p
        if num_bytes > self._buf_cap:
            cap = max(num_bytes, 2 * self._buf_cap, 256)
            p = realloc(self._buf, cap)
            if p == NULL:
                return -1
            self._buf, self._buf_cap = <uint8_t*>p, cap
        if num_bytes <= self._sym_cap:
            return 0
        cap = max(num_bytes, 2 * self._sym_cap, 256)
        if (_grow(<void**>&self._sym_id, cap * 4) or _grow(<void**>&self._sym_prev, cap * 4)
                or _grow(<void**>&self._sym_next, cap * 4) or _grow(<void**>&self._sym_off, cap * 4)
                or _grow(<void**>&self._sym_len, cap * 4) or _grow(<void**>&self._sym_chars, cap * 4)):
            return -1
        p = realloc(self._heap, 3 * cap * sizeof(uint64_t))
        if p == NULL:
            return -1
        self._heap = <uint64_t*>p
        self._sym_cap = cap
        return 0

    cdef void _push_pair(self, int32_t k, Py_ssize_t* heap_size) noexcept nogil:
        """Queue the bigram (k, next of k) when both are tokens and so is their concatenation."""
        cdef int32_t r = self._sym_next[k], t
        if r < 0 or self._sym_id[k] < 0 or self._sym_id[r] < 0:
            return
        t = self._lookup(self._buf + self._sym_off[k], self._sym_len[k] + self._sym_len[r])
        if t >= 0:
            heap_push(self._heap, heap_size, _pair_key(self._rank[t], self._sym_chars[k], k))

    cdef int encode(self, const uint8_t* s, Py_ssize_t n, bint prefix, IdVec* out) noexcept nogil:
        cdef Py_ssize_t i, L = 0, heap_size = 0, m = 0
        cdef int32_t k, r, t, w, b
        cdef uint64_t top
        cdef uint8_t* buf
        if n == 0 and not prefix:
            return 0
        if n > 0x3FFFFFF0 or self._reserve(3 * n + 3):
            return -1
        buf = self._buf
        if prefix:
            buf[0], buf[1], buf[2] = 0xE2, 0x96, 0x81
            L = 3
        for i in range(n):                                  # ' ' -> U+2581
            if s[i] == 0x20:
                buf[L], buf[L + 1], buf[L + 2] = 0xE2, 0x96, 0x81
                L += 3
            else:
                buf[L] = s[i]
                L += 1
        i = 0
        while i < L:                                        # one symbol per code point
            w = _utf8_width(buf[i])
            if i + w > L:
                w = <int32_t>(L - i)
            self._sym_off[m], self._sym_len[m], self._sym_chars[m] = <uint32_t>i, <uint32_t>w, 1
            self._sym_id[m] = self._lookup(buf + i, w)
            self._sym_prev[m], self._sym_next[m] = <int32_t>m - 1, <int32_t>m + 1
            m += 1
            i += w
        self._sym_next[m - 1] = -1
        for k in range(m - 1):
            self._push_pair(k, &heap_size)
        while heap_size:
            top = heap_pop(self._heap, &heap_size)
            k = <int32_t><uint32_t>top
            r = self._sym_next[k]
            if self._sym_len[k] == 0 or r < 0 or self._sym_id[k] < 0 or self._sym_id[r] < 0:
                continue
            t = self._lookup(buf + self._sym_off[k], self._sym_len[k] + self._sym_len[r])
            if t < 0 or _pair_key(self._rank[t], self._sym_chars[k], k) != top:
                continue                                    # stale: a neighbour changed
            self._sym_id[k] = t
            self._sym_len[k] += self._sym_len[r]
            self._sym_chars[k] += self._sym_chars[r]
            self._sym_len[r] = 0
            self._sym_next[k] = self._sym_next[r]
            if self._sym_next[r] >= 0:
                self._sym_prev[self._sym_next[r]] = k
            if self._sym_prev[k] >= 0:
                self._push_pair(self._sym_prev[k], &heap_size)
            self._push_pair(k, &heap_size)
        k = 0
        while k >= 0:
            if self._sym_id[k] >= 0:
                if idvec_push(out, self._sym_id[k]):
                    return -1
            else:                                           # byte fallback
                for i in range(self._sym_off[k], self._sym_off[k] + self._sym_len[k]):
                    b = self._byte_ids[buf[i]]
                    if b < 0:
                        b = self._unk_id
                    if b >= 0 and idvec_push(out, b):
                        return -1
            k = self._sym_next[k]
        return 0

    def encode_fragment(self, str text, bint prefix=False):
        """Ids of `text` taken as plain text (no special tokens): for tests and debugging."""
        cdef IdVec out
        cdef Py_ssize_t n, i
        cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &n)
        out.data, out.size, out.cap = NULL, 0, 0
        try:
            if self.encode(<const uint8_t*>utf8, n, prefix, &out):
                raise MemoryError()
            return [out.data[i] for i in range(out.size)]
        finally:
            free(out.data)


# ---------------------------------------------------------------------------------------------
# building from a vocabulary

_TOKEN_TYPE_BYTE = 6


def _byte_of_piece(str piece):
    """The byte a <0xXX> piece stands for, or None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def spm_piece_bytes(list pieces, list types):
    """What each token decodes to: "▁" as a space, a BYTE token <0xXX> as its byte."""
    out = []
    for piece, kind in zip(pieces, types):
        byte = _byte_of_piece(piece) if kind == _TOKEN_TYPE_BYTE else None
        out.append(bytes([byte]) if byte is not None else piece.replace("\u2581", " ").encode("utf-8"))
    return out


def spm_model(list pieces, list types, scores, str merge_order, unknown_id):
    """The SpmModel of a vocabulary. merge_order "score": a higher score merges first, equal
    scores in vocabulary order (the order transformers derives its merges in); "position": the
    vocabulary order alone (Gemma, whose whitespace tokens carry no meaningful score)."""
    cdef Py_ssize_t V = len(pieces)
    if merge_order == "position":
        ranks = list(range(V))
    elif merge_order == "score":
        if scores is None or len(scores) != V:
            raise ValueError(f"{0 if scores is None else len(scores)} scores for {V} tokens "
                             "(tokenizer.ggml.scores)")
        order = sorted(range(V), key=lambda i: (-scores[i], i))
        ranks = [0] * V
        for rank, i in enumerate(order):
            ranks[i] = rank
    else:
        raise ValueError(f"merge_order {merge_order!r}: use 'score' or 'position'")
    byte_ids = [-1] * 256
    for i in range(V):
        byte = _byte_of_piece(pieces[i]) if types[i] == _TOKEN_TYPE_BYTE else None
        if byte is not None and byte_ids[byte] < 0:
            byte_ids[byte] = i
    return SpmModel(pieces, ranks, byte_ids, -1 if unknown_id is None else unknown_id)
