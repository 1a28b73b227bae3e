# C-level entry point of rope for Cython callers: no GIL, no checks. Returns 0 or CYS_ERR_NOMEM.
from libc.stdint cimport int32_t, int64_t

cdef int rope_nogil(float *x, const int32_t *positions, int64_t T, int64_t num_heads,
                    int64_t head_dim, double theta, bint neox) noexcept nogil
