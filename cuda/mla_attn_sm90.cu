// MLA attention over the paged latent cache on Hopper tensor cores (wgmma, sm_90a): the same
// contract as kt_mla_attn_bf16 in mla_attn.cu (read its header for q, cache, table, cu_q,
// kv_lens, out and the split partials, which kt_mla_combine_bf16 merges), for devices of
// compute capability 9.0; kt-kernels/src/cuda/mla.rs picks it there and the mma.sync kernel
// elsewhere.
//
// One block takes 64 query rows of one sequence (half the heads of a decode token for 128
// heads; the two halves are adjacent blocks, so a cache tile is fetched from memory once and
// found in L2 by the other) and one key split. The query tile stays in shared memory; cache
// tiles of 32 keys go through a ring of four buffers filled with cp.async, each refilled as
// soon as both warpgroups are done with it, so three tiles are loading while one is used.
// Tiles and the query are stored as [rows x 64 dims] blocks of 128-byte swizzled rows, so the
// same tile is the K-major B of the scores and the MN-major (transposed) B of the output.
// Two warpgroups take turns (warpgroup i % 2 owns tile i):
//  - scores: the owner computes S = Q K^T for all 32 keys of its tile over all 576 dims (36
//    m64n32k16 MMAs; one warpgroup per tile reads the query from shared memory once);
//  - softmax: the owner has whole rows of S, so it needs no exchange: it reads the running
//    maxima the other warpgroup left for tile i - 1, writes P (bf16) into one of two 32-key
//    slots of a swizzled [64 x 64] block, and the tile's maxima and rescale factors;
//  - output: after one barrier per tile, both rescale and add P V to their halves of O
//    (warpgroup g keeps columns 256 g .. 256 g + 255, 128 f32 per thread; 2 m64n256k16 MMAs).
// The owner of tile i + 1 issues its scores before its share of tile i's P V and computes the
// softmax while the tensor cores still run P V, so one barrier and no idle softmax per tile.
// Each warpgroup sums the weights of its own tiles; the two sums are added at the end.
#include "include/kt_common.cuh"

#include "include/kt_async.cuh"
#include "include/kt_wgmma.cuh"

