"""Elementwise kernels: the gated MLP's silu(gate) * up (SwiGLU) and gelu_tanh(gate) * up (GeGLU,
Gemma), and the residual add a += b."""
from libc.stdint cimport int64_t

from cyserve.kernels.cpu._checks cimport check_same_or_disjoint
from cyserve.kernels.cpu.ckernels cimport cys_add, cys_gelu_tanh_mul, cys_silu_mul
from cyserve.kernels.cpu.threads cimport current_num_threads, current_simd


cdef void silu_mul_nogil(const float *gate, const float *up, int64_t n, float *out) noexcept nogil:
    cys_silu_mul(gate, up, n, out, current_num_threads(), current_simd())


cdef void gelu_tanh_mul_nogil(const float *gate, const float *up, int64_t n, float *out) noexcept nogil:
    cys_gelu_tanh_mul(gate, up, n, out, current_num_threads(), current_simd())


cdef void add_nogil(float *a, const float *b, int64_t n) noexcept nogil:
    cys_add(a, b, n, current_num_threads(), current_simd())


cdef int64_t _check_gated(const float[:, ::1] gate, const float[:, ::1] up,
                          float[:, ::1] out) except -1:
    """Elements of gate, after checking that up and out match it and out does not half-overlap."""
    cdef int64_t T = gate.shape[0], F = gate.shape[1]
    if up.shape[0] != T or up.shape[1] != F or out.shape[0] != T or out.shape[1] != F:
        raise ValueError(f"gate, up and out must all be float32[T, F]; got gate [{T}, {F}], "
                         f"up [{up.shape[0]}, {up.shape[1]}], out [{out.shape[0]}, {out.shape[1]}]")
    if T == 0 or F == 0:
        return 0
    check_same_or_disjoint(&gate[0, 0], &out[0, 0], T * F * 4, "out must be gate itself or not overlap it")
    check_same_or_disjoint(&up[0, 0], &out[0, 0], T * F * 4, "out must be up itself or not overlap it")
    return T * F


def silu_mul(const float[:, ::1] gate not None, const float[:, ::1] up not None,
             float[:, ::1] out not None) -> None:
    """out[T, F] = silu(gate) * up. out may be gate or up itself."""
    cdef int64_t n = _check_gated(gate, up, out)
    if n == 0:
        return
    with nogil:
        silu_mul_nogil(&gate[0, 0], &up[0, 0], n, &out[0, 0])


def gelu_tanh_mul(const float[:, ::1] gate not None, const float[:, ::1] up not None,
                  float[:, ::1] out not None) -> None:
    """out[T, F] = gelu_tanh(gate) * up, GELU's tanh approximation. out may be gate or up itself."""
    cdef int64_t n = _check_gated(gate, up, out)
    if n == 0:
        return
    with nogil:
        gelu_tanh_mul_nogil(&gate[0, 0], &up[0, 0], n, &out[0, 0])


def add(float[:, ::1] a not None, const float[:, ::1] b not None) -> None:
    """a[T, D] += b[T, D]."""
    cdef int64_t T = a.shape[0], D = a.shape[1]
    if b.shape[0] != T or b.shape[1] != D:
        raise ValueError(f"b must be float32[{T}, {D}] like a, got [{b.shape[0]}, {b.shape[1]}]")
    if T == 0 or D == 0:
        return
    check_same_or_disjoint(&a[0, 0], &b[0, 0], T * D * 4, "b must be a itself or not overlap it")
    with nogil:
        add_nogil(&a[0, 0], &b[0, 0], T * D)
