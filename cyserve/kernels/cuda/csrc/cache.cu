/* Write new K/V rows into the paged fp16 cache through the slot mapping (vLLM's reshape_and_cache).
 *
 * One block per token; threads stride over the token's Hkv*Dh values. Both stores for one (head,
 * dim) land in one cache row of Dh contiguous halves, so neighbouring threads write neighbouring
 * addresses. A slot past the cache end is skipped rather than trapping: slots come from the block
 * allocator, checking them on the host would cost a device sync per step, and a device-side trap
 * would poison the CUDA context for every request being served.
 */
#include "common.cuh"

__global__ void cys_reshape_and_cache_kernel(const __half *__restrict__ k, int64_t k_stride,
                                             const __half *__restrict__ v, int64_t v_stride,
                                             __half *__restrict__ k_cache, __half *__restrict__ v_cache,
                                             const int32_t *__restrict__ slot_mapping, int64_t num_slots,
                                             int num_kv_heads, int block_size, int head_dim) {
    const int64_t t = blockIdx.x;
    const int64_t slot = slot_mapping[t];
    if (slot < 0 || slot >= num_slots) return;
    const int64_t block = slot / block_size, offset = slot % block_size;
    const int width = num_kv_heads * head_dim;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const int h = i / head_dim, d = i % head_dim;
        const int64_t dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim + d;
        k_cache[dst] = k[t * k_stride + i];
        v_cache[dst] = v[t * v_stride + i];
    }
}

extern "C" int cys_cuda_reshape_and_cache(const void *k, int64_t k_stride, const void *v, int64_t v_stride,
                                          void *k_cache, void *v_cache, const int32_t *slot_mapping,
                                          int64_t num_tokens, int64_t num_slots, int num_kv_heads,
                                          int block_size, int head_dim, cudaStream_t stream) {
    const int64_t width = (int64_t)num_kv_heads * head_dim;
    if (num_tokens < 0 || num_kv_heads < 1 || block_size < 1 || head_dim < 1 || k_stride < width ||
        v_stride < width || num_tokens > 0x7fffffff)
        return CYS_CUDA_EINVAL;
    if (num_tokens == 0) return CYS_CUDA_OK;
    const int threads = width < 256 ? (int)((width + 31) / 32 * 32) : 256;
    cys_reshape_and_cache_kernel<<<(unsigned)num_tokens, threads, 0, stream>>>(
        (const __half *)k, k_stride, (const __half *)v, v_stride, (__half *)k_cache, (__half *)v_cache,
        slot_mapping, num_slots, num_kv_heads, block_size, head_dim);
    return cys_launch_status();
}
