/* Weight formats: row sizes, dequantization (scalar and AVX2) and get_rows. */
#include <stdlib.h>

#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

int64_t cys_block_elems(int wtype) {
    switch (wtype) {
    case CYS_TYPE_F32:
    case CYS_TYPE_F16:
    case CYS_TYPE_BF16: return 1;
    case CYS_TYPE_Q4_0:
    case CYS_TYPE_Q4_1:
    case CYS_TYPE_Q5_0:
    case CYS_TYPE_Q5_1:
    case CYS_TYPE_Q8_0: return QK;
    case CYS_TYPE_Q2_K:
    case CYS_TYPE_Q3_K:
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K:
    case CYS_TYPE_Q6_K: return QK_K;
    default: return CYS_ERR_TYPE;
    }
}

int64_t cys_row_bytes(int wtype, int64_t K) {
    const int64_t block = cys_block_elems(wtype);
    if (block < 0) return CYS_ERR_TYPE;
    if (K <= 0 || K % block) return CYS_ERR_SHAPE;
    switch (wtype) {
    case CYS_TYPE_F32: return K * 4;
    case CYS_TYPE_F16:
    case CYS_TYPE_BF16: return K * 2;
    default: return block == QK_K ? K / QK_K * kq_block_bytes(wtype) : K / QK * cys_group_bytes(wtype);
    }
}

/* ---- scalar twin (ggml's dequantize_row_*_ref) ---- */

