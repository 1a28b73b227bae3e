/* Messages for the launchers' return codes. */
#include "cys_cuda.h"

extern "C" const char *cys_cuda_strerror(int code) {
    switch (code) {
        case CYS_CUDA_OK: return "ok";
        case CYS_CUDA_EINVAL: return "a size, stride or slot count is out of range";
        case CYS_CUDA_EHEAD_DIM: return "head_dim has no compiled kernel (supported: 32, 64, 80, 96, 128, 256)";
        case CYS_CUDA_EWTYPE: return "weight type is not Q4_0 (2), Q4_1 (3) or Q8_0 (8)";
        case CYS_CUDA_ELAUNCH: return "the CUDA kernel launch failed (see cudaGetLastError)";
        default: return "unknown cyserve CUDA error";
    }
}
