/* K-quant super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in one unpacked form (internal to csrc/).
 *
 * Every K-quant element decodes as w_k = d * sc[k / 16] * u_k - dm * mn[k / 16], u_k >= 0 a byte:
 *   Q2_K u = q (0..3),       sc, mn = 4-bit scale and min,  dm = dmin
 *   Q3_K u = q + 4 (0..7),   sc = 6-bit scale - 32, mn = 4 sc, dm = d
 *   Q4_K u = q (0..15),      sc, mn = 6-bit scale and min (per 32, so pairs of 16 repeat), dm = dmin
 *   Q5_K u = q (0..31),      as Q4_K
 *   Q6_K u = q + 32 (0..63), sc = int8 scale, mn = 32 sc, dm = d
 * So one integer dot product serves all five: against Q8_K activations (q_x, bsums per 16),
 *   isum = sum_k se[k / 2] * u_k * q_x,k     msum = sum_s mn_s * bsums_s
 * with se the scales repeated for each pair of elements, the int16 operand _mm256_madd_epi16
 * takes after _mm256_maddubs_epi16 (u unsigned <= 63 and |q_x| <= 127: a pair sums to at most
 * 16002, no saturation; |sc| <= 128, so int32 sums stay below 2^27).
 * The scale decoding is shared scalar code; the byte unpack has a scalar and an AVX2 twin that
 * produce the same bytes.
 */
#ifndef CYS_KQUANTS_H
#define CYS_KQUANTS_H

#include <stdint.h>

#include "ggml_blocks.h"

typedef struct {
    uint8_t u[QK_K];        /* unsigned codes, elements in order */
    int16_t se[QK_K / 2];   /* se[k / 2] = sc of element k's 16-element sub-block */
    int16_t mn[QK_K / 16];  /* offset factor per 16-element sub-block */
    float d, dm;
} kq_block_t;

/* 1 for the formats with a separate min scale (Q2_K, Q4_K, Q5_K): their offset term is
 * accumulated with its own factor dm; 0 for Q3_K / Q6_K (dm = d: the offset joins isum). */
static inline int kq_has_min(int wtype) {
    return wtype == CYS_TYPE_Q2_K || wtype == CYS_TYPE_Q4_K || wtype == CYS_TYPE_Q5_K;
}

/* Bytes of one super-block of wtype (a K-quant), 0 otherwise. */
int64_t kq_block_bytes(int wtype);

/* Unpack one super-block at p into *o: scalar twin and AVX2 twin (same bytes). */
void kq_unpack_scalar(int wtype, const uint8_t *p, kq_block_t *o);
void kq_unpack_avx2(int wtype, const uint8_t *p, kq_block_t *o);

/* Decode a row of K (% 256 == 0) elements: ggml's f32 formula (d * sc) * u' - (dm * mn). */
void kq_dequantize_row_scalar(int wtype, const uint8_t *row, int64_t K, float *dst);
void kq_dequantize_row_avx2(int wtype, const uint8_t *row, int64_t K, float *dst);

/* Q8_K activations of one row set (matmul_kq.c); rows [t0, t1) of x[., K]. */
void cys_quantize_act_q8k_rows(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q,
                               float *d, int16_t *bsums, int simd);

/* cys_matmul for K-quant weights (K % 256 == 0, row_bytes validated). */
int cys_matmul_kq(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                  int wtype, int64_t N, float *out, int nthreads, int simd);

#endif /* CYS_KQUANTS_H */
