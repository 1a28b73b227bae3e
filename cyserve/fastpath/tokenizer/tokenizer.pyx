"""The tokenizer built from a GGUF file's metadata: byte-level BPE (tokenizer.ggml.model = gpt2)
or SentencePiece (= llama).

Owns text <-> token ids for the engine: splitting the text at the special tokens written in it
(found by cyserve.fastpath.tokenizer.added_tokens), BPE merges by rank over C arrays with a word
cache, BOS/EOS and end-of-generation ids, decoding, and an incremental decoder that emits only complete UTF-8 characters. Pre-tokenization (the scanner
per `tokenizer.ggml.pre` and the Unicode class table behind it) lives in
cyserve.fastpath.tokenizer.pretokenizer; BPE runs on each of its pre-tokens. A SentencePiece
vocabulary's merges live in cyserve.fastpath.tokenizer.spm, what the metadata keys mean in
cyserve.fastpath.tokenizer.gguf_vocab.

Thread safety: encode runs its C part without releasing the GIL (the word cache and the BPE
scratch are shared per tokenizer), so concurrent callers are serialised.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from cyserve.fastpath.tokenizer.byte_table cimport hash_bytes
from cyserve.fastpath.tokenizer.merge_heap cimport heap_pop, heap_push
from cyserve.fastpath.tokenizer.added_tokens cimport AddedTokens
from cyserve.fastpath.tokenizer.idvec cimport idvec_push
from cyserve.fastpath.tokenizer.pretokenizer cimport next_word, pre_kind_of
from cyserve.fastpath.tokenizer.spm cimport SpmModel

from cyserve.fastpath.tokenizer.gguf_vocab import eog_token_ids as default_eog_token_ids, tokenizer_kwargs
from cyserve.fastpath.tokenizer.spm import spm_model, spm_piece_bytes

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_BYTE = 6
_ADDED_TYPES = (TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)

cdef enum:
    # where a SentencePiece vocabulary puts "▁" before text (space_prefix)
    PREFIX_NONE = 0
    PREFIX_FIRST = 1         # before the text at offset 0 unless it starts with a space
    PREFIX_EVERY = 2         # before every run of text between special tokens

_SPACE_PREFIX = {"none": PREFIX_NONE, "first": PREFIX_FIRST, "every": PREFIX_EVERY}

cdef enum:
    # word cache
    CACHE_SLOTS = 32768                 # power of two
    CACHE_MAX_ENTRIES = 16384           # start over at 50% load
    CACHE_MAX_WORD = 48                 # bytes; longer words are not cached
    CACHE_KEY_BYTES = CACHE_MAX_ENTRIES * CACHE_MAX_WORD
    CACHE_ID_COUNT = CACHE_MAX_ENTRIES * CACHE_MAX_WORD

cdef uint64_t MERGE_EMPTY = 0xFFFFFFFFFFFFFFFFULL


# ---------------------------------------------------------------------------------------------
# small C helpers

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


def _byte_level_pieces(list pieces, list types, dict byte_of):
    """Decoded bytes per id, and the byte-level spelling -> id map that merges refer to (a
    NORMAL piece outside the alphabet is respelled, as HF does)."""
    encoded = []
    bpe_ids = {}
    for i, piece in enumerate(pieces):
        in_alphabet = all(ch in byte_of for ch in piece)
        if types[i] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) or not in_alphabet:
            data = piece.encode("utf-8")
        else:
            data = bytes([byte_of[ch] for ch in piece])
        encoded.append(data)
        bpe_ids["".join([_BYTE_SPELLING[b] for b in data]) if not in_alphabet else piece] = i
    return encoded, bpe_ids


# ---------------------------------------------------------------------------------------------

cdef class Tokenizer:
    """Byte-level BPE (model "gpt2") or SentencePiece merges by score (model "llama"). Build with
    `Tokenizer.from_gguf(reader)`; ids match Hugging Face's tokenizer of the same file."""

    def __init__(self, list tokens, list merges=None, token_types=None, *, str model="gpt2",
                 scores=None, str pre="default", bos_token_id=None, eos_token_id=None,
                 unknown_token_id=None, padding_token_id=None, bint add_bos_token=False,
                 bint add_eos_token=False, eog_token_ids=None, str space_prefix="none",
                 str merge_order="score"):
        """tokens: pieces as GGUF spells them; token_types: GGUF token types (default all
        NORMAL). model "gpt2": merges are "left right" strings, best first, and `pre` names the
        pre-tokenizer. model "llama": scores rank the merges (merge_order "position": the
        vocabulary order does); space_prefix "first" puts "▁" before the text when it does not
        start with a space, "every" before each run of text between special tokens, "none" never.
        eog_token_ids: ids that end generation (default the eos id and the tokens named like
        <end_of_turn>, <|im_end|>, <|eot_id|>)."""
        if self._ready:
            raise RuntimeError("Tokenizer is already initialised")
        if model not in ("gpt2", "llama"):
            raise ValueError(f"unsupported tokenizer model {model!r}; supported: gpt2, llama")
        if space_prefix not in _SPACE_PREFIX:
            raise ValueError(f"space_prefix {space_prefix!r}: use one of {sorted(_SPACE_PREFIX)}")
        self.model = model
        self._pre_kind = pre_kind_of(pre) if model == "gpt2" else 0
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
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.eog_token_ids = frozenset(eog_token_ids if eog_token_ids is not None
                                       else default_eog_token_ids(tokens, [eos_token_id]))
        self._space_prefix = _SPACE_PREFIX[space_prefix]
        self._pieces = list(tokens)
        self._piece_ids = {piece: i for i, piece in enumerate(tokens)}
        if model == "llama":
            if scores is None and merge_order == "score":
                raise ValueError("a SentencePiece vocabulary needs tokenizer.ggml.scores")
            self._build_pieces(spm_piece_bytes(self._pieces, types), types)
            self._build_added(types)
            self._spm = spm_model(self._pieces, types, scores, merge_order, unknown_token_id)
            self._ready = True
            return
        if merges is None:
            raise ValueError("a byte-level BPE vocabulary needs tokenizer.ggml.merges")
        byte_of = _byte_decoder()
        encoded, bpe_ids = _byte_level_pieces(self._pieces, types, byte_of)
        self._build_pieces(encoded, types)
        self._build_added(types)
        self._build_byte_ids(bpe_ids, byte_of)
        self._build_merges(merges, bpe_ids)
        self._cache = <CacheSlot*>malloc(CACHE_SLOTS * sizeof(CacheSlot))
        self._cache_keys = <uint8_t*>malloc(CACHE_KEY_BYTES)
        self._cache_ids = <int32_t*>malloc(CACHE_ID_COUNT * sizeof(int32_t))
        if self._cache == NULL or self._cache_keys == NULL or self._cache_ids == NULL:
            raise MemoryError()
        self._clear_cache()
        self._ready = True

    @classmethod
    def from_gguf(cls, reader, pre=None):
        """From a `gguf.GGUFReader`. `pre` overrides tokenizer.ggml.pre (e.g. "gpt2")."""
        return cls(**tokenizer_kwargs(reader, pre))

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

    cdef int _build_pieces(self, list encoded, list types) except -1:
        """Decoded bytes per id and the special (CONTROL, UNKNOWN) mask."""
        cdef Py_ssize_t i, total = 0, V = self.vocab_size
        for data in encoded:
            total += len(data)
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
            self._special[i] = types[i] == TOKEN_TYPE_CONTROL or types[i] == TOKEN_TYPE_UNKNOWN
        self._piece_off[V] = total
        return 0

    cdef int _build_added(self, list types) except -1:
        """Patterns for CONTROL, UNKNOWN and USER_DEFINED tokens written in text, leftmost-longest."""
        added = {self._pieces[i]: i for i in range(self.vocab_size)
                 if types[i] in _ADDED_TYPES and self._pieces[i]}
        user = [p for p, i in added.items() if types[i] == TOKEN_TYPE_USER_DEFINED]
        self._added_all = AddedTokens(added) if added else None
        self._added_user = AddedTokens({p: added[p] for p in user}) if user else None
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
            return idvec_push(out, self._byte_ids[word[0]]) if self._byte_ids[word[0]] >= 0 else 0
        if n <= CACHE_MAX_WORD:
            h = hash_bytes(word, n)
            idx = h & (CACHE_SLOTS - 1)
            while self._cache[idx].key_len:
                slot = &self._cache[idx]
                if slot.hash == h and slot.key_len == n and memcmp(self._cache_keys + slot.key_off, word, n) == 0:
                    for t in range(slot.num_ids):
                        if idvec_push(out, self._cache_ids[slot.ids_off + t]):
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
                heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>t)
        while heap_size:
            top = heap_pop(self._heap, &heap_size)
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
                    heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>prv[t])
            if nxt[t] >= 0:
                merge = _find_merge(self._merges, self._merge_mask, self._merge_shift, ids[t], ids[nxt[t]])
                if merge != NULL:
                    heap_push(self._heap, &heap_size, (<uint64_t>merge.rank << 32) | <uint64_t>t)
        t = 0
        while t >= 0:
            if idvec_push(out, ids[t]):
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
            j = next_word(text, i, n, self._pre_kind, &seg_end)
            if self._bpe_word(text + i, j - i, out):
                return -1
            i = j
        return 0

    cdef int _encode_run(self, const uint8_t* s, Py_ssize_t n, IdVec* out, bint at_start) noexcept nogil:
        """Append the ids of a run of plain text (n > 0); at_start: it begins the whole text.
        -1: out of memory."""
        cdef bint prefix
        if self._spm is None:
            return self._encode_utf8(s, n, out)
        prefix = self._space_prefix == PREFIX_EVERY or (
            self._space_prefix == PREFIX_FIRST and at_start and not (
                s[0] == 0x20 or (n >= 3 and s[0] == 0xE2 and s[1] == 0x96 and s[2] == 0x81)))
        return self._spm.encode(s, n, prefix, out)

    def encode(self, str text, bint parse_special=True, bint add_special=False):
        """Token ids of `text`. With parse_special, CONTROL tokens written in the text (e.g.
        `<|im_start|>`) become their ids; USER_DEFINED tokens always do. add_special adds BOS
        and EOS as the file's add_bos_token / add_eos_token ask (see add_special_tokens)."""
        cdef IdVec out
        cdef Py_ssize_t pos = 0, i, n, start, end = 0
        cdef int32_t token_id = -1
        cdef int failed = 0
        cdef const uint8_t* s
        cdef AddedTokens added = self._added_all if parse_special else self._added_user
        if not self._ready:
            raise RuntimeError("Tokenizer was not initialised")
        s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
        out.data, out.size, out.cap = NULL, 0, 0
        try:
            while pos < n and not failed:
                start = added.find(s, n, pos, &end, &token_id) if added is not None else -1
                if start < 0:
                    start = end = n
                if start > pos:
                    failed = self._encode_run(s + pos, start - pos, &out, pos == 0)
                if end > start and not failed:
                    failed = idvec_push(&out, token_id)
                pos = end
            if failed:
                raise MemoryError()
            ids = [out.data[i] for i in range(out.size)]
        finally:
            free(out.data)
        return self.add_special_tokens(ids) if add_special else ids

    def with_bos(self, ids):
        """`ids` as a prompt: with the BOS the file asks for (add_bos_token) in front, once: never
        before a BOS already there (chat templates often write it themselves)."""
        ids = list(ids)
        if self.add_bos_token and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def add_special_tokens(self, ids):
        """`ids` with the BOS the file asks for in front (see with_bos) and its EOS
        (add_eos_token) at the end, each added once."""
        ids = self.with_bos(ids)
        if self.add_eos_token and self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids.append(self.eos_token_id)
        return ids

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
        """Text of `ids`; invalid UTF-8 becomes U+FFFD. skip_special drops CONTROL tokens. A
        vocabulary that puts "▁" before text loses the leading space it makes (as HF decodes)."""
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
            k = 1 if self._space_prefix != PREFIX_NONE and total and buf[0] == 0x20 else 0
            return PyUnicode_DecodeUTF8(<const char*>buf + k, total - k, "replace")
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
        return f"Tokenizer(model={self.model!r}, vocab_size={self.vocab_size}, pre={self.pre!r})"


cdef class IncrementalDecoder:
    """Streaming detokenizer: push() returns only complete UTF-8 characters (a character spelled
    by several byte pieces, byte-level or <0xXX>, comes out whole); flush() the rest (an
    unfinished character becomes U+FFFD).

    at_start: the ids begin a text, so the space a SentencePiece vocabulary's prefix rule put in
    front is dropped, and the concatenation equals Tokenizer.decode. Without it (the default, for
    generated tokens that continue a prompt) every "▁" is a space: " time" after "Once upon a"."""

    def __init__(self, Tokenizer tokenizer not None, bint skip_special=False, bint at_start=False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._strip_space = at_start and tokenizer._space_prefix != PREFIX_NONE
        self._pending = b""

    def push(self, token_id):
        cdef Py_ssize_t i = self._tokenizer._check_id(token_id), cut
        cdef bytes data
        if self._skip_special and self._tokenizer._special[i]:
            return ""
        data = self._pending + self._tokenizer._piece_bytes(i)
        if self._strip_space and data:
            self._strip_space = False
            if data[0] == 0x20:
                data = data[1:]
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
