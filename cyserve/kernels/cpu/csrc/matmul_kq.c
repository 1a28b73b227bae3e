/* out[T, N] = x[T, K] @ W[N, K].T for K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), the way
 * ggml does it: x is quantized once per call to Q8_K (256-element blocks, int16 sums per 16:
 * cys_quantize_act_q8k), and each weight super-block meets each x block in exact integer sums
 * (kquants.h): isum = sum_k se * u * q_x and msum = sum_s mn_s * bsums_s. A row's f32 accumulator
 * then takes, super-block after super-block (dx the x block's scale):
 *   Q2_K / Q4_K / Q5_K:  acc = fma(dx * d, isum, acc);  acc = fma(-(dx * dm), msum, acc)
 *   Q3_K / Q6_K:         acc = fma(dx * d, isum - msum, acc)
 * with single-rounding fmas in both twins (the FMA instruction; fmaf in the scalar twin). The
 * integers are exact and the float steps the same, so the AVX2 path, the scalar twin and the
 * numpy reference (reference_kquants.matmul_q8k) agree bit for bit, and a token's output does not
 * depend on its batch, the tile it falls in or the thread count.
 *
 * AVX2: parallel over groups of 4 rows; a group's super-blocks are unpacked once (kq_unpack_avx2)
 * into an L1 buffer, then 4 rows x 2 tokens register tiles run over it for every token of an x
 * chunk sized to stay in L2 (maddubs u8 x s8 -> i16 pairs, madd with the scales -> i32).
 */
#include <math.h>
#include <stdlib.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

#define KQ_TILE_R 4                   /* rows unpacked together */
#define KQ_TILE_C 2                   /* tokens per register tile */
#define KQ_X_CHUNK_BYTES (192 * 1024) /* quantized x per pass: stays in L2 */
#define KQ_PAR_MIN_MACS (1 << 17)     /* smaller products run on the calling thread */
#define KQ_QUANT_PAR_MIN (1 << 15)    /* x elements from which threads share the quantization */

/* Q8_K x as the kernels read it: row t is q + t*K, d + t*nb, bs + t*(K/16). */
typedef struct {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
    int64_t K, nb;
} actk_t;

/* One super-block's f32 steps, shared by both twins (the fmas are explicit: no contraction can
 * make one twin round differently). */
static inline float kq_accumulate(int has_min, float acc, float dx, float d, float dm,
                                  int32_t isum, int32_t msum) {
    if (has_min) {
        acc = fmaf(dx * d, (float)isum, acc);
        return fmaf(-(dx * dm), (float)msum, acc);
    }
    return fmaf(dx * d, (float)(isum - msum), acc);
}

/* ---- scalar twin ---- */

static void kq_sums_scalar(const kq_block_t *w, const int8_t *x, const int16_t *bs, int32_t *isum,
                           int32_t *msum) {
    int32_t is = 0, ms = 0;
    for (int s = 0; s < QK_K / 16; s++) {
        int32_t sub = 0;
        for (int l = 0; l < 16; l++) sub += (int32_t)w->u[16 * s + l] * x[16 * s + l];
        is += w->se[8 * s] * sub;
        ms += (int32_t)w->mn[s] * bs[s];
    }
    *isum = is;
    *msum = ms;
}

static void matmul_rows_scalar(const actk_t *a, int64_t T, const uint8_t *w, int64_t rb, int wtype,
                               int64_t N, float *out, int *failed) {
    const int64_t bb = kq_block_bytes(wtype), nb = a->nb, K = a->K;
    const int has_min = kq_has_min(wtype);
    kq_block_t *row = malloc((size_t)nb * sizeof(kq_block_t));
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
    for (int64_t n = 0; n < N; n++) {
        if (!row) {
#pragma omp atomic write
            *failed = 1;
            continue;
        }
        for (int64_t b = 0; b < nb; b++) kq_unpack_scalar(wtype, w + n * rb + b * bb, &row[b]);
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t isum, msum;
                kq_sums_scalar(&row[b], a->q + t * K + b * QK_K, a->bs + t * (K / 16) + b * 16, &isum, &msum);
                acc = kq_accumulate(has_min, acc, a->d[t * nb + b], row[b].d, row[b].dm, isum, msum);
            }
            out[t * N + n] = acc;
        }
    }
    free(row);
}

/* ---- AVX2 ---- */

