/* RMS norm: out = x / sqrt(mean(x^2) + eps) * weight, one row per token. */
#include <math.h>

#include "cys_kernels.h"
#include "simd_avx2.h"

#define CYS_NORM_PAR_MIN_ELEMS (1 << 16) /* smaller inputs stay on the calling thread */

static void rms_norm_row_scalar(const float *x, const float *w, int64_t D, float eps, float *out) {
    double ss = 0.0; /* double: the scalar twin doubles as the accurate one */
    for (int64_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)D + eps));
    for (int64_t i = 0; i < D; i++) out[i] = x[i] * scale * w[i];
}

CYS_AVX2 static void rms_norm_row_avx2(const float *x, const float *w, int64_t D, float eps,
                                       float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= D; i += 32)
        for (int j = 0; j < 4; j++) {
            const __m256 v = _mm256_loadu_ps(x + i + 8 * j);
            acc[j] = _mm256_fmadd_ps(v, v, acc[j]);
        }
    for (; i + 8 <= D; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc[0] = _mm256_fmadd_ps(v, v, acc[0]);
    }
    float ss = cys_hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < D; i++) ss += x[i] * x[i];
    const float scale = 1.0f / sqrtf(ss / (float)D + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    /* every element is read before it is written at the same index, so out may alias x */
    for (i = 0; i + 8 <= D; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                _mm256_loadu_ps(w + i)));
    for (; i < D; i++) out[i] = x[i] * scale * w[i];
}

void cys_rms_norm(const float *x, const float *weight, int64_t T, int64_t D, float eps,
                  float *out, int nthreads, int simd) {
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && T * D >= CYS_NORM_PAR_MIN_ELEMS)
    for (int64_t t = 0; t < T; t++) {
        if (simd) rms_norm_row_avx2(x + t * D, weight, D, eps, out + t * D);
        else rms_norm_row_scalar(x + t * D, weight, D, eps, out + t * D);
    }
}
