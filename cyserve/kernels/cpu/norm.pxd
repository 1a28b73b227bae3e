# C-level entry point of norm for Cython callers: no GIL, no checks (out may alias x).
from libc.stdint cimport int64_t

cdef void rms_norm_nogil(const float *x, const float *weight, int64_t T, int64_t D, float eps,
                         float *out) noexcept nogil
