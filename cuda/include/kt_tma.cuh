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

// ---- Pairs of blocks in a thread-block cluster (sm_90a) ----

// This block's rank within its cluster.
__device__ __forceinline__ uint32_t kt_cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
// Every thread of every block of the cluster meets here (all threads of the block must call
// it): writes before it, shared-memory barriers initialized with kt_mbar_init_fence included,
// are visible to the whole cluster after it.
__device__ __forceinline__ void kt_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// One arrival on the barrier at shared address `bar` of the cluster's block `rank` (this
// block's own included), releasing this thread's earlier accesses to the cluster: e.g. "my
// reads of this buffer are done, yours may overwrite it".
__device__ __forceinline__ void kt_mbar_arrive_remote(uint32_t bar, uint32_t rank) {
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
                 "r"(rank)
                 : "memory");
}
// Whether the barrier's phase of parity `parity` has completed (no waiting), acquiring what
// the arrivals of other blocks of the cluster released.
__device__ __forceinline__ bool kt_mbar_test_cluster(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return done != 0;
}
// Waits as kt_mbar_wait, acquiring what the arrivals of other blocks of the cluster released.
__device__ __forceinline__ void kt_mbar_wait_cluster(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    }
}
// kt_tma_load_2d into the same shared-memory offset `dst` of every block of the cluster in
// `mask` (bit i: rank i); the bytes complete on the barrier at offset `bar` of each of them.
__device__ __forceinline__ void kt_tma_load_2d_multicast(uint32_t dst, const KtTensorMap* map, int c0, int c1,
                                                         uint32_t bar, uint16_t mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
        "{%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
        : "memory");
}
// Adds `v` to the u32 at shared address `addr` of the cluster's block `rank` and returns the
// old value; acquires what earlier additions released and releases this thread's earlier
// accesses (e.g. "the last of us to free this buffer refills it").
__device__ __forceinline__ uint32_t kt_atom_add_cluster(uint32_t addr, uint32_t rank, uint32_t v) {
    uint32_t old;
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %1, %2;\n"
                 "atom.acq_rel.cluster.shared::cluster.add.u32 %0, [ra], %3;\n}\n"
                 : "=r"(old)
                 : "r"(addr), "r"(rank), "r"(v)
                 : "memory");
    return old;
}
