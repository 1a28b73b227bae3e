/* Rotary position embedding, in place, for the two layouts GGUF models use.
 *
 * Angles are pos * theta^(-2i/Dh) / factor_i computed in double: at positions in the thousands a
 * float angle is already off by ~1e-4 rad. cos/sin are computed once per token and shared by all
 * heads. The optional factors (f32[Dh/2]) divide each pair's frequency: Llama 3.1's rope scaling,
 * the file's rope_freqs tensor, as ggml's rope applies it.
 */
#include <math.h>
#include <stdlib.h>

#include "cys_kernels.h"
#include "simd_avx2.h"

#define CYS_ROPE_PAR_MIN_ELEMS (1 << 15)

/* Per-token tables, laid out for the layout's vector loop:
 *   interleaved: c[2i] = c[2i+1] = cos_i, s[2i] = -sin_i, s[2i+1] = +sin_i   (length Dh)
 *   neox:        c[i] = cos_i, s[i] = sin_i                                    (length Dh/2) */
static void rope_tables(int32_t pos, const double *inv_freq, int64_t half, int neox, float *c,
                        float *s) {
    for (int64_t i = 0; i < half; i++) {
        const double ang = (double)pos * inv_freq[i];
        const float ci = (float)cos(ang), si = (float)sin(ang);
        if (neox) {
            c[i] = ci;
            s[i] = si;
        } else {
            c[2 * i] = c[2 * i + 1] = ci;
            s[2 * i] = -si;
            s[2 * i + 1] = si;
        }
    }
}

/* Rotate pairs i0..Dh/2 of one head. */
static void rope_head_scalar(float *x, int64_t Dh, int neox, const float *c, const float *s,
                             int64_t i0) {
    const int64_t half = Dh / 2;
    for (int64_t i = i0; i < half; i++) {
        float *p0 = neox ? x + i : x + 2 * i;
        float *p1 = neox ? x + i + half : x + 2 * i + 1;
        const float ci = neox ? c[i] : c[2 * i], si = neox ? s[i] : s[2 * i + 1];
        const float x0 = *p0, x1 = *p1;
        *p0 = x0 * ci - x1 * si;
        *p1 = x0 * si + x1 * ci;
    }
}

CYS_AVX2 static void rope_head_avx2(float *x, int64_t Dh, int neox, const float *c, const float *s) {
    const int64_t half = Dh / 2;
    int64_t done = 0; /* pairs handled by the vector loop */
    if (neox) {
        for (; done + 8 <= half; done += 8) {
            const __m256 x0 = _mm256_loadu_ps(x + done), x1 = _mm256_loadu_ps(x + half + done);
            const __m256 cv = _mm256_loadu_ps(c + done), sv = _mm256_loadu_ps(s + done);
            _mm256_storeu_ps(x + done, _mm256_fnmadd_ps(x1, sv, _mm256_mul_ps(x0, cv)));
            _mm256_storeu_ps(x + half + done, _mm256_fmadd_ps(x0, sv, _mm256_mul_ps(x1, cv)));
        }
    } else {
        for (; 2 * done + 8 <= Dh; done += 4) {
            const __m256 xv = _mm256_loadu_ps(x + 2 * done);
            const __m256 sw = _mm256_permute_ps(xv, 0xB1); /* (x1, x0) in each pair */
            const __m256 r = _mm256_fmadd_ps(sw, _mm256_loadu_ps(s + 2 * done),
                                             _mm256_mul_ps(xv, _mm256_loadu_ps(c + 2 * done)));
            _mm256_storeu_ps(x + 2 * done, r);
        }
    }
    rope_head_scalar(x, Dh, neox, c, s, done); /* tail pairs, if any */
}

int cys_rope(float *x, const int32_t *positions, int64_t T, int64_t num_heads, int64_t head_dim,
             double theta, const float *freq_factors, int neox, int nthreads, int simd) {
    const int64_t half = head_dim / 2;
    simd = simd && cys_cpu_has_avx2();
    double *inv_freq = malloc((size_t)half * sizeof(double));
    if (!inv_freq) return CYS_ERR_NOMEM;
    int failed = 0;
    for (int64_t i = 0; i < half; i++) {
        inv_freq[i] = pow(theta, -2.0 * (double)i / (double)head_dim);
        if (freq_factors) inv_freq[i] /= (double)freq_factors[i];
    }
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && T * num_heads * head_dim >= CYS_ROPE_PAR_MIN_ELEMS)
    {
        float *c = malloc((size_t)head_dim * 2 * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            if (!c) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            float *s = c + head_dim;
            rope_tables(positions[t], inv_freq, half, neox, c, s);
            for (int64_t h = 0; h < num_heads; h++) {
                float *xh = x + (t * num_heads + h) * head_dim;
                if (simd) rope_head_avx2(xh, head_dim, neox, c, s);
                else rope_head_scalar(xh, head_dim, neox, c, s, 0);
            }
        }
        free(c);
    }
    free(inv_freq);
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
