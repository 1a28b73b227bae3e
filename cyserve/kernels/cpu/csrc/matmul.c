/* out[T, N] = x[T, K] @ W[N, K].T: the entry point, and the f32 path for F32 / F16 / BF16 weights.
 *
 * Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights go to the integer path in matmul_q8.c, the K-quants
 * to matmul_kq.c (activations quantized to int8 blocks, integer block dot products). Plain float weights keep f32 activations here, with two
 * AVX2 paths, both parallel over output rows N (each thread owns whole rows of W, so W is read
 * once per step whatever T is):
 *  - few tokens (decode, T < CYS_MM_SMALL_T): each 32-weight group is decoded into 4 registers
 *    and applied to up to 4 token rows before the next group is read;
 *  - many tokens (prefill): a pair of W rows is decoded once into an L1 scratch buffer, then a
 *    2 rows x 4 tokens register tile runs over it, with x walked in chunks that stay in L2.
 * The scalar twin decodes each row with the reference decoder and takes plain dot products.
 */
#include <stdlib.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

#define CYS_MM_SMALL_T 8            /* below this many tokens decode blocks straight to registers */
#define CYS_MM_X_CHUNK_BYTES (256 * 1024) /* x rows per pass of the prefill path: stays in L2 */
#define CYS_MM_PAR_MIN_MACS (1 << 17) /* smaller products run on the calling thread */

/* The formats this file multiplies (the quantized ones never reach its AVX2 loops). */
#define CYS_FOR_EACH_FLOAT_WTYPE(X) X(CYS_TYPE_F32) X(CYS_TYPE_F16) X(CYS_TYPE_BF16)

static float dot_scalar(const float *a, const float *b, int64_t K) {
    /* 4 partial sums: the same association order on every CPU, and some ILP */
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
        for (int j = 0; j < 4; j++) s[j] += a[k + j] * b[k + j];
    for (; k < K; k++) s[0] += a[k] * b[k];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static int matmul_scalar(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t rb,
                         int wtype, int64_t N, float *out, int nthreads, int par) {
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        float *row = malloc((size_t)K * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            if (!row) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            cys_dequantize_row_scalar(w + n * rb, wtype, K, row);
            for (int64_t t = 0; t < T; t++) out[t * N + n] = dot_scalar(row, x + t * K, K);
        }
        free(row);
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}

/* ---- AVX2, few tokens: registers only ---- */

/* res[t] = <row, x[t]> for nt (1..4) tokens; K % 32 == 0. Independent accumulators per token
 * (4 when nt <= 2, else 2) keep several FMA chains in flight to hide their latency. */
CYS_AVX2_INLINE void row_dot_tokens(const int wtype, const int nt, const uint8_t *row,
                                    int64_t ngroups, const float *x, int64_t K, float *res) {
    const int nacc = nt <= 2 ? 4 : 2;
    const int64_t gb = cys_group_bytes(wtype);
    __m256 acc[4][4];
    for (int t = 0; t < nt; t++)
        for (int a = 0; a < nacc; a++) acc[t][a] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngroups; g++) {
        __m256 wv[4];
        cys_load_group(wtype, row + g * gb, wv);
        const float *xg = x + g * QK;
        for (int t = 0; t < nt; t++)
            for (int j = 0; j < 4; j++)
                acc[t][j % nacc] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(xg + t * K + 8 * j),
                                                   acc[t][j % nacc]);
    }
    for (int t = 0; t < nt; t++) {
        __m256 s = acc[t][0];
        for (int a = 1; a < nacc; a++) s = _mm256_add_ps(s, acc[t][a]);
        res[t] = cys_hsum256(s);
    }
}

/* Rows [n0, n1) against all T (< CYS_MM_SMALL_T) tokens, in token tiles of up to 4. */
CYS_AVX2_INLINE void rows_small_t(const int wtype, const float *x, int64_t T, int64_t K,
                                  const uint8_t *w, int64_t rb, int64_t n0, int64_t n1,
                                  float *out, int64_t N) {
    const int64_t ngroups = K / QK;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w + n * rb;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            float res[4];
            const float *xt = x + t0 * K;
            switch (T - t0 >= 4 ? 4 : T - t0) {
            case 4: row_dot_tokens(wtype, 4, row, ngroups, xt, K, res); break;
            case 3: row_dot_tokens(wtype, 3, row, ngroups, xt, K, res); break;
            case 2: row_dot_tokens(wtype, 2, row, ngroups, xt, K, res); break;
            default: row_dot_tokens(wtype, 1, row, ngroups, xt, K, res); break;
            }
            for (int64_t t = t0; t < T && t < t0 + 4; t++) out[t * N + n] = res[t - t0];
        }
    }
}

#define CYS_MM_ROW_CHUNK 16 /* rows per scheduling unit: amortises the per-chunk dispatch */

CYS_AVX2 static void matmul_small_t_avx2(const float *x, int64_t T, int64_t K, const uint8_t *w,
                                         int64_t rb, int wtype, int64_t N, float *out,
                                         int nthreads, int par) {
    const int64_t nchunks = (N + CYS_MM_ROW_CHUNK - 1) / CYS_MM_ROW_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t n0 = c * CYS_MM_ROW_CHUNK;
        const int64_t n1 = n0 + CYS_MM_ROW_CHUNK < N ? n0 + CYS_MM_ROW_CHUNK : N;
        switch (wtype) {
#define CASE(TY) case TY: rows_small_t(TY, x, T, K, w, rb, n0, n1, out, N); break;
            CYS_FOR_EACH_FLOAT_WTYPE(CASE)
#undef CASE
        }
    }
}

