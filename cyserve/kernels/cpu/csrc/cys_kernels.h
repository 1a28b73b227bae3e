/* Public C API of the CPU kernels: the only header the Cython wrappers include (ckernels.pxd).
 *
 * Conventions for every entry point:
 *  - arrays are C-contiguous; shapes are validated by the caller (the .pyx edge), the C code trusts
 *    them and never allocates more than per-thread scratch;
 *  - `nthreads` is passed explicitly (OpenMP's own setting is per calling thread, so a global
 *    omp_set_num_threads from the main thread would not reach the engine thread);
 *  - `simd` is the instruction set asked for (CYS_ISA_*): 0 forces the scalar twin; a level the
 *    CPU lacks falls back to the best one it has (cys_cpu_isa). The integer dot products of the
 *    quantized formats are exact on every level and the float accumulation order is the same, so
 *    a row's output has the same bits on AVX-512 VNNI, AVX-VNNI and AVX2; the elementwise kernels
 *    have an AVX2 path and a scalar twin.
 */
#ifndef CYS_KERNELS_H
#define CYS_KERNELS_H

#include <stdint.h>

/* GGML type ids, as in gguf.GGMLQuantizationType. */
enum {
    CYS_TYPE_F32 = 0,
    CYS_TYPE_F16 = 1,
    CYS_TYPE_Q4_0 = 2,
    CYS_TYPE_Q4_1 = 3,
    CYS_TYPE_Q5_0 = 6,
    CYS_TYPE_Q5_1 = 7,
    CYS_TYPE_Q8_0 = 8,
    CYS_TYPE_Q2_K = 10,
    CYS_TYPE_Q3_K = 11,
    CYS_TYPE_Q4_K = 12,
    CYS_TYPE_Q5_K = 13,
    CYS_TYPE_Q6_K = 14,
    CYS_TYPE_BF16 = 30,
};

/* Return codes: 0 ok, negative = what went wrong (the .pyx edge turns them into exceptions). */
enum {
    CYS_OK = 0,
    CYS_ERR_TYPE = -1,   /* unsupported wtype */
    CYS_ERR_SHAPE = -2,  /* K not a positive multiple of the block size */
    CYS_ERR_NOMEM = -3,  /* scratch allocation failed */
};

/* Instruction-set levels, each a superset of the one before. */
enum {
    CYS_ISA_SCALAR = 0,
    CYS_ISA_AVX2 = 1,        /* AVX2 + FMA + F16C */
    CYS_ISA_AVX_VNNI = 2,    /* + AVX-VNNI: vpdpbusd / vpdpwssd on ymm, VEX encoded */
    CYS_ISA_AVX512_VNNI = 3, /* + AVX-512 F/BW/VL/VNNI: vpdpbusd / vpdpwssd, 32 vector registers */
};

/* The best level this CPU and OS support (CPUID and XCR0, through libgcc); checked once. A CPU
 * with AVX-512 VNNI but not AVX-VNNI still gets level 3: the levels order the kernels, and the
 * AVX-512 kernels need only what level 3 names. */
int cys_cpu_isa(void);
/* 1 when `isa` (a CYS_ISA_* level) is usable here; AVX-VNNI is checked on its own. */
int cys_cpu_supports_isa(int isa);
/* The level the kernels run for a requested one: the request when supported, else the best
 * supported level below it. */
int cys_effective_isa(int requested);
/* 1 when AVX2, FMA and F16C are usable (level 1 or above). */
int cys_cpu_has_avx2(void);

/* Elements per block (1 for F32/F16/BF16, 32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, 256 for the K-quants
 * Q2_K..Q6_K), or CYS_ERR_TYPE. */
int64_t cys_block_elems(int wtype);
/* Bytes of one row of K elements, or CYS_ERR_TYPE / CYS_ERR_SHAPE. */
int64_t cys_row_bytes(int wtype, int64_t K);

/* out[N, K] (f32) = rows of w (N rows, row_bytes apart) decoded. */
int cys_dequantize(const uint8_t *w, int64_t row_bytes, int wtype, int64_t N, int64_t K,
                   float *out, int nthreads, int simd);
/* out[T, K] = decoded rows ids[0..T) of w; ids must be in range (checked by the caller). */
int cys_get_rows(const uint8_t *w, int64_t row_bytes, int wtype, int64_t K, const int32_t *ids,
                 int64_t T, float *out, int nthreads, int simd);
