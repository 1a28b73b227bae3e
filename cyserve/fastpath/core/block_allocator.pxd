from libc.stdint cimport int32_t, uint64_t


cdef struct BlockMeta:                    # one 32-byte record per block: one cache line touch
    uint64_t key_a                        # the prefix-cache key's two 64-bit lanes (when cached)
    uint64_t key_b
    int32_t ref_count
    int32_t prev                          # free-queue links
    int32_t next
    int32_t cached


cdef struct TableEntry:                   # a prefix-cache table slot; key_a is copied in so a
    uint64_t key_a                        # probe rarely touches the block's record
    int32_t block                         # -1 = empty


cdef class BlockAllocator:
    cdef readonly int num_blocks
    cdef readonly int block_size
    cdef readonly bint enable_prefix_caching
    cdef readonly long num_evictions      # cached blocks whose key was dropped to reuse the block
    cdef readonly int num_cached_blocks   # blocks (used or free) holding a prefix-cache key
    cdef int _num_free
    # Free queue: a doubly linked list through BlockMeta.prev/next; record num_blocks is its sentinel.
    # Allocation takes the head; uncached blocks are freed to the head (reused first), cached ones to
    # the tail, so a cached block is evicted only when no uncached block is free, least recently
    # freed first.
    cdef BlockMeta* _meta                 # [num_blocks + 1]
    # The prefix cache: each cached block's tokens, and an open-addressing table (linear probing, at
    # most half full, backward-shift deletion) from 128-bit key to block id.
    cdef int32_t* _tokens                 # [num_blocks, block_size]
    cdef TableEntry* _table
    cdef size_t _mask                     # table size - 1 (a power of two)

    cdef inline void _unlink(self, int b) noexcept
    cdef inline void _push_front(self, int b) noexcept
    cdef inline void _push_back(self, int b) noexcept
    cdef size_t _slot_of(self, uint64_t a, uint64_t b) noexcept
    cdef void _evict(self, int b) noexcept
    cpdef list allocate(self, int n)
    cdef bint allocate_into(self, list out, int n) except -1
    cpdef int free(self, list block_ids) except -1
    cdef int touch(self, int b) except -1
    cdef int find_cached(self, uint64_t a, uint64_t b, const int32_t* tokens) noexcept
    cdef int cache_block(self, int blk, uint64_t a, uint64_t b, const int32_t* tokens) except -1
    cpdef int ref_count(self, int block_id) except -1
