// cp.async helpers shared by the kernels that stage tiles in shared memory (sm_80+).
#pragma once

#include <stdint.h>

__device__ __forceinline__ uint32_t kt_smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes 0 fills the destination with zeros and reads nothing.
__device__ __forceinline__ void kt_cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kt_smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void kt_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void kt_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
