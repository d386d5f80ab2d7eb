// Fused MoE router for a batch of tokens: scoring (softmax or sigmoid), optional
// group-limited selection, top-k, weight normalisation and scaling, in one kernel.
//
// Covers DeepSeek V2 (softmax; greedy, or group-limited with the group's best score) and
// DeepSeek V3 (sigmoid plus the e_score_correction bias for choosing, "noaux_tc": the group
// score is the sum of its two best biased scores, the weights are the unbiased scores).
// Selection order: descending choice score, ties to the lowest index (experts and groups).
// Weights: w = (normalize ? w / (sum(w) + 1e-20) : w) * scale.
#include "include/kt_common.cuh"
#include "include/kt_host_flag.cuh"
#include "include/kt_pdl.cuh"

#define KT_GATING_WARPS 4
// (The gating kernels declare one block per multiprocessor: with ptxas' default register cap
// the division's slow-path calls spill the routing's registers.)
// Host-checked limits: n_experts <= 256 (32 lanes x 8 registers of kt_gating_token_r),
// n_group <= 64 (bits of the allowed-groups mask), top_k <= 32 (one pick per lane).

enum { KT_SCORE_SOFTMAX = 0, KT_SCORE_SIGMOID = 1 };
enum { KT_GROUP_MAX = 0, KT_GROUP_TOP2_SUM = 1 };

