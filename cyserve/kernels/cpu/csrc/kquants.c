/* K-quant super-blocks: scale decoding, the unpack into kq_block_t (scalar and AVX2 twins) and
 * row dequantization (layouts in ggml_blocks.h, the unpacked form in kquants.h). */
#include <string.h>

#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "kquants.h"
#include "simd_avx2.h"

int64_t kq_block_bytes(int wtype) {
    switch (wtype) {
    case CYS_TYPE_Q2_K: return sizeof(block_q2_K);
    case CYS_TYPE_Q3_K: return sizeof(block_q3_K);
    case CYS_TYPE_Q4_K: return sizeof(block_q4_K);
    case CYS_TYPE_Q5_K: return sizeof(block_q5_K);
    case CYS_TYPE_Q6_K: return sizeof(block_q6_K);
    default: return 0;
    }
}

/* ---- scales (shared by both twins) ---- */

/* Q4_K / Q5_K: 8 6-bit scales and mins in 12 bytes (ggml's get_scale_min_k4). */
static void scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* sc[16] and mn[16] per 16-element sub-block, d and dm, of one super-block. */
static void kq_scales(int wtype, const uint8_t *p, int sc[16], int mn[16], float *d, float *dm) {
    switch (wtype) {
    case CYS_TYPE_Q2_K:
        for (int s = 0; s < 16; s++) {
            sc[s] = p[s] & 0x0F;
            mn[s] = p[s] >> 4;
        }
        *d = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q2_K, d)));
        *dm = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q2_K, dmin)));
        return;
    case CYS_TYPE_Q3_K: {
        const uint8_t *s12 = p + offsetof(block_q3_K, scales);
        for (int s = 0; s < 16; s++) {
            const int lo = s < 8 ? s12[s] & 0x0F : s12[s - 8] >> 4;
            const int hi = (s12[8 + s % 4] >> (2 * (s / 4))) & 3;
            sc[s] = (lo | (hi << 4)) - 32;
            mn[s] = 4 * sc[s];
        }
        *d = *dm = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q3_K, d)));
        return;
    }
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K: {
        /* the fields sit at the same offsets in both */
        for (int j = 0; j < 8; j++) {
            int a, b;
            scale_min_k4(p + offsetof(block_q4_K, scales), j, &a, &b);
            sc[2 * j] = sc[2 * j + 1] = a;
            mn[2 * j] = mn[2 * j + 1] = b;
        }
        *d = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q4_K, d)));
        *dm = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q4_K, dmin)));
        return;
    }
    case CYS_TYPE_Q6_K:
        for (int s = 0; s < 16; s++) {
            sc[s] = ((const int8_t *)(p + offsetof(block_q6_K, scales)))[s];
            mn[s] = 32 * sc[s];
        }
        *d = *dm = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q6_K, d)));
        return;
    default:
        return;
    }
}

/* ---- scalar twin ---- */

static void unpack_u_scalar(int wtype, const uint8_t *p, uint8_t *u) {
    for (int e = 0; e < QK_K; e++) {
        const int h = e / 128, j = (e % 128) / 32, l = e % 32, c = e / 64, hi = (e % 64) >= 32;
        switch (wtype) {
        case CYS_TYPE_Q2_K:
            u[e] = (p[offsetof(block_q2_K, qs) + 32 * h + l] >> (2 * j)) & 3;
            break;
        case CYS_TYPE_Q3_K:
            u[e] = ((p[offsetof(block_q3_K, qs) + 32 * h + l] >> (2 * j)) & 3) |
                   (((p[offsetof(block_q3_K, hmask) + l] >> (e / 32)) & 1) << 2);
            break;
        case CYS_TYPE_Q4_K: {
            const uint8_t b = p[offsetof(block_q4_K, qs) + 32 * c + l];
            u[e] = hi ? b >> 4 : b & 0x0F;
            break;
        }
        case CYS_TYPE_Q5_K: {
            const uint8_t b = p[offsetof(block_q5_K, qs) + 32 * c + l];
            u[e] = (hi ? b >> 4 : b & 0x0F) | (((p[offsetof(block_q5_K, qh) + l] >> (e / 32)) & 1) << 4);
            break;
        }
        case CYS_TYPE_Q6_K: {
            const uint8_t b = p[offsetof(block_q6_K, ql) + 64 * h + 32 * (j & 1) + l];
            const int high = (p[offsetof(block_q6_K, qh) + 32 * h + l] >> (2 * j)) & 3;
            u[e] = (j >= 2 ? b >> 4 : b & 0x0F) | (high << 4);
            break;
        }
        default:
            u[e] = 0;
        }
    }
}

void kq_unpack_scalar(int wtype, const uint8_t *p, kq_block_t *o) {
    int sc[16], mn[16];
    kq_scales(wtype, p, sc, mn, &o->d, &o->dm);
    unpack_u_scalar(wtype, p, o->u);
    for (int k = 0; k < QK_K / 2; k++) o->se[k] = (int16_t)sc[k / 8];
    for (int s = 0; s < 16; s++) o->mn[s] = (int16_t)mn[s];
}

void kq_dequantize_row_scalar(int wtype, const uint8_t *row, int64_t K, float *dst) {
    const int64_t bb = kq_block_bytes(wtype);
    const int has_min = kq_has_min(wtype), off = wtype == CYS_TYPE_Q3_K ? 4 : 32;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int sc[16], mn[16];
        float d, dm;
        uint8_t u[QK_K];
        kq_scales(wtype, row + b * bb, sc, mn, &d, &dm);
        unpack_u_scalar(wtype, row + b * bb, u);
        float *y = dst + b * QK_K;
        for (int s = 0; s < 16; s++) {
            const float dl = d * (float)sc[s], ml = dm * (float)mn[s];
            for (int l = 0; l < 16; l++) {
                const int k = 16 * s + l;
                y[k] = has_min ? dl * (float)u[k] - ml : dl * (float)(u[k] - off);
            }
        }
    }
}

