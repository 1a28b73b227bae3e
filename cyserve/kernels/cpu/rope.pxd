# C-level entry point of rope for Cython callers: no GIL, no checks. Returns 0 or CYS_ERR_NOMEM.
from libc.stdint cimport int32_t, int64_t

# freq_factors: f32[head_dim/2] dividing each pair's frequency, or NULL.
cdef int rope_nogil(float *x, const int32_t *positions, int64_t T, int64_t num_heads,
                    int64_t head_dim, double theta, const float *freq_factors,
                    bint neox) noexcept nogil
