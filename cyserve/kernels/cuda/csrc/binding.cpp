// The torch extension `cyserve.kernels.cuda._C`: checks tensors, then calls the C launchers.
//
// Every check raises ValueError naming the argument and what it must be, so a runner bug shows up
// as a message rather than as a kernel reading the wrong memory. Kernels run on the current
// stream of the tensors' device. Built only by setup.py's CUDA switch (see docs/cuda.md).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <string>

#include "cys_cuda.h"

namespace {

void check_tensor(const torch::Tensor &t, const char *name, at::ScalarType dtype, int64_t dim,
                  const torch::Device &device) {
    TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", not ", t.device());
    TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", dtype, ", not ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, not ", t.dim());
}

// An fp16 [T, width] matrix whose rows may be a column slice of a wider one (q/k/v of one QKV
// matmul): inner stride 1 only.
void check_half_rows(const torch::Tensor &t, const char *name, const torch::Device &device) {
    check_tensor(t, name, at::kHalf, 2, device);
    TORCH_CHECK_VALUE(t.stride(1) == 1, name, " rows must be contiguous (stride(1) == 1)");
}

void check_contiguous(const torch::Tensor &t, const char *name) {
    TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// check_tensor, and packed: the kernel indexes it as one dense array.
void check_dense(const torch::Tensor &t, const char *name, at::ScalarType dtype, int64_t dim,
                 const torch::Device &device) {
    check_tensor(t, name, dtype, dim, device);
    check_contiguous(t, name);
}

// The device every other argument must be on: the one `t` (named `name`) is on, a CUDA device.
torch::Device cuda_device_of(const torch::Tensor &t, const char *name) {
    TORCH_CHECK_VALUE(t.device().is_cuda(), name, " must be a CUDA tensor");
    return t.device();
}

// The paged caches: fp16 [num_blocks, num_kv_heads, block_size, head_dim], one shape, one device.
torch::Device check_kv_caches(const torch::Tensor &k_cache, const torch::Tensor &v_cache) {
    const auto dev = cuda_device_of(k_cache, "k_cache");
    check_dense(k_cache, "k_cache", at::kHalf, 4, dev);
    check_dense(v_cache, "v_cache", at::kHalf, 4, dev);
    TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache must have the same shape");
    return dev;
}

void raise_on(int rc, const char *op) {
    TORCH_CHECK(rc == CYS_CUDA_OK, "cyserve CUDA ", op, ": ", cys_cuda_strerror(rc));
}

cudaStream_t stream_of(const torch::Tensor &t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace

void reshape_and_cache(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                       torch::Tensor slot_mapping) {
    const auto dev = check_kv_caches(k_cache, v_cache);
    const int64_t nb = k_cache.size(0), hkv = k_cache.size(1), bs = k_cache.size(2), dh = k_cache.size(3);
    check_half_rows(k, "k", dev);
    check_half_rows(v, "v", dev);
    check_dense(slot_mapping, "slot_mapping", at::kInt, 1, dev);
    const int64_t T = slot_mapping.size(0);
    TORCH_CHECK_VALUE(k.size(0) == T && v.size(0) == T, "k, v and slot_mapping must have the same length");
    TORCH_CHECK_VALUE(k.size(1) == hkv * dh && v.size(1) == hkv * dh, "k and v must be [T, ", hkv * dh, "]");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_reshape_and_cache(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(),
                                        v_cache.data_ptr(), slot_mapping.data_ptr<int32_t>(), T, nb * bs,
                                        (int)hkv, (int)bs, (int)dh, stream_of(k_cache)),
             "reshape_and_cache");
}

void paged_attention(torch::Tensor out, torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                     torch::Tensor block_tables, torch::Tensor query_start_loc, torch::Tensor context_lens,
                     double scale) {
    const auto dev = check_kv_caches(k_cache, v_cache);
    const int64_t hkv = k_cache.size(1), bs = k_cache.size(2), dh = k_cache.size(3);
    check_half_rows(q, "q", dev);
    check_dense(out, "out", at::kHalf, 2, dev);
    TORCH_CHECK_VALUE(q.size(1) % dh == 0, "q width ", q.size(1), " is not a multiple of head_dim ", dh);
    const int64_t hq = q.size(1) / dh, T = q.size(0);
    TORCH_CHECK_VALUE(hq % hkv == 0, "query heads ", hq, " must be a multiple of KV heads ", hkv);
    TORCH_CHECK_VALUE(out.size(0) == T && out.size(1) == hq * dh, "out must be [", T, ", ", hq * dh, "]");
    check_dense(block_tables, "block_tables", at::kInt, 2, dev);
    check_dense(query_start_loc, "query_start_loc", at::kInt, 1, dev);
    check_dense(context_lens, "context_lens", at::kInt, 1, dev);
    const int64_t S = context_lens.size(0);
    TORCH_CHECK_VALUE(S >= 1 && query_start_loc.size(0) == S + 1 && block_tables.size(0) == S,
                      "need S >= 1 sequences with query_start_loc [S+1] and block_tables [S, max_blocks]");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_paged_attention(out.data_ptr(), q.data_ptr(), q.stride(0), k_cache.data_ptr(),
                                      v_cache.data_ptr(), block_tables.data_ptr<int32_t>(),
                                      (int)block_tables.size(1), query_start_loc.data_ptr<int32_t>(),
                                      context_lens.data_ptr<int32_t>(), (int)S, T, (int)hq, (int)hkv, (int)bs,
                                      (int)dh, (float)scale, stream_of(q)),
             "paged_attention");
}

