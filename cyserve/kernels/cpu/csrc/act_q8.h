/* Activations as int8 blocks of 32, the operand of the integer matmul (internal to csrc/).
 *
 * Row t of x[T, K] becomes, per 32-element block b (nb = K / 32 blocks a row):
 *   q[t*K + 32b + j]  int8 in [-127, 127]   x ~= q * d
 *   d[t*nb + b]       f32 amax / 127        (0 for an all-zero block)
 *   s[t*nb + b]       f32 d * sum_j q       the factor a weight block's min multiplies
 * Structure of arrays, not ggml's interleaved block_q8_1: the int8 rows are what the dot products
 * stream, and the d/s rows are then contiguous for the tile kernels' broadcast loads and the
 * vectorised min-term dots. The scales are f32 (ggml keeps fp16) - the same 4 bytes per block as
 * fp16 d+s would cost 2, and one rounding less.
 *
 * A block whose largest magnitude is below CYS_ACT_MIN_AMAX quantizes to zeros with d = 0: for
 * smaller ones 1 / d would overflow to inf.
 *
 * Rounding is to nearest, ties to even, in both twins (AVX2 vroundps and the scalar magic-number
 * add), so the scalar and AVX2 paths produce identical bits; inputs must be finite.
 */
#ifndef CYS_ACT_Q8_H
#define CYS_ACT_Q8_H

#include <stddef.h>
#include <stdint.h>

#define CYS_ACT_MIN_AMAX 0x1p-96f

/* Quantize rows [t0, t1) of x[., K] (K % 32 == 0) into q/d/s laid out as above, except that the
 * d and s rows are `stride` >= nb floats apart, the padding set to 0 (so the kernels can run
 * 8-wide over a whole row of scales). */
void cys_quantize_act_rows(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q, float *d,
                           float *s, int64_t stride, int simd);

/* d/s row stride the matmul uses: nb rounded up to a multiple of 8. */
static inline int64_t cys_act_stride(int64_t nb) { return (nb + 7) & ~(int64_t)7; }

/* Scratch owned by the calling thread, reused across calls and freed when the thread exits;
 * at least `bytes` long and 64-byte aligned, or NULL when out of memory. */
void *cys_thread_scratch(size_t bytes);

/* cys_matmul for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights (K % 32 == 0, row_bytes validated). */
int cys_matmul_q8(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                  int wtype, int64_t N, float *out, int nthreads, int simd);

#endif /* CYS_ACT_Q8_H */