CYS_AVX2_INLINE int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* nr rows (unpacked, g[r * nb + b]) x nc tokens from t0: out[(t0 + c) * N + r]. */
CYS_AVX2_INLINE void kq_tile(const int has_min, const int nr, const int nc, const kq_block_t *g,
                             const actk_t *a, int64_t t0, float *out, int64_t N) {
    const int64_t K = a->K, nb = a->nb;
    float acc[KQ_TILE_R][KQ_TILE_C];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        __m256i is[KQ_TILE_R][KQ_TILE_C];
        for (int r = 0; r < nr; r++)
            for (int c = 0; c < nc; c++) is[r][c] = _mm256_setzero_si256();
        const int8_t *xb = a->q + t0 * K + b * QK_K;
        for (int v = 0; v < 8; v++) {
            __m256i xv[KQ_TILE_C];
            for (int c = 0; c < nc; c++) xv[c] = _mm256_loadu_si256((const __m256i *)(xb + c * K + 32 * v));
            for (int r = 0; r < nr; r++) {
                const kq_block_t *w = g + r * nb + b;
                const __m256i u = _mm256_loadu_si256((const __m256i *)(w->u + 32 * v));
                const __m256i se = _mm256_loadu_si256((const __m256i *)(w->se + 16 * v));
                for (int c = 0; c < nc; c++)
                    is[r][c] = _mm256_add_epi32(is[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv[c]), se));
            }
        }
        for (int c = 0; c < nc; c++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bs + (t0 + c) * (K / 16) + b * 16));
            const float dx = a->d[(t0 + c) * nb + b];
            for (int r = 0; r < nr; r++) {
                const kq_block_t *w = g + r * nb + b;
                const __m256i ms = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)w->mn), bs);
                if (has_min)
                    acc[r][c] = kq_accumulate(1, acc[r][c], dx, w->d, w->dm, hsum_epi32(is[r][c]), hsum_epi32(ms));
                else /* isum - msum in one reduction: the same integer */
                    acc[r][c] = kq_accumulate(0, acc[r][c], dx, w->d, w->dm,
                                              hsum_epi32(_mm256_sub_epi32(is[r][c], ms)), 0);
            }
        }
    }
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++) out[(t0 + c) * N + r] = acc[r][c];
}

CYS_AVX2_INLINE void kq_group(const int has_min, const int nr, const kq_block_t *g, const actk_t *a,
                              int64_t tc, int64_t tend, float *out, int64_t N) {
    int64_t t0 = tc;
    for (; t0 + KQ_TILE_C <= tend; t0 += KQ_TILE_C) kq_tile(has_min, nr, KQ_TILE_C, g, a, t0, out, N);
    if (t0 < tend) kq_tile(has_min, nr, 1, g, a, t0, out, N);
}

CYS_AVX2_INLINE void kq_group_dispatch(const int has_min, int nr, const kq_block_t *g,
                                       const actk_t *a, int64_t tc, int64_t tend, float *out,
                                       int64_t N) {
    switch (nr) {
    case 4: kq_group(has_min, 4, g, a, tc, tend, out, N); break;
    case 3: kq_group(has_min, 3, g, a, tc, tend, out, N); break;
    case 2: kq_group(has_min, 2, g, a, tc, tend, out, N); break;
    default: kq_group(has_min, 1, g, a, tc, tend, out, N); break;
    }
}

/* Runs inside the caller's parallel region (orphaned worksharing), after x is quantized. */
CYS_AVX2 static void matmul_rows_avx2(const actk_t *a, int64_t T, const uint8_t *w, int64_t rb,
                                      int wtype, int64_t N, float *out, int *failed) {
    const int64_t bb = kq_block_bytes(wtype), nb = a->nb, K = a->K;
    const int64_t ngroups = (N + KQ_TILE_R - 1) / KQ_TILE_R;
    const int has_min = kq_has_min(wtype);
    int64_t tchunk = KQ_X_CHUNK_BYTES / (K + K / 8 + nb * (int64_t)sizeof(float));
    tchunk = tchunk < KQ_TILE_C ? KQ_TILE_C : tchunk - tchunk % KQ_TILE_C;
    /* every thread reaches the worksharing loops even if its malloc failed */
    kq_block_t *g = malloc((size_t)KQ_TILE_R * nb * sizeof(kq_block_t));
    for (int64_t tc = 0; tc < T; tc += tchunk) {
        const int64_t tend = tc + tchunk < T ? tc + tchunk : T;
        /* static and nowait: each thread keeps the same row groups for every chunk */
#pragma omp for schedule(static) nowait
        for (int64_t gi = 0; gi < ngroups; gi++) {
            if (!g) {
#pragma omp atomic write
                *failed = 1;
                continue;
            }
            const int64_t n = gi * KQ_TILE_R;
            const int nr = N - n >= KQ_TILE_R ? KQ_TILE_R : (int)(N - n);
            for (int r = 0; r < nr; r++)
                for (int64_t b = 0; b < nb; b++) kq_unpack_avx2(wtype, w + (n + r) * rb + b * bb, &g[r * nb + b]);
            if (has_min) kq_group_dispatch(1, nr, g, a, tc, tend, out + n, N);
            else kq_group_dispatch(0, nr, g, a, tc, tend, out + n, N);
        }
    }
    free(g);
}

int cys_matmul_kq(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                  int wtype, int64_t N, float *out, int nthreads, int simd) {
    const int64_t nb = K / QK_K;
    /* q (T*K bytes, a multiple of 256), then d (T*nb floats), then bsums (T*K/16 int16) */
    int8_t *q = cys_thread_scratch((size_t)T * K + (size_t)T * nb * sizeof(float) + (size_t)T * (K / 16) * 2);
    if (!q) return CYS_ERR_NOMEM;
    float *d = (float *)(q + T * K);
    int16_t *bs = (int16_t *)(d + T * nb);
    const actk_t a = {q, d, bs, K, nb};
    const int par = nthreads > 1 && T * N * K >= KQ_PAR_MIN_MACS;
    const int par_quant = par && T * K >= KQ_QUANT_PAR_MIN;
    if (!par_quant) cys_quantize_act_q8k_rows(x, 0, T, K, q, d, bs, simd);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        if (par_quant) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; t++) cys_quantize_act_q8k_rows(x, t, t + 1, K, q, d, bs, simd);
        }
        if (simd) matmul_rows_avx2(&a, T, w, row_bytes, wtype, N, out, &failed);
        else matmul_rows_scalar(&a, T, w, row_bytes, wtype, N, out, &failed);
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
