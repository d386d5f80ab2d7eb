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
// shared memory; the query tile stays there. Both operands are stored as nine [64 x 64]
// blocks (64 dims each) of 128-byte swizzled rows, so the same tile is the K-major B of the
// scores and the MN-major (transposed) B of the output.
//
// Two warpgroups take turns: tile i of the split belongs to warpgroup i % 2 and sits in its
// buffer. Warpgroup g keeps O[64 rows, 256 g .. 256 g + 255] (128 f32 per thread). For its
// own tile a warpgroup
//  - computes S = Q K^T for all 64 keys (36 m64n64k16 MMAs: the 72 KiB query tile is read
//    from shared memory once per tile, not once per warpgroup);
//  - runs the softmax against the running max the other warpgroup published with the tile
//    before (each row's 64 scores sit in one quad: no exchange);
//  - writes P (bf16, stmatrix) and the new row maxima to shared memory and signals the other
//    warpgroup (a named barrier), then rescales its O half and issues P V from P in registers
//    (4 m64n256k16 MMAs, A from the softmax's registers).
// For the other's tile it waits for that signal, rescales its O half to the published max
// and adds P V from P in shared memory, then issues its own next tile's scores. Both end at
// the same running max; the softmax sums of the two warpgroups' tiles add at the end.
// The owner's softmax is the stretch where the tensor cores have little queued (the next
// scores need the other warpgroup's P V issued first, and the buffers leave no room to issue
// them earlier), so it is kept short: masks only on tiles some row does not see whole, the
// maxima taken before scaling, one FFMA and one ex2.approx per score.
//
// Loads: when the pages hold a whole number of tiles (block_size % 64 == 0) and the host
// passes a tensor map over the pool as [rows, 576], a full tile is 64 consecutive pool rows,
// fetched by one thread of the owning warpgroup with nine bulk tensor copies (TMA, one
// [64 keys x 64 dims] box each, swizzled by the copy engine), completion counted on one
// mbarrier per box. A buffer is refilled in three parts as its previous tile frees them: the
// rope box once the scores are done, the owner's output half once its P V is done, the other
// half once the other warpgroup's P V is; the scores take the boxes in that order, so their
// first MMAs run while the last boxes are still arriving. The copies mark their L2 lines
// evict-first (the tile is read by this block and its head-half neighbour at about the same
// time, then never again). Otherwise, and for a sequence's
// last partial tile (whose keys past kv_len must read as zeros), the owning warpgroup's
// threads issue 16-byte cp.async copies.
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
// 2^x by the special function unit alone: exp2f adds a fix-up (three more instructions) for
// results below 2^-126, which here are weights or rescale factors negligible beside the row's
// largest weight, 1; flushed to zero instead. 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
// Named barriers: `count` threads (whole warps) meet at barrier `id` (1..15; 0 is
// __syncthreads). bar.arrive counts this warp in without waiting: a producer's signal to the
// warps that bar.sync on the same id.
__device__ __forceinline__ void named_bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
constexpr int kBarPublish = 1; // + w: warpgroup w has published its tile's P and row maxima
constexpr int kBarGroup = 3;   // + w: warpgroup w's own cp.async tile is in
constexpr int kBarFree = 5;    // + w: warpgroup w's P V of the other's last tile is done

