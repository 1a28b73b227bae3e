/* Activation quantization to int8 blocks of 32 (layout in act_q8.h) and to Q8_K (256-element
 * blocks with 16-element sums, for the K-quants: kquants.h), scalar and AVX2 twins that agree bit
 * for bit, and the per-thread scratch that holds the result. */
#include <pthread.h>
#include <stdlib.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

#define CYS_ACT_PAR_MIN (1 << 16) /* x elements from which the threads share the work */

/* ---- scalar twin ---- */

/* Adding 1.5 * 2^23 pushes the fraction bits out of a float of magnitude < 2^22, so the FPU's
 * round-to-nearest-even does the rounding: the same result as vroundps, without libm. */
#define CYS_ROUND_MAGIC 12582912.0f

static void quantize_block_scalar(const float *x, int8_t *q, float *d_out, float *s_out) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) {
        const float a = __builtin_fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax >= CYS_ACT_MIN_AMAX ? amax / 127.0f : 0.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < QK; j++) {
        const float v = x[j] * id;
        const int32_t qi = (int32_t)((v + CYS_ROUND_MAGIC) - CYS_ROUND_MAGIC);
        q[j] = (int8_t)qi;
        sum += qi;
    }
    *d_out = d;
    *s_out = d * (float)sum;
}

/* ---- AVX2 ---- */

CYS_AVX2 static void quantize_block_avx2(const float *x, int8_t *q, float *d_out, float *s_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(x + 8 * j);
    __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
    m = _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    /* the same two scalar IEEE operations as the scalar twin: identical d and id */
    const float d = amax >= CYS_ACT_MIN_AMAX ? amax / 127.0f : 0.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i i[4];
    for (int j = 0; j < 4; j++)
        i[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], idv),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    /* the packs work per 128-bit lane: the permute puts the 8 groups of 4 back in order */
    const __m256i p16a = _mm256_packs_epi32(i[0], i[1]);
    const __m256i p16b = _mm256_packs_epi32(i[2], i[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, ordered);
    *d_out = d;
    *s_out = d * (float)_mm_cvtsi128_si32(s4);
}

CYS_AVX2 static void quantize_rows_avx2(const float *x, int64_t t0, int64_t t1, int64_t K,
                                        int8_t *q, float *d, float *s, int64_t stride) {
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < K / QK; b++)
            quantize_block_avx2(x + t * K + b * QK, q + t * K + b * QK, d + t * stride + b,
                                s + t * stride + b);
}

void cys_quantize_act_rows(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q, float *d,
                           float *s, int64_t stride, int simd) {
    const int64_t nb = K / QK;
    if (simd) {
        quantize_rows_avx2(x, t0, t1, K, q, d, s, stride);
    } else {
        for (int64_t t = t0; t < t1; t++)
            for (int64_t b = 0; b < nb; b++)
                quantize_block_scalar(x + t * K + b * QK, q + t * K + b * QK, d + t * stride + b,
                                      s + t * stride + b);
    }
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = nb; b < stride; b++) d[t * stride + b] = s[t * stride + b] = 0.0f;
}

int cys_quantize_act(const float *x, int64_t T, int64_t K, int8_t *q, float *d, float *s,
                     int nthreads, int simd) {
    if (K <= 0 || K % QK) return CYS_ERR_SHAPE;
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && T * K >= CYS_ACT_PAR_MIN)
    for (int64_t t = 0; t < T; t++) cys_quantize_act_rows(x, t, t + 1, K, q, d, s, K / QK, simd);
    return CYS_OK;
}

/* ---- Q8_K: one scale per 256, the same rounding ---- */

static void quantize_q8k_block_scalar(const float *x, int8_t *q, float *d_out, int16_t *bsums) {
    float amax = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        const float a = __builtin_fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax >= CYS_ACT_MIN_AMAX ? amax / 127.0f : 0.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK_K; j++) q[j] = (int8_t)(int32_t)((x[j] * id + CYS_ROUND_MAGIC) - CYS_ROUND_MAGIC);
    *d_out = d;
    for (int s = 0; s < QK_K / 16; s++) {
        int32_t sum = 0;
        for (int j = 0; j < 16; j++) sum += q[16 * s + j];
        bsums[s] = (int16_t)sum;
    }
}

CYS_AVX2 static void quantize_q8k_block_avx2(const float *x, int8_t *q, float *d_out, int16_t *bsums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax >= CYS_ACT_MIN_AMAX ? amax / 127.0f : 0.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int c = 0; c < QK_K; c += 32) {
        __m256i i[4];
        for (int j = 0; j < 4; j++)
            i[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8 * j), idv),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* sums of 16: elements c..c+15 are i[0], i[1]; c+16..c+31 are i[2], i[3] */
        for (int g = 0; g < 2; g++) {
            const __m256i s8 = _mm256_add_epi32(i[2 * g], i[2 * g + 1]);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
            bsums[c / 16 + g] = (int16_t)_mm_cvtsi128_si32(s4);
        }
        const __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(q + c), _mm256_permutevar8x32_epi32(p8, order));
    }
    *d_out = d;
}

void cys_quantize_act_q8k_rows(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q,
                               float *d, int16_t *bsums, int simd) {
    const int64_t nb = K / QK_K;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t e = t * K + b * QK_K;
            if (simd) quantize_q8k_block_avx2(x + e, q + e, d + t * nb + b, bsums + e / 16);
            else quantize_q8k_block_scalar(x + e, q + e, d + t * nb + b, bsums + e / 16);
        }
}

int cys_quantize_act_q8k(const float *x, int64_t T, int64_t K, int8_t *q, float *d,
                         int16_t *bsums, int nthreads, int simd) {
    if (K <= 0 || K % QK_K) return CYS_ERR_SHAPE;
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && T * K >= CYS_ACT_PAR_MIN)
    for (int64_t t = 0; t < T; t++) cys_quantize_act_q8k_rows(x, t, t + 1, K, q, d, bsums, simd);
    return CYS_OK;
}

/* ---- per-thread scratch ---- */

typedef struct {
    void *ptr;
    size_t bytes;
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p) {
    scratch_t *sc = p;
    free(sc->ptr);
    free(sc);
}

static void scratch_key_init(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0; }

void *cys_thread_scratch(size_t bytes) {
    pthread_once(&scratch_once, scratch_key_init);
    if (!scratch_key_ok) return NULL;
    scratch_t *sc = pthread_getspecific(scratch_key);
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc) return NULL;
        if (pthread_setspecific(scratch_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    if (sc->bytes < bytes) {
        /* grow by half again so a slowly rising T does not reallocate every step */
        const size_t want = (bytes + bytes / 2 + 63) & ~(size_t)63;
        void *p = NULL;
        if (posix_memalign(&p, 64, want) != 0) return NULL;
        free(sc->ptr);
        sc->ptr = p;
        sc->bytes = want;
    }
    return sc->ptr;
}