// kt_argmax_better's order as one unsigned key (larger = better; equal keys: the lower index
// wins, as there): numbers map monotonically above 0 (-0 as +0, so they tie as they compare),
// NaN to 0, below every number.
__device__ __forceinline__ uint32_t kt_argmax_key(float v) {
    if (v != v) return 0u;
    const uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Token t's routing by one warp (lane = threadIdx.x & 31), PER = experts per lane rounded up
// (E <= 32 PER): lane l holds experts l + 32 s (s < PER) in registers: their scores, order keys
// and whether they are still available, so a pick touches no memory. Shared memory per warp
// (used only with grouped selection, which ranks groups over other lanes' experts): scores[E]
// (unused), choice[E] and gscore[n_group]. Uses warp-level sync only: the callers' warps leave
// independently.
template <int PER>
__device__ __forceinline__ void kt_gating_token_r(
    float* smem, const float* __restrict__ logits, const float* __restrict__ bias,
    uint32_t* __restrict__ ids, float* __restrict__ weights, int t, int n_experts, int top_k,
    int n_group, int topk_group, int scoring, int group_score, int normalize, float scale) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int E = n_experts;
    const float* row = logits + (size_t)t * E;
    float sc[PER]; // the logits, then the scores (unbiased: they give the weights)
    if (scoring == KT_SCORE_SOFTMAX) {
        float mx = -INFINITY;
#pragma unroll
        for (int s = 0; s < PER; ++s) {
            const int e = lane + 32 * s;
            if (e < E) {
                sc[s] = row[e];
                mx = fmaxf(mx, sc[s]);
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.0f;
#pragma unroll
        for (int s = 0; s < PER; ++s) {
            if (lane + 32 * s < E) {
                sc[s] = expf(sc[s] - mx);
                sum += sc[s];
            }
        }
        sum = kt_warp_sum(sum);
        // one call site of the division's slow path (a call: PER unrolled ones spill the
        // lane's registers around them): the scores rotate through sc[PER - 1]
#pragma unroll 1
        for (int s = 0; s < PER; ++s) {
            const float q = lane + 32 * s < E ? sc[0] / sum : sc[0];
#pragma unroll
            for (int j = 0; j + 1 < PER; ++j) sc[j] = sc[j + 1];
            sc[PER - 1] = q;
        }
    } else {
#pragma unroll
        for (int s = 0; s < PER; ++s) {
            const int e = lane + 32 * s;
            if (e < E) sc[s] = 1.0f / (1.0f + expf(-row[e]));
        }
    }
    // what expert e is ranked by (s: its slot in this lane)
    auto choice_of = [&](int s, int e) { return bias ? sc[s] + bias[e] : sc[s]; };

    // Groups allowed to supply experts (all of them without grouping).
    unsigned long long allowed = n_group >= 64 ? ~0ull : ((1ull << n_group) - 1ull);
    const int gsize = E / n_group;
    if (n_group > 1 && topk_group < n_group) {
        float* choice = smem + (size_t)warp * (2 * E + n_group) + E;
        float* gscore = choice + E;
#pragma unroll
        for (int s = 0; s < PER; ++s)
            if (lane + 32 * s < E) choice[lane + 32 * s] = choice_of(s, lane + 32 * s);
        __syncwarp();
        for (int g = lane; g < n_group; g += 32) {
            float b1 = -INFINITY, b2 = -INFINITY; // the two best (equal values count twice)
            for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
                const float c = choice[e];
                if (c > b1) {
                    b2 = b1;
                    b1 = c;
                } else if (c > b2) {
                    b2 = c;
                }
            }
            gscore[g] = group_score == KT_GROUP_MAX ? b1 : b1 + b2;
        }
        __syncwarp();
        allowed = 0;
        for (int it = 0; it < topk_group; ++it) {
            float v = __int_as_float(0x7fc00000);
            uint32_t gi = 0xffffffffu;
            for (int g = lane; g < n_group; g += 32) {
                if ((allowed >> g) & 1ull) continue;
                if (kt_argmax_better(gscore[g], (uint32_t)g, v, gi)) {
                    v = gscore[g];
                    gi = (uint32_t)g;
                }
            }
            kt_warp_argmax(v, gi);
            allowed |= 1ull << gi;
        }
        __syncwarp(); // the next token of this warp rewrites choice
    }

    // Top-k: repeated warp arg-max in kt_argmax_better's order (the same picks as a shuffle
    // butterfly over (choice, index)), each round two single-instruction warp reductions: the
    // largest order key (kt_argmax_key), then the lowest index among the lanes holding it. Each
    // lane keeps its candidates sorted best first (key descending, index ascending; the ones not
    // allowed as (0, UINT32_MAX), which lose against every candidate, a NaN one having key 0
    // and a lower index), so the round's winner only shifts its list by one: no branch, no
    // rescan. One warp runs this alone: the dependent instructions per round set its time.
    uint32_t ck[PER], ci[PER];
    float cw[PER];
#pragma unroll
    for (int s = 0; s < PER; ++s) {
        const int e = lane + 32 * s;
        const bool ok = e < E && ((allowed >> (e / gsize)) & 1ull);
        ck[s] = ok ? kt_argmax_key(choice_of(s, e)) : 0u;
        ci[s] = ok ? (uint32_t)e : 0xffffffffu;
        cw[s] = ok ? sc[s] : 0.0f;
    }
    // insertion sort in the same order
#pragma unroll
    for (int s = 1; s < PER; ++s) {
#pragma unroll
        for (int j = s; j > 0; --j) {
            const bool up = ck[j] > ck[j - 1] || (ck[j] == ck[j - 1] && ci[j] < ci[j - 1]);
            const uint32_t k0 = ck[j - 1], i0 = ci[j - 1];
            const float w0 = cw[j - 1];
            ck[j - 1] = up ? ck[j] : k0;
            ci[j - 1] = up ? ci[j] : i0;
            cw[j - 1] = up ? cw[j] : w0;
            ck[j] = up ? k0 : ck[j];
            ci[j] = up ? i0 : ci[j];
            cw[j] = up ? w0 : cw[j];
        }
    }
    float my_w = 0.0f; // lane `it` keeps pick `it` (top_k <= 32, checked by the host)
    uint32_t my_id = 0;
    for (int it = 0; it < top_k; ++it) {
        const uint32_t top = __reduce_max_sync(0xffffffffu, ck[0]);
        const uint32_t ei = __reduce_min_sync(0xffffffffu, ck[0] == top ? ci[0] : 0xffffffffu);
        const float w = __shfl_sync(0xffffffffu, cw[0], (int)(ei & 31u));
        if (lane == it) {
            my_w = w;
            my_id = ei;
        }
        const bool won = ci[0] == ei; // the winner's list moves up by one
#pragma unroll
        for (int j = 0; j + 1 < PER; ++j) {
            ck[j] = won ? ck[j + 1] : ck[j];
            ci[j] = won ? ci[j + 1] : ci[j];
            cw[j] = won ? cw[j + 1] : cw[j];
        }
        if (won) {
            ck[PER - 1] = 0u;
            ci[PER - 1] = 0xffffffffu;
        }
    }
    // the sum of the picked weights in pick order (lane j holds pick j)
    float wsum = 0.0f;
    for (int j = 0; j < top_k; ++j) wsum += __shfl_sync(0xffffffffu, my_w, j);
    if (lane < top_k) {
        const float w = normalize ? my_w / (wsum + 1e-20f) : my_w;
        ids[(size_t)t * top_k + lane] = my_id;
        weights[(size_t)t * top_k + lane] = w * scale;
    }
}

// kt_gating_token_r with the fewest registers per lane that hold n_experts (<= 256: checked by
// the host; 16 per lane would spill around the division's slow-path calls). Shared memory per
// warp: 2 n_experts + n_group floats (see there).
__device__ __forceinline__ void kt_gating_token(
    float* smem, const float* __restrict__ logits, const float* __restrict__ bias,
    uint32_t* __restrict__ ids, float* __restrict__ weights, int t, int n_experts, int top_k,
    int n_group, int topk_group, int scoring, int group_score, int normalize, float scale) {
    if (n_experts <= 64) {
        kt_gating_token_r<2>(smem, logits, bias, ids, weights, t, n_experts, top_k, n_group,
                             topk_group, scoring, group_score, normalize, scale);
    } else {
        kt_gating_token_r<8>(smem, logits, bias, ids, weights, t, n_experts, top_k, n_group,
                             topk_group, scoring, group_score, normalize, scale);
    }
}

// One warp per token.
extern "C" __global__ void __launch_bounds__(KT_GATING_WARPS * 32, 1)
    kt_moe_gating(const float* __restrict__ logits, const float* __restrict__ bias,
                  uint32_t* __restrict__ ids, float* __restrict__ weights, int tokens, int n_experts,
                  int top_k, int n_group, int topk_group, int scoring, int group_score,
                  int normalize, float scale) {
    extern __shared__ float smem[];
    const int t = blockIdx.x * KT_GATING_WARPS + (threadIdx.x >> 5);
    if (t >= tokens) return; // whole warps leave together: no block-level barrier below
    kt_gating_token(smem, logits, bias, ids, weights, t, n_experts, top_k, n_group, topk_group,
                    scoring, group_score, normalize, scale);
}

// kt_moe_gating writing into one packed buffer of 32-bit words, so the hybrid decode copies
// the routed experts' inputs to the host in one transfer: [tokens, hidden] rows of x (copied
// as they are), then ids [tokens, top_k], then weights [tokens, top_k] (f32 bits). Each warp
// copies its own token's row of x.
extern "C" __global__ void __launch_bounds__(KT_GATING_WARPS * 32, 1)
    kt_moe_gating_packed(const float* __restrict__ logits, const float* __restrict__ bias,
                         const float* __restrict__ x, uint32_t* __restrict__ pack, int hidden,
                         int tokens, int n_experts, int top_k, int n_group, int topk_group,
                         int scoring, int group_score, int normalize, float scale) {
    extern __shared__ float smem[];
    const int t = blockIdx.x * KT_GATING_WARPS + (threadIdx.x >> 5);
    if (t >= tokens) return; // whole warps leave together: no block-level barrier below
    const int lane = threadIdx.x & 31;
    const float* src = x + (size_t)t * hidden;
    float* dst = reinterpret_cast<float*>(pack) + (size_t)t * hidden;
    for (int i = lane; i < hidden; i += 32) dst[i] = src[i];
    uint32_t* ids = pack + (size_t)tokens * hidden;
    float* weights = reinterpret_cast<float*>(ids + (size_t)tokens * top_k);
    kt_gating_token(smem, logits, bias, ids, weights, t, n_experts, top_k, n_group, topk_group,
                    scoring, group_score, normalize, scale);
}

// kt_moe_gating_packed for the hybrid decode graph, without a copy or a flag write after it:
// `pack` is the device address of page-locked host memory (the routed experts' inputs land
// there directly), and once every word is written the kernel raises the host flag `flag` to
// `value`, which the CPU side spins on. One block: all its threads copy the rows of x (16-byte
// stores, several in flight: one warp copying a row alone is latency bound), then its warps
// route the tokens in turn (kt_moe_gating_packed's per-token work: the same words bit for bit).
extern "C" __global__ void __launch_bounds__(KT_GATING_WARPS * 32, 1)
    kt_moe_gating_packed_signal(const float* __restrict__ logits, const float* __restrict__ bias,
                                const float* __restrict__ x, uint32_t* __restrict__ pack,
                                int hidden, int tokens, int n_experts, int top_k, int n_group,
                                int topk_group, int scoring, int group_score, int normalize,
                                float scale, uint32_t* flag, uint32_t value) {
    extern __shared__ float smem[];
    uint32_t* ids = pack + (size_t)tokens * hidden;
    float* weights = reinterpret_cast<float*>(ids + (size_t)tokens * top_k);
    // the rows are contiguous in x and in pack, both 16-byte aligned (allocation starts)
    const size_t total = (size_t)tokens * hidden, total4 = total / 4;
    const float4* src4 = reinterpret_cast<const float4*>(x);
    float4* dst4 = reinterpret_cast<float4*>(pack);
#pragma unroll 4
    for (size_t i = threadIdx.x; i < total4; i += blockDim.x) dst4[i] = src4[i];
    for (size_t i = total4 * 4 + threadIdx.x; i < total; i += blockDim.x)
        reinterpret_cast<float*>(pack)[i] = x[i];
    for (int t = threadIdx.x >> 5; t < tokens; t += KT_GATING_WARPS) {
        kt_gating_token(smem, logits, bias, ids, weights, t, n_experts, top_k, n_group,
                        topk_group, scoring, group_score, normalize, scale);
        __syncwarp(); // the warp's scores are reused by its next token
    }
    kt_block_signal_flag(flag, value);
}

// The decode graph's whole FFN entry of a MoE layer for one token, one launch instead of three
// (kt_add_rmsnorm_w32_bf16, the router's kt_gemv_nt_v_f32_f32_f32, kt_moe_gating_packed_signal):
//   x += d; xn, xn32 = RMSNorm(x) * norm_w; logits = router_w xn32; route; pack; raise flag.
// Every block (KT_ROUTE_THREADS threads) computes the norm of the row itself, as
// kt_add_rmsnorm_w32 does at the same block size (the same per-thread elements and sum order),
// keeps it in shared memory and writes its slice of xn / xn32; its first EPB warps compute one
// expert's logit each in the order of kt_gemv_nt_v_f32_f32_f32 (lane-strided 4-float steps,
// fmaf chain, warp butterfly sum). The first KT_ROUTE_PREFETCH steps of each router row are
// loaded before the norm, which they do not depend on, so their latency hides behind it; fewer
// experts per block spread the router's bytes over more multiprocessors (one SM keeps only so
// many loads in flight). The last block to finish (a device counter, reset for the next
// launch) routes the logits into the pack and raises `flag` to `value`; only then does it
// update x (every block has read it by then; nothing on the host side waits for x).
// SPREAD: each block writes its slice of the pack's row to host memory right after the norm
// and fences it at system scope before it counts in (the PCIe writes drain while the block
// computes its logits), so after the ticket only the ids and weights cross PCIe; otherwise
// the last block writes the whole row from its shared copy. The words are those of the three
// kernels bit for bit either way. pack is the device address of page-locked host memory: [n]
// row, top_k ids, top_k weights. n % 4 == 0 (host-checked). Dynamic shared memory (smem): 2 n +
// n_experts + 2 n_experts + n_group floats.
#define KT_ROUTE_THREADS 256
#define KT_ROUTE_PREFETCH 16

// The entry's first part, shared by its variants: loads the first KT_ROUTE_PREFETCH steps of
// router row `wr` (when `has_expert`; they do not depend on the norm, so their latency hides
// behind it), then x + d and the norm's weights (all loads in flight together, staged in
// shared memory: after the block sum the row is scaled without another trip to memory; each
// thread touches only its own elements, so no barrier between the passes) into row = the
// normalized row (f32, shared, `nw` beside it), then writes the slice [lo, hi) of xn / xn32
// (and of the pack's row when `pack_row` is not null). Ends with the block's threads past a
// barrier after the row is complete.
__device__ __forceinline__ void route_entry_norm(
    const float* __restrict__ x, const __nv_bfloat16* __restrict__ d,
    const float* __restrict__ norm_w, __nv_bfloat16* __restrict__ xn, float* __restrict__ xn32,
    float* pack_row, const float* __restrict__ wr, bool has_expert, int n, float eps, int lo,
    int hi, float* row, float* nw, float* scratch, float4 (&wpre)[KT_ROUTE_PREFETCH]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < KT_ROUTE_PREFETCH; ++j) {
        const int k0 = lane * 4 + j * 128;
        if (has_expert && k0 < n) wpre[j] = *reinterpret_cast<const float4*>(wr + k0);
    }
    // Rows longer than the registers hold (V3's 7168 columns: 16 of 56 steps): the rest of the
    // row into L2 now, one 128-byte line per lane and step, so the logit's later loads hit L2
    // instead of waiting for memory one unrolled batch after another.
    if (has_expert)
        for (int k = KT_ROUTE_PREFETCH * 128 + lane * 32; k < n; k += 32 * 32)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + k));
    // launched as a programmatic dependent of the kernel that writes d (the attention's output
    // projection): the router rows above load while it ends; x and d only after its grid is
    // done (the norm's weights load beside them: a separate trip before the wait measured
    // slower than the one trip for all three after it)
    kt_wait_prerequisites();
    float ss = 0.0f;
    const int bd = blockDim.x, last = kt_row_last(n);
    for (int i0 = threadIdx.x; i0 < n; i0 += KT_ROW_CHUNK * bd) { // see KT_ROW_CHUNK
        float v[KT_ROW_CHUNK], wn[KT_ROW_CHUNK];
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = min(i0 + j * bd, last);
            v[j] = x[i] + __bfloat162float(d[i]);
            wn[j] = norm_w[i];
        }
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = i0 + j * bd;
            if (i < n) {
                row[i] = v[j];
                nw[i] = wn[j];
                ss += v[j] * v[j];
            }
        }
    }
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = nw[i] * (row[i] * inv);
    __syncthreads();
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float y = row[i];
        xn[i] = __float2bfloat16_rn(y);
        xn32[i] = y;
        if (pack_row) pack_row[i] = y;
    }
}