__device__ void mla_attn_sm90(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                              const int* __restrict__ table, const int* __restrict__ cu_q,
                              const int* __restrict__ kv_lens, int heads, int block_size, int max_blocks,
                              float scale_log2, __nv_bfloat16* __restrict__ out, float* __restrict__ part_o,
                              float* __restrict__ part_lse, int rows_total,
                              const int* __restrict__ live_splits, const KtTensorMap* cache_map, int use_tma) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (kt_smem_addr(smem_raw) & 1023)) & 1023);
    const uint32_t s_base = kt_smem_addr(smem);
    float* m_pub = reinterpret_cast<float*>(smem + kRedOff); // [64] running max after the last published tile
    float* red_sum = m_pub + 2 * kRows;                      // [2][64]
    const uint32_t bar0 = s_base + kBarOff; // box j of buffer i: barrier bar0 + 8 (9 i + j)

    const int tid = threadIdx.x;
    // Uniform across the warp by construction (ptxas serializes wgmma issued under branches
    // it cannot prove warp-uniform).
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0); // warpgroup
    const int wtid = tid & 127;
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
    // Keys every row of the block sees (a tile below it needs no mask).
    const int vis_all = row0 + kRows <= nrows ? first_key_row + row0 / heads + 1 : 0;
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

    // Tile t (i = t - t_begin) belongs to warpgroup i & 1 and lives in buffer i & 1, where
    // tile t - 2 was before it. Its owner computes all 64 keys' scores (the query tile read
    // once), its softmax and the P V of its half of the output columns; the other warpgroup
    // adds P V for its half from P in shared memory.
    const uint32_t kbuf = s_base + kKOff + wg * kTileBytes;       // this warpgroup's buffer
    const uint32_t kbuf_other = s_base + kKOff + (wg ^ 1) * kTileBytes;
    auto box_bar_of = [&](int w, int blk) { return bar0 + 8 * (w * kDimBlocks + blk); };
    auto box_bar = [&](int blk) { return box_bar_of(wg, blk); };
    // The scores take the boxes in the order a refill frees them: the rope dims (read only by
    // the scores), this warpgroup's output half (free once its own P V is done), the other's.
    auto box_of_w = [&](int w, int k) { return k == 0 ? kDimBlocks - 1 : (4 * w + k - 1) & 7; };
    auto box_of = [&](int k) { return box_of_w(wg, k); };
    auto by_tma = [&](int t) { return use_tma != 0 && (t + 1) * kKeys <= kv_len; };
    // Boxes box_of_w(w, k0 .. k1 - 1) of a tile whose first pool row is `row` into warpgroup
    // w's buffer, by one thread.
    auto tma_boxes_to = [&](int w, int row, int k0, int k1) {
        const uint32_t buf = s_base + kKOff + w * kTileBytes;
        for (int k = k0; k < k1; ++k) {
            const int blk = box_of_w(w, k);
            kt_mbar_arrive_expect_tx(box_bar_of(w, blk), kBlockBytes);
            kt_tma_load_2d_hint(buf + blk * kBlockBytes, cache_map, 64 * blk, row, box_bar_of(w, blk), kt_l2_evict_first_policy());
        }
    };
    auto tma_boxes = [&](int row, int k0, int k1) { tma_boxes_to(wg, row, k0, k1); };
    auto tile_row = [&](int t) { // the tile's 64 keys are consecutive rows of one page
        const int key = t * kKeys;
        return table[(size_t)b * max_blocks + key / block_size] * block_size + key % block_size;
    };
    // A tile by cp.async, issued by this warpgroup's threads (8 per key row, one 16-byte chunk
    // of each 64-dim block each, four passes of 16 rows); keys past kv_len read as zeros.
    constexpr int kLdRows = 128 / 8;
    static_assert(kKeys == 4 * kLdRows && kChunks == 8 * kDimBlocks, "four passes of 8 chunks per block");
    auto cp_tile = [&](int t) {
        const int ld_row = wtid >> 3, ld_chunk = wtid & 7;
        uint8_t* dst = smem + kKOff + wg * kTileBytes + kt_swz128(ld_row, ld_chunk);
#pragma unroll
        for (int pass = 0; pass < 4; ++pass) {
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
        kt_cp_async_commit();
    };
    uint32_t phase = 0; // parity of this warpgroup's buffer's next box phase
    int next_row = 0;   // pool row of this warpgroup's next bulk-copied tile (thread wtid 0)

    // Each warpgroup's first tile.
    const int t_first = t_begin + wg;
    if (t_first < t_end) {
        if (by_tma(t_first)) {
            if (wtid == 0) tma_boxes(tile_row(t_first), 0, kDimBlocks);
        } else {
            cp_tile(t_first);
        }
    }
    kt_cp_async_commit();
    kt_cp_async_wait_all(); // Q (and a first tile by cp.async)
    kt_fence_proxy_async();
    __syncthreads();

    float o[128]; // rows r0, r0 + 8; columns 256 wg + 8 j + qc (+1), j = 0..31
    float s[32];  // rows r0, r0 + 8; keys 8 j + qc (+1), j = 0..7
    uint32_t pa[16]; // P of the own tile as the A fragments of its four k16 slices
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) pa[i] = 0;
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.0f;
    // The zeros are set here, not moved by the compiler into a pipeline of MMAs.
#pragma unroll
    for (int i = 0; i < 128; ++i) kt_reg_fence(o[i]);
