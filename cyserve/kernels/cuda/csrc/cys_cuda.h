/* Launchers of cyserve's CUDA kernels: plain C, raw device pointers, sizes and a stream.
 *
 * No torch here: each .cu compiles alone with nvcc, and binding.cpp (the torch extension) is the
 * one place that checks tensors and calls these. Every launcher returns 0 or a CYS_CUDA_* code
 * (bad sizes, unsupported head_dim or weight type, or the CUDA launch error), never aborts.
 *
 * Conventions, shared with the CPU kernels and cyserve/kernels/reference.py:
 *  - activations are fp16 rows; row strides are in elements, so q/k/v may be column slices of one
 *    fused QKV matmul output without a copy;
 *  - the KV cache of one layer is K and V, each fp16 [num_blocks, num_kv_heads, block_size, head_dim];
 *  - slot s is block s / block_size, offset s % block_size; slot -1 means "do not write";
 *  - sequence s owns query rows query_start_loc[s] .. query_start_loc[s+1]-1, which are its last
 *    tokens; its context (cached + new) is context_lens[s] tokens; block_tables is int32 [S, max_blocks].
 */
#ifndef CYS_CUDA_H
#define CYS_CUDA_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CYS_CUDA_OK = 0,
    CYS_CUDA_EINVAL = 1,         /* a size or stride is out of range */
    CYS_CUDA_EHEAD_DIM = 2,      /* head_dim has no compiled specialisation */
    CYS_CUDA_EWTYPE = 3,         /* weight type is not Q4_0, Q4_1 or Q8_0 */
    CYS_CUDA_ELAUNCH = 4,        /* cudaGetLastError() after the launch was not cudaSuccess */
};

/* GGML type ids (as gguf.GGMLQuantizationType) the dequantizing GEMV reads. */
enum { CYS_WTYPE_Q4_0 = 2, CYS_WTYPE_Q4_1 = 3, CYS_WTYPE_Q8_0 = 8 };

/* Message for a return code (static storage). */
const char *cys_cuda_strerror(int code);

/* k[t], v[t] (fp16 [T, Hkv*Dh], rows k_stride / v_stride apart) -> cache slot slot_mapping[t]. */
int cys_cuda_reshape_and_cache(const void *k, int64_t k_stride, const void *v, int64_t v_stride,
                               void *k_cache, void *v_cache, const int32_t *slot_mapping,
                               int64_t num_tokens, int64_t num_slots, int num_kv_heads,
                               int block_size, int head_dim, cudaStream_t stream);

/* Causal GQA attention over the paged cache for decode and (chunked) prefill rows alike.
 * out fp16 [T, Hq*Dh] (contiguous); q fp16 rows q_stride apart. fp32 scores and accumulation,
 * online softmax, any context length. */
int cys_cuda_paged_attention(void *out, const void *q, int64_t q_stride, const void *k_cache,
                             const void *v_cache, const int32_t *block_tables, int max_blocks,
                             const int32_t *query_start_loc, const int32_t *context_lens,
                             int num_seqs, int64_t num_tokens, int num_heads, int num_kv_heads,
                             int block_size, int head_dim, float scale, cudaStream_t stream);

/* residual (fp32 [T, H]) += delta (fp16 [T, H], may be NULL); out (fp16 [T, H]) =
 * residual / sqrt(mean(residual^2) + eps) * weight. The residual stream stays fp32 so 30 layers
 * of fp16 rounding do not pile up in it. */
int cys_cuda_fused_add_rms_norm(float *residual, const void *delta, const float *weight, float eps,
                                void *out, int64_t num_tokens, int hidden, cudaStream_t stream);

/* Rotary embedding of q (Hq heads) and k (Hkv heads) in place, one launch. neox=0: pairs
 * (2i, 2i+1) as in GGUF/llama.cpp; neox=1: pairs (i, i+Dh/2). Angles in double, then reduced. */
int cys_cuda_rope(void *q, int64_t q_stride, void *k, int64_t k_stride, const int32_t *positions,
                  int64_t num_tokens, int num_heads, int num_kv_heads, int head_dim, float theta,
                  int neox, cudaStream_t stream);

/* out (fp16 [T, F]) = silu(gate) * up, gate_up fp16 [T, 2F] = [gate | up] (one fused matmul). */
int cys_cuda_silu_mul(void *out, const void *gate_up, int64_t num_tokens, int ffn,
                      cudaStream_t stream);

/* out (fp16 [T, N]) = x (fp16 [T, K]) @ W^T, W given as the raw GGUF rows (uint8 [N, row_bytes])
 * in Q4_0, Q4_1 or Q8_0: weights are dequantized in registers, never stored. For decode
 * (T <= 8); larger T belongs to cuBLAS on the dequantized weights. */
int cys_cuda_dequant_gemv(void *out, const void *x, const uint8_t *w, int wtype, int64_t num_tokens,
                          int64_t n, int64_t k, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* CYS_CUDA_H */
