/* out[T, N] = x[T, K] @ W[N, K].T for Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights, the llama.cpp way: x is quantized
 * once per call to int8 blocks of 32 (act_q8.h), each weight block meets each x block in an exact
 * integer dot product, and one FMA per block applies d_w * d_x. The weight's offset folds in per
 * block as m_w * s_x, with s_x = d_x * sum(q_x): Q4_1's min m, and Q4_0 as m = -8 d (so both Q4
 * formats multiply the raw unsigned nibbles, no sign trick), the Q5 formats likewise (m = -16 d for
 * Q5_0, their unsigned 5-bit codes), Q8_0 has none.
 *
 * Per block the scalar twin and the AVX2 code compute the same integers; they differ only in the
 * order the f32 block terms are added (8 lanes then a horizontal sum, vs one running sum).
 *
 * Regimes (AVX2), all parallel over output rows, each output element owned by one thread:
 *  - GEMV, T <= 4 (decode): weight blocks are unpacked to bytes in registers and dotted with every
 *    token's x block before the next block is read; 1 to 4 rows at a time share the x loads
 *    (1 row, one sequential stream, when the weights are too big to be cached).
 *  - GEMM, T > 4 (prefill, batched decode): 4 rows are unpacked once into an L1 buffer (bytes,
 *    scales, mins), then a 4 rows x 3 tokens register tile walks them for every token of an x
 *    chunk sized to stay in L2.
 * Weights stay in place (GGUF bytes): the unpack into L1 is amortised over the tokens of a chunk,
 * which is what an interleaved repack at load would buy, without a second copy of the model.
 */
#include <stdlib.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "simd_avx2.h"

#define Q8_GEMV_MAX_T 4                /* up to this many tokens: GEMV */
#define Q8_GEMV_ROW_CHUNK 16           /* GEMV rows per scheduling unit */
/* the #ifndef knobs may be set with -D to re-tune on another CPU (measured on AMD EPYC, AVX2) */
#ifndef Q8_TILE_R
#define Q8_TILE_R 4                    /* GEMM rows per unpacked group (at most 4) */
#endif
#ifndef Q8_TILE_C
#define Q8_TILE_C 3                    /* GEMM tokens per register tile (at most 4) */
#endif
#define Q8_X_CHUNK_BYTES (192 * 1024)  /* quantized x per GEMM pass: L2 is 512 KiB a core */
#define Q8_PAR_MIN_MACS (1 << 17)      /* smaller products run on the calling thread */
#ifndef Q8_GEMV_PF_ROWS
#define Q8_GEMV_PF_ROWS 8              /* GEMV prefetches this many rows ahead (DRAM-bound rows) */
#endif
#ifndef Q8_GEMM_PF_ROWS
#define Q8_GEMM_PF_ROWS 8              /* GEMM unpack prefetches this many rows ahead */
#endif
#define Q8_QUANT_PAR_MIN (1 << 15)     /* x elements from which threads share the quantization */

/* Quantized x as the kernels read it: row t is q + t*K, d + t*ds, s + t*ds (ds = nb rounded up
 * to 8, zero padded). */
typedef struct {
    const int8_t *q;
    const float *d;
    const float *s;
    int64_t K, nb, ds;
} act_t;

/* Scale d and offset factor m of one weight block (w = q_unsigned * d + m for Q4; m = 0 for Q8). */
static inline void block_dm_scalar(int wtype, const uint8_t *p, float *d, float *m) {
    *d = cys_fp16_to_fp32(cys_read_half(p));
    if (wtype == CYS_TYPE_Q4_1 || wtype == CYS_TYPE_Q5_1)
        *m = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q4_1, m))); /* same offset in q5_1 */
    else if (wtype == CYS_TYPE_Q4_0) *m = -8.0f * *d;
    else if (wtype == CYS_TYPE_Q5_0) *m = -16.0f * *d;
    else *m = 0.0f;
}

static inline int64_t qs_offset(int wtype) {
    switch (wtype) {
    case CYS_TYPE_Q4_0: return offsetof(block_q4_0, qs);
    case CYS_TYPE_Q4_1: return offsetof(block_q4_1, qs);
    case CYS_TYPE_Q5_0: return offsetof(block_q5_0, qs);
    case CYS_TYPE_Q5_1: return offsetof(block_q5_1, qs);
    default: return offsetof(block_q8_0, qs);
    }
}

/* Offset of a Q5 block's fifth-bit word. */
static inline int64_t qh_offset(int wtype) {
    return wtype == CYS_TYPE_Q5_1 ? offsetof(block_q5_1, qh) : offsetof(block_q5_0, qh);
}

