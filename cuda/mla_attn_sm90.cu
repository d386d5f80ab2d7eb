// MLA attention over the paged latent cache on Hopper tensor cores (wgmma, sm_90a): the same
// contract as kt_mla_attn_bf16 in mla_attn.cu (read its header for q, cache, table, cu_q,
// kv_lens, out and the split partials, which kt_mla_combine_bf16 merges), for devices of
// compute capability 9.0; kt-kernels/src/cuda/mla.rs picks it there and the mma.sync kernel
// elsewhere. Two more parameters: `cache_map`, a tensor map over the whole cache pool as
// [blocks x block_size rows, 576] bf16 with boxes of [64 rows, 64 dims] and the 128-byte
// swizzle, and `use_tma` (nonzero: the map is valid and block_size % 64 == 0; zero: the map
// is not read).
//
// One block takes 64 query rows of one sequence (half the heads of a decode token for 128
// heads; the two halves are adjacent blocks, so a cache tile is fetched from memory once and
// found in L2 by the other) and one key split. Cache tiles of 64 keys are double-buffered in
// shared memory; the query tile stays there. When the pages hold a whole number of tiles
// (block_size % 64 == 0) and the host passes a tensor map over the pool as [rows, 576], a
// full tile is 64 consecutive pool rows and one thread fetches it with nine bulk tensor
// copies (TMA, one [64 keys x 64 dims] box each, swizzled by the copy engine), completion
// counted on one mbarrier per box, so a tile's score MMAs start on its first boxes while the
// last are still arriving; otherwise, and for a sequence's last partial tile (whose
// keys past kv_len must read as zeros), every thread issues 16-byte cp.async copies. Both
// operands are stored as nine [64 x 64] blocks (64 dims each) of 128-byte swizzled rows, so the
// same tile is the K-major B of the scores and the MN-major (transposed) B of the output. Two
// warpgroups:
//  - scores: warpgroup g computes S = Q K^T for the tile's keys 32 g .. 32 g + 31 over all 576
//    dims (36 m64n32k16 MMAs, accumulators in registers);
//  - softmax: row maxima are exchanged through shared memory so both warpgroups use the same
//    running max; each writes its half of P (bf16) into a swizzled [64 x 64] block;
//  - output: warpgroup g keeps O[64 rows, 256 g .. 256 g + 255] (128 f32 per thread) and adds
//    P V over the 64 keys (4 m64n256k16 MMAs, B = the tile's latents, transposed).
// The next tile's scores are issued right behind this tile's P V, and the tile after next
// starts loading as soon as P V is done with its buffer.
#include "include/kt_common.cuh"

#include "include/kt_async.cuh"
#include "include/kt_tma.cuh"
#include "include/kt_wgmma.cuh"

