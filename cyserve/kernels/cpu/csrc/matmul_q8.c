/* out[T, N] = x[T, K] @ W[N, K].T for Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights, the llama.cpp way: x is quantized
 * once per call to int8 blocks of 32 (act_q8.h), each weight block meets each x block in an exact
 * integer dot product, and one FMA per block applies d_w * d_x. The weight's offset folds in per
 * block as m_w * s_x, with s_x = d_x * sum(q_x): Q4_1's min m, and Q4_0 as m = -8 d (so both Q4
 * formats multiply the raw unsigned nibbles, no sign trick), the Q5 formats likewise (m = -16 d for
 * Q5_0, their unsigned 5-bit codes), Q8_0 has none.
 *
 * Per block every level computes the same integers (AVX2 maddubs + madd, AVX-VNNI and AVX-512
 * VNNI vpdpbusd), and the float terms are added in one fixed order (8 lanes, then a pairwise
 * horizontal sum) that the scalar twin follows lane by lane: a row's output has the same bits on
 * every level and in every batch (tests/kernels/test_isa_parity.py).
 *
 * Regimes (every SIMD level), all parallel over output rows, each output element owned by one thread:
 *  - GEMV, T <= 4 (decode): weight blocks are unpacked to bytes in registers and dotted with every
 *    token's x block before the next block is read; 1 to 4 rows at a time share the x loads
 *    (1 row, one sequential stream, when the weights are too big to be cached).
 *  - GEMM, T > 4 (prefill, batched decode): 4 rows are unpacked once into an L1 buffer (bytes,
 *    scales, mins), then a 4 rows x 3 tokens register tile walks them for every token of an x
 *    chunk sized to stay in L2.
 * Weights stay in place (GGUF bytes): the unpack into L1 is amortised over the tokens of a chunk,
 * which is what an interleaved repack at load would buy, without a second copy of the model.
 */
#include <math.h>
#include <stdlib.h>

#include "act_q8.h"
#include "cys_kernels.h"
#include "ggml_blocks.h"
#include "simd_avx2.h"

#define Q8_GEMV_MAX_T 4                /* up to this many tokens: GEMV */
#define Q8_GEMV_ROW_CHUNK 16           /* GEMV rows per scheduling unit */
/* the #ifndef knobs may be set with -D to re-tune on another CPU (measured on AMD EPYC, AVX2) */
#ifndef Q8_TILE_R
#define Q8_TILE_R 4                    /* GEMM rows per unpacked group (at most 4) */
#endif
#ifndef Q8_TILE_C
#define Q8_TILE_C 3                    /* GEMM tokens per register tile, AVX2 (16 registers) */
#endif
#ifndef Q8_TILE_C_AVX512
#define Q8_TILE_C_AVX512 4             /* the same with AVX-512's 32 registers (at most 6) */
#endif
#define Q8_X_CHUNK_BYTES (192 * 1024)  /* quantized x per GEMM pass: L2 is 512 KiB a core */
#define Q8_PAR_MIN_MACS (1 << 17)      /* smaller products run on the calling thread */
#ifndef Q8_GEMV_PF_ROWS
#define Q8_GEMV_PF_ROWS 8              /* GEMV prefetches this many rows ahead (DRAM-bound rows) */
#endif
#ifndef Q8_GEMM_PF_ROWS
#define Q8_GEMM_PF_ROWS 8              /* GEMM unpack prefetches this many rows ahead */
#endif
#define Q8_QUANT_PAR_MIN (1 << 15)     /* x elements from which threads share the quantization */

/* Quantized x as the kernels read it: row t is q + t*K, d + t*ds, s + t*ds (ds = nb rounded up
 * to 8, zero padded). */
typedef struct {
    const int8_t *q;
    const float *d;
    const float *s;
    int64_t K, nb, ds;
} act_t;

/* Scale d and offset factor m of one weight block (w = q_unsigned * d + m for Q4; m = 0 for Q8). */
static inline void block_dm_scalar(int wtype, const uint8_t *p, float *d, float *m) {
    *d = cys_fp16_to_fp32(cys_read_half(p));
    if (wtype == CYS_TYPE_Q4_1 || wtype == CYS_TYPE_Q5_1)
        *m = cys_fp16_to_fp32(cys_read_half(p + offsetof(block_q4_1, m))); /* same offset in q5_1 */
    else if (wtype == CYS_TYPE_Q4_0) *m = -8.0f * *d;
    else if (wtype == CYS_TYPE_Q5_0) *m = -16.0f * *d;
    else *m = 0.0f;
}

