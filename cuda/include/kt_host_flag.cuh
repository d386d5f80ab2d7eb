// Host flags read and written by kernels: a u32 counter in page-locked host memory (the
// device address of a kt HostFlag) that the host and the device use to hand work to each
// other without a stream memory operation in between. The counter compares cyclically, as
// cuStreamWaitValue32's "greater or equal" does.
#pragma once
#include <stdint.h>

// Reads the flag with acquire semantics at system scope: the host's writes before its
// release store of this value are visible to this thread's later loads.
__device__ __forceinline__ uint32_t kt_flag_load_acquire(const uint32_t* flag) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    return v;
}

// Writes the flag with release semantics at system scope.
__device__ __forceinline__ void kt_flag_store_release(uint32_t* flag, uint32_t value) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

// Thread 0 spins until the flag reaches `value` (cyclically); then the block goes on, every
// thread ordered after the acquire (barrier). Each poll is a round trip to host memory
// (about a microsecond), which paces the loop without a sleep.
__device__ __forceinline__ void kt_block_wait_flag(const uint32_t* flag, uint32_t value) {
    if (threadIdx.x == 0) {
        while ((int32_t)(kt_flag_load_acquire(flag) - value) < 0) {
        }
    }
    __syncthreads();
}

// Publishes the block's writes (to device or host memory) and then raises the flag to
// `value`: the barrier orders every thread's writes before thread 0's, and thread 0's release
// store at system scope is cumulative (it publishes what thread 0 has observed, the other
// threads' writes included, as the grid barrier of cooperative groups relies on at GPU
// scope). A system fence in every thread before the barrier as well (before session 10) is one
// more serial fence on the flag's path. Every thread of the block must call it.
__device__ __forceinline__ void kt_block_signal_flag(uint32_t* flag, uint32_t value) {
    __syncthreads();
    if (threadIdx.x == 0) kt_flag_store_release(flag, value);
}