static inline int is_q5(int wtype) { return wtype == CYS_TYPE_Q5_0 || wtype == CYS_TYPE_Q5_1; }

/* ---- scalar twin ---- */

static float row_dot_scalar(int wtype, const uint8_t *row, const act_t *a, int64_t t) {
    const int64_t gb = cys_group_bytes(wtype), off = qs_offset(wtype);
    const int8_t *xq = a->q + t * a->K;
    const float *xd = a->d + t * a->ds, *xs = a->s + t * a->ds;
    float acc = 0.0f, accm = 0.0f;
    for (int64_t b = 0; b < a->nb; b++) {
        const uint8_t *p = row + b * gb;
        const int8_t *x = xq + b * QK;
        float dw, mw;
        block_dm_scalar(wtype, p, &dw, &mw);
        int32_t isum = 0;
        if (wtype == CYS_TYPE_Q8_0) {
            for (int j = 0; j < QK; j++) isum += (int32_t)(int8_t)p[off + j] * x[j];
        } else {
            uint32_t qh = 0;
            if (is_q5(wtype)) memcpy(&qh, p + qh_offset(wtype), 4);
            for (int j = 0; j < QK / 2; j++) {
                const int lo = (p[off + j] & 0x0F) | (((qh >> j) & 1) << 4);
                const int hi = (p[off + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                isum += lo * x[j] + hi * x[j + QK / 2];
            }
        }
        acc += (dw * xd[b]) * (float)isum;
        accm += mw * xs[b];
    }
    return acc + accm;
}

static void matmul_rows_scalar(const act_t *a, int64_t T, const uint8_t *w, int64_t rb, int wtype,
                               int64_t N, float *out) {
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < T; t++) out[t * N + n] = row_dot_scalar(wtype, w + n * rb, a, t);
}

/* ---- AVX2 building blocks ---- */

/* 8 int32 lanes of sum(a * b) over byte quadruples (a unsigned, b signed), as floats. No i16
 * saturation: |a| <= 128 and |b| <= 127, so a pair sums to at most 32512. */
CYS_AVX2_INLINE __m256 dot_u8s8(__m256i a, __m256i b) {
    const __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* 16 packed nibbles -> 32 bytes 0..15 (low nibbles are elements 0..15, high 16..31). */
CYS_AVX2_INLINE __m256i unpack_q4(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* One weight block as the dot products want it: Q4 / Q5 -> (unsigned codes, unused);
 * Q8_0 -> (|q|, q). */
CYS_AVX2_INLINE void load_wblock(const int wtype, const uint8_t *p, __m256i *u, __m256i *sgn,
                                 float *d, float *m) {
    if (wtype == CYS_TYPE_Q4_1 || wtype == CYS_TYPE_Q5_1) {
        int32_t dm;
        memcpy(&dm, p, 4);
        const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
        *d = _mm_cvtss_f32(f);
        *m = _mm_cvtss_f32(_mm_movehdup_ps(f));
    } else {
        *d = _cvtsh_ss(cys_read_half(p));
        *m = wtype == CYS_TYPE_Q4_0 ? -8.0f * *d : wtype == CYS_TYPE_Q5_0 ? -16.0f * *d : 0.0f;
    }
    if (wtype == CYS_TYPE_Q8_0) {
        *sgn = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q8_0, qs)));
        *u = _mm256_sign_epi8(*sgn, *sgn);
    } else if (is_q5(wtype)) {
        *u = cys_unpack_q5(p + qh_offset(wtype), p + qs_offset(wtype));
    } else {
        *u = unpack_q4(p + qs_offset(wtype));
    }
}

/* The x operand of one block dot: Q8_0 moves the weight's sign onto x (the maddubs sign trick). */
CYS_AVX2_INLINE __m256 block_dot(const int wtype, __m256i u, __m256i sgn, __m256i x) {
    return dot_u8s8(u, wtype == CYS_TYPE_Q8_0 ? _mm256_sign_epi8(x, sgn) : x);
}

/* ---- AVX2 GEMV: nr rows x nt tokens, blocks straight from the weights into registers ---- */

/* The offset terms sum_b m_w * s_x of a row, folded into its lanes 8 blocks a step: exactly the
 * operations, in the order, of the GEMM tile, so a token's output has the same bits whatever T
 * its batch has (see tests/kernels/test_batch_invariance.py). m holds the row's ds block factors. */
