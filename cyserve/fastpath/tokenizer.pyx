"""Byte-level BPE tokenizer built from a GGUF file's metadata (tokenizer.ggml.model = gpt2).

Owns text <-> token ids for the engine: splitting out special tokens written in the text, the
pre-tokenizer named by `tokenizer.ggml.pre` (a hand-written scanner per regex, over UTF-8), BPE
merges by rank over C arrays with a word cache, decoding, and an incremental decoder that emits
only complete UTF-8 characters.

Pre-tokenizers (the llama.cpp / HF regexes they reproduce):
  gpt2, default        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
  smollm, starcoder,   every \\p{N} isolated first, then the gpt2 regex on the text between
  refact               (SmolLM2's tokenizer.json: Digits(individual_digits) + ByteLevel)
  llama-bpe, llama3,   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}
  llama-v3               | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
  qwen2                as llama3 with \\p{N} instead of \\p{N}{1,3}
transformers' GGUF loader does not know "smollm" and splits such files as gpt2; the two differ
only at 2+ whitespace chars before a number and at non-ASCII numerals. Tokenizer.from_gguf(reader,
pre="gpt2") reproduces transformers exactly.
Character classes (\\p{L}, \\p{N}, \\s) come from a table matching the Oniguruma engine of HF
`tokenizers` (Unicode 16.0), so results do not drift with the Python version's unicodedata.

Thread safety: encode runs its C part without releasing the GIL (the word cache and the BPE
scratch are shared per tokenizer), so concurrent callers are serialised.
"""
import base64
import re
import zlib

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

cdef enum:
    # character classes of the scanner
    CLS_OTHER = 0
    CLS_LETTER = 1
    CLS_NUMBER = 2
    CLS_SPACE = 3
    # pre-tokenizer kinds
    PRE_GPT2 = 0
    PRE_DIGITS = 1           # gpt2 after isolating every \p{N}
    PRE_LLAMA3 = 2
    PRE_QWEN2 = 3
    # word cache
    CACHE_SLOTS = 32768                 # power of two
    CACHE_MAX_ENTRIES = 16384           # start over at 50% load
    CACHE_MAX_WORD = 48                 # bytes; longer words are not cached
    CACHE_KEY_BYTES = CACHE_MAX_ENTRIES * CACHE_MAX_WORD
    CACHE_ID_COUNT = CACHE_MAX_ENTRIES * CACHE_MAX_WORD

cdef uint64_t MERGE_EMPTY = 0xFFFFFFFFFFFFFFFFULL

PRE_TOKENIZERS = {
    "gpt2": PRE_GPT2, "default": PRE_GPT2,
    "smollm": PRE_DIGITS, "starcoder": PRE_DIGITS, "refact": PRE_DIGITS,
    "llama-bpe": PRE_LLAMA3, "llama3": PRE_LLAMA3, "llama-v3": PRE_LLAMA3,
    "qwen2": PRE_QWEN2,
}


# ---------------------------------------------------------------------------------------------
# Unicode class table: 0x110000 entries of CLS_*, from a run-length blob (see _load_classes)

cdef uint8_t _CLASS[0x110000]


