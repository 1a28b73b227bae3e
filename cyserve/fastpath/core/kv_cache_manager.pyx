"""KV cache manager: a sequence's view of the block allocator, with automatic prefix caching.

Every full block of a sequence has a key chained from its parent's: key_k = H(key_{k-1}, tokens of
block k), and key_{-1} comes from the request's cache salt, so two requests share block k only when
their first (k+1) * block_size tokens and their salts are equal. H is two independent 64-bit lanes
seeded at random per process: a 128-bit key, kept in C arrays on the sequence and in the allocator's
table (a collision is not a practical concern, and the allocator compares the block's tokens on
every hit besides).

A block enters the cache only after the forward pass that computed it succeeded (`commit`), so a
hit never reads K/V that is still being written or that a failed step left half done.
"""
import os

from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

from cyserve.fastpath.core.block_allocator cimport BlockAllocator
from cyserve.fastpath.core.sequence cimport Sequence

cdef uint64_t MUL_A = 0x9E3779B97F4A7C15ULL
cdef uint64_t MUL_B = 0xC2B2AE3D27D4EB4FULL


cdef inline uint64_t fmix64(uint64_t h) noexcept nogil:
    """MurmurHash3's finalizer: every input bit flips about half the output bits."""
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t hash_lane(uint64_t parent, uint64_t seed, uint64_t mul, const int32_t* tokens,
                               int n) noexcept nogil:
    cdef uint64_t h = fmix64(parent ^ seed)
    cdef int i
    for i in range(n):
        h = (h ^ <uint64_t><uint32_t>tokens[i]) * mul
        h = (h << 31) | (h >> 33)
    return fmix64(h ^ <uint64_t>n)


cdef class KVCacheManager:
    def __init__(self, BlockAllocator allocator not None):
        self.allocator = allocator
        self.block_size = allocator.block_size
        self.enable_prefix_caching = allocator.enable_prefix_caching
        self._scratch = <int32_t*> malloc(self.block_size * sizeof(int32_t))
        if self._scratch == NULL:
            raise MemoryError()
        seed = os.urandom(16)  # per-process, like Python's str hash: keys cannot be precomputed
        self._seed_a = int.from_bytes(seed[:8], "little")
        self._seed_b = int.from_bytes(seed[8:], "little")

    def __dealloc__(self):
        free(self._scratch)

    @classmethod
    def create(cls, int num_blocks, int block_size=16, bint enable_prefix_caching=True):
        return cls(BlockAllocator(num_blocks, block_size, enable_prefix_caching))

    # ---- keys -------------------------------------------------------------------------------

    cdef const int32_t* _load_block(self, Sequence seq, int k) except NULL:
        """Block k's tokens (copied into the scratch buffer), making sure the sequence's chain covers
        block k (hashing it when k is the next block: k <= seq.num_hashes)."""
        cdef int bs = self.block_size, i
        cdef uint64_t parent_a, parent_b
        cdef list token_ids = seq.token_ids
        cdef int32_t* tokens = self._scratch
        for i in range(bs):
            tokens[i] = <int32_t> token_ids[k * bs + i]
        if k < seq.num_hashes:
            return tokens
        if k == 0:
            parent_a, parent_b = self._root(seq.cache_salt)
        else:
            parent_a, parent_b = seq.hashes[2 * k - 2], seq.hashes[2 * k - 1]
        seq.push_hash(hash_lane(parent_a, self._seed_a, MUL_A, tokens, bs),
                      hash_lane(parent_b, self._seed_b, MUL_B, tokens, bs))
        return tokens

    cdef (uint64_t, uint64_t) _root(self, object salt):
        """The chain's start: the salt's bytes hashed, so different salts never share a block."""
        cdef uint64_t a = 0, b = 0
        if salt is None:
            return a, b
        data = str(salt).encode()
        cdef const unsigned char[::1] raw = data
        cdef Py_ssize_t i
        for i in range(raw.shape[0]):
            a = fmix64(a ^ (raw[i] + 1) ^ self._seed_b)
            b = fmix64(b ^ (raw[i] + 1) ^ self._seed_a)
        return a ^ (<uint64_t> raw.shape[0] + 1), b ^ (<uint64_t> raw.shape[0] + 1)

    # ---- the sequence API -------------------------------------------------------------------

    cpdef list get_computed_blocks(self, Sequence seq):
        """Ids of the cached blocks that hold this sequence's longest cached prefix (not yet shared:
        pass them to allocate_slots). At least the last token is left to compute, so the step that
        admits the sequence yields logits to sample from."""
        cdef list hits = []
        if not self.enable_prefix_caching or seq.block_ids:
            return hits
        cdef int k, b, max_blocks = (len(seq.token_ids) - 1) // self.block_size
        cdef const int32_t* tokens
        for k in range(max_blocks):
            tokens = self._load_block(seq, k)
            b = self.allocator.find_cached(seq.hashes[2 * k], seq.hashes[2 * k + 1], tokens)
            if b < 0:
                break
            hits.append(b)
        return hits

    cpdef bint allocate_slots(self, Sequence seq, int num_new_tokens, list new_computed_blocks=None) except -1:
        """Give `seq` the blocks for `num_new_tokens` more tokens, first taking the prefix-cache hits
        in `new_computed_blocks` (which count as computed). False, with nothing changed, when not
        enough blocks are free."""
        cdef BlockAllocator alloc = self.allocator
        cdef int bs = self.block_size, b
        cdef int num_hits = len(new_computed_blocks) if new_computed_blocks is not None else 0
        cdef int total = seq.num_computed_tokens + num_hits * bs + num_new_tokens
        cdef int need = (total + bs - 1) // bs - len(seq.block_ids) - num_hits
        cdef int reclaimed = 0  # hits that sit in the free queue: taking them uses up free blocks
        if need < 0:
            need = 0
        if num_hits:
            if seq.block_ids:
                raise ValueError("prefix-cache hits only extend a sequence that holds no blocks")
            for b in new_computed_blocks:
                reclaimed += alloc.ref_count(b) == 0
        if need + reclaimed > alloc._num_free:
            return False
        if new_computed_blocks is not None:
            for b in new_computed_blocks:
                alloc.touch(b)
            seq.block_ids.extend(new_computed_blocks)
            seq.num_computed_tokens += num_hits * bs
            seq.num_committed_blocks = num_hits
            if seq.num_preemptions == 0 and self.enable_prefix_caching:
                seq.num_cached_tokens = num_hits * bs
                self.prefix_cache_queries += len(seq.token_ids)
                self.prefix_cache_hits += num_hits * bs
        if need:
            alloc.allocate_into(seq.block_ids, need)
        return True

    cpdef int commit(self, Sequence seq) except -1:
        """After a successful step: offer the sequence's newly completed full blocks to the cache."""
        cdef int k, full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or full <= seq.num_committed_blocks:
            return 0
        cdef const int32_t* tokens
        for k in range(seq.num_committed_blocks, full):
            tokens = self._load_block(seq, k)
            self.allocator.cache_block(seq.block_ids[k], seq.hashes[2 * k], seq.hashes[2 * k + 1], tokens)
        seq.num_committed_blocks = full
        return 0

    cpdef int free(self, Sequence seq) except -1:
        """Return every block of the sequence (cached ones stay cached until reused)."""
        self.allocator.free(seq.block_ids)
        seq.block_ids = []
        seq.num_committed_blocks = 0
        return 0

    def reset_stats(self) -> None:
        self.prefix_cache_queries = self.prefix_cache_hits = 0
