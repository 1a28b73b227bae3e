"""Linear layers and embeddings over GGML-format weights (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0 and the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

A weight [N, K] is its raw bytes, a C-contiguous uint8[N, row_bytes(wtype, K)] (GGUF data used
in place). For the quantized formats matmul quantizes x first, to int8 blocks of 32 for the
32-element formats (see quantize_activations) and to Q8_K for the K-quants (see
quantize_activations_q8k), and takes integer block dot products, as llama.cpp does. Every
function checks shapes here and raises ValueError saying what to fix; the C code behind it
trusts them.
"""
import numpy as np

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t

from cyserve.kernels.cpu._checks cimport check_disjoint, check_rc
from cyserve.kernels.cpu.ckernels cimport (
    CYS_ERR_SHAPE, CYS_ERR_TYPE, cys_block_elems, cys_dequantize, cys_get_rows, cys_matmul,
    cys_quantize_act, cys_quantize_act_q8k, cys_row_bytes,
)
from cyserve.kernels.cpu.threads cimport current_num_threads, current_simd


cdef int matmul_nogil(const float *x, int64_t T, int64_t K, const uint8_t *w, int64_t row_bytes,
                      int wtype, int64_t N, float *out) noexcept nogil:
    return cys_matmul(x, T, K, w, row_bytes, wtype, N, out, current_num_threads(), current_simd())


cdef int get_rows_nogil(const uint8_t *w, int64_t row_bytes, int wtype, int64_t K,
                        const int32_t *ids, int64_t T, float *out) noexcept nogil:
    return cys_get_rows(w, row_bytes, wtype, K, ids, T, out, current_num_threads(), current_simd())


cdef int64_t _row_bytes(int wtype, int64_t K) except -1:
    cdef int64_t rb = cys_row_bytes(wtype, K)
    if rb == CYS_ERR_TYPE:
        raise ValueError(
            f"unsupported wtype {wtype}: use F32=0, F16=1, Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, "
            f"Q2_K=10, Q3_K=11, Q4_K=12, Q5_K=13, Q6_K=14 or BF16=30")
    if rb == CYS_ERR_SHAPE:
        raise ValueError(
            f"K={K} must be a positive multiple of {cys_block_elems(wtype)} for wtype {wtype}")
    return rb


cdef int _check_weight(const uint8_t[:, ::1] w, int wtype, int64_t K) except -1:
    cdef int64_t rb = _row_bytes(wtype, K)
    if w.shape[1] != rb:
        raise ValueError(
            f"w must be uint8[N, {rb}] (row_bytes(wtype={wtype}, K={K})), got uint8[{w.shape[0]}, "
            f"{w.shape[1]}]: pass the tensor's raw bytes reshaped to [N, row_bytes]")
    return 0


def row_bytes(int wtype, Py_ssize_t K) -> int:
    """Bytes of one row of K elements in format wtype."""
    return _row_bytes(wtype, K)


def block_elems(int wtype) -> int:
    """Elements per block of format wtype: 1 (F32/F16/BF16), 32, or 256 (the K-quants). A row's
    length must be a multiple of it."""
    cdef int64_t n = cys_block_elems(wtype)
    if n == CYS_ERR_TYPE:
        _row_bytes(wtype, 256)  # raises the unsupported-wtype error
    return n


def matmul(const float[:, ::1] x not None, const uint8_t[:, ::1] w not None, int wtype,
           float[:, ::1] out not None) -> None:
    """out[T, N] = x[T, K] @ W[N, K].T."""
    cdef int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0]
    _check_weight(w, wtype, K)
    if out.shape[0] != T or out.shape[1] != N:
        raise ValueError(f"out must be float32[{T}, {N}] (x rows, w rows), got "
                         f"[{out.shape[0]}, {out.shape[1]}]")
    if T == 0 or N == 0:
        return
    check_disjoint(&x[0, 0], T * K * 4, &out[0, 0], T * N * 4, "out must not overlap x")
    cdef int rc
    with nogil:
        rc = matmul_nogil(&x[0, 0], T, K, &w[0, 0], w.shape[1], wtype, N, &out[0, 0])
    check_rc(rc, "matmul")


