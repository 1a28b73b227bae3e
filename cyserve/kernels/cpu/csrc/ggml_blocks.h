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

#define QK 32 /* weights per quantized block, for every format in this file */

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
    int8_t qs[QK];       /* w = q * d */
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK, "block_q8_0 must be 34 bytes");

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
