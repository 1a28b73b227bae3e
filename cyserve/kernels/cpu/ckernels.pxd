# cdef extern declarations of csrc/cys_kernels.h, the C kernels' only public header.
# Shapes are the caller's responsibility: the .pyx wrappers check them before calling.
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t


cdef extern from "cys_kernels.h" nogil:
    enum:
        CYS_TYPE_F32
        CYS_TYPE_F16
        CYS_TYPE_Q4_0
        CYS_TYPE_Q4_1
        CYS_TYPE_Q5_0
        CYS_TYPE_Q5_1
        CYS_TYPE_Q8_0
        CYS_TYPE_Q2_K
        CYS_TYPE_Q3_K
        CYS_TYPE_Q4_K
        CYS_TYPE_Q5_K
        CYS_TYPE_Q6_K
        CYS_TYPE_BF16
    enum:
        CYS_OK
        CYS_ERR_TYPE
        CYS_ERR_SHAPE
        CYS_ERR_NOMEM

    enum:
        CYS_ISA_SCALAR
        CYS_ISA_AVX2
        CYS_ISA_AVX_VNNI
        CYS_ISA_AVX512_VNNI

    int cys_cpu_isa()
    int cys_cpu_supports_isa(int isa)
    int cys_effective_isa(int requested)
    int cys_cpu_has_avx2()
    int64_t cys_block_elems(int wtype)
    int64_t cys_row_bytes(int wtype, int64_t K)

    int cys_dequantize(const uint8_t *w, int64_t row_bytes, int wtype, int64_t N, int64_t K,
                       float *out, int nthreads, int simd)
    int cys_get_rows(const uint8_t *w, int64_t row_bytes, int wtype, int64_t K,
                     const int32_t *ids, int64_t T, float *out, int nthreads, int simd)
    int cys_matmul(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                   int wtype, int64_t N, float *out, int nthreads, int simd)
    int cys_quantize_act(const float *x, int64_t T, int64_t K, int8_t *q, float *d, float *s,
                         int nthreads, int simd)
    int cys_quantize_act_q8k(const float *x, int64_t T, int64_t K, int8_t *q, float *d,
                             int16_t *bsums, int nthreads, int simd)

    void cys_rms_norm(const float *x, const float *weight, int64_t T, int64_t D, float eps,
                      float *out, int nthreads, int simd)
    int cys_rope(float *x, const int32_t *positions, int64_t T, int64_t num_heads,
                 int64_t head_dim, double theta, const float *freq_factors, int neox, int nthreads,
                 int simd)
    void cys_silu_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads,
                      int simd)
    void cys_gelu_tanh_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads,
                           int simd)
    void cys_add(float *a, const float *b, int64_t n, int nthreads, int simd)

    void cys_reshape_and_cache(const float *k, const float *v, int64_t T, uint16_t *k_cache,
                               uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                               const int32_t *slot_mapping, int nthreads, int simd)
    int cys_paged_attention(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                            const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                            const int32_t *block_tables, int64_t max_blocks,
                            const int32_t *query_start_loc, const int32_t *context_lens,
                            int64_t S, float scale, int64_t window, float *out, int nthreads,
                            int simd)