def get_rows(const uint8_t[:, ::1] w not None, int wtype, Py_ssize_t K,
             const int32_t[::1] ids not None, float[:, ::1] out not None) -> None:
    """out[T, K] = rows ids of W (embedding lookup)."""
    cdef int64_t T = ids.shape[0], V = w.shape[0], i
    _check_weight(w, wtype, K)
    if out.shape[0] != T or out.shape[1] != K:
        raise ValueError(f"out must be float32[{T}, {K}] (len(ids), K), got "
                         f"[{out.shape[0]}, {out.shape[1]}]")
    for i in range(T):
        if ids[i] < 0 or ids[i] >= V:
            raise ValueError(f"ids[{i}]={ids[i]} is outside the {V} rows of w")
    if T == 0:
        return
    cdef int rc
    with nogil:
        rc = get_rows_nogil(&w[0, 0], w.shape[1], wtype, K, &ids[0], T, &out[0, 0])
    check_rc(rc, "get_rows")


def dequantize(const uint8_t[:, ::1] w not None, int wtype, Py_ssize_t K):
    """float32[N, K] decoded from the raw rows of W."""
    _check_weight(w, wtype, K)
    cdef int64_t N = w.shape[0]
    result = np.empty((N, K), dtype=np.float32)
    if N == 0:
        return result
    cdef float[:, ::1] out = result
    cdef int rc
    with nogil:
        rc = cys_dequantize(&w[0, 0], w.shape[1], wtype, N, K, &out[0, 0],
                            current_num_threads(), current_simd())
    check_rc(rc, "dequantize")
    return result


def quantize_activations(const float[:, ::1] x not None):
    """(q int8[T, K], d float32[T, K/32], s float32[T, K/32]): x ~= q * d per block of 32.

    The activation quantization matmul applies for quantized weights: d = amax / 127 per block,
    q = round-half-even(x / d), s = d * sum(q). K must be a multiple of 32; x must be finite.
    """
    cdef int64_t T = x.shape[0], K = x.shape[1]
    if K <= 0 or K % 32:
        raise ValueError(f"x must have K a positive multiple of 32 columns, got K={K}")
    q_arr = np.empty((T, K), dtype=np.int8)
    d_arr = np.empty((T, K // 32), dtype=np.float32)
    s_arr = np.empty((T, K // 32), dtype=np.float32)
    if T == 0:
        return q_arr, d_arr, s_arr
    cdef int8_t[:, ::1] q = q_arr
    cdef float[:, ::1] d = d_arr
    cdef float[:, ::1] s = s_arr
    cdef int rc
    with nogil:
        rc = cys_quantize_act(&x[0, 0], T, K, &q[0, 0], &d[0, 0], &s[0, 0],
                              current_num_threads(), current_simd())
    check_rc(rc, "quantize_activations")
    return q_arr, d_arr, s_arr


def quantize_activations_q8k(const float[:, ::1] x not None):
    """(q int8[T, K], d float32[T, K/256], bsums int16[T, K/16]): x ~= q * d per block of 256.

    The activation quantization matmul applies for K-quant weights (ggml's Q8_K): d = amax / 127
    per block of 256, q = round-half-even(x / d), bsums = sum(q) per 16. K must be a multiple of
    256; x must be finite.
    """
    cdef int64_t T = x.shape[0], K = x.shape[1]
    if K <= 0 or K % 256:
        raise ValueError(f"x must have K a positive multiple of 256 columns, got K={K}")
    q_arr = np.empty((T, K), dtype=np.int8)
    d_arr = np.empty((T, K // 256), dtype=np.float32)
    b_arr = np.empty((T, K // 16), dtype=np.int16)
    if T == 0:
        return q_arr, d_arr, b_arr
    cdef int8_t[:, ::1] q = q_arr
    cdef float[:, ::1] d = d_arr
    cdef int16_t[:, ::1] b = b_arr
    cdef int rc
    with nogil:
        rc = cys_quantize_act_q8k(&x[0, 0], T, K, &q[0, 0], &d[0, 0], &b[0, 0],
                                  current_num_threads(), current_simd())
    check_rc(rc, "quantize_activations_q8k")
    return q_arr, d_arr, b_arr
