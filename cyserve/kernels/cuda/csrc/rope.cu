/* Rotary position embedding of q and k in one launch (one block per token).
 *
 * The token's Dh/2 (cos, sin) pairs are computed once into shared memory and reused by all Hq+Hkv
 * heads. Angles are formed in double: at position 8k a float angle is off by ~1e-3 rad, which is
 * visible in the logits; the double cost is Dh/2 sincos per token, nothing next to a matmul.
 */
#include <math.h>

#include "common.cuh"

#define CYS_ROPE_MAX_HALF 256 /* head_dim <= 512 */

__global__ void cys_rope_kernel(__half *__restrict__ q, int64_t q_stride, __half *__restrict__ k,
                                int64_t k_stride, const int32_t *__restrict__ positions, int num_heads,
                                int num_kv_heads, int head_dim, float theta, int neox) {
    __shared__ float s_cos[CYS_ROPE_MAX_HALF], s_sin[CYS_ROPE_MAX_HALF];
    const int64_t t = blockIdx.x;
    const int half_dim = head_dim / 2;
    const double pos = (double)positions[t];
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        const double angle = pos * pow((double)theta, -2.0 * i / head_dim);
        double s, c;
        sincos(angle, &s, &c);
        s_cos[i] = (float)c;
        s_sin[i] = (float)s;
    }
    __syncthreads();
    const int num_pairs = (num_heads + num_kv_heads) * half_dim;
    for (int p = threadIdx.x; p < num_pairs; p += blockDim.x) {
        const int head = p / half_dim, i = p % half_dim;
        __half *x = head < num_heads ? q + t * q_stride + (int64_t)head * head_dim
                                     : k + t * k_stride + (int64_t)(head - num_heads) * head_dim;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half_dim : 2 * i + 1;
        const float x0 = __half2float(x[i0]), x1 = __half2float(x[i1]);
        x[i0] = __float2half(x0 * s_cos[i] - x1 * s_sin[i]);
        x[i1] = __float2half(x0 * s_sin[i] + x1 * s_cos[i]);
    }
}

extern "C" int cys_cuda_rope(void *q, int64_t q_stride, void *k, int64_t k_stride, const int32_t *positions,
                             int64_t num_tokens, int num_heads, int num_kv_heads, int head_dim, float theta,
                             int neox, cudaStream_t stream) {
    if (num_tokens < 0 || num_tokens > 0x7fffffff || num_heads < 1 || num_kv_heads < 0 || head_dim < 2 ||
        head_dim % 2 || head_dim / 2 > CYS_ROPE_MAX_HALF || !(theta > 0.0f) ||
        q_stride < (int64_t)num_heads * head_dim || (num_kv_heads > 0 && k_stride < (int64_t)num_kv_heads * head_dim))
        return CYS_CUDA_EINVAL;
    if (num_tokens == 0) return CYS_CUDA_OK;
    const int pairs = (num_heads + num_kv_heads) * head_dim / 2;
    const int threads = pairs >= 512 ? 512 : (pairs + 31) / 32 * 32;
    cys_rope_kernel<<<(unsigned)num_tokens, threads, 0, stream>>>(
        (__half *)q, q_stride, (__half *)k, k_stride, positions, num_heads, num_kv_heads, head_dim, theta, neox);
    return cys_launch_status();
}
