// Kernels of the chain probe (kt-kernels/examples/chain_probe.rs): cuda/moe_gating.cu as it is,
// the FFN entry (kt_add_norm_route_signal) in its other configurations, and the entry as it was
// at the session's start (kt_probe_entry_old, the baseline of the A/B). Compiled by
// kt-kernels/examples/chain_probe/build.sh (nvcc -cubin, sm_90a), not by build.rs: the probe's
// variants are no part of the library. The other kernels the probe times are the library's
// own sources, compiled beside this file by the same script.
#include "../../../cuda/moe_gating.cu"

#include <cooperative_groups.h>

// experts per block 8 (8 blocks for 64 experts), 4, 2, 1; row written by the last block or
// spread over the blocks
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e8, 8, false)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e8s, 8, true)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e4, 4, false)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e4s, 4, true)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e2, 2, false)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e2s, 2, true)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e1, 1, false)
KT_ADD_NORM_ROUTE_SIGNAL(kt_probe_entry_e1s, 1, true)

// The entry kernel of main at e0c5c5d (x updated before the pack, 8 experts per block).
extern "C" __global__ void __launch_bounds__(KT_ROUTE_THREADS, 1)
    kt_probe_entry_old(float* __restrict__ x, const __nv_bfloat16* __restrict__ d,
                             const float* __restrict__ norm_w, __nv_bfloat16* __restrict__ xn,
                             float* __restrict__ xn32, const float* __restrict__ router_w,
                             float* logits, uint32_t* counter, const float* __restrict__ bias,
                             uint32_t* __restrict__ pack, int n, float eps, int n_experts,
                             int top_k, int n_group, int topk_group, int scoring,
                             int group_score, int normalize, float scale, uint32_t* flag,
                             uint32_t value) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    __shared__ bool last;
    float* row = smem;                // the normalized row, f32
    float* lsm = smem + n;            // the logits, for the routing
    float* gsm = lsm + n_experts;     // kt_gating_token's scratch (warp 0)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = blockIdx.x * (KT_ROUTE_THREADS / 32) + warp;
    const float* wr = router_w + (size_t)(e < n_experts ? e : 0) * n;

    float4 wpre[KT_ROUTE_PREFETCH];
#pragma unroll
    for (int j = 0; j < KT_ROUTE_PREFETCH; ++j) {
        const int k0 = lane * 4 + j * 128;
        if (e < n_experts && k0 < n) wpre[j] = *reinterpret_cast<const float4*>(wr + k0);
    }

    float ss = 0.0f;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i] + __bfloat162float(d[i]);
        ss += v * v;
    }
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i] + __bfloat162float(d[i]);
        row[i] = norm_w[i] * (v * inv);
    }
    __syncthreads();
    // this block's slice of the device outputs that no block reads back
    const int per = (n + gridDim.x - 1) / gridDim.x;
    const int lo = blockIdx.x * per, hi = min(n, lo + per);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float y = row[i];
        xn[i] = __float2bfloat16_rn(y);
        xn32[i] = y;
    }
    // one expert per warp, in kt_gemv_nt_v_f32_f32_f32's order
    if (e < n_experts) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < KT_ROUTE_PREFETCH; ++j) {
            const int k0 = lane * 4 + j * 128;
            if (k0 < n) {
                const float4 av = *reinterpret_cast<const float4*>(row + k0);
                acc = fmaf(av.x, wpre[j].x, acc);
                acc = fmaf(av.y, wpre[j].y, acc);
                acc = fmaf(av.z, wpre[j].z, acc);
                acc = fmaf(av.w, wpre[j].w, acc);
            }
        }