cdef void _load_classes() except *:
    """Runs as varints ((start - previous start) << 2 | class), zlib level 9, base64. To
    regenerate: class 1 where `tokenizers.Regex(r"\\p{L}")` (Oniguruma) matches the code point,
    2 for \\p{N}, 3 for \\s, else 0; one varint per change of class. The test
    test_char_classes_match_oniguruma compares the table with that engine."""
    cdef bytes raw = zlib.decompress(base64.b64decode("".join(_CLASS_RUNS)))
    cdef const uint8_t* p = raw
    cdef Py_ssize_t i = 0, n = len(raw)
    cdef uint32_t start = 0, value, shift
    cdef uint8_t cls = CLS_OTHER
    while i < n:
        value = 0
        shift = 0
        while True:
            value |= <uint32_t>(p[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not (p[i - 1] & 0x80):
                break
        if start + (value >> 2) > 0x110000:
            raise ValueError("corrupt character class table")
        memset(&_CLASS[start], cls, value >> 2)            # the previous run ends here
        start += value >> 2
        cls = value & 3
    memset(&_CLASS[start], cls, 0x110000 - start)


cdef inline uint32_t _decode_cp(const uint8_t* s, Py_ssize_t i, int* width) noexcept nogil:
    """Code point at s[i] of valid UTF-8 (the text came from CPython's encoder)."""
    cdef uint8_t b = s[i]
    if b < 0x80:
        width[0] = 1
        return b
    if b < 0xE0:
        width[0] = 2
        return (<uint32_t>(b & 0x1F) << 6) | (s[i + 1] & 0x3F)
    if b < 0xF0:
        width[0] = 3
        return (<uint32_t>(b & 0x0F) << 12) | (<uint32_t>(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
    width[0] = 4
    return ((<uint32_t>(b & 0x07) << 18) | (<uint32_t>(s[i + 1] & 0x3F) << 12)
            | (<uint32_t>(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F))


cdef inline uint8_t _class_at(const uint8_t* s, Py_ssize_t i, int* width) noexcept nogil:
    return _CLASS[_decode_cp(s, i, width)]


cdef inline Py_ssize_t _run_of(const uint8_t* s, Py_ssize_t p, Py_ssize_t end, uint8_t cls) noexcept nogil:
    """End of the run of class `cls` starting at p."""
    cdef int w
    while p < end and _class_at(s, p, &w) == cls:
        p += w
    return p


cdef inline Py_ssize_t _space_run(const uint8_t* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """\\s+(?!\\S)|\\s+ at i (a whitespace char): the run, less its last char when a non-space
    follows and the run is longer than one char."""
    cdef int w
    cdef Py_ssize_t p = i, last = i
    while p < end and _class_at(s, p, &w) == CLS_SPACE:
        last = p
        p += w
    if p == end or last == i:
        return p
    return last


cdef inline bint _is_contraction(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, bint fold, Py_ssize_t* stop) noexcept nogil:
    """'s|'t|'re|'ve|'m|'ll|'d at s[i] == "'"; `fold` makes it case-insensitive."""
    cdef uint8_t c1, c2
    if i + 1 >= end:
        return False
    c1 = s[i + 1]
    if fold:
        if c1 == 0xC5 and i + 2 < end and s[i + 2] == 0xBF:   # U+017F LONG S folds to s
            stop[0] = i + 3
            return True
        c1 |= 0x20
    if c1 == ord("s") or c1 == ord("t") or c1 == ord("m") or c1 == ord("d"):
        stop[0] = i + 2
        return True
    if i + 2 >= end:
        return False
    c2 = (s[i + 2] | 0x20) if fold else s[i + 2]
    if ((c1 == ord("r") and c2 == ord("e")) or (c1 == ord("v") and c2 == ord("e"))
            or (c1 == ord("l") and c2 == ord("l"))):
        stop[0] = i + 3
        return True
    return False


cdef Py_ssize_t _next_gpt2(const uint8_t* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    cdef int w
    cdef Py_ssize_t j = i, stop
    cdef uint8_t cls
    if s[i] == 0x27 and _is_contraction(s, i, end, False, &stop):
        return stop
    if s[i] == 0x20 and i + 1 < end:
        j = i + 1
    cls = _class_at(s, j, &w)
    if cls != CLS_SPACE:                     # ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        return _run_of(s, j + w, end, cls)
    return _space_run(s, i, end)


cdef Py_ssize_t _next_llama3(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, int max_digits) noexcept nogil:
    cdef int w0, w
    cdef Py_ssize_t p, stop, nl_end
    cdef uint32_t c0 = _decode_cp(s, i, &w0), c
    cdef uint8_t cls0 = _CLASS[c0]
    cdef int count
    if c0 == 0x27 and _is_contraction(s, i, end, True, &stop):
        return stop
    if cls0 == CLS_LETTER:                   # [^\r\n\p{L}\p{N}]?\p{L}+
        return _run_of(s, i + w0, end, CLS_LETTER)
    if cls0 != CLS_NUMBER and c0 != 0x0D and c0 != 0x0A and i + w0 < end:
        if _class_at(s, i + w0, &w) == CLS_LETTER:
            return _run_of(s, i + w0 + w, end, CLS_LETTER)
    if cls0 == CLS_NUMBER:                   # \p{N}{1,max_digits}
        p = i + w0
        count = 1
        while count < max_digits and p < end and _class_at(s, p, &w) == CLS_NUMBER:
            p += w
            count += 1
        return p
    p = i + 1 if (c0 == 0x20 and i + 1 < end) else i
    if _class_at(s, p, &w) == CLS_OTHER:     # ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        p = _run_of(s, p + w, end, CLS_OTHER)
        while p < end and (s[p] == 0x0D or s[p] == 0x0A):
            p += 1
        return p
    nl_end = -1                              # \s*[\r\n]+ : through the run's last newline
    p = i
    while p < end:
        c = _decode_cp(s, p, &w)
        if _CLASS[c] != CLS_SPACE:
            break
        p += w
        if c == 0x0D or c == 0x0A:
            nl_end = p
    if nl_end > 0:
        return nl_end
    return _space_run(s, i, end)


cdef inline Py_ssize_t _next_word(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int kind, Py_ssize_t* seg_end) noexcept nogil:
    """End of the pre-token starting at byte i. `seg_end` caches the next \\p{N} for PRE_DIGITS."""
    cdef int w
    cdef Py_ssize_t p
    if kind == PRE_GPT2:
        return _next_gpt2(s, i, n)
    if kind == PRE_DIGITS:
        if _class_at(s, i, &w) == CLS_NUMBER:
            return i + w
        if seg_end[0] <= i:
            p = i
            while p < n and _class_at(s, p, &w) != CLS_NUMBER:
                p += w
            seg_end[0] = p
        return _next_gpt2(s, i, seg_end[0])
    return _next_llama3(s, i, n, 3 if kind == PRE_LLAMA3 else 1)


def pretokenize(str text, str pre="smollm"):
    """The pre-tokens of `text` (no special-token handling): for tests and debugging."""
    cdef int kind = _pre_kind_of(pre)
    cdef Py_ssize_t n, i = 0, j, seg_end = 0
    cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
    words = []
    while i < n:
        j = _next_word(s, i, n, kind, &seg_end)
        words.append(PyUnicode_DecodeUTF8(<const char*>s + i, j - i, "strict"))
        i = j
    return words


def _char_classes():
    """The class table as bytes (index = code point): 0 other, 1 \\p{L}, 2 \\p{N}, 3 \\s."""
    return PyBytes_FromStringAndSize(<const char*>_CLASS, 0x110000)


cdef int _pre_kind_of(str pre) except -1:
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: {sorted(PRE_TOKENIZERS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# small C helpers

cdef inline int _push(IdVec* v, int32_t value) noexcept nogil:
    cdef int32_t* data
    cdef Py_ssize_t cap
    if v.size == v.cap:
        cap = v.cap * 2 if v.cap else 256
        data = <int32_t*>realloc(v.data, cap * sizeof(int32_t))
        if data == NULL:
            return -1
        v.data = data
        v.cap = cap
    v.data[v.size] = value
    v.size += 1
    return 0


cdef inline const MergeSlot* _find_merge(const MergeSlot* table, uint64_t mask, int shift,
                                        int32_t left, int32_t right) noexcept nogil:
    """(rank, merged_id) of the pair, or NULL when the pair never merges."""
    cdef uint64_t key = (<uint64_t>left << 32) | <uint32_t>right
    cdef uint64_t idx = (key * 0x9E3779B97F4A7C15ULL) >> shift
    while True:
        if table[idx].key == key:
            return &table[idx]
        if table[idx].key == MERGE_EMPTY:
            return NULL
        idx = (idx + 1) & mask


cdef inline uint64_t _hash_bytes(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL       # FNV-1a
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h ^ (h >> 32)


cdef inline void _heap_push(uint64_t* heap, Py_ssize_t* size, uint64_t item) noexcept nogil:
    cdef Py_ssize_t i = size[0], parent
    size[0] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= item:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item


cdef inline uint64_t _heap_pop(uint64_t* heap, Py_ssize_t* size) noexcept nogil:
    cdef uint64_t top = heap[0], last
    cdef Py_ssize_t n, i = 0, child
    size[0] -= 1
    n = size[0]
    last = heap[n]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
    return top


cdef inline Py_ssize_t _utf8_complete_prefix(const uint8_t* b, Py_ssize_t n) noexcept nogil:
    """Length of b without a trailing sequence that more bytes could still complete."""
    cdef Py_ssize_t p = n - 1, q, need
    cdef uint8_t lead, lo, hi
    while p >= 0 and p >= n - 3 and (b[p] & 0xC0) == 0x80:
        p -= 1
    if p < 0 or p < n - 3:
        return n
    lead = b[p]
    if 0xC2 <= lead <= 0xDF:
        need = 2
    elif 0xE0 <= lead <= 0xEF:
        need = 3
    elif 0xF0 <= lead <= 0xF4:
        need = 4
    else:
        return n
    if n - p >= need:
        return n
    for q in range(p + 1, n):
        lo, hi = 0x80, 0xBF
        if q == p + 1:
            if lead == 0xE0:
                lo = 0xA0
            elif lead == 0xED:
                hi = 0x9F
            elif lead == 0xF0:
                lo = 0x90
            elif lead == 0xF4:
                hi = 0x8F
        if b[q] < lo or b[q] > hi:
            return n
    return p


# ---------------------------------------------------------------------------------------------
# reading GGUF metadata

cdef object _MISSING = object()


def _field(reader, str key, default=_MISSING):
    """A tokenizer.* metadata value as Python (str, int, bool or list)."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"GGUF metadata has no {key!r}; cannot build the tokenizer")
        return default
    if hasattr(field, "contents"):
        return field.contents()
    import gguf                                         # gguf < 0.11: no ReaderField.contents()
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[len(field.types) - 1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


cdef dict _byte_decoder():
    """GPT-2's byte-level alphabet: printable char -> byte."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


# ---------------------------------------------------------------------------------------------

cdef class Tokenizer:
    """Byte-level BPE. Build with `Tokenizer.from_gguf(reader)`; ids match HF `tokenizers`."""

    def __init__(self, list tokens, list merges, token_types=None, *, str pre="default",
                 bos_token_id=None, eos_token_id=None, unknown_token_id=None,
                 padding_token_id=None, bint add_bos_token=False):
        """tokens: pieces as GGUF spells them; merges: "left right" strings, best first;
        token_types: GGUF token types (default all NORMAL)."""
        if self._merges != NULL:
            raise RuntimeError("Tokenizer is already initialised")
        self._pre_kind = _pre_kind_of(pre)
        self.pre = pre
        self.vocab_size = len(tokens)
        if self.vocab_size == 0 or self.vocab_size >= 0x7FFFFFFF:
            raise ValueError(f"vocabulary size {self.vocab_size} out of range")
        types = list(token_types) if token_types is not None else [TOKEN_TYPE_NORMAL] * self.vocab_size
        if len(types) != self.vocab_size:
            raise ValueError(f"{len(types)} token types for {self.vocab_size} tokens")
        for name, value in (("bos", bos_token_id), ("eos", eos_token_id),
                            ("unknown", unknown_token_id), ("padding", padding_token_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}_token_id {value} out of range for vocab size {self.vocab_size}")
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.unknown_token_id, self.padding_token_id = unknown_token_id, padding_token_id
        self.add_bos_token = add_bos_token
        self._pieces = list(tokens)
        self._piece_ids = {piece: i for i, piece in enumerate(tokens)}
        byte_of = _byte_decoder()
        bpe_ids = self._build_pieces(types, byte_of)
        self._build_added(types)
        self._build_byte_ids(bpe_ids, byte_of)
        self._build_merges(merges, bpe_ids)
        self._cache = <CacheSlot*>malloc(CACHE_SLOTS * sizeof(CacheSlot))
        self._cache_keys = <uint8_t*>malloc(CACHE_KEY_BYTES)
        self._cache_ids = <int32_t*>malloc(CACHE_ID_COUNT * sizeof(int32_t))
        if self._cache == NULL or self._cache_keys == NULL or self._cache_ids == NULL:
            raise MemoryError()
        self._clear_cache()

    @classmethod
    def from_gguf(cls, reader, pre=None):
        """From a `gguf.GGUFReader`. `pre` overrides tokenizer.ggml.pre (e.g. "gpt2")."""
        model = _field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                             "only byte-level BPE ('gpt2') is implemented")
        return cls(
            _field(reader, "tokenizer.ggml.tokens"),
            _field(reader, "tokenizer.ggml.merges"),
            _field(reader, "tokenizer.ggml.token_type", None),
            pre=pre if pre is not None else _field(reader, "tokenizer.ggml.pre", "default"),
            bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", None),
            eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", None),
            unknown_token_id=_field(reader, "tokenizer.ggml.unknown_token_id", None),
            padding_token_id=_field(reader, "tokenizer.ggml.padding_token_id", None),
            add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        )

    def __dealloc__(self):
        free(self._merges)
        free(self._piece_data)
        free(self._piece_off)
        free(self._special)
        free(self._sym_id)
        free(self._sym_prev)
        free(self._sym_next)
        free(self._heap)
        free(self._cache)
        free(self._cache_keys)
        free(self._cache_ids)

    # -- construction ------------------------------------------------------------------------

    cdef dict _build_pieces(self, list types, dict byte_of):
        """Decoded bytes per id, the CONTROL mask, and the byte-level spelling -> id map that
        merges refer to (a NORMAL piece outside the alphabet is respelled, as HF does)."""
        cdef Py_ssize_t i, total = 0, V = self.vocab_size
        encoded = []
        bpe_ids = {}
        for i in range(V):
            piece = self._pieces[i]
            in_alphabet = all(ch in byte_of for ch in piece)
            if types[i] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) or not in_alphabet:
                data = piece.encode("utf-8")
            else:
                data = bytes([byte_of[ch] for ch in piece])
            encoded.append(data)
            total += len(data)
            bpe_ids["".join([_BYTE_SPELLING[b] for b in data]) if not in_alphabet else piece] = i
        self._piece_data = <uint8_t*>malloc(total + 1)
        self._piece_off = <uint32_t*>malloc((V + 1) * sizeof(uint32_t))
        self._special = <uint8_t*>malloc(V)
        if self._piece_data == NULL or self._piece_off == NULL or self._special == NULL:
            raise MemoryError()
        total = 0
        for i in range(V):
            data = encoded[i]
            self._piece_off[i] = total
            memcpy(self._piece_data + total, <const char*>data, len(data))
            total += len(data)
            self._special[i] = types[i] == TOKEN_TYPE_CONTROL
        self._piece_off[V] = total
        return bpe_ids

    cdef int _build_added(self, list types) except -1:
        """Patterns for CONTROL and USER_DEFINED tokens written in text, leftmost-longest."""
        added = {self._pieces[i]: i for i in range(self.vocab_size)
                 if types[i] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) and self._pieces[i]}
        user = [p for p, i in added.items() if types[i] == TOKEN_TYPE_USER_DEFINED]
        self._added_ids = added

        def pattern(pieces):
            if not pieces:
                return None
            return re.compile("|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True)))

        self._special_re = pattern(list(added))
        self._user_re = pattern(user)
        return 0

    cdef int _build_byte_ids(self, dict bpe_ids, dict byte_of) except -1:
        """A byte whose one-char piece is not in the vocabulary maps to -1: BPE drops it, as HF
        tokenizers and llama.cpp do (SmolLM2 lacks e.g. 0x04 and 0xF1)."""
        cdef int b
        for ch, b in byte_of.items():
            self._byte_ids[b] = bpe_ids.get(ch, -1)
        return 0

    cdef int _build_merges(self, list merges, dict bpe_ids) except -1:
        """(left_id, right_id) -> (rank, merged_id) in an open-addressing table. A merge whose
        parts or result are not in the vocabulary can never fire and is left out."""
        cdef uint64_t cap = 16, key, idx
        cdef int rank
        cdef MergeSlot* slot
        self._merge_shift = 60
        while cap < 2 * <uint64_t>len(merges) + 16:
            cap *= 2
            self._merge_shift -= 1
        self._merges = <MergeSlot*>malloc(cap * sizeof(MergeSlot))
        if self._merges == NULL:
            raise MemoryError()
        for idx in range(cap):
            self._merges[idx].key = MERGE_EMPTY
        self._merge_mask = cap - 1
        for rank, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2:
                raise ValueError(f"malformed merge {merge!r} at rank {rank} (tokenizer.ggml.merges)")
            left, right = bpe_ids.get(parts[0]), bpe_ids.get(parts[1])
            merged = bpe_ids.get(parts[0] + parts[1])
            if left is None or right is None or merged is None:
                continue
            key = (<uint64_t>left << 32) | <uint32_t>right
            idx = (key * 0x9E3779B97F4A7C15ULL) >> self._merge_shift
            while self._merges[idx].key != MERGE_EMPTY and self._merges[idx].key != key:
                idx = (idx + 1) & self._merge_mask
            slot = &self._merges[idx]
            if slot.key == MERGE_EMPTY:                    # the first (best) rank of a pair wins
                slot.key, slot.rank, slot.merged_id = key, rank, merged
        return 0

    cdef void _clear_cache(self) noexcept nogil:
        memset(self._cache, 0, CACHE_SLOTS * sizeof(CacheSlot))
        self._cache_used = 0
        self._cache_key_top = 0
        self._cache_ids_top = 0

    # -- encode ------------------------------------------------------------------------------

    cdef int _grow_scratch(self, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t cap = max(n, 2 * self._scratch_cap, 64)
        cdef void* p
        p = realloc(self._sym_id, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        self._sym_id = <int32_t*>p
        p = realloc(self._sym_prev, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        self._sym_prev = <int32_t*>p
        p = realloc(self._sym_next, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        self._sym_next = <int32_t*>p
        p = realloc(self._heap, 3 * cap * sizeof(uint64_t))
        if p == NULL:
            return -1
        self._heap = <uint64_t*>p
        self._scratch_cap = cap
        return 0

    cdef int _bpe_word(self, const uint8_t* word, Py_ssize_t n, IdVec* out) noexcept nogil:
        """Append the ids of one pre-token: lowest-rank pair first, leftmost on ties."""
        cdef Py_ssize_t t, u, heap_size = 0
        cdef uint64_t h = 0, idx, top
        cdef CacheSlot* slot
        cdef const MergeSlot* merge
        cdef int32_t* ids
        cdef int32_t* prv
        cdef int32_t* nxt
        cdef int32_t rank
        cdef Py_ssize_t start, m
        if n == 1:
            return _push(out, self._byte_ids[word[0]]) if self._byte_ids[word[0]] >= 0 else 0
        if n <= CACHE_MAX_WORD:
            h = _hash_bytes(word, n)
            idx = h & (CACHE_SLOTS - 1)
            while self._cache[idx].key_len:
                slot = &self._cache[idx]
                if slot.hash == h and slot.key_len == n and memcmp(self._cache_keys + slot.key_off, word, n) == 0:
                    for t in range(slot.num_ids):
                        if _push(out, self._cache_ids[slot.ids_off + t]):
                            return -1
                    return 0
                idx = (idx + 1) & (CACHE_SLOTS - 1)
        if n > self._scratch_cap and self._grow_scratch(n):
            return -1
        ids, prv, nxt = self._sym_id, self._sym_prev, self._sym_next
        m = 0
        for t in range(n):                    # a byte without a token is dropped, as HF does
            if self._byte_ids[word[t]] >= 0:
                ids[m] = self._byte_ids[word[t]]
                prv[m] = m - 1
                nxt[m] = m + 1
                m += 1
        start = out.size
        if m == 0:
            return 0
        nxt[m - 1] = -1
        for t in range(m - 1):
            merge = _find_merge(self._merges, self._merge_mask, self._merge_shift, ids[t], ids[t + 1])
            if merge != NULL:
                _heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>t)
        while heap_size:
            top = _heap_pop(self._heap, &heap_size)
            rank = <int32_t>(top >> 32)
            t = <Py_ssize_t><uint32_t>top
            u = nxt[t]
            if ids[t] < 0 or u < 0:
                continue
            merge = _find_merge(self._merges, self._merge_mask, self._merge_shift, ids[t], ids[u])
            if merge == NULL or merge.rank != rank:        # stale: a neighbour changed
                continue
            ids[t] = merge.merged_id
            ids[u] = -1
            nxt[t] = nxt[u]
            if nxt[u] >= 0:
                prv[nxt[u]] = t
            if prv[t] >= 0:
                merge = _find_merge(self._merges, self._merge_mask, self._merge_shift, ids[prv[t]], ids[t])
                if merge != NULL:
                    _heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>prv[t])
            if nxt[t] >= 0:
                merge = _find_merge(self._merges, self._merge_mask, self._merge_shift, ids[t], ids[nxt[t]])
                if merge != NULL:
                    _heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>t)
        t = 0
        while t >= 0:
            if _push(out, ids[t]):
                return -1
            t = nxt[t]
        if n <= CACHE_MAX_WORD:
            self._cache_insert(word, n, h, out.data + start, out.size - start)
        return 0

    cdef void _cache_insert(self, const uint8_t* word, Py_ssize_t n, uint64_t h,
                            const int32_t* ids, Py_ssize_t num_ids) noexcept nogil:
        cdef uint64_t idx
        if self._cache_used >= CACHE_MAX_ENTRIES:          # bounded memory: start over
            self._clear_cache()
        idx = h & (CACHE_SLOTS - 1)
        while self._cache[idx].key_len:
            idx = (idx + 1) & (CACHE_SLOTS - 1)
        memcpy(self._cache_keys + self._cache_key_top, word, n)
        memcpy(self._cache_ids + self._cache_ids_top, ids, num_ids * sizeof(int32_t))
        self._cache[idx].hash = h
        self._cache[idx].key_off = self._cache_key_top
        self._cache[idx].ids_off = self._cache_ids_top
        self._cache[idx].key_len = <uint16_t>n
        self._cache[idx].num_ids = <uint16_t>num_ids
        self._cache_key_top += n
        self._cache_ids_top += num_ids
        self._cache_used += 1

    cdef int _encode_utf8(self, const uint8_t* text, Py_ssize_t n, IdVec* out) noexcept nogil:
        cdef Py_ssize_t i = 0, j, seg_end = 0
        while i < n:
            j = _next_word(text, i, n, self._pre_kind, &seg_end)
            if self._bpe_word(text + i, j - i, out):
                return -1
            i = j
        return 0

    cdef int _encode_str(self, str text, IdVec* out) except -1:
        cdef Py_ssize_t n
        cdef const char* utf8
        if self._merges == NULL:
            raise RuntimeError("Tokenizer was not initialised")
        utf8 = PyUnicode_AsUTF8AndSize(text, &n)
        if self._encode_utf8(<const uint8_t*>utf8, n, out):
            raise MemoryError()
        return 0

    def encode(self, str text, bint parse_special=True):
        """Token ids of `text`. With parse_special, CONTROL tokens written in the text (e.g.
        `<|im_start|>`) become their ids; USER_DEFINED tokens always do. No BOS is added."""
        cdef IdVec out
        cdef Py_ssize_t pos = 0, i
        out.data, out.size, out.cap = NULL, 0, 0
        pattern = self._special_re if parse_special else self._user_re
        try:
            if pattern is None:
                self._encode_str(text, &out)
            else:
                for match in pattern.finditer(text):
                    if match.start() > pos:
                        self._encode_str(text[pos:match.start()], &out)
                    if _push(&out, self._added_ids[match.group()]):
                        raise MemoryError()
                    pos = match.end()
                if pos < len(text):
                    self._encode_str(text[pos:] if pos else text, &out)
            return [out.data[i] for i in range(out.size)]
        finally:
            free(out.data)

    # -- decode and lookups --------------------------------------------------------------------

    cdef Py_ssize_t _check_id(self, object token_id) except -1:
        cdef Py_ssize_t i
        try:
            i = token_id
        except OverflowError:
            i = -1
        if i < 0 or i >= self.vocab_size:
            raise ValueError(f"token id {token_id} out of range for vocab size {self.vocab_size}")
        return i

    cdef bytes _piece_bytes(self, Py_ssize_t i):
        return PyBytes_FromStringAndSize(<const char*>self._piece_data + self._piece_off[i],
                                         self._piece_off[i + 1] - self._piece_off[i])

    def decode(self, ids, bint skip_special=False):
        """Text of `ids`; invalid UTF-8 becomes U+FFFD. skip_special drops CONTROL tokens."""
        cdef list checked = [self._check_id(t) for t in ids]
        cdef Py_ssize_t total = 0, i, pos = 0, k
        cdef uint8_t* buf
        for i in checked:
            if not (skip_special and self._special[i]):
                total += self._piece_off[i + 1] - self._piece_off[i]
        buf = <uint8_t*>malloc(total + 1)
        if buf == NULL:
            raise MemoryError()
        try:
            for i in checked:
                if not (skip_special and self._special[i]):
                    k = self._piece_off[i + 1] - self._piece_off[i]
                    memcpy(buf + pos, self._piece_data + self._piece_off[i], k)
                    pos += k
            return PyUnicode_DecodeUTF8(<const char*>buf, total, "replace")
        finally:
            free(buf)

    def token_to_id(self, str piece):
        """Id of a piece spelled as in the vocabulary ('Ġthe' for " the"), or None."""
        return self._piece_ids.get(piece)

    def id_to_piece(self, token_id):
        """The piece as the vocabulary spells it (byte-level alphabet for normal tokens)."""
        return self._pieces[self._check_id(token_id)]

    def is_special(self, token_id):
        """True for CONTROL tokens (BOS, EOS, <|im_start|>, ...)."""
        return bool(self._special[self._check_id(token_id)])

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, pre={self.pre!r})"


cdef class IncrementalDecoder:
    """Streaming detokenizer: push() returns only complete UTF-8 characters; flush() the rest
    (an unfinished character becomes U+FFFD). The concatenation equals Tokenizer.decode."""

    def __init__(self, Tokenizer tokenizer not None, bint skip_special=False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._pending = b""

    def push(self, token_id):
        cdef Py_ssize_t i = self._tokenizer._check_id(token_id), cut
        cdef bytes data
        if self._skip_special and self._tokenizer._special[i]:
            return ""
        data = self._pending + self._tokenizer._piece_bytes(i)
        cut = _utf8_complete_prefix(<const uint8_t*>data, len(data))
        self._pending = data[cut:]
        return PyUnicode_DecodeUTF8(<const char*>data, cut, "replace")

    def flush(self):
        text = self._pending.decode("utf-8", "replace")
        self._pending = b""
        return text


cdef list _BYTE_SPELLING = [None] * 256
for _ch, _b in _byte_decoder().items():
    _BYTE_SPELLING[_b] = _ch

_CLASS_RUNS = (
    "eNpVVWFoHNcR7ryd2ezb7F52z7vOnrg1e+6d8zaRXJ04GctIRjKRI7VykUPsKOEcbJCL0jogF8c5FyXoXBkssItcLCoZKaQg"
    "gwvXIocrdYIgEvEPB5xggwKySYJ/KOAEB/InoD+Fzp6cgnl3b+/NzZv5Zuab2V885/0G96pwJDPyAv4BC7jNIEwR6haVaYyu"
    "pdzWDi9EwnPokSEdwgySRUiDdFtQDXMzRDMgMbMA8+KE6/wbanBYuQZd0Ai7jNCMLYk9SJW310UL7oknoGC46A+57MrGI8Nh"
    "s3+Ugt5r8B2sgY39GKq0om43koYcoiyh7dh8v90gKx0bZiAxF7ibfxnJepcRbVPS6skzqk2pl5jpMtKqgC0/m2lIzyRGFOlB"
    "C1JgW+TYHCsZtmFbdutreLjUH1ESdreNbzJqySa2MwJ3U6oSE++ySzZh9CbuFiAJzbf00EoPUOD32UcpTyiz76neZSCjmN2h"
    "5iHx4dFR3vleAaVHuENJpwr43mAxoil4y/tcq8FBXWUCl4O1jdByS0Xk8wwQ+ihrQHWTHMlYeF8A3ibg/+dOWk8OF8SeQbu7"
    "Z03IwF7cIl+iEb8mUnYU9rUPdPR1lMjqugMXAV1MqSb1usqsi9CT5xMPMyIeex/iivRaFsEdaWqehnJhFf4FrNiOP4kl6I1S"
    "6ipU2s14Ed6cgj8qOxVPgWz2ayCtq+BQwGlEf1yvijVDBpIZEciI4SVrTK5Co5IWZW1HBm7J51/PNL9jPIufAO4jNAOfoy1N"
    "a4xOKtb0MptXHWqWju+5qH8Opnd/64/wsRi6v6Vy/ZeXn8pw+XagfJyjBxBiT7mQpSfWisBPU+ia+Lt86Jm24a6JjEUPBTmM"
    "nDZEyonHYQW6z4L6U6R38uN96Kya419AVdTrdFHcAFk37H2xcXAJesbkFcEFzcs5jdMtk8JGh7qZCA6VdwXxHei4xak5FthM"
    "Kj0ejcvHT4VLcJJD8+j52GO+HLEoSqtMmat8i3HbhvQkx3nMks2hVQw4aUEjBAa3O3Nb26UyU1+LYtm9CZfOixtPy2vaLGSL"
    "np9wqcSswkYTLGrnoPZ0/7iQa/B3aL2reTSHv230dMu6sBtmpXURWmmEBli/U+6ehEdaWx3a1mG/cfepU/ZN2HfCPQtO4WXa"
    "zoRIyDAFbqR7/4ANNBkGuPz5AHJ3oNhMnY2Oevy0WfSVLAzF0bGArgHlpwV3KS1CQglZNnNlMxzbnl8Bdr3Vfz1wR2bFA0hL"
    "s9v8CLDL4fydej5/5LRBp60qRDTa5PWsQTxk5ga25vre4BouiK/hNrTfhm2Mo001xaOF8vc6DyfIGD3WD3A6xtzQTuetvo/g"
    "cPZgubgKv6/wrML2OlRheJsqTMFexczC3AUeMcVl6HB2xpz29GBLHw0fMP4LjU7icBTXa796cmr0Y9E7w6TkmBKuHeeL12EV"
    "+p2tyrfOLMNB5sF2NUtLwI1wCViAO9Usj8F2HkxNgydPHG51s99yPu5qZ8VAMeLBErHlo11saI+aFZGcAx6QeBLjD5jEh7Dl"
    "BhzA/gUxr08w7kyeLkMv7j3lV1a0BNIMHOIBkuGOo3HoYB/35ADbKtF5Jt89gXtf+Sc8zF7RlrTeKf36yxNa13KuNzj+aMyf"
    "S3/7JVR+rWZ3rbvhGNNySfBW6V+GHqdN6Vl6xR9YseuQUrP6WVG+qtWEj5OiVBUc4skHn0BubcdVUPN/E04jORdkF77Ng7LD"
    "yS1al/pqml+y86G6z210Zedg2+CH2vA8rgqaE0k1ZPL2aOVEZ2mCG5CTkKVRzjqz2M7SHVMO0zC/cZ78RuYtqO4eywTTxgZ8"
    "hnWIsyaX8pxZ6V+EtLqXGuVNr0hdTT+TZWNMbrqsm8y2KRFiWn0TPALd0p0PRR30zkndoROsk9RSsTYmbzN3c9RYj+U/r+SU"
    "hOk09BS9yEPLoxf/mi795VU1G43/x6zCwypkNnR5vg4dN7+DrhtbJg9sOJO/ql0Bf/zP8D8ebF3d"
)
_load_classes()