static inline int64_t qs_offset(int wtype) {
    switch (wtype) {
    case CYS_TYPE_Q4_0: return offsetof(block_q4_0, qs);
    case CYS_TYPE_Q4_1: return offsetof(block_q4_1, qs);
    case CYS_TYPE_Q5_0: return offsetof(block_q5_0, qs);
    case CYS_TYPE_Q5_1: return offsetof(block_q5_1, qs);
    default: return offsetof(block_q8_0, qs);
    }
}

/* Offset of a Q5 block's fifth-bit word. */
static inline int64_t qh_offset(int wtype) {
    return wtype == CYS_TYPE_Q5_1 ? offsetof(block_q5_1, qh) : offsetof(block_q5_0, qh);
}

static inline int is_q5(int wtype) { return wtype == CYS_TYPE_Q5_0 || wtype == CYS_TYPE_Q5_1; }

/* ---- scalar twin ---- */

/* A block's 32 codes in element order: unsigned Q4 / Q5 codes, Q8_0's signed values. */
static inline void block_codes_scalar(int wtype, const uint8_t *p, int32_t code[QK]) {
    const int64_t off = qs_offset(wtype);
    if (wtype == CYS_TYPE_Q8_0) {
        for (int j = 0; j < QK; j++) code[j] = (int8_t)p[off + j];
        return;
    }
    uint32_t qh = 0;
    if (is_q5(wtype)) memcpy(&qh, p + qh_offset(wtype), 4);
    for (int j = 0; j < QK / 2; j++) {
        code[j] = (p[off + j] & 0x0F) | (((qh >> j) & 1) << 4);
        code[j + QK / 2] = (p[off + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    }
}

/* The SIMD kernels' arithmetic lane by lane, so that the twins agree bit for bit: 8 lanes, lane l
 * owning elements 4l..4l+3 of every block; per block one fused multiply-add of the lane's exact
 * integer dot by d_w * d_x; then the offsets m_w * s_x fused in 8 blocks a step (lane l takes
 * block b + l, zero padded to ds); then cys_hsum256's pairwise sum. */
static float row_dot_scalar(int wtype, const uint8_t *row, const act_t *a, int64_t t) {
    const int64_t gb = cys_group_bytes(wtype);
    const int8_t *xq = a->q + t * a->K;
    const float *xd = a->d + t * a->ds, *xs = a->s + t * a->ds;
    float lane[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    float mrow[a->ds];
    for (int64_t b = 0; b < a->nb; b++) {
        const uint8_t *p = row + b * gb;
        const int8_t *x = xq + b * QK;
        int32_t code[QK];
        float dw;
        block_dm_scalar(wtype, p, &dw, &mrow[b]);
        block_codes_scalar(wtype, p, code);
        const float dd = dw * xd[b];
        for (int l = 0; l < 8; l++) {
            int32_t isum = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++) isum += code[j] * x[j];
            lane[l] = fmaf((float)isum, dd, lane[l]);
        }
    }
    if (wtype != CYS_TYPE_Q8_0) {
        for (int64_t b = a->nb; b < a->ds; b++) mrow[b] = 0.0f;
        for (int64_t b = 0; b < a->ds; b += 8)
            for (int l = 0; l < 8; l++) lane[l] = fmaf(mrow[b + l], xs[b + l], lane[l]);
    }
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

static void matmul_rows_scalar(const act_t *a, int64_t T, const uint8_t *w, int64_t rb, int wtype,
                               int64_t N, float *out) {
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < T; t++) out[t * N + n] = row_dot_scalar(wtype, w + n * rb, a, t);
}

/* Rows per GEMV tile: as many as keep the accumulators (vector and scalar) in 16 registers. */
#define GEMV_ROWS(nt) ((nt) == 1 ? 4 : (nt) == 2 ? 2 : 1)
/* Weights larger than this come from DRAM, not cache: a single token then reads one row at a time
 * (one sequential stream; measured 1.8x faster than 4-row tiles on the 30 MB output layer). */
#define Q8_GEMV_STREAM_BYTES (8 << 20)

/* A group of up to 4 weight rows unpacked for the tiles: bytes u[r*K + k] (Q4 nibbles or |q8|),
 * for Q8_0 the signed bytes sg[r*K + k], scales d[r*ds + b] and offset factors m[r*ds + b], with
 * ds the x scale stride (m zero padded: the min-term dot runs 8 wide over whole rows). */
typedef struct {
    uint8_t *u;
    int8_t *sg;
    float *d, *m;
} wgroup_t;

static size_t wgroup_bytes(int64_t K, int64_t ds) {
    return (size_t)Q8_TILE_R * K * 2 + (size_t)Q8_TILE_R * ds * 2 * sizeof(float);
}

static wgroup_t wgroup_carve(void *buf, int64_t K, int64_t ds) {
    wgroup_t g;
    g.u = buf;
    g.sg = (int8_t *)(g.u + Q8_TILE_R * K);
    g.d = (float *)(g.sg + Q8_TILE_R * K);
    g.m = g.d + Q8_TILE_R * ds;
    return g;
}

#define Q8_FOR_EACH_WTYPE(X) \
    X(CYS_TYPE_Q4_0) X(CYS_TYPE_Q4_1) X(CYS_TYPE_Q5_0) X(CYS_TYPE_Q5_1) X(CYS_TYPE_Q8_0)

/* One instantiation of the SIMD kernels per level (matmul_q8_simd.h). */
#define Q8V_INLINE static inline __attribute__((target(Q8V_TARGET), always_inline))
#define Q8V_FN __attribute__((target(Q8V_TARGET)))

#define Q8V(name) name##_avx2
#define Q8V_TARGET "avx2,fma,f16c"
#define Q8V_ISA 1 /* CYS_ISA_AVX2 */
#define Q8V_TILE_C Q8_TILE_C
#include "matmul_q8_simd.h"
#undef Q8V
#undef Q8V_TARGET
#undef Q8V_ISA
#undef Q8V_TILE_C

#define Q8V(name) name##_avx_vnni
#define Q8V_TARGET "avx2,fma,f16c,avxvnni"
#define Q8V_ISA 2 /* CYS_ISA_AVX_VNNI */
#define Q8V_TILE_C Q8_TILE_C
#include "matmul_q8_simd.h"
#undef Q8V
#undef Q8V_TARGET
#undef Q8V_ISA
#undef Q8V_TILE_C

#define Q8V(name) name##_avx512_vnni
#define Q8V_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define Q8V_ISA 3 /* CYS_ISA_AVX512_VNNI */
#define Q8V_TILE_C Q8_TILE_C_AVX512
#include "matmul_q8_simd.h"
#undef Q8V
#undef Q8V_TARGET
#undef Q8V_ISA
#undef Q8V_TILE_C

int cys_matmul_q8(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                  int wtype, int64_t N, float *out, int nthreads, int simd) {
    const int64_t nb = K / QK, ds = cys_act_stride(nb);
    int8_t *q = cys_thread_scratch((size_t)T * K + (size_t)T * ds * 2 * sizeof(float));
    if (!q) return CYS_ERR_NOMEM;
    float *d = (float *)(q + T * K); /* T * K is a multiple of 32: d stays aligned */
    float *s = d + T * ds;
    const act_t a = {q, d, s, K, nb, ds};
    const int par = nthreads > 1 && T * N * K >= Q8_PAR_MIN_MACS;
    const int par_quant = par && T * K >= Q8_QUANT_PAR_MIN;
    /* a small x is quantized before the team starts: one barrier fewer per decode step */
    if (!par_quant) cys_quantize_act_rows(x, 0, T, K, q, d, s, ds, simd);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        if (par_quant) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; t++) cys_quantize_act_rows(x, t, t + 1, K, q, d, s, ds, simd);
        }
        switch (simd) {
        case CYS_ISA_AVX512_VNNI: matmul_rows_avx512_vnni(&a, T, w, row_bytes, wtype, N, out, &failed); break;
        case CYS_ISA_AVX_VNNI: matmul_rows_avx_vnni(&a, T, w, row_bytes, wtype, N, out, &failed); break;
        case CYS_ISA_AVX2: matmul_rows_avx2(&a, T, w, row_bytes, wtype, N, out, &failed); break;
        default: matmul_rows_scalar(&a, T, w, row_bytes, wtype, N, out); break;
        }
    }
    return failed ? CYS_ERR_NOMEM : CYS_OK;
}