#pragma unroll
    for (int i = 0; i < 32; ++i) kt_reg_fence(s[i]);
    float m_run[2] = {kNegInf, kNegInf};
    float l_part[2] = {0.0f, 0.0f}; // this thread's share of its own tiles' softmax sums

    auto rescale = [&](const float* alpha) {
        if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                o[4 * j + 0] *= alpha[0];
                o[4 * j + 1] *= alpha[0];
                o[4 * j + 2] *= alpha[1];
                o[4 * j + 3] *= alpha[1];
            }
        }
    };
    // S = Q K^T for all 64 keys of this warpgroup's tile t, issued (not waited for); a tile
    // that bulk copies bring is waited for box by box as its MMAs are issued.
    auto issue_scores = [&](int t) {
        const uint64_t qd = kt_wgmma_desc(s_base + kQOff, 16, 1024);
        const uint64_t kd = kt_wgmma_desc(kbuf, 16, 1024);
        const bool wait_boxes = by_tma(t);
        kt_wgmma_fence();
#pragma unroll
        for (int k = 0; k < kDimBlocks; ++k) {
            const int blk = box_of(k);
            if (wait_boxes) kt_mbar_wait(box_bar(blk), phase);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const uint32_t step = blk * kBlockBytes + 32 * kk;
                wgmma_m64n64k16<0>(s, kt_wgmma_desc_step(qd, step), kt_wgmma_desc_step(kd, step), k + kk > 0);
            }
        }
        if (wait_boxes) phase ^= 1u;
        kt_wgmma_commit();
    };

    // This warpgroup's tile u: its scores (issued before) are waited for, the softmax against
    // the running max the other warpgroup published with tile u - 1 (already in m_run), P V
    // for this half from registers, then P and the new maxima published.
    auto own_step = [&](int u) {
        kt_wgmma_wait<0>(); // the scores, and P V of the other's tile u - 1 (P's buffer is free)
#pragma unroll
        for (int i = 0; i < 32; ++i) kt_reg_fence(s[i]);
        float mx[2] = {kNegInf, kNegInf};
        // Keys past a row's end read -inf where some row of the block does not see the whole
        // tile (a uniform branch); the maxima are taken of the unscaled scores (scale_log2 > 0)
        // and scaled once per row.
        if ((u + 1) * kKeys > vis_all) {
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = u * kKeys + 8 * j + qc + (e & 1);
                    if (key >= vis[e >> 1]) s[4 * j + e] = kNegInf;
                }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[4 * j + e]);
        float alpha[2], base[2], lsum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = fmaxf(m_run[h], quad_max(mx[h]) * scale_log2);
            // A row that has seen no key keeps m = -inf; subtracting 0 keeps exp2 at 0.
            base[h] = m_new == kNegInf ? 0.0f : m_new;
            alpha[h] = fast_exp2(m_run[h] - base[h]);
            m_run[h] = m_new;
            if ((lane & 3) == 0) m_pub[r0 + 8 * h] = m_new;
        }
        // P = 2^(S scale - m), one FFMA and one ex2 each, rounded to bf16 (the sums add the
        // rounded weights the MMAs use), as the A fragments of this warpgroup's P V.
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const __nv_bfloat162 p = __floats2bfloat162_rn(fast_exp2(fmaf(s[4 * j + 2 * h], scale_log2, -base[h])),
                                                               fast_exp2(fmaf(s[4 * j + 2 * h + 1], scale_log2, -base[h])));
                lsum[h] += __low2float(p) + __high2float(p);
                pa[4 * (j >> 1) + 2 * (j & 1) + h] = *reinterpret_cast<const uint32_t*>(&p);
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) l_part[h] = l_part[h] * alpha[h] + lsum[h];
        // P to shared memory for the other warpgroup by stmatrix, pa[4 g .. 4 g + 3] being the
        // 8 x 8 blocks of keys 16 g .. 16 g + 15 in rows 16 wi .. 16 wi + 15 (lanes 8 i .. 8 i + 7
        // address block i's rows), and the signal, before this warpgroup's own P V is issued: the
        // other warpgroup's P V and next scores wait for the signal (publishing after issuing the
        // own P V measured 3..4% slower, session 10).
        {
            const int i = lane >> 3;
            const uint32_t p_addr = s_base + kPOff;
#pragma unroll
            for (int g = 0; g < 4; ++g)
                kt_stmatrix_x4(p_addr + kt_swz128(16 * wi + 8 * (i & 1) + (lane & 7), 2 * g + (i >> 1)), pa + 4 * g);
        }
        kt_fence_proxy_async();
        named_bar_arrive(kBarPublish + wg, kThreads); // P and m_pub for the other warpgroup
        rescale(alpha);
        kt_wgmma_fence();
        const uint64_t vd = kt_wgmma_desc(kbuf + 4 * wg * kBlockBytes, kBlockBytes, 1024);