/* ---- AVX2 twin ---- */

/* 32 bytes, byte l = 0x01 << shift where bit `bit` of plane[l] is set (shift 2: Q3_K, 4: Q5_K). */
CYS_AVX2_INLINE __m256i plane_bit(__m256i plane, int bit, int shift) {
    const __m256i m = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(plane, m), m),
                            _mm256_set1_epi8((char)(1 << shift)));
}

CYS_AVX2_INLINE void unpack_u_avx2(const int wtype, const uint8_t *p, uint8_t *u) {
    const __m256i m2 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0x0F);
    switch (wtype) {
    case CYS_TYPE_Q2_K:
    case CYS_TYPE_Q3_K: {
        const uint8_t *qs = p + (wtype == CYS_TYPE_Q2_K ? offsetof(block_q2_K, qs) : offsetof(block_q3_K, qs));
        const __m256i hm = _mm256_loadu_si256((const __m256i *)p); /* Q3_K hmask is first */
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m2);
                if (wtype == CYS_TYPE_Q3_K) q = _mm256_or_si256(q, plane_bit(hm, 4 * h + j, 2));
                _mm256_storeu_si256((__m256i *)(u + 128 * h + 32 * j), q);
            }
        }
        break;
    }
    case CYS_TYPE_Q4_K:
    case CYS_TYPE_Q5_K: {
        const int q5 = wtype == CYS_TYPE_Q5_K;
        const uint8_t *qs = p + (q5 ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q5_K, qh)));
        for (int c = 0; c < 4; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (q5) {
                lo = _mm256_or_si256(lo, plane_bit(qh, 2 * c, 4));
                hi = _mm256_or_si256(hi, plane_bit(qh, 2 * c + 1, 4));
            }
            _mm256_storeu_si256((__m256i *)(u + 64 * c), lo);
            _mm256_storeu_si256((__m256i *)(u + 64 * c + 32), hi);
        }
        break;
    }
    case CYS_TYPE_Q6_K: {
        const __m256i m30 = _mm256_set1_epi8(0x30);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q6_K, ql) + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q6_K, ql) + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q6_K, qh) + 32 * h));
            uint8_t *o = u + 128 * h;
            _mm256_storeu_si256((__m256i *)o, _mm256_or_si256(_mm256_and_si256(l0, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)));
            _mm256_storeu_si256((__m256i *)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)));
            _mm256_storeu_si256((__m256i *)(o + 64), _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30)));
            _mm256_storeu_si256((__m256i *)(o + 96), _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)));
        }
        break;
    }
    default:
        break;
    }
}

CYS_AVX2_INLINE void unpack_avx2(const int wtype, const uint8_t *p, kq_block_t *o) {
    int sc[16], mn[16];
    kq_scales(wtype, p, sc, mn, &o->d, &o->dm);
    unpack_u_avx2(wtype, p, o->u);
    for (int v = 0; v < 8; v++)
        _mm256_storeu_si256((__m256i *)(o->se + 16 * v),
                            _mm256_set_m128i(_mm_set1_epi16((short)sc[2 * v + 1]), _mm_set1_epi16((short)sc[2 * v])));
    for (int s = 0; s < 16; s++) o->mn[s] = (int16_t)mn[s];
}

CYS_AVX2 void kq_unpack_avx2(int wtype, const uint8_t *p, kq_block_t *o) {
    switch (wtype) {
    case CYS_TYPE_Q2_K: unpack_avx2(CYS_TYPE_Q2_K, p, o); break;
    case CYS_TYPE_Q3_K: unpack_avx2(CYS_TYPE_Q3_K, p, o); break;
    case CYS_TYPE_Q4_K: unpack_avx2(CYS_TYPE_Q4_K, p, o); break;
    case CYS_TYPE_Q5_K: unpack_avx2(CYS_TYPE_Q5_K, p, o); break;
    case CYS_TYPE_Q6_K: unpack_avx2(CYS_TYPE_Q6_K, p, o); break;
    default: break;
    }
}

CYS_AVX2 void kq_dequantize_row_avx2(int wtype, const uint8_t *row, int64_t K, float *dst) {
    const int64_t bb = kq_block_bytes(wtype);
    const int has_min = kq_has_min(wtype), off = wtype == CYS_TYPE_Q3_K ? 4 : 32;
    kq_block_t blk;
    for (int64_t b = 0; b < K / QK_K; b++) {
        kq_unpack_avx2(wtype, row + b * bb, &blk);
        float *y = dst + b * QK_K;
        for (int s = 0; s < 16; s++) {
            const float dls = blk.d * (float)blk.se[8 * s];
            const __m256 dl = _mm256_set1_ps(dls);
            const __m256 ml = _mm256_set1_ps(blk.dm * (float)blk.mn[s]);
            for (int h = 0; h < 2; h++) {
                __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk.u + 16 * s + 8 * h)));
                __m256 w;
                if (has_min) {
                    w = _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(q)), ml);
                } else {
                    q = _mm256_sub_epi32(q, _mm256_set1_epi32(off));
                    w = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(q));
                }
                _mm256_storeu_ps(y + 16 * s + 8 * h, w);
            }
        }
    }
}
