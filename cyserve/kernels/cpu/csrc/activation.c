/* Elementwise kernels of the MLP and the residual stream: silu(gate) * up, gelu_tanh(gate) * up,
 * and a += b. */
#include <math.h>

#include "cys_kernels.h"
#include "simd_avx2.h"

/* Elementwise work is memory-bound; threads only pay off on large prefill batches. */
#define CYS_ELEM_PAR_MIN (1 << 18)
#define CYS_ELEM_CHUNK 4096 /* elements per scheduling unit, a multiple of 8 */

static void silu_mul_scalar(const float *gate, const float *up, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

CYS_AVX2 static void silu_mul_avx2(const float *gate, const float *up, int64_t n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = cys_exp256(_mm256_xor_ps(g, sign)); /* exp(-g) */
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    silu_mul_scalar(gate + i, up + i, n - i, out + i);
}

void cys_silu_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads, int simd) {
    simd = simd && cys_cpu_has_avx2();
    const int64_t nchunks = (n + CYS_ELEM_CHUNK - 1) / CYS_ELEM_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n >= CYS_ELEM_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t i = c * CYS_ELEM_CHUNK;
        const int64_t len = n - i < CYS_ELEM_CHUNK ? n - i : CYS_ELEM_CHUNK;
        if (simd) silu_mul_avx2(gate + i, up + i, len, out + i);
        else silu_mul_scalar(gate + i, up + i, len, out + i);
    }
}

/* gelu_tanh(g) = 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3). As 0.5 (1 + tanh(u)) =
 * 1 / (1 + exp(-2u)), that is g / (1 + exp(-2u)): silu's form with -2u for -g, one exp and no tanh.
 * Past |g| ~ 1e13 the cube is +-inf and the result is g (g > 0) or -0 (g < 0), as the limit is. */
#define CYS_GELU_2C 1.5957691216057308f /* 2 sqrt(2/pi) */
#define CYS_GELU_A 0.044715f

static void gelu_tanh_mul_scalar(const float *gate, const float *up, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        const float e = expf(-CYS_GELU_2C * (g + CYS_GELU_A * g * g * g));
        out[i] = g / (1.0f + e) * up[i];
    }
}

CYS_AVX2 static void gelu_tanh_mul_avx2(const float *gate, const float *up, int64_t n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f), a = _mm256_set1_ps(CYS_GELU_A);
    const __m256 neg2c = _mm256_set1_ps(-CYS_GELU_2C);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
        const __m256 e = cys_exp256(_mm256_mul_ps(neg2c, _mm256_fmadd_ps(a, g3, g)));
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    gelu_tanh_mul_scalar(gate + i, up + i, n - i, out + i);
}

void cys_gelu_tanh_mul(const float *gate, const float *up, int64_t n, float *out, int nthreads,
                       int simd) {
    simd = simd && cys_cpu_has_avx2();
    const int64_t nchunks = (n + CYS_ELEM_CHUNK - 1) / CYS_ELEM_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n >= CYS_ELEM_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t i = c * CYS_ELEM_CHUNK;
        const int64_t len = n - i < CYS_ELEM_CHUNK ? n - i : CYS_ELEM_CHUNK;
        if (simd) gelu_tanh_mul_avx2(gate + i, up + i, len, out + i);
        else gelu_tanh_mul_scalar(gate + i, up + i, len, out + i);
    }
}

static void add_scalar(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

CYS_AVX2 static void add_avx2(float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(a + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    add_scalar(a + i, b + i, n - i);
}

void cys_add(float *a, const float *b, int64_t n, int nthreads, int simd) {
    simd = simd && cys_cpu_has_avx2();
    const int64_t nchunks = (n + CYS_ELEM_CHUNK - 1) / CYS_ELEM_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n >= CYS_ELEM_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t i = c * CYS_ELEM_CHUNK;
        const int64_t len = n - i < CYS_ELEM_CHUNK ? n - i : CYS_ELEM_CHUNK;
        if (simd) add_avx2(a + i, b + i, len);
        else add_scalar(a + i, b + i, len);
    }
}