namespace {

constexpr int kThreads = 256; // two warpgroups

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kLat = 512;
constexpr int kDim = 576;
constexpr int kRows = 64;                     // query rows per block (the wgmma M)
constexpr int kKeys = 32;                     // keys per cache tile
constexpr int kStages = 4;                    // cache tiles in the ring
constexpr int kDimBlocks = kDim / 64;         // 64-dim blocks of a row
constexpr int kChunks = kDim / 8;             // 16-byte chunks per row
constexpr int kQBlockBytes = kRows * 128;     // one [64 rows x 64 dims] bf16 block
constexpr int kKBlockBytes = kKeys * 128;     // one [32 keys x 64 dims] bf16 block
constexpr int kQBytes = kDimBlocks * kQBlockBytes;
constexpr int kTileBytes = kDimBlocks * kKBlockBytes;
constexpr int kQOff = 0;
constexpr int kKOff = kQBytes;
constexpr int kPOff = kKOff + kStages * kTileBytes; // P [64 rows x 64 keys]: two 32-key slots
// f32 [2 slots][64 rows] maxima after a tile, [2 slots][64] its rescale factors, then the
// [2 warpgroups][64] row sums at the end.
constexpr int kStateOff = kPOff + kRows * 128;
constexpr int kUsedBytes = kStateOff + 3 * 2 * kRows * 4;
// The dynamic shared memory base is only 16-byte aligned; the swizzle needs 1024.
constexpr int kSmemBytes = kUsedBytes + 1024;
// kt-kernels/src/cuda/mla.rs launches with this much dynamic shared memory (SMEM_BYTES_SM90).
static_assert(kSmemBytes == 231936, "update SMEM_BYTES_SM90 in kt-kernels/src/cuda/mla.rs");
static_assert(kSmemBytes <= 227 * 1024, "more than a Hopper block may have");
static_assert(kKOff % 1024 == 0 && kTileBytes % 1024 == 0 && kPOff % 1024 == 0, "swizzle atoms");
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// kChains: independent accumulator chains the scores' 36 MMAs are dealt over (64-dim block
// b goes to chain b % kChains; the chains are added in order at the end), so consecutive
// MMAs of one warpgroup do not each wait for the previous one's sum.
template <int kChains, int kDiag>
__device__ void mla_attn_sm90(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                              const int* __restrict__ table, const int* __restrict__ cu_q,
                              const int* __restrict__ kv_lens, int heads, int block_size, int max_blocks,
                              float scale_log2, __nv_bfloat16* __restrict__ out, float* __restrict__ part_o,
                              float* __restrict__ part_lse, int rows_total,
                              const int* __restrict__ live_splits) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (kt_smem_addr(smem_raw) & 1023)) & 1023);
    const uint32_t s_base = kt_smem_addr(smem);
    float* m_sm = reinterpret_cast<float*>(smem + kStateOff); // [2][64] maxima after tile i (slot i & 1)
    float* a_sm = m_sm + 2 * kRows;                           // [2][64] rescale factors of tile i
    float* red_sum = a_sm + 2 * kRows;                        // [2][64]

    const int tid = threadIdx.x;
    // The warpgroup, read through a shuffle so that the compiler knows it is the same across
    // the warp: with a branch on the plain thread index around them it serializes the MMAs.
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
    const int wi = (tid >> 5) & 3;    // warp within the warpgroup: rows 16 wi .. 16 wi + 15
    const int lane = tid & 31;
    const int r0 = 16 * wi + (lane >> 2); // this thread's accumulator rows r0 and r0 + 8
    const int qc = 2 * (lane & 3);        // its column pair within each 8-wide column group
    const int b = blockIdx.z;
    const int split = blockIdx.y;
    // A graph replays one grid for every step: then the step's split count is read here and
    // the grid's extra splits exit (the same key ranges as a launch of exactly that many).
    const int splits = live_splits != nullptr ? *live_splits : (int)gridDim.y;
    if (split >= splits) return;

    const int tok0 = cu_q[b];
    const int ntok = cu_q[b + 1] - tok0;
    const int nrows = ntok * heads;
    const int row0 = blockIdx.x * kRows;
    if (row0 >= nrows) return;
    const int kv_len = kv_lens[b];
    const int first_key_row = kv_len - ntok;
    const int last_row = min(row0 + kRows, nrows) - 1;
    const int vis_max = first_key_row + last_row / heads + 1;
    const int tiles_seq = (kv_len + kKeys - 1) / kKeys;
    const int per_split = (tiles_seq + splits - 1) / splits;
    const int t_begin = split * per_split;
    const int t_end = min(min(t_begin + per_split, tiles_seq), (vis_max + kKeys - 1) / kKeys);
    const int n = max(t_end - t_begin, 0); // tiles of this block, numbered 0 .. n - 1 below
    const size_t grow0 = (size_t)tok0 * heads + row0;

    // Keys row r sees (0: a row past the sequence sees none).
    int vis[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = r0 + 8 * h;
        vis[h] = row0 + r < nrows ? first_key_row + (row0 + r) / heads + 1 : 0;
    }

    for (int c = tid; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, ch = c % kChunks;
        const bool ok = row0 + r < nrows;
        const __nv_bfloat16* src = ok ? q + (grow0 + r) * kDim + ch * 8 : q;
        kt_cp_async16(smem + kQOff + (ch >> 3) * kQBlockBytes + kt_swz128(r, ch & 7), src, ok ? 16 : 0);
    }
    // Tile i (keys 32 (t_begin + i) ..) into ring buffer i % kStages; nothing past the last.
    auto load_tile = [&](int i) {
        if (i >= n) return;
        const int t = t_begin + i;
        uint8_t* dst = smem + kKOff + (i % kStages) * kTileBytes;
        for (int c = tid; c < kKeys * kChunks; c += kThreads) {
            const int r = c / kChunks, ch = c % kChunks;
            const int key = t * kKeys + r;
            const __nv_bfloat16* src = cache;
            if (key < kv_len) {
                const int blk = table[(size_t)b * max_blocks + key / block_size];
                src = cache + ((size_t)blk * block_size + key % block_size) * kDim + ch * 8;
            }
            kt_cp_async16(dst + (ch >> 3) * kKBlockBytes + kt_swz128(r, ch & 7), src, key < kv_len ? 16 : 0);
        }
    };
    // S of tile i's 32 keys for all 64 rows into the chains sc, issued (not waited for).
    auto issue_scores = [&](float (&sc)[kChains][16], int i) {
        const uint32_t qa = s_base + kQOff;
        const uint32_t kb = s_base + kKOff + (i % kStages) * kTileBytes;
#pragma unroll
        for (int blk = 0; blk < kDimBlocks; ++blk)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                wgmma_m64n32k16<0>(sc[blk % kChains], kt_wgmma_desc(qa + blk * kQBlockBytes + 32 * kk, 16, 1024),
                                   kt_wgmma_desc(kb + blk * kKBlockBytes + 32 * kk, 16, 1024),
                                   blk >= kChains || kk > 0);
        kt_wgmma_commit();
    };
    float o[128]; // rows r0, r0 + 8; columns 256 wg + 8 j + qc (+1), j = 0..31
    float sc[kChains][16]; // partial scores: rows r0, r0 + 8; keys 8 j + qc (+1), j = 0..3
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    float l_part[2] = {0.0f, 0.0f}; // this thread's share of its warpgroup's softmax sums

    // O[:, this warpgroup's 256 columns] += P(tile i) V(tile i), issued.
    auto issue_pv = [&](int i) {
        const uint32_t pa = s_base + kPOff + 64 * (i & 1);
        const uint32_t vb = s_base + kKOff + (i % kStages) * kTileBytes + 4 * wg * kKBlockBytes;
#pragma unroll
        for (int ks = 0; ks < kKeys / 16; ++ks)
            wgmma_m64n256k16<1>(o, kt_wgmma_desc(pa + 32 * ks, 16, 1024),
                                kt_wgmma_desc(vb + 16 * ks * 128, kKBlockBytes, 1024), 1);
        kt_wgmma_commit();
    };
    // The owner's softmax of tile i (S complete in s): scale to the log2 domain, mask, new
    // running maxima from those after tile i - 1, P = 2^(S - m) rounded to bf16 into slot
    // i & 1 (the sums add the rounded weights the MMA uses), maxima and rescale factors into
    // slot i & 1 for the other warpgroup.
    auto softmax = [&](int i) {
#pragma unroll
        for (int k = 0; k < 16; ++k)
#pragma unroll
            for (int c = 0; c < kChains; ++c) kt_reg_fence(sc[c][k]);
        float s[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            s[k] = sc[0][k];
#pragma unroll
            for (int c = 1; c < kChains; ++c) s[k] += sc[c][k];
        }
        const int t = t_begin + i;
        float mx[2] = {kNegInf, kNegInf};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                const int key = t * kKeys + 8 * j + qc + (e & 1);
                float& v = s[4 * j + e];
                v = key < vis[h] ? v * scale_log2 : kNegInf;
                mx[h] = fmaxf(mx[h], v);
            }
        float base[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            const float m_prev = i > 0 ? m_sm[((i - 1) & 1) * kRows + r] : kNegInf;
            const float m_new = fmaxf(m_prev, quad_max(mx[h]));
            // A row that has seen no key keeps m = -inf; subtracting 0 keeps exp2 at 0.
            base[h] = m_new == kNegInf ? 0.0f : m_new;
            const float alpha = exp2f(m_prev - base[h]);
            l_part[h] *= alpha;
            if ((lane & 3) == 0) {
                m_sm[(i & 1) * kRows + r] = m_new;
                a_sm[(i & 1) * kRows + r] = alpha;
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const __nv_bfloat162 p = __floats2bfloat162_rn(exp2f(s[4 * j + 2 * h] - base[h]),
                                                               exp2f(s[4 * j + 2 * h + 1] - base[h]));
                l_part[h] += __low2float(p) + __high2float(p);
                const int key = 32 * (i & 1) + 8 * j + qc;
                *reinterpret_cast<__nv_bfloat162*>(smem + kPOff + kt_swz128(r0 + 8 * h, key >> 3) + (key & 7) * 2) = p;
            }
    };

    // Groups: the query with tile 0, then one per tile (tile j is group j), empty past the end.
    load_tile(0);
    kt_cp_async_commit();
    load_tile(1);
    kt_cp_async_commit();
    load_tile(2);
    kt_cp_async_commit();
    asm volatile("cp.async.wait_group 2;\n" ::: "memory"); // the query and tile 0
    kt_fence_proxy_async();
    __syncthreads();
    if (wg == 0 && n > 0) {
        kt_wgmma_fence();
        issue_scores(sc, 0);
        kt_wgmma_wait<0>();
        softmax(0);
    }
    for (int i = 0; i < n; ++i) {
        asm volatile("cp.async.wait_group 1;\n" ::: "memory"); // tiles up to i + 1
        kt_fence_proxy_async(); // this thread's P and tile writes, for the tensor cores
        __syncthreads();        // P, maxima, rescale factors of tile i; tile i + 1 complete
        const bool own = (i & 1) == wg;   // this warpgroup made P of tile i
        const bool next = i + 1 < n && !own; // ... and owns tile i + 1
        const float alpha[2] = {a_sm[(i & 1) * kRows + r0], a_sm[(i & 1) * kRows + r0 + 8]};
        if (!own) {
            l_part[0] *= alpha[0];
            l_part[1] *= alpha[1];
        }
        // This warpgroup's P V of tile i - 1 is complete (waited below), so O may be scaled.
        if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                o[4 * j + 0] *= alpha[0];
                o[4 * j + 1] *= alpha[0];
                o[4 * j + 2] *= alpha[1];
                o[4 * j + 3] *= alpha[1];
            }
        }
        // Two straight pipelines, each waited to the end (a pipeline with MMAs under a
        // branch would make the compiler serialize them). Tile i + 3 goes into buffer
        // (i + 3) % 4, which held tile i - 1: both warpgroups were done with it at the barrier.
        kt_wgmma_fence();
        if (next) {
            if (kDiag != 2) issue_scores(sc, i + 1);
            if (kDiag != 3) issue_pv(i);
            if (kDiag != 1) load_tile(i + 3); // while the tensor cores run the scores
            kt_cp_async_commit();
            kt_wgmma_wait<1>(); // the scores (P V may still run)
            softmax(i + 1);
            kt_wgmma_wait<0>();
        } else {
            if (kDiag != 3) issue_pv(i);
            if (kDiag != 1) load_tile(i + 3);
            kt_cp_async_commit();
            kt_wgmma_wait<0>();
        }