CYS_AVX2_INLINE __m256 fold_offsets(__m256 acc, const float *m, const float *s, int64_t ds) {
    for (int64_t b = 0; b < ds; b += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + b), _mm256_loadu_ps(s + b), acc);
    return acc;
}

CYS_AVX2_INLINE void gemv_tile(const int wtype, const int nr, const int nt, const uint8_t *w,
                               int64_t rb, const act_t *a, float *out, int64_t N, float *mrow) {
    const int64_t gb = cys_group_bytes(wtype), K = a->K, nb = a->nb, ds = a->ds;
    __m256 acc[4][4];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i xv[4];
        for (int t = 0; t < nt; t++) xv[t] = _mm256_loadu_si256((const __m256i *)(a->q + t * K + b * QK));
        for (int r = 0; r < nr; r++) {
            __m256i u, sgn = _mm256_setzero_si256();
            float dw, mw;
            /* measured ~15% on DRAM-bound weights, neutral on cached ones; a prefetch past the
             * end of w never faults */
            if (Q8_GEMV_PF_ROWS)
                _mm_prefetch((const char *)(w + (r + Q8_GEMV_PF_ROWS) * rb + b * gb), _MM_HINT_T0);
            load_wblock(wtype, w + r * rb + b * gb, &u, &sgn, &dw, &mw);
            if (wtype != CYS_TYPE_Q8_0) mrow[r * ds + b] = mw;
            for (int t = 0; t < nt; t++) {
                const __m256 dd = _mm256_set1_ps(dw * a->d[t * ds + b]);
                acc[r][t] = _mm256_fmadd_ps(block_dot(wtype, u, sgn, xv[t]), dd, acc[r][t]);
            }
        }
    }
    if (wtype != CYS_TYPE_Q8_0)
        for (int r = 0; r < nr; r++) {
            for (int64_t b = nb; b < ds; b++) mrow[r * ds + b] = 0.0f;
            for (int t = 0; t < nt; t++) acc[r][t] = fold_offsets(acc[r][t], mrow + r * ds, a->s + t * ds, ds);
        }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) out[t * N + r] = cys_hsum256(acc[r][t]);
}

/* Rows per GEMV tile: as many as keep the accumulators (vector and scalar) in 16 registers. */
#define GEMV_ROWS(nt) ((nt) == 1 ? 4 : (nt) == 2 ? 2 : 1)
/* Weights larger than this come from DRAM, not cache: a single token then reads one row at a time
 * (one sequential stream; measured 1.8x faster than 4-row tiles on the 30 MB output layer). */
#define Q8_GEMV_STREAM_BYTES (8 << 20)

CYS_AVX2_INLINE void gemv_rows(const int wtype, const int nt, const int R, const uint8_t *w,
                               int64_t rb, const act_t *a, int64_t n0, int64_t n1, float *out,
                               int64_t N) {
    int64_t n = n0;
    float mrow[4 * a->ds]; /* the tile's block offset factors: 4 rows of ds (K / 32 rounded up to 8) */
    for (; n + R <= n1; n += R) gemv_tile(wtype, R, nt, w + n * rb, rb, a, out + n, N, mrow);
    for (; n < n1; n++) gemv_tile(wtype, 1, nt, w + n * rb, rb, a, out + n, N, mrow);
}

CYS_AVX2_INLINE void gemv_wtype(const int wtype, const act_t *a, int64_t T, const uint8_t *w,
                                int64_t rb, int64_t N, float *out) {
    const int64_t nchunks = (N + Q8_GEMV_ROW_CHUNK - 1) / Q8_GEMV_ROW_CHUNK;
    const int stream = N * rb > Q8_GEMV_STREAM_BYTES;
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t n0 = c * Q8_GEMV_ROW_CHUNK;
        const int64_t n1 = n0 + Q8_GEMV_ROW_CHUNK < N ? n0 + Q8_GEMV_ROW_CHUNK : N;
        switch (T) {
        case 4: gemv_rows(wtype, 4, GEMV_ROWS(4), w, rb, a, n0, n1, out, N); break;
        case 3: gemv_rows(wtype, 3, GEMV_ROWS(3), w, rb, a, n0, n1, out, N); break;
        case 2: gemv_rows(wtype, 2, GEMV_ROWS(2), w, rb, a, n0, n1, out, N); break;
        default:
            if (stream) gemv_rows(wtype, 1, 1, w, rb, a, n0, n1, out, N);
            else gemv_rows(wtype, 1, GEMV_ROWS(1), w, rb, a, n0, n1, out, N);
            break;
        }
    }
}

/* ---- AVX2 GEMM: 4 unpacked rows x 3-token register tiles ---- */