// Counts the block in on `counter` (one atomic add by thread 0) and tells every thread
// whether the block was the grid's last. The barrier before the add orders all the block's
// earlier writes before thread 0's, and its add is an acquire-release at GPU scope: cumulative,
// it publishes them with its own; in the last block it acquires every other block's, and the
// barrier after it passes that on to the block's threads (the pattern of cooperative groups'
// grid barrier). A device fence in every thread before the barrier and another after the
// ticket, as before session 10, put two more fence latencies on the last block's path (with
// the flag's signal, kt_block_signal_flag: 1.06 us more in the chain probe on an H100).
__device__ __forceinline__ bool kt_block_ticket_last(uint32_t* counter) {
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(old)
                     : "l"(counter)
                     : "memory");
        last = old == gridDim.x - 1;
    }
    __syncthreads();
    return last;
}

// One router row's logit by one warp in kt_gemv_nt_v_f32_f32_f32's order (lane-strided
// 4-float steps, fmaf chain, warp butterfly sum); the first KT_ROUTE_PREFETCH steps come from
// `wpre` when `pre` (loaded by route_entry_norm), the rest from `wr`. Every lane gets the sum.
__device__ __forceinline__ float route_entry_logit(const float* __restrict__ wr,
                                                   const float* row, int n, bool pre,
                                                   const float4 (&wpre)[KT_ROUTE_PREFETCH]) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < KT_ROUTE_PREFETCH; ++j) {
        const int k0 = lane * 4 + j * 128;
        if (k0 < n) {
            const float4 wv = pre ? wpre[j] : *reinterpret_cast<const float4*>(wr + k0);
            const float4 av = *reinterpret_cast<const float4*>(row + k0);
            acc = fmaf(av.x, wv.x, acc);
            acc = fmaf(av.y, wv.y, acc);
            acc = fmaf(av.z, wv.z, acc);
            acc = fmaf(av.w, wv.w, acc);
        }
    }
    // the rest in chunks of KT_ROW_CHUNK steps whose loads issue together (see KT_ROW_CHUNK;
    // V3's rows: 40 steps, which a plain loop took one trip to L2 at a time), steps past the row
    // clamped to the lane's last one and dropped; the same fmaf chain in the same order
    const int first = lane * 4 + KT_ROUTE_PREFETCH * 128;
    if (first < n) {
        const int last = first + (n - 4 - first) / 128 * 128; // n % 4 == 0 (host-checked)
        for (int k00 = first; k00 < n; k00 += KT_ROW_CHUNK * 128) {
            float4 wv[KT_ROW_CHUNK], av[KT_ROW_CHUNK];
#pragma unroll
            for (int j = 0; j < KT_ROW_CHUNK; ++j) {
                const int k0 = min(k00 + j * 128, last);
                wv[j] = *reinterpret_cast<const float4*>(wr + k0);
                av[j] = *reinterpret_cast<const float4*>(row + k0);
            }
#pragma unroll
            for (int j = 0; j < KT_ROW_CHUNK; ++j) {
                if (k00 + j * 128 < n) {
                    acc = fmaf(av[j].x, wv[j].x, acc);
                    acc = fmaf(av[j].y, wv[j].y, acc);
                    acc = fmaf(av[j].z, wv[j].z, acc);
                    acc = fmaf(av[j].w, wv[j].w, acc);
                }
            }
        }
    }
    return kt_warp_sum(acc);
}