namespace {

constexpr int kThreads = 256; // two warpgroups

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kLat = 512;
constexpr int kDim = 576;
constexpr int kRows = 64;                 // query rows per block (the wgmma M)
constexpr int kKeys = 64;                 // keys per cache tile
constexpr int kDimBlocks = kDim / 64;     // 64-dim blocks of a tile row
constexpr int kChunks = kDim / 8;         // 16-byte chunks per row
constexpr int kBlockBytes = 64 * 128;     // one [64 x 64] bf16 block
constexpr int kTileBytes = kDimBlocks * kBlockBytes;
constexpr int kQOff = 0;
constexpr int kKOff = kTileBytes;         // two cache tiles
constexpr int kPOff = 3 * kTileBytes;     // P [64 rows x 64 keys]
constexpr int kRedOff = kPOff + kBlockBytes; // [2 warpgroups][64 rows] f32 maxima, then sums
constexpr int kBarOff = kRedOff + 2 * 2 * kRows * 4; // an mbarrier per box of each cache buffer
constexpr int kUsedBytes = kBarOff + 2 * kDimBlocks * 8;
// The dynamic shared memory base is only 16-byte aligned; the swizzle needs 1024.
constexpr int kSmemBytes = kUsedBytes + 1024;
// kt-kernels/src/cuda/mla.rs launches with this much dynamic shared memory (SMEM_BYTES_SM90).
static_assert(kSmemBytes == 231568, "update SMEM_BYTES_SM90 in kt-kernels/src/cuda/mla.rs");
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

__device__ void mla_attn_sm90(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                              const int* __restrict__ table, const int* __restrict__ cu_q,
                              const int* __restrict__ kv_lens, int heads, int block_size, int max_blocks,
                              float scale_log2, __nv_bfloat16* __restrict__ out, float* __restrict__ part_o,
                              float* __restrict__ part_lse, int rows_total,
                              const int* __restrict__ live_splits, const KtTensorMap* cache_map, int use_tma) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (kt_smem_addr(smem_raw) & 1023)) & 1023);
    const uint32_t s_base = kt_smem_addr(smem);
    float* red_max = reinterpret_cast<float*>(smem + kRedOff); // [2][64]
    float* red_sum = red_max + 2 * kRows;                      // [2][64]
    const uint32_t bar0 = s_base + kBarOff; // box j of buffer i: barrier bar0 + 8 (9 i + j)

    const int tid = threadIdx.x;
    const int wg = tid >> 7;          // warpgroup
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
    const size_t grow0 = (size_t)tok0 * heads + row0;

    // Keys row r sees (0: a row past the sequence sees none).
    int vis[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = r0 + 8 * h;
        vis[h] = row0 + r < nrows ? first_key_row + (row0 + r) / heads + 1 : 0;
    }

    if (tid == 0) {
        for (int i = 0; i < 2 * kDimBlocks; ++i) kt_mbar_init(bar0 + 8 * i, 1);
        kt_mbar_init_fence();
        if (use_tma) kt_tma_prefetch(cache_map);
    }
    __syncthreads(); // the barriers are initialized before any copy counts on them

    for (int c = tid; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, ch = c % kChunks;
        const bool ok = row0 + r < nrows;
        const __nv_bfloat16* src = ok ? q + (grow0 + r) * kDim + ch * 8 : q;
        kt_cp_async16(smem + kQOff + (ch >> 3) * kBlockBytes + kt_swz128(r, ch & 7), src, ok ? 16 : 0);
    }
    // Cache tile copies: 8 threads per key row (one 16-byte chunk of each 64-dim block each),
    // rows ld_row and ld_row + 32. Per tile a thread reads the block table once per row and
    // issues its 18 copies back to back at fixed offsets from two row addresses: no table read
    // or index arithmetic per copy. Rows ld_row and ld_row + 32 share the swizzle phase.
    constexpr int kLdRows = kThreads / 8; // rows per pass
    static_assert(kKeys == 2 * kLdRows && kChunks == 8 * kDimBlocks, "two passes of 8 chunks per block");
    const int ld_row = tid >> 3;
    const int ld_chunk = tid & 7;
    const uint32_t ld_dst = kt_swz128(ld_row, ld_chunk);
    // Tiles fetched by TMA: every tile of a TMA launch but a sequence's last partial one. Each
    // such fetch completes one phase of each of its buffer's nine box barriers; bit i of
    // `phases` is the parity of buffer i's next phase.
    auto by_tma = [&](int t) { return use_tma != 0 && (t + 1) * kKeys <= kv_len; };
    uint32_t phases = 0;
    auto load_tile = [&](int t, int buf) {
        if (by_tma(t)) {
            if (tid == 0) {
                const int key = t * kKeys; // the tile's 64 keys are consecutive rows of one page
                const int row = table[(size_t)b * max_blocks + key / block_size] * block_size + key % block_size;
#pragma unroll
                for (int blk = 0; blk < kDimBlocks; ++blk) {
                    const uint32_t bar = bar0 + 8 * (buf * kDimBlocks + blk);
                    kt_mbar_arrive_expect_tx(bar, kBlockBytes);
                    kt_tma_load_2d(s_base + kKOff + buf * kTileBytes + blk * kBlockBytes, cache_map, 64 * blk, row, bar);
                }
            }
            return;
        }
        uint8_t* dst = smem + kKOff + buf * kTileBytes + ld_dst;
#pragma unroll
        for (int pass = 0; pass < 2; ++pass) {
            const int key = t * kKeys + ld_row + pass * kLdRows;
            const bool ok = key < kv_len;
            const __nv_bfloat16* row = cache;
            if (ok) {
                const int blk = table[(size_t)b * max_blocks + key / block_size];
                row = cache + ((size_t)blk * block_size + key % block_size) * kDim + ld_chunk * 8;
            }
#pragma unroll
            for (int blk = 0; blk < kDimBlocks; ++blk)
                kt_cp_async16(dst + pass * kLdRows * 128 + blk * kBlockBytes, row + (ok ? blk * 64 : 0), ok ? 16 : 0);
        }
    };
    // S for keys 32 wg .. + 31 of tile t in buffer `buf`, issued (not waited for). A tile that
    // bulk copies bring is waited for here, box by box.
    auto issue_scores = [&](float* s, int t, int buf) {
        const uint64_t qd = kt_wgmma_desc(s_base + kQOff, 16, 1024);
        const uint64_t kd = kt_wgmma_desc(s_base + kKOff + buf * kTileBytes + 32 * wg * 128, 16, 1024);
        const bool wait_boxes = by_tma(t);
#pragma unroll
        for (int blk = 0; blk < kDimBlocks; ++blk) {
            // The MMAs of the boxes already in run while the next one is waited for.
            if (wait_boxes) kt_mbar_wait(bar0 + 8 * (buf * kDimBlocks + blk), (phases >> buf) & 1);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const uint32_t step = blk * kBlockBytes + 32 * kk;
                wgmma_m64n32k16<0>(s, kt_wgmma_desc_step(qd, step), kt_wgmma_desc_step(kd, step), blk + kk > 0);
            }
        }
        if (wait_boxes) phases ^= 1u << buf;
        kt_wgmma_commit();
    };

    float o[128]; // rows r0, r0 + 8; columns 256 wg + 8 j + qc (+1), j = 0..31
    float s[16];  // rows r0, r0 + 8; keys 32 wg + 8 j + qc (+1), j = 0..3
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    float m_run[2] = {kNegInf, kNegInf};
    float l_part[2] = {0.0f, 0.0f}; // this thread's share of the rows' softmax sums

    if (t_begin < t_end) load_tile(t_begin, 0);
    kt_cp_async_commit();
    if (t_begin + 1 < t_end) load_tile(t_begin + 1, 1);
    kt_cp_async_commit();
    asm volatile("cp.async.wait_group 1;\n" ::: "memory"); // Q and the first tile
    kt_fence_proxy_async();
    __syncthreads();
    if (t_begin < t_end) {
        kt_wgmma_fence();
        issue_scores(s, t_begin, 0);
        kt_wgmma_wait<0>();
    }

    for (int t = t_begin; t < t_end; ++t) {
        const int buf = (t - t_begin) & 1;
#pragma unroll
        for (int i = 0; i < 16; ++i) kt_reg_fence(s[i]);
        // Scale to the log2 domain, mask, and find this warpgroup's row maxima.
        float mx[2] = {kNegInf, kNegInf};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                const int key = t * kKeys + 32 * wg + 8 * j + qc + (e & 1);
                float& v = s[4 * j + e];
                v = key < vis[h] ? v * scale_log2 : kNegInf;
                mx[h] = fmaxf(mx[h], v);
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mx[h] = quad_max(mx[h]);
            if ((lane & 3) == 0) red_max[wg * kRows + r0 + 8 * h] = mx[h];
        }
        __syncthreads(); // (A) both halves' maxima are in
        float alpha[2], base[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            const float m_new = fmaxf(m_run[h], fmaxf(red_max[r], red_max[kRows + r]));
            // A row that has seen no key keeps m = -inf; subtracting 0 keeps exp2 at 0.
            base[h] = m_new == kNegInf ? 0.0f : m_new;
            alpha[h] = exp2f(m_run[h] - base[h]);
            m_run[h] = m_new;
        }
        // P = 2^(S - m) rounded to bf16 (the sums add the rounded weights the MMA uses).
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const __nv_bfloat162 p = __floats2bfloat162_rn(exp2f(s[4 * j + 2 * h] - base[h]),
                                                               exp2f(s[4 * j + 2 * h + 1] - base[h]));
                l_part[h] = l_part[h] * (j == 0 ? alpha[h] : 1.0f) + (__low2float(p) + __high2float(p));
                const int r = r0 + 8 * h;
                const int key = 32 * wg + 8 * j + qc;
                *reinterpret_cast<__nv_bfloat162*>(smem + kPOff + kt_swz128(r, key >> 3) + (key & 7) * 2) = p;
            }
        kt_fence_proxy_async();
        if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                o[4 * j + 0] *= alpha[0];
                o[4 * j + 1] *= alpha[0];
                o[4 * j + 2] *= alpha[1];
                o[4 * j + 3] *= alpha[1];
            }
        }
        kt_cp_async_wait_all(); // tile t + 1 if cp.async brings it
        kt_fence_proxy_async();
        __syncthreads(); // (B) P complete (and a cp.async tile t + 1 visible to the tensor cores)
        kt_wgmma_fence();
        {
            const uint64_t pd = kt_wgmma_desc(s_base + kPOff, 16, 1024);
            const uint64_t vd =
                kt_wgmma_desc(s_base + kKOff + buf * kTileBytes + 4 * wg * kBlockBytes, kBlockBytes, 1024);
#pragma unroll
            for (int ks = 0; ks < kKeys / 16; ++ks)
                wgmma_m64n256k16<1>(o, kt_wgmma_desc_step(pd, 32 * ks), kt_wgmma_desc_step(vd, 16 * ks * 128), 1);
            kt_wgmma_commit();
        }
        if (t + 1 < t_end) {
            // A TMA tile t + 1 is waited for only now, while P V runs, and box by box as its
            // scores are issued: its copies get the P V time on top of the previous scores and
            // softmax, and the last boxes also the MMAs of the first.
            issue_scores(s, t + 1, buf ^ 1);
        }
        kt_wgmma_wait<1>(); // P V done (the scores may still run)
#pragma unroll
        for (int i = 0; i < 128; ++i) kt_reg_fence(o[i]);
        __syncthreads();    // (C) both warpgroups are done with buffer `buf` and P
        if (t + 2 < t_end) load_tile(t + 2, buf);
        kt_cp_async_commit();
        kt_wgmma_wait<0>();
    }
#pragma unroll
    for (int i = 0; i < 128; ++i) kt_reg_fence(o[i]);
    kt_cp_async_wait_all();

    // Row sums: the quad's share, then the two warpgroups' halves in a fixed order.
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
        if (splits > 1 && wg == 0 && (lane & 3) == 0)
            part_lse[(size_t)split * rows_total + g] = l > 0.0f ? m_run[h] + log2f(l) : kNegInf;
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
                          int rows_total, const int* live_splits, const __grid_constant__ KtTensorMap cache_map,
                          int use_tma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mla_attn_sm90(q, cache, table, cu_q, kv_lens, heads, block_size, max_blocks, scale_log2, out, part_o,
                  part_lse, rows_total, live_splits, &cache_map, use_tma);
#else
    __trap();
#endif
}
