# C-level entry points of quant_matmul for Cython callers (cyserve.fastpath): no GIL, no checks.
# The caller guarantees the shapes the Python functions validate; returns 0 or a CYS_ERR_* code.
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef int matmul_nogil(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                      int wtype, int64_t N, float *out) noexcept nogil
cdef int get_rows_nogil(const uint8_t *w, int64_t row_bytes, int wtype, int64_t K,
                        const int32_t *ids, int64_t T, float *out) noexcept nogil