#pragma unroll 4
        for (int k0 = lane * 4 + KT_ROUTE_PREFETCH * 128; k0 < n; k0 += 32 * 4) {
            const float4 wv = *reinterpret_cast<const float4*>(wr + k0);
            const float4 av = *reinterpret_cast<const float4*>(row + k0);
            acc = fmaf(av.x, wv.x, acc);
            acc = fmaf(av.y, wv.y, acc);
            acc = fmaf(av.z, wv.z, acc);
            acc = fmaf(av.w, wv.w, acc);
        }
        const float sum = kt_warp_sum(acc);
        if (lane == 0) logits[e] = sum;
    }
    // publish the logits (device scope: only the last block reads them), count this block in
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    float* pack_row = reinterpret_cast<float*>(pack);
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        x[i] = x[i] + __bfloat162float(d[i]);
        pack_row[i] = row[i];
    }
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x) lsm[i] = __ldcg(logits + i);
    __syncthreads();
    uint32_t* ids = pack + n;
    float* weights = reinterpret_cast<float*>(ids + top_k);
    if (warp == 0) {
        kt_gating_token(gsm, lsm, bias, ids, weights, 0, n_experts, top_k, n_group, topk_group,
                        scoring, group_score, normalize, scale);
    }
    if (threadIdx.x == 0) *counter = 0; // for the next launch, which follows this one
    kt_block_signal_flag(flag, value);
}

// The library's entry (2 experts per block) cut short after each of its steps, to see where
// its time goes: STOP 1 = the norm (and the router rows' prefetch), 2 = + the logits,
// 3 = + the fence and the ticket, 4 = + the last block's logits reload and routing (no pack
// row, no flag), 5 = + the pack row and the flag (everything but the residual update), 6 = 5
// with the ticket and the flag's signal as they were before session 10 (fences in every
// thread: the A of this session's A/B).
template <int STOP>
__device__ __forceinline__ void probe_entry_stage(
    float* __restrict__ x, const __nv_bfloat16* __restrict__ d, const float* __restrict__ norm_w,
    __nv_bfloat16* __restrict__ xn, float* __restrict__ xn32, const float* __restrict__ router_w,
    float* logits, uint32_t* counter, const float* __restrict__ bias, uint32_t* __restrict__ pack,
    int n, float eps, int n_experts, int top_k, int n_group, int topk_group, int scoring,
    int group_score, int normalize, float scale, uint32_t* flag, uint32_t value, float* smem) {
    const int EPB = 2;
    __shared__ float scratch[32];
    __shared__ bool last;
    float* row = smem;
    float* nw = smem + n;
    float* lsm = nw + n;
    float* gsm = lsm + n_experts;
    const int warp = threadIdx.x >> 5;
    const int e = blockIdx.x * EPB + warp;
    const bool has_expert = warp < EPB && e < n_experts;
    const float* wr = router_w + (size_t)(has_expert ? e : 0) * n;
    const int per = (n + gridDim.x - 1) / gridDim.x;
    const int lo = blockIdx.x * per, hi = min(n, lo + per);
    float4 wpre[KT_ROUTE_PREFETCH];
    route_entry_norm(x, d, norm_w, xn, xn32, nullptr, wr, has_expert, n, eps, lo, hi, row, nw,
                     scratch, wpre);
    if (STOP == 1) {
        // keep the prefetched rows alive (else the compiler drops the loads)
        if (has_expert && (threadIdx.x & 31) == 0) logits[e] = wpre[0].x + wpre[15].w;
        return;
    }
    if (has_expert) {
        const float sum = route_entry_logit(wr, row, n, true, wpre);
        if ((threadIdx.x & 31) == 0) logits[e] = sum;
    }
    if (STOP == 2) return;
    if (STOP == 6) {
        // the ticket as it was before session 10: device fences before and after
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
    } else if (!kt_block_ticket_last(counter)) {
        return;
    }
    if (STOP == 3) {
        if (threadIdx.x == 0) *counter = 0;
        return;
    }
    if (STOP >= 5) {
        float* pack_row = reinterpret_cast<float*>(pack);
#pragma unroll 8
        for (int i = threadIdx.x; i < n; i += blockDim.x) pack_row[i] = row[i];
    }
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x) lsm[i] = __ldcg(logits + i);
    __syncthreads();
    uint32_t* ids = pack + n;
    float* weights = reinterpret_cast<float*>(ids + top_k);
    if (warp == 0) {
        kt_gating_token(gsm, lsm, bias, ids, weights, 0, n_experts, top_k, n_group, topk_group,
                        scoring, group_score, normalize, scale);
    }
    if (threadIdx.x == 0) *counter = 0;
    // STOP 6: kt_block_signal_flag as it was before session 10 (a system fence in every
    // thread before the barrier, then thread 0's release store)
    if (STOP == 6) __threadfence_system();
    if (STOP >= 5) kt_block_signal_flag(flag, value);
}
#define KT_PROBE_STAGE(NAME, STOP)                                                                 \
    extern "C" __global__ void __launch_bounds__(KT_ROUTE_THREADS, 1) NAME(                        \
        float* __restrict__ x, const __nv_bfloat16* __restrict__ d,                                \
        const float* __restrict__ norm_w, __nv_bfloat16* __restrict__ xn,                          \
        float* __restrict__ xn32, const float* __restrict__ router_w, float* logits,               \
        uint32_t* counter, const float* __restrict__ bias, uint32_t* __restrict__ pack, int n,     \
        float eps, int n_experts, int top_k, int n_group, int topk_group, int scoring,             \
        int group_score, int normalize, float scale, uint32_t* flag, uint32_t value) {             \
        extern __shared__ float smem[];                                                            \
        probe_entry_stage<STOP>(x, d, norm_w, xn, xn32, router_w, logits, counter, bias, pack, n,  \
                                eps, n_experts, top_k, n_group, topk_group, scoring, group_score,  \
                                normalize, scale, flag, value, smem);                              \
    }
