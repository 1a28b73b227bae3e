# C-level entry points of activation for Cython callers: no GIL, no checks. n = element count.
from libc.stdint cimport int64_t

cdef void silu_mul_nogil(const float *gate, const float *up, int64_t n, float *out) noexcept nogil
cdef void gelu_tanh_mul_nogil(const float *gate, const float *up, int64_t n, float *out) noexcept nogil
cdef void add_nogil(float *a, const float *b, int64_t n) noexcept nogil