/* A group of up to 4 weight rows unpacked for the tiles: bytes u[r*K + k] (Q4 nibbles or |q8|),
 * for Q8_0 the signed bytes sg[r*K + k], scales d[r*ds + b] and offset factors m[r*ds + b], with
 * ds the x scale stride (m zero padded: the min-term dot runs 8 wide over whole rows). */
typedef struct {
    uint8_t *u;
    int8_t *sg;
    float *d, *m;
} wgroup_t;

static size_t wgroup_bytes(int64_t K, int64_t ds) {
    return (size_t)Q8_TILE_R * K * 2 + (size_t)Q8_TILE_R * ds * 2 * sizeof(float);
}

static wgroup_t wgroup_carve(void *buf, int64_t K, int64_t ds) {
    wgroup_t g;
    g.u = buf;
    g.sg = (int8_t *)(g.u + Q8_TILE_R * K);
    g.d = (float *)(g.sg + Q8_TILE_R * K);
    g.m = g.d + Q8_TILE_R * ds;
    return g;
}

CYS_AVX2_INLINE void wgroup_unpack(const int wtype, const uint8_t *w, int64_t rb, int nr,
                                   const act_t *a, const wgroup_t *g) {
    const int64_t gb = cys_group_bytes(wtype), K = a->K, nb = a->nb, ds = a->ds;
    for (int r = 0; r < nr; r++) {
        for (int64_t b = 0; b < nb; b++) {
            __m256i u, sgn = _mm256_setzero_si256();
            /* the rows two groups on (still this thread's, under the static schedule) arrive
             * while the tiles run: an uncached output layer otherwise stalls every unpack
             * (measured 5-12% on the Q8_0 output layer at T = 8..16, neutral on cached ones) */
            if (Q8_GEMM_PF_ROWS)
                _mm_prefetch((const char *)(w + (r + Q8_GEMM_PF_ROWS) * rb + b * gb), _MM_HINT_T0);
            load_wblock(wtype, w + r * rb + b * gb, &u, &sgn, &g->d[r * ds + b], &g->m[r * ds + b]);
            _mm256_storeu_si256((__m256i *)(g->u + r * K + b * QK), u);
            if (wtype == CYS_TYPE_Q8_0) _mm256_storeu_si256((__m256i *)(g->sg + r * K + b * QK), sgn);
        }
        for (int64_t b = nb; b < ds; b++) g->d[r * ds + b] = g->m[r * ds + b] = 0.0f;
    }
}

CYS_AVX2_INLINE void gemm_tile(const int wtype, const int nr, const int nc, const wgroup_t *g,
                               const act_t *a, int64_t t0, float *out, int64_t N) {
    const int64_t K = a->K, nb = a->nb, ds = a->ds;
    const int8_t *xq = a->q + t0 * K;
    const float *xd = a->d + t0 * ds;
    __m256 acc[4][4];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < nr; r++) {
            const __m256i u = _mm256_loadu_si256((const __m256i *)(g->u + r * K + b * QK));
            const __m256i sgn = wtype == CYS_TYPE_Q8_0
                ? _mm256_loadu_si256((const __m256i *)(g->sg + r * K + b * QK)) : u;
            const __m256 dw = _mm256_broadcast_ss(g->d + r * ds + b);
            for (int c = 0; c < nc; c++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + c * K + b * QK));
                const __m256 dd = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + c * ds + b));
                acc[r][c] = _mm256_fmadd_ps(block_dot(wtype, u, sgn, x), dd, acc[r][c]);
            }
        }
    }
    /* the offset terms sum_b m_w * s_x join the same lanes, 8 blocks a step */
    if (wtype != CYS_TYPE_Q8_0)
        for (int64_t b = 0; b < ds; b += 8)
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++)
                    acc[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(g->m + r * ds + b),
                                                _mm256_loadu_ps(a->s + (t0 + c) * ds + b), acc[r][c]);
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++) out[(t0 + c) * N + r] = cys_hsum256(acc[r][c]);
}

CYS_AVX2_INLINE void gemm_group(const int wtype, const int nr, const wgroup_t *g, const act_t *a,
                                int64_t tc, int64_t tend, int64_t n, float *out, int64_t N) {
    int64_t t0 = tc;
    for (; t0 + Q8_TILE_C <= tend; t0 += Q8_TILE_C) gemm_tile(wtype, nr, Q8_TILE_C, g, a, t0, out + n, N);
    switch (tend - t0) { /* fewer than Q8_TILE_C tokens left */
    case 3: gemm_tile(wtype, nr, 3, g, a, t0, out + n, N); break;
    case 2: gemm_tile(wtype, nr, 2, g, a, t0, out + n, N); break;
    case 1: gemm_tile(wtype, nr, 1, g, a, t0, out + n, N); break;
    default: break;
    }
}

