// Hopper bulk tensor copies (TMA, sm_90a only) and the shared-memory barriers (mbarrier) that
// count their bytes. A tensor map (the driver's CUtensorMap, encoded on the host by
// cuTensorMapEncodeTiled) describes a global tensor and a box shape; one thread issues a copy
// of one box into shared memory, and the barrier's phase completes once every byte it was told
// to expect has landed. KtTensorMap may appear in any kernel's signature; call the functions
// only from code compiled for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL).
#pragma once

#include <stdint.h>

// The 128-byte opaque CUtensorMap, as a kernel takes it: a `const __grid_constant__`
// parameter, whose address the copies use (it must stay in parameter space).
struct alignas(64) KtTensorMap {
    uint64_t opaque[16];
};

// Initializes the barrier at shared address `bar` for `count` arrivals per phase. Make it
// visible with kt_mbar_init_fence and a block barrier before any other thread uses it.
__device__ __forceinline__ void kt_mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void kt_mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also tells the barrier to expect `bytes` more bytes in this phase.
__device__ __forceinline__ void kt_mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Waits until the barrier's phase of parity `parity` has completed (its arrivals and bytes
// are in); the data the copies wrote is then visible to this thread and to its wgmma.
__device__ __forceinline__ void kt_mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    }
}

// Fetches the map's descriptor into the cache ahead of its first copy.
__device__ __forceinline__ void kt_tma_prefetch(const KtTensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Copies the box at element coordinates (c0 innermost, c1) of the 2-D map into shared memory
// at `dst` (aligned as the map's swizzle needs: 1024 bytes for the 128-byte swizzle); its
// bytes complete on the barrier `bar`. Elements outside the tensor are written as zeros.
__device__ __forceinline__ void kt_tma_load_2d(uint32_t dst, const KtTensorMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// An L2 policy that marks the lines a copy brings in as the first to evict.
__device__ __forceinline__ uint64_t kt_l2_evict_first_policy() {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}

// kt_tma_load_2d with an L2 cache policy (from createpolicy) for the lines it reads.
__device__ __forceinline__ void kt_tma_load_2d_hint(uint32_t dst, const KtTensorMap* map, int c0, int c1, uint32_t bar,
                                                    uint64_t policy) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
        "%3}], [%4], %5;\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "l"(policy)
        : "memory");
}
