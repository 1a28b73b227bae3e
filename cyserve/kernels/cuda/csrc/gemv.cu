/* Dequantizing GEMV for decode: out[t, n] = sum_k x[t, k] * W[n, k], W in GGUF Q4_0/Q4_1/Q8_0 rows.
 *
 * Decode is bound by reading weights; Q4 rows are a quarter of fp16's bytes, so reading the GGUF
 * blocks as they are and dequantizing in registers can beat cuBLAS on fp16 copies for T <= 8.
 * One warp per output row; lane j takes the row's blocks j, j+32, ...; each block's 32 weights are
 * decoded once and used for all T tokens (templated, so the accumulators stay in registers).
 * Block layouts as in cyserve/kernels/cpu/csrc/ggml_blocks.h: Q4_0 {f16 d; u8 qs[16]} w=(q-8)d,
 * Q4_1 {f16 d; f16 m; u8 qs[16]} w=qd+m, Q8_0 {f16 d; i8 qs[32]} w=qd; in Q4 the low nibble of
 * qs[i] is element i and the high nibble element i+16.
 */
#include "common.cuh"

#define CYS_GEMV_WARPS 4
#define CYS_GEMV_MAX_T 8
#define QK 32

template <int WTYPE>
struct BlockTraits;
template <> struct BlockTraits<CYS_WTYPE_Q4_0> { static constexpr int bytes = 18; };
template <> struct BlockTraits<CYS_WTYPE_Q4_1> { static constexpr int bytes = 20; };
template <> struct BlockTraits<CYS_WTYPE_Q8_0> { static constexpr int bytes = 34; };

template <int WTYPE>
__device__ __forceinline__ void decode_block(const uint8_t *__restrict__ blk, float w[QK]) {
    const float d = cys_load_half(blk);
    if (WTYPE == CYS_WTYPE_Q8_0) {
#pragma unroll
        for (int i = 0; i < QK; ++i) w[i] = (float)(int8_t)blk[2 + i] * d;
    } else {
        const float m = WTYPE == CYS_WTYPE_Q4_1 ? cys_load_half(blk + 2) : -8.0f * d;
        const uint8_t *qs = blk + (WTYPE == CYS_WTYPE_Q4_1 ? 4 : 2);
#pragma unroll
        for (int i = 0; i < QK / 2; ++i) {
            const int b = qs[i];
            w[i] = (float)(b & 0x0F) * d + m;
            w[i + QK / 2] = (float)(b >> 4) * d + m;
        }
    }
}

template <int WTYPE, int T>
__global__ void __launch_bounds__(CYS_GEMV_WARPS * CYS_WARP)
cys_dequant_gemv_kernel(__half *__restrict__ out, const __half *__restrict__ x, const uint8_t *__restrict__ w,
                        int64_t n, int64_t k) {
    const int lane = threadIdx.x % CYS_WARP;
    const int64_t row = (int64_t)blockIdx.x * CYS_GEMV_WARPS + threadIdx.x / CYS_WARP;
    if (row >= n) return; /* whole warps leave together: no shuffle below loses a lane */
    const int64_t num_blocks = k / QK;
    const uint8_t *wrow = w + row * num_blocks * BlockTraits<WTYPE>::bytes;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = 0.0f;
    for (int64_t b = lane; b < num_blocks; b += CYS_WARP) {
        float wv[QK];
        decode_block<WTYPE>(wrow + b * BlockTraits<WTYPE>::bytes, wv);
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const __half2 *xb = (const __half2 *)(x + t * k + b * QK); /* k % 32 == 0: aligned */
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < QK / 2; ++i) {
                const float2 xf = __half22float2(xb[i]);
                s += xf.x * wv[2 * i] + xf.y * wv[2 * i + 1];
            }
            acc[t] += s;
        }
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
        const float total = cys_warp_sum(acc[t]);
        if (lane == 0) out[t * n + row] = __float2half(total);
    }
}

template <int WTYPE>
static int launch_type(__half *out, const __half *x, const uint8_t *w, int64_t num_tokens, int64_t n,
                       int64_t k, cudaStream_t stream) {
    const unsigned blocks = (unsigned)((n + CYS_GEMV_WARPS - 1) / CYS_GEMV_WARPS);
    const int threads = CYS_GEMV_WARPS * CYS_WARP;
    switch (num_tokens) {
#define CYS_GEMV_T(TT) \
    case TT: cys_dequant_gemv_kernel<WTYPE, TT><<<blocks, threads, 0, stream>>>(out, x, w, n, k); break;
        CYS_GEMV_T(1) CYS_GEMV_T(2) CYS_GEMV_T(3) CYS_GEMV_T(4)
        CYS_GEMV_T(5) CYS_GEMV_T(6) CYS_GEMV_T(7) CYS_GEMV_T(8)
#undef CYS_GEMV_T
        default: return CYS_CUDA_EINVAL;
    }
    return cys_launch_status();
}

extern "C" int cys_cuda_dequant_gemv(void *out, const void *x, const uint8_t *w, int wtype, int64_t num_tokens,
                                     int64_t n, int64_t k, cudaStream_t stream) {
    if (num_tokens < 0 || num_tokens > CYS_GEMV_MAX_T || n < 1 || n > 0x7fffffffLL * CYS_GEMV_WARPS || k < QK ||
        k % QK)
        return CYS_CUDA_EINVAL;
    if (num_tokens == 0) return CYS_CUDA_OK;
    __half *o = (__half *)out;
    const __half *xh = (const __half *)x;
    switch (wtype) {
        case CYS_WTYPE_Q4_0: return launch_type<CYS_WTYPE_Q4_0>(o, xh, w, num_tokens, n, k, stream);
        case CYS_WTYPE_Q4_1: return launch_type<CYS_WTYPE_Q4_1>(o, xh, w, num_tokens, n, k, stream);
        case CYS_WTYPE_Q8_0: return launch_type<CYS_WTYPE_Q8_0>(o, xh, w, num_tokens, n, k, stream);
        default: return CYS_CUDA_EWTYPE;
    }
}
