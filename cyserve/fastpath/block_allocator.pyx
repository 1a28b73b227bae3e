"""Block KV allocator: hands out ids of fixed-size KV blocks; the runner owns the storage.

"Not enough free blocks" is a normal answer (None), which makes the scheduler preempt; freeing a
block that is not allocated is a broken invariant and raises.
"""
from libc.stdlib cimport malloc, free as c_free


class BlockAccountingError(RuntimeError):
    """A block was freed twice or never allocated: a bug, never a user error."""


cdef class BlockAllocator:
    def __cinit__(self, int num_blocks, int block_size=16):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free_stack = <int*> malloc(num_blocks * sizeof(int))
        self._ref_counts = <int*> malloc(num_blocks * sizeof(int))
        if self._free_stack == NULL or self._ref_counts == NULL:
            raise MemoryError()
        cdef int i
        for i in range(num_blocks):
            # highest id at the bottom so ids come out ascending: easier to read in tests and logs
            self._free_stack[i] = num_blocks - 1 - i
            self._ref_counts[i] = 0
        self._num_free = num_blocks

    def __dealloc__(self):
        c_free(self._free_stack)
        c_free(self._ref_counts)

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self._num_free

    def blocks_needed(self, int num_tokens) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    cpdef list allocate(self, int n):
        """n fresh blocks with reference count 1, or None when fewer than n are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > self._num_free:
            return None
        cdef list out = []
        cdef int b
        for _ in range(n):
            self._num_free -= 1
            b = self._free_stack[self._num_free]
            self._ref_counts[b] = 1
            out.append(b)
        return out

    cpdef void free(self, list block_ids) except *:
        """Drop one reference to each block; a block whose count reaches 0 is free again."""
        cdef int b
        for obj in block_ids:
            b = obj
            if b < 0 or b >= self.num_blocks or self._ref_counts[b] <= 0:
                raise BlockAccountingError(f"block {b} freed but not allocated")
            self._ref_counts[b] -= 1
            if self._ref_counts[b] == 0:
                self._free_stack[self._num_free] = b
                self._num_free += 1

    cpdef int ref_count(self, int block_id) except -1:
        if block_id < 0 or block_id >= self.num_blocks:
            raise IndexError(f"block id {block_id} out of range 0..{self.num_blocks - 1}")
        return self._ref_counts[block_id]