static void dequantize_row_q4_0_ref(const block_q4_0 *x, int64_t K, float *y) {
    for (int64_t b = 0; b < K / QK; b++) {
        const float d = cys_fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK / 2; j++) {
            y[b * QK + j] = (float)((x[b].qs[j] & 0x0F) - 8) * d;
            y[b * QK + j + QK / 2] = (float)((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequantize_row_q4_1_ref(const block_q4_1 *x, int64_t K, float *y) {
    for (int64_t b = 0; b < K / QK; b++) {
        const float d = cys_fp16_to_fp32(x[b].d);
        const float m = cys_fp16_to_fp32(x[b].m);
        for (int j = 0; j < QK / 2; j++) {
            y[b * QK + j] = (float)(x[b].qs[j] & 0x0F) * d + m;
            y[b * QK + j + QK / 2] = (float)(x[b].qs[j] >> 4) * d + m;
        }
    }
}

/* Q5: the fifth bit of element j is bit j of qh. */
static void dequantize_row_q5_ref(const uint8_t *qh4, const uint8_t *qs, float d, float m, int bias,
                                  float *y) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < QK / 2; j++) {
        const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
        const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        if (bias) {
            y[j] = (float)(lo - bias) * d;
            y[j + QK / 2] = (float)(hi - bias) * d;
        } else {
            y[j] = (float)lo * d + m;
            y[j + QK / 2] = (float)hi * d + m;
        }
    }
}

static void dequantize_row_q8_0_ref(const block_q8_0 *x, int64_t K, float *y) {
    for (int64_t b = 0; b < K / QK; b++) {
        const float d = cys_fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK; j++) y[b * QK + j] = (float)x[b].qs[j] * d;
    }
}

void cys_dequantize_row_scalar(const uint8_t *row, int wtype, int64_t K, float *dst) {
    /* The block structs have 2-byte alignment; copy when a row starts at an odd address (never
     * the case for GGUF, whose tensors are 32-byte aligned, but a caller may slice one). */
    switch (wtype) {
    case CYS_TYPE_F32:
        memcpy(dst, row, (size_t)K * 4);
        return;
    case CYS_TYPE_F16:
        for (int64_t i = 0; i < K; i++) dst[i] = cys_fp16_to_fp32(cys_read_half(row + 2 * i));
        return;
    case CYS_TYPE_BF16:
        for (int64_t i = 0; i < K; i++) dst[i] = cys_bf16_to_fp32(cys_read_half(row + 2 * i));
        return;
    case CYS_TYPE_Q2_K:
    case CYS_TYPE_Q3_K:
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K:
    case CYS_TYPE_Q6_K:
        kq_dequantize_row_scalar(wtype, row, K, dst);
        return;
    default:
        break;
    }
    const int64_t gb = cys_group_bytes(wtype);
    for (int64_t b = 0; b < K / QK; b++) {
        union { block_q4_0 q4_0; block_q4_1 q4_1; block_q5_0 q5_0; block_q5_1 q5_1; block_q8_0 q8_0; } blk;
        memcpy(&blk, row + b * gb, (size_t)gb);
        float *y = dst + b * QK;
        if (wtype == CYS_TYPE_Q4_0) dequantize_row_q4_0_ref(&blk.q4_0, QK, y);
        else if (wtype == CYS_TYPE_Q4_1) dequantize_row_q4_1_ref(&blk.q4_1, QK, y);
        else if (wtype == CYS_TYPE_Q5_0)
            dequantize_row_q5_ref(blk.q5_0.qh, blk.q5_0.qs, cys_fp16_to_fp32(blk.q5_0.d), 0.0f, 16, y);
        else if (wtype == CYS_TYPE_Q5_1)
            dequantize_row_q5_ref(blk.q5_1.qh, blk.q5_1.qs, cys_fp16_to_fp32(blk.q5_1.d),
                                  cys_fp16_to_fp32(blk.q5_1.m), 0, y);
        else if (wtype == CYS_TYPE_Q8_0) dequantize_row_q8_0_ref(&blk.q8_0, QK, y);
    }
}

/* ---- AVX2 ---- */

CYS_AVX2_INLINE void dequant_groups(const int wtype, const uint8_t *row, int64_t ngroups, float *dst) {
    const int64_t gb = cys_group_bytes(wtype);
    for (int64_t g = 0; g < ngroups; g++) {
        __m256 w[4];
        cys_load_group(wtype, row + g * gb, w);
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(dst + g * QK + 8 * j, w[j]);
    }
}

CYS_AVX2 void cys_dequantize_row_avx2(const uint8_t *row, int wtype, int64_t K, float *dst) {
    const int64_t ngroups = K / QK;
    switch (wtype) {
#define CASE(T) case T: dequant_groups(T, row, ngroups, dst); break;
        CYS_FOR_EACH_WTYPE(CASE)
#undef CASE
    case CYS_TYPE_Q2_K:
    case CYS_TYPE_Q3_K:
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K:
    case CYS_TYPE_Q6_K:
        kq_dequantize_row_avx2(wtype, row, K, dst);
        return;
    default: return;
    }
    /* plain float formats may have K % 32 != 0: finish the tail with the scalar twin */
    const int64_t done = ngroups * QK;
    if (done < K) {
        const int64_t esize = wtype == CYS_TYPE_F32 ? 4 : 2;
        cys_dequantize_row_scalar(row + done * esize, wtype, K - done, dst + done);
    }
}

static void dequantize_row(const uint8_t *row, int wtype, int64_t K, float *dst, int simd) {
    if (simd) cys_dequantize_row_avx2(row, wtype, K, dst);
    else cys_dequantize_row_scalar(row, wtype, K, dst);
}

/* Below this many output elements a parallel region costs more than it saves. */
#define CYS_PAR_MIN_ELEMS (1 << 15)

int cys_dequantize(const uint8_t *w, int64_t row_bytes, int wtype, int64_t N, int64_t K,
                   float *out, int nthreads, int simd) {
    const int64_t rb = cys_row_bytes(wtype, K);
    if (rb < 0) return (int)rb;
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= CYS_PAR_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++) dequantize_row(w + n * row_bytes, wtype, K, out + n * K, simd);
    return CYS_OK;
}

int cys_get_rows(const uint8_t *w, int64_t row_bytes, int wtype, int64_t K, const int32_t *ids,
                 int64_t T, float *out, int nthreads, int simd) {
    const int64_t rb = cys_row_bytes(wtype, K);
    if (rb < 0) return (int)rb;
    simd = simd && cys_cpu_has_avx2();
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && T * K >= CYS_PAR_MIN_ELEMS)
    for (int64_t t = 0; t < T; t++)
        dequantize_row(w + (int64_t)ids[t] * row_bytes, wtype, K, out + t * K, simd);
    return CYS_OK;
}
