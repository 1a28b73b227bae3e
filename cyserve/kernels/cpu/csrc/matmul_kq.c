/* out[T, N] = x[T, K] @ W[N, K].T for K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), the way
 * ggml does it: x is quantized once per call to Q8_K (256-element blocks, int16 sums per 16:
 * cys_quantize_act_q8k), and each weight super-block meets each x block in exact integer sums
 * (kquants.h): isum = sum_k se * u * q_x and msum = sum_s mn_s * bsums_s. A row's f32 accumulator
 * then takes, super-block after super-block (dx the x block's scale):
 *   Q2_K / Q4_K / Q5_K:  acc = fma(dx * d, isum, acc);  acc = fma(-(dx * dm), msum, acc)
 *   Q3_K / Q6_K:         acc = fma(dx * d, isum - msum, acc)
 * with single-rounding fmas in both twins (the FMA instruction; fmaf in the scalar twin). The
 * integers are exact and the float steps the same, so every SIMD level (AVX2, AVX-VNNI and
 * AVX-512 VNNI: vpdpwssd takes the place of madd + add), the scalar twin and the numpy reference (reference_kquants.matmul_q8k) agree bit for bit, and a token's output does not
 * depend on its batch, the tile it falls in or the thread count.
 *
 * AVX2, up to KQ_FEW_MAX_T tokens (decode): parallel over rows; each super-block is decoded
 * straight into registers, 32 codes at a time, and meets up to 4 tokens (maddubs u8 x s8 -> i16
 * pairs, madd with the scales -> i32), so the weights are read once with nothing stored between.
 * AVX2, more tokens: parallel over groups of 4 rows; a group's super-blocks are unpacked once
 * (kq_unpack_avx2) into an L1 buffer, then 4 rows x 2 tokens register tiles run over it for every
 * token of an x chunk sized to stay in L2. Both paths make the same integers.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

#define KQ_TILE_R 4                   /* rows unpacked together */
#define KQ_TILE_C 2                   /* tokens per register tile, AVX2 (16 registers) */
#define KQ_TILE_C_AVX512 4            /* the same with AVX-512's 32 registers (at most 4) */
#define KQ_FEW_T 4                    /* tokens per pass of a row decoded in registers */
#define KQ_FEW_MAX_T 8                /* up to this many tokens, decode super-blocks in registers */
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

/* ---- AVX2, few tokens: super-blocks decoded in registers ---- */

/* A super-block's scales for the in-register dot product: sc per 16-element sub-block, mn as the
 * 16 int16 lanes that meet bsums, d and dm (the values kq_scales gives). */
typedef struct {
    int16_t sc[16];
    __m256i mn;
    float d, dm;
} kq_scales_t;

CYS_AVX2_INLINE void scales_avx2(const int wtype, const uint8_t *p, kq_scales_t *s) {
    switch (wtype) {
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K: {
        /* 12 bytes as three words: scales 0..3 / mins 0..3 in the low 6 bits of words 0 / 1,
         * scales 4..7 / mins 4..7 from word 2's nibbles and the top 2 bits of words 0 / 1 */
        uint32_t w[3];
        memcpy(w, p + offsetof(block_q4_K, scales), 12);
        /* 8 scales, then 8 mins, per 32 (built in registers: a store then a wider load would
         * stall store forwarding) */
        const __m128i v = _mm_setr_epi32((int)(w[0] & 0x3F3F3F3Fu),
                                         (int)((w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4)),
                                         (int)(w[1] & 0x3F3F3F3Fu),
                                         (int)(((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4)));
        _mm256_storeu_si256((__m256i *)s->sc, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v)));
        s->mn = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v));
        s->d = _cvtsh_ss(cys_read_half(p + offsetof(block_q4_K, d)));
        s->dm = _cvtsh_ss(cys_read_half(p + offsetof(block_q4_K, dmin)));
        return;
    }
    case CYS_TYPE_Q6_K: {
        const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + offsetof(block_q6_K, scales))));
        _mm256_storeu_si256((__m256i *)s->sc, sc);
        s->mn = _mm256_slli_epi16(sc, 5); /* 32 sc: |sc| <= 128 fits */
        s->d = s->dm = _cvtsh_ss(cys_read_half(p + offsetof(block_q6_K, d)));
        return;
    }
    case CYS_TYPE_Q2_K: {
        const __m128i v = _mm_loadu_si128((const __m128i *)(p + offsetof(block_q2_K, scales)));
        const __m128i m4 = _mm_set1_epi8(0x0F);
        _mm256_storeu_si256((__m256i *)s->sc, _mm256_cvtepu8_epi16(_mm_and_si128(v, m4)));
        s->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
        s->d = _cvtsh_ss(cys_read_half(p + offsetof(block_q2_K, d)));
        s->dm = _cvtsh_ss(cys_read_half(p + offsetof(block_q2_K, dmin)));
        return;
    }
    default: { /* Q3_K: 16 6-bit scales (stored + 32), low nibbles in bytes 0..7, top 2 bits in 8..11 */
        uint32_t w[3];
        memcpy(w, p + offsetof(block_q3_K, scales), 12);
#define Q3_SCALES4(q) (int)(((w[(q) & 1] >> (4 * ((q) >> 1))) & 0x0F0F0F0Fu) | (((w[2] >> (2 * (q))) & 0x03030303u) << 4))
        const __m128i v = _mm_setr_epi32(Q3_SCALES4(0), Q3_SCALES4(1), Q3_SCALES4(2), Q3_SCALES4(3)); /* 4q .. 4q+3 */
#undef Q3_SCALES4
        const __m256i sc = _mm256_sub_epi16(_mm256_cvtepu8_epi16(v), _mm256_set1_epi16(32));
        _mm256_storeu_si256((__m256i *)s->sc, sc);
        s->mn = _mm256_slli_epi16(sc, 2); /* 4 sc */
        s->d = s->dm = _cvtsh_ss(cys_read_half(p + offsetof(block_q3_K, d)));
        return;
    }
    }
}

