/* AVX2+FMA+F16C building blocks shared by the kernels (internal to csrc/).
 *
 * Everything here is compiled for the AVX2 target by attribute, not by -mavx2, so the rest of each
 * translation unit (the scalar twins) stays baseline x86-64 and the module loads on any CPU; the
 * AVX2 functions are only called after cys_cpu_has_avx2() said yes.
 */
#ifndef CYS_SIMD_AVX2_H
#define CYS_SIMD_AVX2_H

#include <immintrin.h>
#include <stddef.h>

#include "ggml_blocks.h"

#define CYS_AVX2 __attribute__((target("avx2,fma,f16c")))
/* always_inline so that the compile-time wtype / tile sizes passed in fold into straight code. */
#define CYS_AVX2_INLINE static inline __attribute__((target("avx2,fma,f16c"), always_inline))

CYS_AVX2_INLINE float cys_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for 8 floats, Cephes-style: x = n*ln2 + r, |r| <= ln2/2, degree-5 polynomial for e^r,
 * 2^n built in the exponent bits. Relative error ~2 ulp. Above ln(FLT_MAX) the result is +inf
 * (so silu(-huge) = -huge / inf = -0, not a finite wrong value); below -88.376 it flushes to 0.
 * NaN stays NaN: min/max return their second operand when either is NaN, so x goes second. */
CYS_AVX2_INLINE __m256 cys_exp256(__m256 x) {
    const __m256 overflow = _mm256_cmp_ps(x, _mm256_set1_ps(88.72283905206835f), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), x);
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                               _mm256_set1_ps(0.5f)));
    /* ln2 split in two so r keeps its precision */
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), overflow);
}

/* Bytes of one 32-element group of a row: a quant block, or 32 plain elements. */
static inline int64_t cys_group_bytes(int wtype) {
    switch (wtype) {
    case CYS_TYPE_F32: return 32 * 4;
    case CYS_TYPE_F16:
    case CYS_TYPE_BF16: return 32 * 2;
    case CYS_TYPE_Q4_0: return sizeof(block_q4_0);
    case CYS_TYPE_Q4_1: return sizeof(block_q4_1);
    case CYS_TYPE_Q5_0: return sizeof(block_q5_0);
    case CYS_TYPE_Q5_1: return sizeof(block_q5_1);
    case CYS_TYPE_Q8_0: return sizeof(block_q8_0);
    default: return 0;
    }
}

/* 16 packed nibbles -> 32 values in 4 vectors: low nibbles are elements 0..15, high 16..31.
 * `bias` is subtracted in the integer domain (8 for Q4_0, 0 for Q4_1), so it is exact. */
CYS_AVX2_INLINE void cys_unpack_nibbles(const uint8_t *qs, int bias, __m256 q[4]) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(packed, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    lo = _mm_sub_epi8(lo, _mm_set1_epi8((char)bias));
    hi = _mm_sub_epi8(hi, _mm_set1_epi8((char)bias));
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
}

/* 32 bits -> 32 bytes, byte j = 0x10 where bit j is set, else 0 (Q5's fifth bit, in place). */
CYS_AVX2_INLINE __m256i cys_bits_to_0x10(uint32_t bits) {
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                          _mm256_setr_epi64x(0, 0x0101010101010101LL,
                                                             0x0202020202020202LL, 0x0303030303030303LL));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit), _mm256_set1_epi8(0x10));
}

/* A Q5_0 / Q5_1 block's 32 unsigned codes 0..31 as bytes, elements in order. */
CYS_AVX2_INLINE __m256i cys_unpack_q5(const uint8_t *qh, const uint8_t *qs) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
    return _mm256_or_si256(nib, cys_bits_to_0x10(bits));
}

/* 32 signed bytes -> 4 vectors of floats (elements 0..31). */
CYS_AVX2_INLINE void cys_bytes_to_ps(__m256i v, __m256 q[4]) {
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
}

/* Decode one 32-element group starting at p into 4 vectors of weights (elements 0..31).
 * wtype is a compile-time constant at every call site, so the switch disappears. */
CYS_AVX2_INLINE void cys_load_group(const int wtype, const uint8_t *p, __m256 w[4]) {
    switch (wtype) {
    case CYS_TYPE_F32:
        for (int j = 0; j < 4; j++) w[j] = _mm256_loadu_ps((const float *)p + 8 * j);
        break;
    case CYS_TYPE_F16:
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * j)));
        break;
    case CYS_TYPE_BF16:
        for (int j = 0; j < 4; j++) {
            __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * j)));
            w[j] = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        }
        break;
    case CYS_TYPE_Q8_0: {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q8_0, d))));
        const uint8_t *qs = p + offsetof(block_q8_0, qs);
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * j)));
            w[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
        }
        break;
    }
    case CYS_TYPE_Q4_0: {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q4_0, d))));
        cys_unpack_nibbles(p + offsetof(block_q4_0, qs), 8, w);
        for (int j = 0; j < 4; j++) w[j] = _mm256_mul_ps(w[j], d);
        break;
    }
    case CYS_TYPE_Q4_1: {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q4_1, d))));
        const __m256 m = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q4_1, m))));
        cys_unpack_nibbles(p + offsetof(block_q4_1, qs), 0, w);
        for (int j = 0; j < 4; j++) w[j] = _mm256_fmadd_ps(w[j], d, m);
        break;
    }
    case CYS_TYPE_Q5_0: {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q5_0, d))));
        const __m256i u = cys_unpack_q5(p + offsetof(block_q5_0, qh), p + offsetof(block_q5_0, qs));
        cys_bytes_to_ps(_mm256_sub_epi8(u, _mm256_set1_epi8(16)), w);
        for (int j = 0; j < 4; j++) w[j] = _mm256_mul_ps(w[j], d);
        break;
    }
    case CYS_TYPE_Q5_1: {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q5_1, d))));
        const __m256 m = _mm256_set1_ps(_cvtsh_ss(cys_read_half(p + offsetof(block_q5_1, m))));
        cys_bytes_to_ps(cys_unpack_q5(p + offsetof(block_q5_1, qh), p + offsetof(block_q5_1, qs)), w);
        for (int j = 0; j < 4; j++) w[j] = _mm256_fmadd_ps(w[j], d, m);
        break;
    }
    default:
        break;
    }
}

/* The formats of 32-element groups, for code that instantiates one loop per format (the K-quants
 * have their own, kquants.h). */
#define CYS_FOR_EACH_WTYPE(X)                                                                      \
    X(CYS_TYPE_F32) X(CYS_TYPE_F16) X(CYS_TYPE_BF16) X(CYS_TYPE_Q4_0) X(CYS_TYPE_Q4_1)              \
    X(CYS_TYPE_Q5_0) X(CYS_TYPE_Q5_1) X(CYS_TYPE_Q8_0)

/* Decode a row of K elements (K % 32 may be non-zero only for the plain float formats; K % 256
 * == 0 for the K-quants). */
void cys_dequantize_row_avx2(const uint8_t *row, int wtype, int64_t K, float *dst);

#endif /* CYS_SIMD_AVX2_H */