#pragma unroll
        for (int ks = 0; ks < kKeys / 16; ++ks)
            wgmma_m64n256k16_rs<1>(o, pa + 4 * ks, kt_wgmma_desc_step(vd, 16 * ks * 128), 1);
        kt_wgmma_commit();
        // The scores are done with the rope box: tile u + 2's may come now.
        const int u2 = u + 2;
        if (wtid == 0 && u2 < t_end && by_tma(u2)) {
            next_row = tile_row(u2);
            tma_boxes(next_row, 0, 1);
        }
    };

    // The other warpgroup's tile v: this half's P V from the published P, then this
    // warpgroup's next tile v + 1 refilled (as its buffer frees) and its scores issued.
    auto other_step = [&](int v) {
        kt_wgmma_wait<0>(); // own P V of tile v - 1: its half of the buffer and pa are free
#pragma unroll
        for (int i = 0; i < 128; ++i) kt_reg_fence(o[i]);
#pragma unroll
        for (int i = 0; i < 16; ++i) kt_reg_fence_u32(pa[i]);
        const int u = v + 1;
        const bool refill = u < t_end && u - t_begin >= 2;
        if (refill && by_tma(u) && wtid == 0) tma_boxes(next_row, 1, 5);
        // The other warpgroup's P V of this warpgroup's tile v - 1 is done: the rest of the
        // buffer is free.
        if (v - 1 >= t_begin) named_bar_sync(kBarFree + (wg ^ 1), kThreads);
        if (refill) {
            if (by_tma(u)) {
                if (wtid == 0) tma_boxes(next_row, 5, kDimBlocks);
            } else {
                cp_tile(u);
                kt_cp_async_wait_all();
                kt_fence_proxy_async();
                named_bar_sync(kBarGroup + wg, 128);
            }
        }
        named_bar_sync(kBarPublish + (wg ^ 1), kThreads); // P and m_pub of tile v
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = m_pub[r0 + 8 * h];
            alpha[h] = fast_exp2(m_run[h] - (m_new == kNegInf ? 0.0f : m_new));
            m_run[h] = m_new;
            l_part[h] *= alpha[h];
        }
        rescale(alpha);
        kt_wgmma_fence();
        {
            const uint64_t pd = kt_wgmma_desc(s_base + kPOff, 16, 1024);
            const uint64_t vd = kt_wgmma_desc(kbuf_other + 4 * wg * kBlockBytes, kBlockBytes, 1024);
#pragma unroll
            for (int ks = 0; ks < kKeys / 16; ++ks)
                wgmma_m64n256k16<1>(o, kt_wgmma_desc_step(pd, 32 * ks), kt_wgmma_desc_step(vd, 16 * ks * 128), 1);
            kt_wgmma_commit();
        }
        // The owner of tile v refills its buffer with tile v + 2 once this P V is done: say
        // so (only when that tile exists, so every arrival has its wait).
        // (Signalling before issuing the scores, with a wait for this P V alone, measured 3%
        // slower at 64 x 4096: the scores start later.)
        if (u < t_end) {
            issue_scores(u);
            kt_wgmma_wait<1>();
            named_bar_arrive(kBarFree + wg, kThreads);
        }
    };

    // Whole pipelines per warpgroup (a branch on the warp-uniform `wg`).
    if (wg == 0) {
        if (t_begin < t_end) issue_scores(t_begin);
        for (int t = t_begin; t < t_end; t += 2) {
            own_step(t);
            if (t + 1 < t_end) other_step(t + 1);
        }
    } else {
        for (int t = t_begin; t < t_end; t += 2) {
            other_step(t);
            if (t + 1 < t_end) own_step(t + 1);
        }
    }
    kt_wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 128; ++i) kt_reg_fence(o[i]);
#pragma unroll
    for (int i = 0; i < 16; ++i) kt_reg_fence_u32(pa[i]);

    // Row sums: the quad's share, then the two warpgroups' tiles in a fixed order. Both
    // warpgroups end at the same running max (the last tile's).
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
