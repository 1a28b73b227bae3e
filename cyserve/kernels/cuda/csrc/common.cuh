/* Device helpers shared by the .cu files (internal to csrc/). */
#ifndef CYS_CUDA_COMMON_CUH
#define CYS_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "cys_cuda.h"

#define CYS_WARP 32

__device__ __forceinline__ float cys_warp_sum(float v) {
#pragma unroll
    for (int o = CYS_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cys_warp_max(float v) {
#pragma unroll
    for (int o = CYS_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of up to 1024 threads; every thread gets the total. `scratch` holds 32 floats. */
__device__ __forceinline__ float cys_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x % CYS_WARP, warp = threadIdx.x / CYS_WARP;
    const int num_warps = (blockDim.x + CYS_WARP - 1) / CYS_WARP;
    v = cys_warp_sum(v);
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.0f;
    return cys_warp_sum(v);
}

/* fp16 from bytes at any alignment: GGUF block rows are 18/20/34 bytes long. */
__device__ __forceinline__ float cys_load_half(const uint8_t *p) {
    const unsigned short bits = (unsigned short)p[0] | ((unsigned short)p[1] << 8);
    return __half2float(__ushort_as_half(bits));
}

static inline int cys_launch_status(void) {
    return cudaGetLastError() == cudaSuccess ? CYS_CUDA_OK : CYS_CUDA_ELAUNCH;
}

#endif /* CYS_CUDA_COMMON_CUH */
