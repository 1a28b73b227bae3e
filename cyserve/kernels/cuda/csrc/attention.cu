/* Paged, causal, grouped-query attention over the fp16 block cache: decode and chunked prefill.
 *
 * One kernel serves both phases, as the CPU kernel does: a CUDA block owns one (query row, query
 * head). Its warps split the row's visible keys round-robin; each warp keeps an online-softmax
 * state (running max m, running sum l, fp32 accumulator) with lane j holding head dims j, j+32, ...,
 * and the warps' states are merged once through shared memory at the end. Any context length works
 * and nothing is materialised per key. A query row finds its sequence by binary search over
 * query_start_loc, so decode rows (q_len 1) and prefill chunks mix freely in one launch.
 *
 * Why not one block per (sequence, KV head) tile as in FlashAttention: it is faster for long
 * prefills, but this layout is simple enough to be checked against reference.py exactly, and the
 * per-row K/V re-reads of a prefill chunk hit L2. A tiled prefill kernel is the next step.
 */
#include <math.h>

#include "common.cuh"

#define CYS_ATTN_WARPS 4

template <int HEAD_DIM>
__global__ void __launch_bounds__(CYS_ATTN_WARPS * CYS_WARP)
cys_paged_attention_kernel(__half *__restrict__ out, const __half *__restrict__ q, int64_t q_stride,
                           const __half *__restrict__ k_cache, const __half *__restrict__ v_cache,
                           const int32_t *__restrict__ block_tables, int max_blocks,
                           const int32_t *__restrict__ query_start_loc,
                           const int32_t *__restrict__ context_lens, int num_seqs, int num_heads,
                           int num_kv_heads, int block_size, float scale) {
    constexpr int VEC = (HEAD_DIM + CYS_WARP - 1) / CYS_WARP; /* head dims per lane */
    __shared__ float s_acc[CYS_ATTN_WARPS][HEAD_DIM];
    __shared__ float s_m[CYS_ATTN_WARPS], s_l[CYS_ATTN_WARPS];

    const int64_t t = blockIdx.x;
    const int head = blockIdx.y;
    const int lane = threadIdx.x % CYS_WARP, warp = threadIdx.x / CYS_WARP;

    /* the sequence owning row t: last s with query_start_loc[s] <= t */
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (query_start_loc[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int s = lo;
    const int64_t q_len = query_start_loc[s + 1] - query_start_loc[s];
    const int64_t pos = context_lens[s] - q_len + (t - query_start_loc[s]); /* sees keys 0..pos */
    const int kv_head = head / (num_heads / num_kv_heads);
    const int32_t *table = block_tables + (int64_t)s * max_blocks;

    float qv[VEC], acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
        const int d = lane + j * CYS_WARP;
        qv[j] = d < HEAD_DIM ? __half2float(q[t * q_stride + (int64_t)head * HEAD_DIM + d]) * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t key = warp; key <= pos; key += CYS_ATTN_WARPS) {
        const int64_t block = table[key / block_size];
        const int64_t base = ((block * num_kv_heads + kv_head) * block_size + key % block_size) * HEAD_DIM;
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const int d = lane + j * CYS_WARP;
            if (d < HEAD_DIM) dot += qv[j] * __half2float(k_cache[base + d]);
        }
        const float score = cys_warp_sum(dot);
        const float m_new = fmaxf(m, score);
        const float alpha = expf(m - m_new), p = expf(score - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const int d = lane + j * CYS_WARP;
            const float vv = d < HEAD_DIM ? __half2float(v_cache[base + d]) : 0.0f;
            acc[j] = acc[j] * alpha + p * vv;
        }
        m = m_new;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
        const int d = lane + j * CYS_WARP;
        if (d < HEAD_DIM) s_acc[warp][d] = acc[j];
    }
    if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
    __syncthreads();

    /* merge the warps' partial softmaxes; key 0 is always visible, so m_all is finite */
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < CYS_ATTN_WARPS; ++w) m_all = fmaxf(m_all, s_m[w]);
    float l_all = 0.0f, weight[CYS_ATTN_WARPS];
#pragma unroll
    for (int w = 0; w < CYS_ATTN_WARPS; ++w) {
        weight[w] = s_l[w] > 0.0f ? expf(s_m[w] - m_all) : 0.0f;
        l_all += s_l[w] * weight[w];
    }
    const float inv = 1.0f / l_all;
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < CYS_ATTN_WARPS; ++w) o += s_acc[w][d] * weight[w];
        out[(t * num_heads + head) * HEAD_DIM + d] = __float2half(o * inv);
    }
}

template <int HEAD_DIM>
static void launch(dim3 grid, cudaStream_t stream, __half *out, const __half *q, int64_t q_stride,
                   const __half *k_cache, const __half *v_cache, const int32_t *block_tables,
                   int max_blocks, const int32_t *query_start_loc, const int32_t *context_lens,
                   int num_seqs, int num_heads, int num_kv_heads, int block_size, float scale) {
    cys_paged_attention_kernel<HEAD_DIM><<<grid, CYS_ATTN_WARPS * CYS_WARP, 0, stream>>>(
        out, q, q_stride, k_cache, v_cache, block_tables, max_blocks, query_start_loc, context_lens,
        num_seqs, num_heads, num_kv_heads, block_size, scale);
}

extern "C" int cys_cuda_paged_attention(void *out, const void *q, int64_t q_stride, const void *k_cache,
                                        const void *v_cache, const int32_t *block_tables, int max_blocks,
                                        const int32_t *query_start_loc, const int32_t *context_lens,
                                        int num_seqs, int64_t num_tokens, int num_heads, int num_kv_heads,
                                        int block_size, int head_dim, float scale, cudaStream_t stream) {
    if (num_tokens < 0 || num_tokens > 0x7fffffff || num_seqs < 1 || num_heads < 1 || num_kv_heads < 1 ||
        num_heads % num_kv_heads || num_heads > 65535 || block_size < 1 || max_blocks < 1 ||
        q_stride < (int64_t)num_heads * head_dim)
        return CYS_CUDA_EINVAL;
    if (num_tokens == 0) return CYS_CUDA_OK;
    const dim3 grid((unsigned)num_tokens, (unsigned)num_heads);
#define CYS_ATTN_CASE(D)                                                                            \
    case D:                                                                                         \
        launch<D>(grid, stream, (__half *)out, (const __half *)q, q_stride, (const __half *)k_cache, \
                  (const __half *)v_cache, block_tables, max_blocks, query_start_loc, context_lens,  \
                  num_seqs, num_heads, num_kv_heads, block_size, scale);                            \
        break;
    switch (head_dim) {
        CYS_ATTN_CASE(32)
        CYS_ATTN_CASE(64)
        CYS_ATTN_CASE(80)
        CYS_ATTN_CASE(96)
        CYS_ATTN_CASE(128)
        CYS_ATTN_CASE(256)
        default: return CYS_CUDA_EHEAD_DIM;
    }
#undef CYS_ATTN_CASE
    return cys_launch_status();
}
