# C-level entry points of attention for Cython callers: no GIL, no checks (the caller guarantees
# what reshape_and_cache / paged_attention validate). paged_attention_nogil returns 0 or a CYS_ERR_*.
from libc.stdint cimport int32_t, int64_t, uint16_t

cdef void reshape_and_cache_nogil(const float *k, const float *v, int64_t T, uint16_t *k_cache,
                                  uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                                  const int32_t *slot_mapping) noexcept nogil
cdef int paged_attention_nogil(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                               const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                               const int32_t *block_tables, int64_t max_blocks,
                               const int32_t *query_start_loc, const int32_t *context_lens,
                               int64_t S, float scale, int64_t window, float *out) noexcept nogil

# Raises ValueError unless every query range, context length and block id paged_attention_nogil
# would follow for this batch is in bounds (NB blocks of BS tokens; T query rows in all).
cdef int check_paged_batch(const int32_t[:, ::1] block_tables, const int32_t[::1] query_start_loc,
                           const int32_t[::1] context_lens, int64_t T, int64_t NB,
                           int64_t BS) except -1
