cdef class BlockAllocator:
    cdef readonly int num_blocks
    cdef readonly int block_size
    cdef int* _free_stack      # ids of free blocks; the top is reused first (warm in cache)
    cdef int _num_free
    cdef int* _ref_counts

    cpdef list allocate(self, int n)
    cpdef void free(self, list block_ids) except *
    cpdef int ref_count(self, int block_id) except -1