/* ---- AVX2, many tokens: decoded row pair x 4-token register tile ---- */

/* res[r][t] = <wrow[r], x[t]> for nr (1..2) decoded rows and nt (1..4) tokens, any K. */
CYS_AVX2_INLINE void tile_rows_tokens(const int nr, const int nt, const float *w0, const float *w1,
                                      const float *x, int64_t K, float res[2][4]) {
    __m256 acc[2][4];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    const int64_t K8 = K & ~(int64_t)7;
    for (int64_t k = 0; k < K8; k += 8) {
        const __m256 wv0 = _mm256_loadu_ps(w0 + k);
        const __m256 wv1 = nr == 2 ? _mm256_loadu_ps(w1 + k) : wv0;
        for (int t = 0; t < nt; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * K + k);
            acc[0][t] = _mm256_fmadd_ps(wv0, xv, acc[0][t]);
            if (nr == 2) acc[1][t] = _mm256_fmadd_ps(wv1, xv, acc[1][t]);
        }
    }
    for (int r = 0; r < nr; r++) {
        const float *wr = r ? w1 : w0;
        for (int t = 0; t < nt; t++) {
            float s = cys_hsum256(acc[r][t]);
            for (int64_t k = K8; k < K; k++) s += wr[k] * x[t * K + k];
            res[r][t] = s;
        }
    }
}

CYS_AVX2_INLINE void tile_dispatch(int nr, int nt, const float *w0, const float *w1,
                                   const float *x, int64_t K, float res[2][4]) {
    /* constant tile sizes for the compiler: the accumulators then live in registers */
#define TILE(R, T) case (R) * 8 + (T): tile_rows_tokens(R, T, w0, w1, x, K, res); break;
    switch (nr * 8 + nt) {
        TILE(2, 4) TILE(2, 3) TILE(2, 2) TILE(2, 1) TILE(1, 4) TILE(1, 3) TILE(1, 2) TILE(1, 1)
    }
#undef TILE
}

CYS_AVX2 static int matmul_large_t_avx2(const float *x, int64_t T, int64_t K, const uint8_t *w,
                                        int64_t rb, int wtype, int64_t N, float *out,
                                        int nthreads, int par) {
    const int64_t npairs = (N + 1) / 2;
    int64_t tchunk = CYS_MM_X_CHUNK_BYTES / (K * (int64_t)sizeof(float)) & ~(int64_t)3;
    if (tchunk < 4) tchunk = 4;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        /* every thread reaches the worksharing loops even if its malloc failed */
        float *buf = malloc((size_t)K * 2 * sizeof(float));
        for (int64_t tc = 0; tc < T; tc += tchunk) {
            const int64_t tend = tc + tchunk < T ? tc + tchunk : T;
#pragma omp for schedule(static) nowait
            for (int64_t p = 0; p < npairs; p++) {
                if (!buf) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                const int64_t n = 2 * p;
                const int nr = n + 1 < N ? 2 : 1;
                cys_dequantize_row_avx2(w + n * rb, wtype, K, buf);
                if (nr == 2) cys_dequantize_row_avx2(w + (n + 1) * rb, wtype, K, buf + K);
                for (int64_t t0 = tc; t0 < tend; t0 += 4) {
                    const int nt = tend - t0 >= 4 ? 4 : (int)(tend - t0);
                    float res[2][4];
                    tile_dispatch(nr, nt, buf, buf + K, x + t0 * K, K, res);
                    for (int r = 0; r < nr; r++)
                        for (int t = 0; t < nt; t++) out[(t0 + t) * N + n + r] = res[r][t];
                }
            }
        }
        free(buf);
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}

int cys_matmul(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
               int wtype, int64_t N, float *out, int nthreads, int simd) {
    const int64_t rb = cys_row_bytes(wtype, K);
    if (rb < 0) return (int)rb;
    if (T <= 0 || N <= 0) return CYS_OK;
    simd = cys_effective_isa(simd);
    if (cys_block_elems(wtype) == QK) /* quantized weights: K % 32 == 0 (checked by row_bytes) */
        return cys_matmul_q8(x, T, K, w, row_bytes, wtype, N, out, nthreads, simd);
    if (cys_block_elems(wtype) == QK_K) /* K-quants: K % 256 == 0 */
        return cys_matmul_kq(x, T, K, w, row_bytes, wtype, N, out, nthreads, simd);
    const int par = nthreads > 1 && T * N * K >= CYS_MM_PAR_MIN_MACS;
    if (!simd)
        return matmul_scalar(x, T, K, w, row_bytes, wtype, N, out, nthreads, par);
    if (T < CYS_MM_SMALL_T && K % QK == 0) {
        matmul_small_t_avx2(x, T, K, w, row_bytes, wtype, N, out, nthreads, par);
        return CYS_OK;
    }
    return matmul_large_t_avx2(x, T, K, w, row_bytes, wtype, N, out, nthreads, par);
}
