/* GGML weight block formats and exact scalar float conversions (internal to csrc/).
 *
 * Layouts are byte-for-byte those of ggml/GGUF, so weights are used in place from the mmapped file.
 * Every struct has a static size check: a padding change here would silently misread every model.
 */
#ifndef CYS_GGML_BLOCKS_H
#define CYS_GGML_BLOCKS_H

#include <stdint.h>
#include <string.h>

#include "cys_kernels.h"

#define QK 32     /* weights per block of Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 */
#define QK_K 256  /* weights per super-block of the K-quants */

typedef uint16_t cys_half; /* IEEE fp16 bits */

typedef struct {
    cys_half d;          /* scale */
    uint8_t qs[QK / 2];  /* nibbles: low = elements 0..15, high = 16..31; w = (q - 8) * d */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK / 2, "block_q4_0 must be 18 bytes");

typedef struct {
    cys_half d;          /* scale */
    cys_half m;          /* min */
    uint8_t qs[QK / 2];  /* nibbles as q4_0; w = q * d + m */
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK / 2, "block_q4_1 must be 20 bytes");

typedef struct {
    cys_half d;          /* scale */
    uint8_t qh[4];       /* bit 4 of element j is bit j of this little-endian u32 */
    uint8_t qs[QK / 2];  /* low 4 bits, packed as q4_0; w = (q - 16) * d */
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 2 + 4 + QK / 2, "block_q5_0 must be 22 bytes");

typedef struct {
    cys_half d;          /* scale */
    cys_half m;          /* min */
    uint8_t qh[4];       /* as q5_0 */
    uint8_t qs[QK / 2];  /* w = q * d + m */
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 4 + 4 + QK / 2, "block_q5_1 must be 24 bytes");

typedef struct {
    cys_half d;          /* scale */
    int8_t qs[QK];       /* w = q * d */
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK, "block_q8_0 must be 34 bytes");

/* K-quants: 256 weights, sub-blocks of 16 or 32 with their own small integer scale (and min).
 * Element e of a super-block sits in half h = e / 128, 32-run j = (e % 128) / 32, byte l = e % 32
 * of the 2-bit planes (Q2_K, Q3_K); the 4-bit planes (Q4_K, Q5_K) hold 64-element chunks, low
 * nibbles first; the bit planes (Q3_K hmask, Q5_K qh) give element e bit e / 32 of byte e % 32. */
typedef struct {
    uint8_t scales[QK_K / 16]; /* low nibble scale, high nibble min, per 16 */
    uint8_t qs[QK_K / 4];      /* 2-bit q */
    cys_half d, dmin;          /* w = d * sc * q - dmin * m */
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K must be 84 bytes");

typedef struct {
    uint8_t hmask[QK_K / 8];   /* high bit of q: set = no -4 offset */
    uint8_t qs[QK_K / 4];      /* low 2 bits */
    uint8_t scales[12];        /* 16 6-bit scales (stored + 32) */
    cys_half d;                /* w = d * (sc - 32) * q, q in -4..3 */
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K must be 110 bytes");

typedef struct {
    cys_half d, dmin;
    uint8_t scales[12];        /* 8 6-bit scales and 8 6-bit mins, per 32 */
    uint8_t qs[QK_K / 2];      /* 4-bit q; w = d * sc * q - dmin * m */
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");

typedef struct {
    cys_half d, dmin;
    uint8_t scales[12];        /* as q4_K */
    uint8_t qh[QK_K / 8];      /* bit 4 of q */
    uint8_t qs[QK_K / 2];      /* low 4 bits */
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");

typedef struct {
    uint8_t ql[QK_K / 2];      /* low 4 bits: per half, bytes 0..31 = runs 0 (lo) / 2 (hi), 32..63 = runs 1 / 3 */
    uint8_t qh[QK_K / 4];      /* high 2 bits: per half, run j at bits 2j */
    int8_t scales[QK_K / 16];  /* per 16 */
    cys_half d;                /* w = d * sc * (q - 32) */
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");

/* Bit casts through memcpy: defined behaviour, compiles to a register move. */
static inline float cys_fp32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t cys_fp32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

/* fp16 -> fp32, exact for normals, subnormals, inf and NaN (the FP16 library's branch-free
 * method, as in ggml): the scalar path must give the same value as F16C's vcvtph2ps. */
static inline float cys_fp16_to_fp32(cys_half h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const float normalized = cys_fp32_from_bits((two_w >> 4) + (UINT32_C(0xE0) << 23)) * 0x1.0p-112f;
    const float denormalized = cys_fp32_from_bits((two_w >> 17) | (UINT32_C(126) << 23)) - 0.5f;
    const uint32_t bits = two_w < (UINT32_C(1) << 27) ? cys_fp32_to_bits(denormalized)
                                                       : cys_fp32_to_bits(normalized);
    return cys_fp32_from_bits(sign | bits);
}

/* fp32 -> fp16 with round-to-nearest-even, overflow to inf, NaN -> quiet NaN: the same bits as
 * vcvtps2ph with _MM_FROUND_TO_NEAREST_INT and as numpy's astype(float16). */
static inline cys_half cys_fp32_to_fp16(float f) {
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = cys_fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
    base = cys_fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = cys_fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    return (cys_half)((sign >> 16) |
                      (shl1_w > UINT32_C(0xFF000000) ? UINT32_C(0x7E00) : exp_bits + mantissa_bits));
}

/* Unaligned fp16 read: block rows start at any byte offset of the mmapped file. */
static inline cys_half cys_read_half(const uint8_t *p) { cys_half h; memcpy(&h, p, 2); return h; }

static inline float cys_bf16_to_fp32(uint16_t h) { return cys_fp32_from_bits((uint32_t)h << 16); }

/* Scalar dequantization of one row of K elements (K a multiple of the block size). */
void cys_dequantize_row_scalar(const uint8_t *row, int wtype, int64_t K, float *dst);

#endif /* CYS_GGML_BLOCKS_H */