KT_PROBE_STAGE(kt_probe_entry_stage1, 1)
KT_PROBE_STAGE(kt_probe_entry_stage2, 2)
KT_PROBE_STAGE(kt_probe_entry_stage3, 3)
KT_PROBE_STAGE(kt_probe_entry_stage4, 4)
KT_PROBE_STAGE(kt_probe_entry_stage5, 5)
KT_PROBE_STAGE(kt_probe_entry_stage6, 6)

// An empty kernel of the same grid: the graph's per-node floor.
extern "C" __global__ void kt_probe_empty(int unused) { (void)unused; }

// (Measured in session 8, chain8b: 11.85 us against the ticket kernel's 13.20 in this probe,
// but a stretch only 0.1-0.6 us shorter in the decode; session 9, chain9: 8.49 against 9.72;
// not in the library.)
// The FFN entry as one thread-block cluster of CL blocks (sm_90): the same words as
// kt_add_norm_route_signal bit for bit (route_entry_norm / route_entry_logit per block and
// warp), without its ticket: each warp's logits go straight into the shared memory of the
// cluster's block 0 (distributed shared memory), one cluster barrier (release / acquire at
// cluster scope) replaces the global fence, the counter's atomic round trip and the logits'
// reload. Block 0 writes the pack's row from its own copy right after the norm (the PCIe
// writes drain while it computes its logits and waits), then routes and raises the flag. Warp
// w of block b takes experts b * warps + w + k * (CL * warps). Every block has read x before
// the barrier, so after it each block adds d into its own slice of x (block 0 after the flag).
// Launched with exactly CL blocks (the compile-time cluster shape; above 8 the function needs
// the non-portable cluster size attribute); `counter` is not used (the ticket
// kernel's parameters; the logits are also written to `logits`, which nothing waits for).
// Dynamic shared memory: as kt_add_norm_route_signal.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
template <int CL>
__device__ __forceinline__ void add_norm_route_signal_cluster(
    float* __restrict__ x, const __nv_bfloat16* __restrict__ d, const float* __restrict__ norm_w,
    __nv_bfloat16* __restrict__ xn, float* __restrict__ xn32, const float* __restrict__ router_w,
    const float* __restrict__ bias, uint32_t* __restrict__ pack, int n, float eps, int n_experts,
    int top_k, int n_group, int topk_group, int scoring, int group_score, int normalize,
    float scale, uint32_t* flag, uint32_t value, float* logits, float* smem) {
    __shared__ float scratch[32];
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int)cluster.block_rank();
    float* row = smem;            // the normalized row, f32
    float* nw = smem + n;         // norm_w
    float* lsm = nw + n;          // the logits (block 0's are the ones routed)
    float* gsm = lsm + n_experts; // kt_gating_token's scratch (warp 0)
    float* lsm0 = cluster.map_shared_rank(lsm, 0);
    float* pack_row = reinterpret_cast<float*>(pack);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = KT_ROUTE_THREADS / 32;
    const int first = rank * warps + warp, stride = CL * warps;
    const bool has_expert = first < n_experts;
    const float* wr0 = router_w + (size_t)(has_expert ? first : 0) * n;
    const int per = (n + CL - 1) / CL;
    const int lo = rank * per, hi = min(n, lo + per);
    float4 wpre[KT_ROUTE_PREFETCH];
    route_entry_norm(x, d, norm_w, xn, xn32, nullptr, wr0, has_expert, n, eps, lo, hi, row, nw,
                     scratch, wpre);
    if (rank == 0) {
#pragma unroll 8
        for (int i = threadIdx.x; i < n; i += blockDim.x) pack_row[i] = row[i];
    }
    for (int e = first; e < n_experts; e += stride) {
        const float sum = route_entry_logit(router_w + (size_t)e * n, row, n, e == first, wpre);
        if (lane == 0) {
            lsm0[e] = sum;
            logits[e] = sum;
        }
    }
    cluster.sync();
    if (rank == 0) {
        uint32_t* ids = pack + n;
        float* weights = reinterpret_cast<float*>(ids + top_k);
        if (warp == 0) {
            kt_gating_token(gsm, lsm, bias, ids, weights, 0, n_experts, top_k, n_group,
                            topk_group, scoring, group_score, normalize, scale);
        }
        kt_block_signal_flag(flag, value);
    }
    // the residual update of this block's slice (after the flag in block 0)
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) x[i] = x[i] + __bfloat162float(d[i]);
}
#define KT_ADD_NORM_ROUTE_SIGNAL_CLUSTER(NAME, CL)                                                 \
    extern "C" __global__ void __cluster_dims__(CL, 1, 1)                                         \
        __launch_bounds__(KT_ROUTE_THREADS, 1) NAME(                                               \
            float* __restrict__ x, const __nv_bfloat16* __restrict__ d,                            \
            const float* __restrict__ norm_w, __nv_bfloat16* __restrict__ xn,                      \
            float* __restrict__ xn32, const float* __restrict__ router_w, float* logits,           \
            uint32_t* counter, const float* __restrict__ bias, uint32_t* __restrict__ pack,        \
            int n, float eps, int n_experts, int top_k, int n_group, int topk_group, int scoring,  \
            int group_score, int normalize, float scale, uint32_t* flag, uint32_t value) {         \
        (void)counter;                                                                             \
        extern __shared__ float smem[];                                                            \
        add_norm_route_signal_cluster<CL>(x, d, norm_w, xn, xn32, router_w, bias, pack, n, eps,    \
                                          n_experts, top_k, n_group, topk_group, scoring,          \
                                          group_score, normalize, scale, flag, value, logits,      \
                                          smem);                                                   \
    }