CYS_AVX2_INLINE void gemm_wtype(const int wtype, const act_t *a, int64_t T, const uint8_t *w,
                                int64_t rb, int64_t N, float *out, void *buf, int *failed) {
    const int64_t K = a->K, ngroups = (N + Q8_TILE_R - 1) / Q8_TILE_R;
    int64_t tchunk = Q8_X_CHUNK_BYTES / (K + 2 * a->ds * (int64_t)sizeof(float));
    tchunk = tchunk < Q8_TILE_C ? Q8_TILE_C : tchunk - tchunk % Q8_TILE_C;
    const wgroup_t g = wgroup_carve(buf, K, a->ds); /* never dereferenced when buf is NULL */
    for (int64_t tc = 0; tc < T; tc += tchunk) {
        const int64_t tend = tc + tchunk < T ? tc + tchunk : T;
        /* static and nowait: each thread keeps the same row groups for every chunk */
#pragma omp for schedule(static) nowait
        for (int64_t gi = 0; gi < ngroups; gi++) {
            if (!buf) {
#pragma omp atomic write
                *failed = 1;
                continue;
            }
            const int64_t n = gi * Q8_TILE_R;
            const int nr = N - n >= Q8_TILE_R ? Q8_TILE_R : (int)(N - n);
            wgroup_unpack(wtype, w + n * rb, rb, nr, a, &g);
            switch (nr) {
            case 4: gemm_group(wtype, 4, &g, a, tc, tend, n, out, N); break;
            case 3: gemm_group(wtype, 3, &g, a, tc, tend, n, out, N); break;
            case 2: gemm_group(wtype, 2, &g, a, tc, tend, n, out, N); break;
            default: gemm_group(wtype, 1, &g, a, tc, tend, n, out, N); break;
            }
        }
    }
}

#define Q8_FOR_EACH_WTYPE(X) \
    X(CYS_TYPE_Q4_0) X(CYS_TYPE_Q4_1) X(CYS_TYPE_Q5_0) X(CYS_TYPE_Q5_1) X(CYS_TYPE_Q8_0)

/* Runs inside the caller's parallel region (orphaned worksharing), after x is quantized. */
CYS_AVX2 static void matmul_rows_avx2(const act_t *a, int64_t T, const uint8_t *w, int64_t rb,
                                      int wtype, int64_t N, float *out, int *failed) {
    if (T <= Q8_GEMV_MAX_T) {
        switch (wtype) {
#define CASE(TY) case TY: gemv_wtype(TY, a, T, w, rb, N, out); break;
            Q8_FOR_EACH_WTYPE(CASE)
#undef CASE
        }
        return;
    }
    /* every thread reaches the worksharing loops even if its malloc failed */
    void *buf = malloc(wgroup_bytes(a->K, a->ds));
    switch (wtype) {
#define CASE(TY) case TY: gemm_wtype(TY, a, T, w, rb, N, out, buf, failed); break;
        Q8_FOR_EACH_WTYPE(CASE)
#undef CASE
    }
    free(buf);
}

int cys_matmul_q8(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                  int wtype, int64_t N, float *out, int nthreads, int simd) {
    const int64_t nb = K / QK, ds = cys_act_stride(nb);
    int8_t *q = cys_thread_scratch((size_t)T * K + (size_t)T * ds * 2 * sizeof(float));
    if (!q) return CYS_ERR_NOMEM;
    float *d = (float *)(q + T * K); /* T * K is a multiple of 32: d stays aligned */
    float *s = d + T * ds;
    const act_t a = {q, d, s, K, nb, ds};
    const int par = nthreads > 1 && T * N * K >= Q8_PAR_MIN_MACS;
    const int par_quant = par && T * K >= Q8_QUANT_PAR_MIN;
    /* a small x is quantized before the team starts: one barrier fewer per decode step */
    if (!par_quant) cys_quantize_act_rows(x, 0, T, K, q, d, s, ds, simd);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        if (par_quant) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; t++) cys_quantize_act_rows(x, t, t + 1, K, q, d, s, ds, simd);
        }
        if (simd) matmul_rows_avx2(&a, T, w, row_bytes, wtype, N, out, &failed);
        else matmul_rows_scalar(&a, T, w, row_bytes, wtype, N, out);
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
