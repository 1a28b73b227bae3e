"""Added tokens (CONTROL, UNKNOWN and USER_DEFINED pieces such as `<start_of_turn>` or `\\n\\n`)
found where they are written in UTF-8 text: leftmost first, the longest at that place.

Owns only the matching, over C arrays: a hash table of the tokens' bytes and, per first byte, the
lengths of the tokens that start with it, longest first; a place whose byte starts no token costs
one table read. Matching bytes equals matching code points, since every token is whole UTF-8 and
so starts on a lead byte. cyserve.fastpath.tokenizer.tokenizer splits text at the matches.
"""
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from cyserve.fastpath.tokenizer.byte_table cimport byte_table_find, hash_bytes

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef class AddedTokens:
    """tokens: {text: id}; an empty text is left out."""

    def __init__(self, dict tokens):
        cdef uint64_t cap = 16, h, idx
        cdef Py_ssize_t total = 0, k = 0
        cdef bytes data
        cdef int b
        if self._slots != NULL:
            raise RuntimeError("AddedTokens is already initialised")
        encoded = {text.encode("utf-8"): token_id for text, token_id in tokens.items() if text}
        for data in encoded:
            total += len(data)
        if total >= 0xFFFFFFFF:
            raise ValueError("added tokens too long in total (4 GiB)")
        while cap < 2 * <uint64_t>len(encoded) + 2:
            cap *= 2
        lengths = [set() for _ in range(256)]
        for data in encoded:
            lengths[data[0]].add(len(data))
        self.count = len(encoded)
        self._slots = <ByteSlot*>malloc(cap * sizeof(ByteSlot))
        self._text = <uint8_t*>malloc(total + 1)
        self._lens = <uint32_t*>malloc((sum(len(s) for s in lengths) + 1) * sizeof(uint32_t))
        if self._slots == NULL or self._text == NULL or self._lens == NULL:
            raise MemoryError()
        self._slot_mask = cap - 1
        for idx in range(cap):
            self._slots[idx].len = 0
        total = 0
        for data, token_id in encoded.items():
            h = hash_bytes(<const uint8_t*>data, len(data))
            idx = h & self._slot_mask
            while self._slots[idx].len:
                idx = (idx + 1) & self._slot_mask
            memcpy(self._text + total, <const char*>data, len(data))
            self._slots[idx].hash, self._slots[idx].off = h, <uint32_t>total
            self._slots[idx].len, self._slots[idx].id = <uint32_t>len(data), <int32_t>token_id
            total += len(data)
        for b in range(256):
            self._len_off[b] = <uint32_t>k
            for length in sorted(lengths[b], reverse=True):
                self._lens[k] = <uint32_t>length
                k += 1
        self._len_off[256] = <uint32_t>k

    def __dealloc__(self):
        free(self._slots)
        free(self._text)
        free(self._lens)

    cdef int32_t _lookup(self, const uint8_t* p, Py_ssize_t n) noexcept nogil:
        return byte_table_find(self._slots, self._slot_mask, self._text, p, n)

    cdef Py_ssize_t find(self, const uint8_t* s, Py_ssize_t n, Py_ssize_t pos,
                         Py_ssize_t* end, int32_t* token_id) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint32_t k, stop, length
        cdef int32_t t
        for i in range(pos, n):
            k, stop = self._len_off[s[i]], self._len_off[s[i] + 1]
            while k < stop:
                length = self._lens[k]
                if i + length <= n:
                    t = self._lookup(s + i, length)
                    if t >= 0:
                        end[0], token_id[0] = i + length, t
                        return i
                k += 1
        return -1

    def find_all(self, str text):
        """[(start, end, id)] of the tokens written in `text`, as code point offsets: for tests."""
        cdef Py_ssize_t n, pos = 0, start, end = 0
        cdef int32_t token_id = -1
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
        found = []
        while True:
            start = self.find(s, n, pos, &end, &token_id)
            if start < 0:
                return found
            found.append((len(s[:start].decode("utf-8")), len(s[:end].decode("utf-8")), token_id))
            pos = end