KT_ADD_NORM_ROUTE_SIGNAL_CLUSTER(kt_add_norm_route_signal_cluster, 8)
KT_ADD_NORM_ROUTE_SIGNAL_CLUSTER(kt_add_norm_route_signal_cluster16, 16)
#endif

// The routing alone inside one warp, timed by the SM's clock: `reps` routings of 64 logits
// (kt_gating_token as the library has it, softmax, top_k), alternating between two rows in
// shared memory so no routing can be reused; cycles[0] = the clock ticks of the whole loop.
// Dynamic shared memory: 2 n_experts (the rows) + 2 n_experts + 1 (the routing's scratch).
extern "C" __global__ void kt_probe_routing_cycles(const float* __restrict__ logits, int n_experts,
                                                   int top_k, int reps, uint32_t* ids,
                                                   float* weights, long long* cycles) {
    extern __shared__ float smem[];
    float* rows = smem;
    float* gsm = smem + 2 * n_experts;
    for (int i = threadIdx.x; i < 2 * n_experts; i += 32) rows[i] = logits[i];
    __syncwarp();
    const long long t0 = clock64();
    for (int r = 0; r < reps; ++r) {
        kt_gating_token(gsm, rows, nullptr, ids, weights, r & 1, n_experts, top_k, 1, 1,
                        KT_SCORE_SOFTMAX, KT_GROUP_MAX, 0, 1.0f);
        __syncwarp();
    }
    const long long t1 = clock64();
    if (threadIdx.x == 0) cycles[0] = t1 - t0;
}