void fused_add_rms_norm(torch::Tensor residual, std::optional<torch::Tensor> delta, torch::Tensor weight,
                        double eps, torch::Tensor out) {
    const auto dev = cuda_device_of(residual, "residual");
    check_dense(residual, "residual", at::kFloat, 2, dev);
    const int64_t T = residual.size(0), H = residual.size(1);
    if (delta.has_value()) {
        check_dense(*delta, "delta", at::kHalf, 2, dev);
        TORCH_CHECK_VALUE(delta->sizes() == residual.sizes(), "delta must have residual's shape");
    }
    check_dense(weight, "weight", at::kFloat, 1, dev);
    TORCH_CHECK_VALUE(weight.size(0) == H, "weight must be [", H, "]");
    check_dense(out, "out", at::kHalf, 2, dev);
    TORCH_CHECK_VALUE(out.sizes() == residual.sizes(), "out must have residual's shape");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_fused_add_rms_norm(residual.data_ptr<float>(), delta ? delta->data_ptr() : nullptr,
                                         weight.data_ptr<float>(), (float)eps, out.data_ptr(), T, (int)H,
                                         stream_of(residual)),
             "fused_add_rms_norm");
}

void rope(torch::Tensor q, torch::Tensor k, torch::Tensor positions, int64_t head_dim, double theta, bool neox) {
    const auto dev = cuda_device_of(q, "q");
    check_half_rows(q, "q", dev);
    check_half_rows(k, "k", dev);
    check_dense(positions, "positions", at::kInt, 1, dev);
    const int64_t T = positions.size(0);
    TORCH_CHECK_VALUE(head_dim > 0 && q.size(1) % head_dim == 0 && k.size(1) % head_dim == 0,
                      "q and k widths must be multiples of head_dim ", head_dim);
    TORCH_CHECK_VALUE(q.size(0) == T && k.size(0) == T, "q, k and positions must have the same length");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_rope(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), positions.data_ptr<int32_t>(), T,
                           (int)(q.size(1) / head_dim), (int)(k.size(1) / head_dim), (int)head_dim, (float)theta,
                           neox ? 1 : 0, stream_of(q)),
             "rope");
}

void silu_mul(torch::Tensor out, torch::Tensor gate_up) {
    const auto dev = cuda_device_of(gate_up, "gate_up");
    check_dense(gate_up, "gate_up", at::kHalf, 2, dev);
    check_dense(out, "out", at::kHalf, 2, dev);
    TORCH_CHECK_VALUE(gate_up.size(1) % 2 == 0 && out.size(0) == gate_up.size(0) &&
                          out.size(1) * 2 == gate_up.size(1),
                      "gate_up must be [T, 2F] and out [T, F]");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_silu_mul(out.data_ptr(), gate_up.data_ptr(), out.size(0), (int)out.size(1), stream_of(out)),
             "silu_mul");
}

void dequant_gemv(torch::Tensor out, torch::Tensor x, torch::Tensor w, int64_t wtype) {
    const auto dev = cuda_device_of(x, "x");
    check_dense(x, "x", at::kHalf, 2, dev);
    check_dense(w, "w", at::kByte, 2, dev);
    check_dense(out, "out", at::kHalf, 2, dev);
    const int64_t T = x.size(0), K = x.size(1), N = w.size(0);
    TORCH_CHECK_VALUE(T <= 8, "dequant_gemv takes at most 8 rows (got ", T, "): use a matmul for more");
    TORCH_CHECK_VALUE(K % 32 == 0, "K=", K, " must be a multiple of 32");
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0,
                      "x must start on a 4-byte boundary (the kernel reads half2): pass a fresh tensor, not an odd view");
    const int64_t block_bytes = wtype == CYS_WTYPE_Q4_0 ? 18 : wtype == CYS_WTYPE_Q4_1 ? 20 : wtype == CYS_WTYPE_Q8_0 ? 34 : 0;
    TORCH_CHECK_VALUE(block_bytes > 0, "wtype ", wtype, " is not Q4_0 (2), Q4_1 (3) or Q8_0 (8)");
    TORCH_CHECK_VALUE(w.size(1) == K / 32 * block_bytes, "w must be uint8[N, ", K / 32 * block_bytes, "]");
    TORCH_CHECK_VALUE(out.size(0) == T && out.size(1) == N, "out must be [", T, ", ", N, "]");
    const c10::cuda::CUDAGuard guard(dev);
    raise_on(cys_cuda_dequant_gemv(out.data_ptr(), x.data_ptr(), w.data_ptr<uint8_t>(), (int)wtype, T, N, K,
                                   stream_of(x)),
             "dequant_gemv");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "cyserve CUDA kernels (see cyserve/kernels/cuda/csrc/cys_cuda.h)";
    m.def("reshape_and_cache", &reshape_and_cache, "k, v, k_cache, v_cache, slot_mapping");
    m.def("paged_attention", &paged_attention,
          "out, q, k_cache, v_cache, block_tables, query_start_loc, context_lens, scale");
    m.def("fused_add_rms_norm", &fused_add_rms_norm, "residual, delta|None, weight, eps, out");
    m.def("rope", &rope, "q, k, positions, head_dim, theta, neox");
    m.def("silu_mul", &silu_mul, "out, gate_up");
    m.def("dequant_gemv", &dequant_gemv, "out, x, w, wtype");
}
