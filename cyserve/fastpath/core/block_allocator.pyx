"""Block KV allocator: ids of fixed-size KV blocks, reference counts, an LRU free queue and the
prefix-cache map. The runner owns the storage; this module only decides which ids hold what.

A block is in one of three states: used (ref count > 0), free and cached (ref count 0, still holds
the K/V of a full block under its key, so a later request can take it back), or free and empty.
Free blocks (cached or not) all sit in one queue; handing one out evicts whatever it cached.

"Not enough free blocks" is a normal answer (None), which makes the scheduler preempt; freeing a
block that is not in use is a broken invariant and raises.
"""
from libc.stdint cimport int32_t, uint64_t
from libc.stdlib cimport calloc, free as c_free, malloc
from libc.string cimport memcmp, memcpy

cdef uint64_t LANE_MASK = 0xFFFFFFFFFFFFFFFFULL


class BlockAccountingError(RuntimeError):
    """A block was freed twice or never allocated, or the books disagree: a bug, never a user error."""


cdef class BlockAllocator:
    def __cinit__(self, int num_blocks, int block_size=16, bint enable_prefix_caching=True):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        cdef size_t table_size = 2
        while table_size < 2 * <size_t> num_blocks:
            table_size *= 2
        self._mask = table_size - 1
        self._meta = <BlockMeta*> calloc(num_blocks + 1, sizeof(BlockMeta))  # + the queue's sentinel
        self._tokens = <int32_t*> malloc(num_blocks * block_size * sizeof(int32_t))
        self._table = <TableEntry*> malloc(table_size * sizeof(TableEntry))
        if self._meta == NULL or self._tokens == NULL or self._table == NULL:
            raise MemoryError()
        cdef size_t s
        for s in range(table_size):
            self._table[s].block = -1
        self._meta[num_blocks].prev = self._meta[num_blocks].next = num_blocks
        cdef int i
        for i in range(num_blocks):  # ascending ids come out first: easier to read in tests and logs
            self._push_back(i)
        self._num_free = num_blocks

    def __dealloc__(self):
        c_free(self._meta)
        c_free(self._tokens)
        c_free(self._table)

    # ---- the free queue ---------------------------------------------------------------------

    cdef inline void _unlink(self, int b) noexcept:
        cdef BlockMeta* m = self._meta
        m[m[b].prev].next = m[b].next
        m[m[b].next].prev = m[b].prev

    cdef inline void _push_front(self, int b) noexcept:
        cdef BlockMeta* m = self._meta
        cdef int head = m[self.num_blocks].next
        m[b].prev = self.num_blocks
        m[b].next = head
        m[head].prev = b
        m[self.num_blocks].next = b

    cdef inline void _push_back(self, int b) noexcept:
        cdef BlockMeta* m = self._meta
        cdef int tail = m[self.num_blocks].prev
        m[b].next = self.num_blocks
        m[b].prev = tail
        m[tail].next = b
        m[self.num_blocks].prev = b

    # ---- counts -----------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached ones included (they are reused on demand)."""
        return self._num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self._num_free

    def blocks_needed(self, int num_tokens) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # ---- allocation -------------------------------------------------------------------------

    cdef size_t _slot_of(self, uint64_t a, uint64_t b) noexcept:
        """The table slot holding key (a, b), or the empty slot where it would go."""
        cdef size_t i = a & self._mask
        cdef TableEntry* e = &self._table[i]
        while e.block >= 0 and not (e.key_a == a and self._meta[e.block].key_b == b):
            i = (i + 1) & self._mask
            e = &self._table[i]
        return i

    cdef void _evict(self, int b) noexcept:
        """Drop block b's key: backward-shift deletion keeps every probe chain unbroken."""
        if not self._meta[b].cached:
            return
        cdef size_t i = self._slot_of(self._meta[b].key_a, self._meta[b].key_b), j = i, home
        while True:
            j = (j + 1) & self._mask
            if self._table[j].block < 0:
                break
            home = self._table[j].key_a & self._mask
            # move entry j back into the hole at i unless its home lies cyclically in (i, j]
            if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
                self._table[i] = self._table[j]
                i = j
        self._table[i].block = -1
        self._meta[b].cached = 0
        self.num_cached_blocks -= 1
        self.num_evictions += 1

    cpdef list allocate(self, int n):
        """n blocks with reference count 1 from the head of the free queue, or None when fewer than
        n are free. A block that still cached a prefix forgets it."""
        cdef list out = []
        return out if self.allocate_into(out, n) else None

    cdef bint allocate_into(self, list out, int n) except -1:
        """allocate(), appending to `out` (a sequence's block table: no temporary list)."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > self._num_free:
            return False
        cdef int b
        for _ in range(n):
            b = self._meta[self.num_blocks].next
            self._unlink(b)
            self._evict(b)
            self._meta[b].ref_count = 1
            out.append(b)
        self._num_free -= n
        return True

    cpdef int free(self, list block_ids) except -1:
        """Drop one reference to each block, last block first: of a sequence's cached blocks its tail
        is the least likely to be shared, so it is queued to be evicted first."""
        cdef Py_ssize_t i
        cdef int b
        for i in range(len(block_ids) - 1, -1, -1):
            b = block_ids[i]
            if b < 0 or b >= self.num_blocks or self._meta[b].ref_count <= 0:
                raise BlockAccountingError(f"block {b} freed but not in use")
            self._meta[b].ref_count -= 1
            if self._meta[b].ref_count == 0:
                if not self._meta[b].cached:
                    self._push_front(b)
                else:
                    self._push_back(b)
                self._num_free += 1
        return 0

    cdef int touch(self, int b) except -1:
        """Take one more reference to a cached block (a prefix-cache hit)."""
        if not self._meta[b].cached:
            raise BlockAccountingError(f"block {b} is not cached and cannot be shared")
        if self._meta[b].ref_count == 0:
            self._unlink(b)
            self._num_free -= 1
        self._meta[b].ref_count += 1
        return 0

    cpdef int ref_count(self, int block_id) except -1:
        if block_id < 0 or block_id >= self.num_blocks:
            raise IndexError(f"block id {block_id} out of range 0..{self.num_blocks - 1}")
        return self._meta[block_id].ref_count

    # ---- the prefix cache -------------------------------------------------------------------

    cdef int find_cached(self, uint64_t a, uint64_t b, const int32_t* tokens) noexcept:
        """The block cached under key (a, b) holding exactly `tokens`, or -1. The token check makes a
        hash collision a miss instead of another request's K/V."""
        if not self.enable_prefix_caching:
            return -1
        cdef int blk = self._table[self._slot_of(a, b)].block
        if blk < 0 or memcmp(&self._tokens[blk * self.block_size], tokens,
                             self.block_size * sizeof(int32_t)) != 0:
            return -1
        return blk

    cdef int cache_block(self, int blk, uint64_t a, uint64_t b, const int32_t* tokens) except -1:
        """Offer a used, full, computed block to the cache under key (a, b). Returns 1 when cached, 0
        when another block already holds that key (this one stays private)."""
        if not self.enable_prefix_caching:
            return 0
        cdef BlockMeta* m = &self._meta[blk]
        if m.ref_count <= 0:
            raise BlockAccountingError(f"block {blk} cached while not in use")
        if m.cached:
            raise BlockAccountingError(f"block {blk} cached twice")
        cdef size_t i = self._slot_of(a, b)
        if self._table[i].block >= 0:
            return 0
        self._table[i].block = blk
        self._table[i].key_a = a
        m.key_a = a
        m.key_b = b
        m.cached = 1
        self.num_cached_blocks += 1
        memcpy(&self._tokens[blk * self.block_size], tokens, self.block_size * sizeof(int32_t))
        return 1

    def reset_prefix_cache(self) -> int:
        """Forget every cached block no request holds (e.g. after swapping weights). Returns the count."""
        cdef int b, n = 0
        for b in range(self.num_blocks):
            if self._meta[b].ref_count == 0 and self._meta[b].cached:
                self._evict(b)
                self.num_evictions -= 1  # dropped on request, not to reuse the block
                n += 1
        return n

    # ---- for tests and debugging ------------------------------------------------------------

    def cache(self, int block_id, key, tokens) -> bool:
        """Python face of cache_block with a 128-bit int key, for tests."""
        cdef int32_t[::1] buf = self._token_buffer(tokens)
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"block id {block_id} out of range")
        return self.cache_block(block_id, key >> 64, key & LANE_MASK, &buf[0]) == 1

    def lookup(self, key, tokens, bint share=False) -> int:
        """Python face of find_cached (+ touch when share), for tests. -1 = miss."""
        cdef int32_t[::1] buf = self._token_buffer(tokens)
        cdef int b = self.find_cached(key >> 64, key & LANE_MASK, &buf[0])
        if b >= 0 and share:
            self.touch(b)
        return b

    def _token_buffer(self, tokens):
        import array

        if len(tokens) != self.block_size:
            raise ValueError(f"a block holds {self.block_size} tokens, got {len(tokens)}")
        return array.array("i", tokens)

    def key_of(self, int block_id):
        """The block's 128-bit key, or None when it is not cached."""
        if not self._meta[block_id].cached:
            return None
        return (<object> self._meta[block_id].key_a << 64) | <object> self._meta[block_id].key_b

    def free_queue(self) -> list:
        """Free block ids in the order allocate() hands them out."""
        out = []
        cdef int b = self._meta[self.num_blocks].next
        while b != self.num_blocks:
            out.append(b)
            b = self._meta[b].next
        return out

    def check(self) -> None:
        """Raise BlockAccountingError unless the books balance: ref counts >= 0, the free queue is
        exactly the blocks with ref count 0 (each once, links consistent), the cache table holds each
        cached block once and finds it under its key."""
        queue = self.free_queue()
        if len(queue) != len(set(queue)) or len(queue) != self._num_free:
            raise BlockAccountingError(f"free queue {queue} disagrees with num_free={self._num_free}")
        cdef int b, prev = self.num_blocks
        for b in queue:
            if self._meta[b].prev != prev:
                raise BlockAccountingError(f"free queue back link of block {b} is broken")
            prev = b
        zero = {b for b in range(self.num_blocks) if self._meta[b].ref_count == 0}
        if any(self._meta[b].ref_count < 0 for b in range(self.num_blocks)) or zero != set(queue):
            raise BlockAccountingError("free queue is not exactly the blocks with ref count 0")
        cdef size_t slot
        entries = [self._table[slot].block for slot in range(self._mask + 1) if self._table[slot].block >= 0]
        cached = [b for b in range(self.num_blocks) if self._meta[b].cached]
        if sorted(entries) != cached or len(cached) != self.num_cached_blocks:
            raise BlockAccountingError("the cache table and the blocks' cached flags disagree")
        for b in cached:
            slot = self._slot_of(self._meta[b].key_a, self._meta[b].key_b)
            if self._table[slot].block != b or self._table[slot].key_a != self._meta[b].key_a:
                raise BlockAccountingError(f"block {b} cannot be found under its own key")
