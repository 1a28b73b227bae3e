from libc.stdint cimport int32_t, uint64_t

from cyserve.fastpath.core.block_allocator cimport BlockAllocator
from cyserve.fastpath.core.sequence cimport Sequence


cdef class KVCacheManager:
    cdef readonly BlockAllocator allocator
    cdef readonly int block_size
    cdef readonly bint enable_prefix_caching
    cdef readonly long prefix_cache_queries   # prompt tokens looked up at first admission
    cdef readonly long prefix_cache_hits      # of those, tokens whose K/V came from the cache
    cdef int32_t* _scratch                    # one block of token ids
    cdef uint64_t _seed_a, _seed_b

    cdef const int32_t* _load_block(self, Sequence seq, int k) except NULL
    cdef (uint64_t, uint64_t) _root(self, object salt)
    cpdef list get_computed_blocks(self, Sequence seq)
    cpdef bint allocate_slots(self, Sequence seq, int num_new_tokens, list new_computed_blocks=*) except -1
    cpdef int commit(self, Sequence seq) except -1
    cpdef int free(self, Sequence seq) except -1