/* out[T, N] = x[T, K] @ W[N, K].T; out must not overlap x. For Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights x
 * is first quantized as cys_quantize_act does, for the K-quants as cys_quantize_act_q8k does (into
 * per-thread scratch; CYS_ERR_NOMEM if that fails), and multiplied with integer block dot
 * products; F32/F16/BF16 weights multiply f32 x. */
int cys_matmul(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
               int wtype, int64_t N, float *out, int nthreads, int simd);
/* x[T, K] (K % 32 == 0, finite) -> int8 blocks of 32: q[T, K], scale d[T, K/32] = amax / 127,
 * s[T, K/32] = d * sum(q) per block; q = round-half-even(x / d). CYS_ERR_SHAPE for a bad K. */
int cys_quantize_act(const float *x, int64_t T, int64_t K, int8_t *q, float *d, float *s,
                     int nthreads, int simd);
/* x[T, K] (K % 256 == 0, finite) -> Q8_K: int8 q[T, K], scale d[T, K/256] = amax / 127 per
 * 256-element block, bsums[T, K/16] = sum(q) per 16 elements; q = round-half-even(x / d), as
 * cys_quantize_act does per 32. The twins agree bit for bit. CYS_ERR_SHAPE for a bad K. */
int cys_quantize_act_q8k(const float *x, int64_t T, int64_t K, int8_t *q, float *d,
                         int16_t *bsums, int nthreads, int simd);

/* out[T, D] = x / sqrt(mean(x^2) + eps) * weight; out may alias x. */
void cys_rms_norm(const float *x, const float *weight, int64_t T, int64_t D, float eps,
                  float *out, int nthreads, int simd);

/* In-place rotary embedding of x[T, num_heads * head_dim] (head_dim even), pair i at angle
 * pos * theta^(-2i/head_dim) / freq_factors[i] (freq_factors: f32[head_dim/2] or NULL for 1).
 * neox = 0: pairs (2i, 2i+1) (GGUF/llama.cpp); neox = 1: pairs (i, i + head_dim/2). */
int cys_rope(float *x, const int32_t *positions, int64_t T, int64_t num_heads, int64_t head_dim,
             double theta, const float *freq_factors, int neox, int nthreads, int simd);

/* out[n] = silu(gate[n]) * up[n]; out may alias gate or up. */
void cys_silu_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads, int simd);
/* out[n] = gelu_tanh(gate[n]) * up[n] (GELU, tanh approximation: Gemma); out may alias gate or up. */
void cys_gelu_tanh_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads,
                       int simd);
/* a[n] += b[n]. */
void cys_add(float *a, const float *b, int64_t n, int nthreads, int simd);

/* Caches are fp16 bits [num_blocks, Hkv, BS, Dh]; k/v are f32[T, Hkv * Dh]. slot -1 = skip;
 * other slots must be < num_blocks * BS (checked by the caller). */
void cys_reshape_and_cache(const float *k, const float *v, int64_t T, uint16_t *k_cache,
                           uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                           const int32_t *slot_mapping, int nthreads, int simd);

/* out[T, Hq * Dh] = causal GQA attention of q[T, Hq * Dh] over the paged caches.
 * block_tables is [S, max_blocks]; query_start_loc [S + 1]; context_lens [S]. The caller checks
 * that every block a sequence reads is a valid block id and that q_len <= context_len.
 * Decodes (q_len 1) and prefill chunks (q_len > 1, reading the earlier context from the blocks)
 * mix freely; the q heads of one kv head are computed together and scratch does not grow with
 * the context length. window > 0 is a sliding window: the query at position p sees only keys
 * [p - window + 1, p] (and reads no others); 0 = all of 0..p. Returns CYS_OK or CYS_ERR_NOMEM. */
int cys_paged_attention(const float *q, int64_t T, int64_t Hq, const uint16_t *k_cache,
                        const uint16_t *v_cache, int64_t Hkv, int64_t BS, int64_t Dh,
                        const int32_t *block_tables, int64_t max_blocks,
                        const int32_t *query_start_loc, const int32_t *context_lens, int64_t S,
                        float scale, int64_t window, float *out, int nthreads, int simd);

#endif /* CYS_KERNELS_H */
