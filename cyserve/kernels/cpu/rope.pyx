"""Rotary position embedding, in place: GGUF/llama.cpp pairs (2i, 2i+1) or neox (i, i+Dh/2)."""
from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t

from cyserve.kernels.cpu._checks cimport check_rc
from cyserve.kernels.cpu.ckernels cimport cys_rope
from cyserve.kernels.cpu.threads cimport current_num_threads, current_simd


cdef int rope_nogil(float *x, const int32_t *positions, int64_t T, int64_t num_heads,
                    int64_t head_dim, double theta, const float *freq_factors,
                    bint neox) noexcept nogil:
    return cys_rope(x, positions, T, num_heads, head_dim, theta, freq_factors, neox,
                    current_num_threads(), current_simd())


def rope(float[:, ::1] x not None, const int32_t[::1] positions not None, int num_heads,
         int head_dim, double theta, bint neox, const float[::1] freq_factors=None) -> None:
    """Rotate x[T, num_heads * head_dim] in place by angle pos * theta^(-2i/head_dim) / f_i, with
    f = freq_factors (float32[head_dim/2], all > 0; None: all 1)."""
    cdef int64_t T = x.shape[0]
    if num_heads < 1 or head_dim < 2 or head_dim % 2:
        raise ValueError(f"need num_heads >= 1 and an even head_dim >= 2, got {num_heads}, {head_dim}")
    if x.shape[1] != <int64_t>num_heads * head_dim:
        raise ValueError(f"x must be float32[T, {num_heads * head_dim}] (num_heads * head_dim), "
                         f"got [{T}, {x.shape[1]}]")
    if positions.shape[0] != T:
        raise ValueError(f"positions must be int32[{T}] (one per row of x), got [{positions.shape[0]}]")
    if not (theta > 0 and isfinite(theta)):
        raise ValueError(f"theta must be a finite number > 0, got {theta}")
    cdef const float *factors = NULL
    if freq_factors is not None:
        if freq_factors.shape[0] != head_dim // 2:
            raise ValueError(f"freq_factors must be float32[{head_dim // 2}] (head_dim / 2), "
                             f"got [{freq_factors.shape[0]}]")
        for i in range(freq_factors.shape[0]):
            if not (freq_factors[i] > 0 and isfinite(freq_factors[i])):
                raise ValueError(f"freq_factors[{i}] must be a finite number > 0, got {freq_factors[i]}")
        factors = &freq_factors[0]
    if T == 0:
        return
    cdef int rc
    with nogil:
        rc = rope_nogil(&x[0, 0], &positions[0], T, num_heads, head_dim, theta, factors, neox)
    check_rc(rc, "rope")