/* 32 bytes, byte l = 1 << shift where bit `bit` of plane[l] is set. */
CYS_AVX2_INLINE __m256i bit_plane(__m256i plane, int bit, int shift) {
    const __m256i m = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(plane, m), m), _mm256_set1_epi8((char)(1 << shift)));
}

/* The unsigned codes u of elements 32v .. 32v+31 of the super-block at p (kquants.h), the bytes
 * kq_unpack_avx2 writes there. */
CYS_AVX2_INLINE __m256i codes32(const int wtype, const uint8_t *p, const int v) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const int h = v / 4, j = v % 4;
    switch (wtype) {
    case CYS_TYPE_Q2_K: {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q2_K, qs) + 32 * h));
        return _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), _mm256_set1_epi8(3));
    }
    case CYS_TYPE_Q3_K: {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q3_K, qs) + 32 * h));
        const __m256i hm = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q3_K, hmask)));
        return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), _mm256_set1_epi8(3)),
                               bit_plane(hm, v, 2));
    }
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K: {
        const int q5 = wtype == CYS_TYPE_Q5_K;
        const uint8_t *qs = p + (q5 ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs));
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * (v / 2)));
        __m256i u = _mm256_and_si256(v & 1 ? _mm256_srli_epi16(q, 4) : q, m4);
        if (q5) u = _mm256_or_si256(u, bit_plane(_mm256_loadu_si256((const __m256i *)(p + offsetof(block_q5_K, qh))), v, 4));
        return u;
    }
    default: { /* Q6_K: low nibbles of ql, two high bits of qh at bits 2j */
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q6_K, ql) + 64 * h + 32 * (j & 1)));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q6_K, qh) + 32 * h));
        const __m256i lo = _mm256_and_si256(j >= 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
        const __m256i hi = j == 0 ? _mm256_slli_epi16(qh, 4) : j == 1 ? _mm256_slli_epi16(qh, 2)
                         : j == 2 ? qh : _mm256_srli_epi16(qh, 2);
        return _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(0x30)));
    }
    }
}

/* One instantiation of the SIMD kernels per level (matmul_kq_simd.h). */
#define KQV_INLINE static inline __attribute__((target(KQV_TARGET), always_inline))
#define KQV_FN __attribute__((target(KQV_TARGET)))

#define KQV(name) name##_avx2
#define KQV_TARGET "avx2,fma,f16c"
#define KQV_ISA 1 /* CYS_ISA_AVX2 */
#define KQV_TILE_C KQ_TILE_C
#include "matmul_kq_simd.h"
#undef KQV
#undef KQV_TARGET
#undef KQV_ISA
#undef KQV_TILE_C

#define KQV(name) name##_avx_vnni
#define KQV_TARGET "avx2,fma,f16c,avxvnni"
#define KQV_ISA 2 /* CYS_ISA_AVX_VNNI */
#define KQV_TILE_C KQ_TILE_C
#include "matmul_kq_simd.h"
#undef KQV
#undef KQV_TARGET
#undef KQV_ISA
#undef KQV_TILE_C

#define KQV(name) name##_avx512_vnni
#define KQV_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define KQV_ISA 3 /* CYS_ISA_AVX512_VNNI */
#define KQV_TILE_C KQ_TILE_C_AVX512
#include "matmul_kq_simd.h"
#undef KQV
#undef KQV_TARGET
#undef KQV_ISA
#undef KQV_TILE_C

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
        const int few = T <= KQ_FEW_MAX_T;
        switch (simd) {
        case CYS_ISA_AVX512_VNNI:
            if (few) matmul_rows_few_avx512_vnni(&a, T, w, row_bytes, wtype, N, out);
            else matmul_rows_avx512_vnni(&a, T, w, row_bytes, wtype, N, out, &failed);
            break;
        case CYS_ISA_AVX_VNNI:
            if (few) matmul_rows_few_avx_vnni(&a, T, w, row_bytes, wtype, N, out);
            else matmul_rows_avx_vnni(&a, T, w, row_bytes, wtype, N, out, &failed);
            break;
        case CYS_ISA_AVX2:
            if (few) matmul_rows_few_avx2(&a, T, w, row_bytes, wtype, N, out);
            else matmul_rows_avx2(&a, T, w, row_bytes, wtype, N, out, &failed);
            break;
        default: matmul_rows_scalar(&a, T, w, row_bytes, wtype, N, out, &failed); break;
        }
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
