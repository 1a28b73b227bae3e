/* SwiGLU's gate: out = silu(gate) * up over the [gate | up] halves of one fused matmul output. */
#include "common.cuh"

__global__ void cys_silu_mul_kernel(__half *__restrict__ out, const __half *__restrict__ gate_up,
                                    int64_t num_tokens, int ffn) {
    const int64_t total = num_tokens * ffn;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / ffn, j = i % ffn;
        const float g = __half2float(gate_up[t * 2 * ffn + j]);
        const float u = __half2float(gate_up[t * 2 * ffn + ffn + j]);
        out[i] = __float2half(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" int cys_cuda_silu_mul(void *out, const void *gate_up, int64_t num_tokens, int ffn,
                                 cudaStream_t stream) {
    if (num_tokens < 0 || ffn < 1) return CYS_CUDA_EINVAL;
    const int64_t total = num_tokens * ffn;
    if (total == 0) return CYS_CUDA_OK;
    const int threads = 256;
    const int64_t want = (total + threads - 1) / threads;
    const unsigned blocks = (unsigned)(want < 65535 * 8 ? want : 65535 * 8);
    cys_silu_mul_kernel<<<blocks, threads, 0, stream>>>((__half *)out, (const __half *)gate_up, num_tokens, ffn);
    return cys_launch_status();
}
