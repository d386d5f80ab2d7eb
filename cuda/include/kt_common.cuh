// Shared device helpers of the kt kernels: element-type conversions and warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Every kernel computes in f32 and converts at load/store, so one template serves the
// three element types; these two overload sets are the only type-specific code.
__device__ __forceinline__ float kt_to_f32(float v) { return v; }
__device__ __forceinline__ float kt_to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float kt_to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T kt_from_f32(float v);
template <> __device__ __forceinline__ float kt_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half kt_from_f32<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 kt_from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float kt_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the total. `scratch` holds 32 floats of shared memory. The summation order is fixed, so
// the result is the same from run to run.
__device__ __forceinline__ float kt_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = kt_warp_sum(v);
    __syncthreads(); // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < nwarps ? scratch[lane] : 0.0f;
    return kt_warp_sum(total);
}

// A block's threads walk a row of n elements as i = threadIdx.x + j * blockDim.x (j = 0, 1, ...),
// KT_ROW_CHUNK elements at a time with every load of a chunk issued before any is used: a plain
// `for (i < n; i += blockDim.x)` loop, even unrolled, tests i < n before each load and leaves the
// loop there, so no load can start before the previous test, and each element costs a trip to
// memory of its own (a 7168-wide row over 256 threads: 28 trips one after another, ~24 us cold
// on an H100). A chunk's indices past the row are clamped to the thread's own last element
// (kt_row_last), so the loads need no test and touch nothing another thread writes; their
// values are dropped after. Each thread still meets its elements in the same order, so sums
// come out bit for bit as the plain loop's. Only for threads with an element (threadIdx.x < n).
#define KT_ROW_CHUNK 8
__device__ __forceinline__ int kt_row_last(int n) {
    return threadIdx.x + (n - 1 - (int)threadIdx.x) / (int)blockDim.x * (int)blockDim.x;
}

// (value, index) arg-max order: the larger value wins, equal values go to the lower index,
// and NaN ranks below every number (two NaNs: the lower index). It is a total order, so a
// butterfly reduction leaves the same winner in every lane. Pad empty slots with
// (NaN, UINT32_MAX): they lose against every real candidate.
__device__ __forceinline__ bool kt_argmax_better(float v, uint32_t i, float best_v, uint32_t best_i) {
    const bool v_nan = v != v;
    const bool best_nan = best_v != best_v;
    if (v_nan != best_nan) return best_nan;
    if (v_nan) return i < best_i;
    return v > best_v || (v == best_v && i < best_i);
}

__device__ __forceinline__ void kt_warp_argmax(float& v, uint32_t& i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const uint32_t oi = __shfl_xor_sync(0xffffffffu, i, off);
        if (kt_argmax_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}
