/* Fused residual add + RMSNorm: one pass over the row instead of an add kernel and a norm kernel.
 *
 * The residual stream is fp32 (it accumulates every layer's output, and fp16 rounding there would
 * compound over the layers); the normalised row goes out as fp16, the dtype the next matmul reads.
 */
#include "common.cuh"

__global__ void cys_fused_add_rms_norm_kernel(float *__restrict__ residual, const __half *__restrict__ delta,
                                              const float *__restrict__ weight, float eps,
                                              __half *__restrict__ out, int hidden) {
    __shared__ float scratch[CYS_WARP];
    const int64_t row = (int64_t)blockIdx.x * hidden;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float r = residual[row + i];
        if (delta != nullptr) {
            r += __half2float(delta[row + i]);
            residual[row + i] = r;
        }
        sum_sq += r * r;
    }
    const float inv = rsqrtf(cys_block_sum(sum_sq, scratch) / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[row + i] = __float2half(residual[row + i] * inv * weight[i]);
}

extern "C" int cys_cuda_fused_add_rms_norm(float *residual, const void *delta, const float *weight, float eps,
                                           void *out, int64_t num_tokens, int hidden, cudaStream_t stream) {
    if (num_tokens < 0 || num_tokens > 0x7fffffff || hidden < 1 || !(eps >= 0.0f)) return CYS_CUDA_EINVAL;
    if (num_tokens == 0) return CYS_CUDA_OK;
    const int threads = hidden >= 1024 ? 1024 : (hidden + 31) / 32 * 32;
    cys_fused_add_rms_norm_kernel<<<(unsigned)num_tokens, threads, 0, stream>>>(
        residual, (const __half *)delta, weight, eps, (__half *)out, hidden);
    return cys_launch_status();
}