// The decode graph's whole FFN entry of a MoE layer for one token, one launch instead of three
// (kt_add_rmsnorm_w32_bf16, the router's kt_gemv_nt_v_f32_f32_f32, kt_moe_gating_packed_signal):
//   x += d; xn, xn32 = RMSNorm(x) * norm_w; logits = router_w xn32; route; pack; raise flag.
// Every block (KT_ROUTE_THREADS threads) computes the norm of the row itself, as
// kt_add_rmsnorm_w32 does at the same block size (the same per-thread elements and sum order),
// keeps it in shared memory and writes its slice of xn / xn32; its first EPB warps compute one
// expert's logit each (route_entry_logit); fewer experts per block spread the router's bytes
// over more multiprocessors (one SM keeps only so many loads in flight). The last block to
// finish (a device counter, reset for the next launch) routes the logits into the pack and
// raises `flag` to `value`; only then does it update x (every block has read it by then;
// nothing on the host side waits for x).
// SPREAD: each block writes its slice of the pack's row to host memory right after the norm
// and fences it at system scope before it counts in (the PCIe writes drain while the block
// computes its logits), so after the ticket only the ids and weights cross PCIe; otherwise
// the last block writes the whole row from its shared copy. The words are those of the three
// kernels bit for bit either way. pack is the device address of page-locked host memory: [n]
// row, top_k ids, top_k weights. n % 4 == 0 (host-checked). Dynamic shared memory (smem): 2 n +
// n_experts + 2 n_experts + n_group floats.
template <int EPB, bool SPREAD>
__device__ __forceinline__ void add_norm_route_signal(
    float* __restrict__ x, const __nv_bfloat16* __restrict__ d, const float* __restrict__ norm_w,
    __nv_bfloat16* __restrict__ xn, float* __restrict__ xn32, const float* __restrict__ router_w,
    float* logits, uint32_t* counter, const float* __restrict__ bias, uint32_t* __restrict__ pack,
    int n, float eps, int n_experts, int top_k, int n_group, int topk_group, int scoring,
    int group_score, int normalize, float scale, uint32_t* flag, uint32_t value, float* smem) {
    static_assert(EPB >= 1 && EPB <= KT_ROUTE_THREADS / 32, "experts per block: 1 .. warps");
    __shared__ float scratch[32];
    float* row = smem;                // the normalized row, f32
    float* nw = smem + n;             // norm_w
    float* lsm = nw + n;              // the logits, for the routing
    float* gsm = lsm + n_experts;     // kt_gating_token's scratch (warp 0)
    float* pack_row = reinterpret_cast<float*>(pack);
    const int warp = threadIdx.x >> 5;
    const int e = blockIdx.x * EPB + warp;
    const bool has_expert = warp < EPB && e < n_experts;
    const float* wr = router_w + (size_t)(has_expert ? e : 0) * n;
    // this block's slice of the outputs that no block reads back
    const int per = (n + gridDim.x - 1) / gridDim.x;
    const int lo = blockIdx.x * per, hi = min(n, lo + per);
    float4 wpre[KT_ROUTE_PREFETCH];
    route_entry_norm(x, d, norm_w, xn, xn32, SPREAD ? pack_row : nullptr, wr, has_expert, n, eps,
                     lo, hi, row, nw, scratch, wpre);
    if (has_expert) {
        const float sum = route_entry_logit(wr, row, n, true, wpre);
        if ((threadIdx.x & 31) == 0) logits[e] = sum;
    }
    // when spread, publish the pack's slice at system scope (the host reads it); the logits
    // are published by the ticket (device scope: only the last block reads them)
    if (SPREAD) __threadfence_system();
    if (!kt_block_ticket_last(counter)) return;
    // warp 0 reloads the logits and routes them while the other warps write the pack's row
    // (the routing's warp waits for no one but itself)
    uint32_t* ids = pack + n;
    float* weights = reinterpret_cast<float*>(ids + top_k);
    if (warp == 0) {
        // every logit a lane holds (n_experts <= 256, host-checked) in one trip to L2, past the
        // experts clamped to the last (see KT_ROW_CHUNK)
        float lv[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            lv[j] = __ldcg(logits + min((int)threadIdx.x + 32 * j, n_experts - 1));
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if ((int)threadIdx.x + 32 * j < n_experts) lsm[threadIdx.x + 32 * j] = lv[j];
        __syncwarp();
        kt_gating_token(gsm, lsm, bias, ids, weights, 0, n_experts, top_k, n_group, topk_group,
                        scoring, group_score, normalize, scale);
    } else if (!SPREAD) {
        // 16-byte stores (n % 4 == 0, pack page-aligned): a quarter of the PCIe writes (the
        // probe times the entry with a pinned and a device pack level: off the flag's path)
        const float4* row4 = reinterpret_cast<const float4*>(row);
        float4* pack4 = reinterpret_cast<float4*>(pack_row);
#pragma unroll 4
        for (int i = threadIdx.x - 32; i < n / 4; i += blockDim.x - 32) pack4[i] = row4[i];
    }
    if (threadIdx.x == 0) *counter = 0; // for the next launch, which follows this one
    kt_block_signal_flag(flag, value);
    // the residual update, after the flag: the host's experts do not wait for it
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = x[i] + __bfloat162float(d[i]);
}

// One instantiation per (experts per block, spread) as an extern "C" kernel;
// kt-kernels/src/cuda/gating.rs launches kt_add_norm_route_signal with KT_ROUTE_EPB.
#define KT_ADD_NORM_ROUTE_SIGNAL(NAME, EPB, SPREAD)                                                \
    extern "C" __global__ void __launch_bounds__(KT_ROUTE_THREADS, 1) NAME(                        \
        float* __restrict__ x, const __nv_bfloat16* __restrict__ d,                                \
        const float* __restrict__ norm_w, __nv_bfloat16* __restrict__ xn,                          \
        float* __restrict__ xn32, const float* __restrict__ router_w, float* logits,               \
        uint32_t* counter, const float* __restrict__ bias, uint32_t* __restrict__ pack, int n,     \
        float eps, int n_experts, int top_k, int n_group, int topk_group, int scoring,             \
        int group_score, int normalize, float scale, uint32_t* flag, uint32_t value) {             \
        extern __shared__ float smem[];                                                            \
        add_norm_route_signal<EPB, SPREAD>(x, d, norm_w, xn, xn32, router_w, logits, counter,      \
                                           bias, pack, n, eps, n_experts, top_k, n_group,          \
                                           topk_group, scoring, group_score, normalize, scale,     \
                                           flag, value, smem);                                     \
    }
#define KT_ROUTE_EPB 2
#define KT_ROUTE_SPREAD false
KT_ADD_NORM_ROUTE_SIGNAL(kt_add_norm_route_signal, KT_ROUTE_EPB, KT_ROUTE_SPREAD)