#pragma unroll
        for (int k = 0; k < 128; ++k) kt_reg_fence(o[k]);
    }
    kt_cp_async_wait_all();

    // Row sums: the quad's share, then the two warpgroups' in a fixed order.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float l = quad_sum(l_part[h]);
        if ((lane & 3) == 0) red_sum[wg * kRows + r0 + 8 * h] = l;
    }
    __syncthreads();
    float* po = part_o + (size_t)split * rows_total * kLat;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = r0 + 8 * h;
        if (row0 + r >= nrows) continue;
        const float l = red_sum[r] + red_sum[kRows + r];
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const size_t g = grow0 + r;
        const int col0 = 256 * wg + qc;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const float x = o[4 * j + 2 * h] * inv, y = o[4 * j + 2 * h + 1] * inv;
            if (splits == 1) {
                *reinterpret_cast<__nv_bfloat162*>(out + g * kLat + col0 + 8 * j) = __floats2bfloat162_rn(x, y);
            } else {
                *reinterpret_cast<float2*>(po + g * kLat + col0 + 8 * j) = make_float2(x, y);
            }
        }
        if (splits > 1 && wg == 0 && (lane & 3) == 0) {
            const float m = n > 0 ? m_sm[((n - 1) & 1) * kRows + r] : kNegInf;
            part_lse[(size_t)split * rows_total + g] = l > 0.0f ? m + log2f(l) : kNegInf;
        }
    }
}

#endif // __CUDA_ARCH_FEAT_SM90_ALL

} // namespace

// Compiled to a real body only for sm_90a; on other targets it traps (the host never
// launches it there).
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    kt_mla_attn_sm90_bf16(const __nv_bfloat16* q, const __nv_bfloat16* cache, const int* table,
                          const int* cu_q, const int* kv_lens, int heads, int block_size, int max_blocks,
                          float scale_log2, __nv_bfloat16* out, float* part_o, float* part_lse,
                          int rows_total, const int* live_splits) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mla_attn_sm90<2, 0>(q, cache, table, cu_q, kv_lens, heads, block_size, max_blocks, scale_log2, out,
                        part_o, part_lse, rows_total, live_splits);
#else
    __trap();
#endif
}
