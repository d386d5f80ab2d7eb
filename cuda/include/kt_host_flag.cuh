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
// `value`: every thread fences at system scope, the barrier gathers them, thread 0 stores.
// Every thread of the block must call it.
__device__ __forceinline__ void kt_block_signal_flag(uint32_t* flag, uint32_t value) {
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) kt_flag_store_release(flag, value);
}

// kt_block_wait_flag with the polls spread over time: lane 0 of warps 0 .. pollers - 1 each
// poll in a loop, warp w starting w * stagger_ns later, so a poll leaves for host memory every
// round trip / pollers instead of every round trip and the block sees the flag that much
// sooner after the host raised it. The first poller to see it tells the others through shared
// memory (`seen`, zeroed by the caller before a barrier); every thread is ordered after its
// acquire by the barrier at the end. Every thread of the block must call it.
__device__ __forceinline__ void kt_block_wait_flag_spread(const uint32_t* flag, uint32_t value,
                                                          volatile int* seen, int pollers,
                                                          unsigned stagger_ns) {
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0 && warp < pollers) {
        if (warp > 0) __nanosleep(stagger_ns * (unsigned)warp);
        while (!*seen) {
            if ((int32_t)(kt_flag_load_acquire(flag) - value) >= 0) {
                *seen = 1;
                break;
            }
        }
    }
    __syncthreads();
}
