"""RMS normalisation of the residual stream."""
from libc.math cimport isfinite
from libc.stdint cimport int64_t

from cyserve.kernels.cpu._checks cimport check_same_or_disjoint
from cyserve.kernels.cpu.ckernels cimport cys_rms_norm
from cyserve.kernels.cpu.threads cimport current_num_threads, current_simd


cdef void rms_norm_nogil(const float *x, const float *weight, int64_t T, int64_t D, float eps,
                         float *out) noexcept nogil:
    cys_rms_norm(x, weight, T, D, eps, out, current_num_threads(), current_simd())


def rms_norm(const float[:, ::1] x not None, const float[::1] weight not None, double eps,
             float[:, ::1] out not None) -> None:
    """out[T, D] = x / sqrt(mean(x^2) + eps) * weight. out may be x itself."""
    cdef int64_t T = x.shape[0], D = x.shape[1]
    if weight.shape[0] != D:
        raise ValueError(f"weight must be float32[{D}] (x's last dim), got [{weight.shape[0]}]")
    if out.shape[0] != T or out.shape[1] != D:
        raise ValueError(f"out must be float32[{T}, {D}] like x, got [{out.shape[0]}, {out.shape[1]}]")
    if not (eps >= 0 and isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if T == 0 or D == 0:
        return
    check_same_or_disjoint(&x[0, 0], &out[0, 0], T * D * 4, "out must be x itself or not overlap it")
    with nogil:
        rms_norm_nogil(&x[0, 0], &weight[0], T, D, <float>eps, &out[0, 0])
