// MLA decode attention for one sequence and one new token (DeepSeek V2-Lite's 16 heads, V3's 128):
// the contract of kt_mla_attn_bf16 in mla_attn.cu (q, cache, table, kv_len, out; read its
// header) restricted to batch 1, q_len 1, spread over many more blocks.
//
// Why a kernel of its own: the 64-row kernels pad 16 query rows to a 64-row tile and give each
// block at least two 64-key tiles, so a decode over ~1k keys runs on ~9 of 132 SMs, each
// streaming its tiles at what one SM can keep in flight (latency bound; 13.6 us plus a 2.9 us
// combine on an H100 for 16 heads and 1.1k keys). Here a block takes 16 rows (heads) and a
// split of whole 32-key tiles; the split count is a function of the sequence's length alone
// (read on the device), so a captured graph replaying one grid at growing lengths and a plain
// launch of one length run the same key ranges, bit for bit:
//   tiles  = ceil(kv_len / 32), per = ceil(tiles / max_splits), splits = ceil(tiles / per).
// The grid has min(tiles of the largest length, max_splits) splits; the extra ones exit.
//
// Block: 4 warps, mma.sync m16n8k16 (bf16 in, f32 accumulate), rows = heads 16 g .. 16 g + 15
// (blockIdx.x = g; rows past the heads are zero and never written):
//  - scores: warp w takes keys 8 w .. 8 w + 7 of the tile over all 576 dims (36 mma);
//  - softmax: row maxima exchanged through shared memory (every warp derives the same running
//    max), P = 2^(s - m) rounded to bf16 into shared memory, the row sums add the rounded P;
//  - output: warp w keeps O[16 rows, 128 w .. 128 w + 127] and adds P V (V = the latents).
// Tiles are double-buffered with cp.async. Each split writes its normalized partial output and
// log2-sum-exp (f32); kt_mla_decode_small_combine merges them in a fixed order (always, also
// for one split), so the result does not depend on timing. On compute capability 9.0+ the host
// launches the combine as a programmatic dependent of the attention kernel (its blocks are
// scheduled while the attention runs and wait for its end), which hides the combine's launch.
#include "include/kt_common.cuh"

#include "include/kt_async.cuh"
#include "include/kt_pdl.cuh"
#include "include/kt_mma.cuh"

namespace {

constexpr int kLat = 512;
constexpr int kDim = 576;
constexpr int kRows = 16;            // query rows (heads) per block: the mma M
constexpr int kKeys = 32;            // keys per tile
constexpr int kThreads = 128;        // 4 warps
constexpr int kWarps = kThreads / 32;
// Shared rows padded by 16 bytes (73 chunks): the 8 rows of one ldmatrix start in 8 distinct
// bank groups.
constexpr int kStride = kDim + 8;
constexpr int kChunks = kDim / 8;    // 16-byte chunks per row
constexpr int kPStride = kKeys + 8;  // P rows of 40 bf16 (5 chunks): conflict-free ldmatrix
constexpr int kQBytes = kRows * kStride * 2;
constexpr int kKBytes = kKeys * kStride * 2;
constexpr int kPBytes = kRows * kPStride * 2;
constexpr int kRedBytes = 2 * kWarps * kRows * 4; // per warp and row: maxima, then sums
constexpr int kSmemBytes = kQBytes + 2 * kKBytes + kPBytes + kRedBytes;
// kt-kernels/src/cuda/mla_small.rs launches with this much dynamic shared memory.
static_assert(kSmemBytes == 95232, "update SMEM_BYTES in kt-kernels/src/cuda/mla_small.rs");
// The combine keeps one weight per split in shared memory.
constexpr int kMaxSplits = 1024;
constexpr int kCombineThreads = 256; // 8 warps over the splits, 32 lanes x 4 columns
static_assert(kMaxSplits % kCombineThreads == 0, "the combine reads the splits' lse in whole rounds");
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The split plan of a sequence of kv_len keys (see the header): splits and tiles per split.
__device__ __forceinline__ void plan(int kv_len, int max_splits, int& splits, int& per) {
    const int tiles = (kv_len + kKeys - 1) / kKeys;
    per = (tiles + max_splits - 1) / max_splits;
    splits = (tiles + per - 1) / per;
}

} // namespace

// q [heads, 576] bf16, cache [blocks, block_size, 576] bf16, table [>= ceil(kv_len /
// block_size)] (sequence 0's row), kv_lens [1] (device: a graph changes it between launches);
// part_o [grid splits, heads, 512] f32, part_lse [grid splits, heads] f32.
extern "C" __global__ void __launch_bounds__(kThreads)
    kt_mla_decode_small_bf16(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                             const int* __restrict__ table, const int* __restrict__ kv_lens, int heads,
                             int block_size, float scale_log2, int max_splits, float* __restrict__ part_o,
                             float* __restrict__ part_lse) {
    extern __shared__ __align__(128) uint8_t smem[];
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* ks0 = reinterpret_cast<__nv_bfloat16*>(smem + kQBytes);
    __nv_bfloat16* ps = reinterpret_cast<__nv_bfloat16*>(smem + kQBytes + 2 * kKBytes);
    float* red_max = reinterpret_cast<float*>(smem + kQBytes + 2 * kKBytes + kPBytes); // [warp][row]
    float* red_sum = red_max + kWarps * kRows;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int row0 = blockIdx.x * kRows;
    // the combine (launched as a programmatic dependent) may be scheduled from here on; it
    // waits for this grid's end before it reads what this grid writes
    kt_launch_dependents();
    const int g = lane >> 2;         // accumulator rows g and g + 8
    const int qc = 2 * (lane & 3);   // accumulator column pair

    // The query rows (zeros past the heads) first: they do not depend on the length, so their
    // copies are in flight while it is read. They and the first tile form one cp.async group.
    for (int c = tid; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, ch = c % kChunks;
        const bool ok = row0 + r < heads;
        kt_cp_async16(qs + r * kStride + ch * 8, ok ? q + (size_t)(row0 + r) * kDim + ch * 8 : q, ok ? 16 : 0);
    }
    const int kv_len = kv_lens[0];
    int splits, per;
    plan(kv_len, max_splits, splits, per);
    const int split = blockIdx.y;
    if (split >= splits) {
        kt_cp_async_wait_all();
        return;
    }
    const int tiles = (kv_len + kKeys - 1) / kKeys;
    const int t_begin = split * per;
    const int t_end = min(t_begin + per, tiles);
    auto load_tile = [&](int t, int buf) {
        __nv_bfloat16* dst = ks0 + buf * (kKBytes / 2);
        for (int c = tid; c < kKeys * kChunks; c += kThreads) {
            const int r = c / kChunks, ch = c % kChunks;
            const int key = t * kKeys + r;
            const bool ok = key < kv_len;
            const __nv_bfloat16* src = cache;
            if (ok) {
                const int blk = table[key / block_size];
                src = cache + ((size_t)blk * block_size + key % block_size) * kDim + ch * 8;
            }
            kt_cp_async16(dst + r * kStride + ch * 8, src, ok ? 16 : 0);
        }
    };
    load_tile(t_begin, 0);
    kt_cp_async_commit();

    float o[16][4]; // n-tiles of 8 columns: 128 warp + 8 j
#pragma unroll
    for (int j = 0; j < 16; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m_run[2] = {kNegInf, kNegInf};
    float l_part[2] = {0.0f, 0.0f}; // this thread's share of the rows' sums (its keys)

    for (int t = t_begin; t < t_end; ++t) {
        const int buf = (t - t_begin) & 1;
        if (t + 1 < t_end) load_tile(t + 1, buf ^ 1);
        kt_cp_async_commit();
        asm volatile("cp.async.wait_group 1;\n" ::: "memory"); // everything but tile t + 1
        __syncthreads();
        const __nv_bfloat16* ks = ks0 + buf * (kKBytes / 2);

        // S[16 rows, keys 8 warp ..] over 576 dims: two k-steps per B ldmatrix.
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 6
        for (int k0 = 0; k0 < kDim; k0 += 32) {
            uint32_t a0[4], a1[4], b[4];
            ldmatrix_x4(a0, qs + (lane & 15) * kStride + k0 + (lane >> 4) * 8);
            ldmatrix_x4(a1, qs + (lane & 15) * kStride + k0 + 16 + (lane >> 4) * 8);
            ldmatrix_x4(b, ks + (8 * warp + (lane & 7)) * kStride + k0 + (lane >> 3) * 8);
            mma_bf16(s, a0, b[0], b[1]);
            mma_bf16(s, a1, b[2], b[3]);
        }
        // scale, mask keys past the sequence, this warp's row maxima
        float mx[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int key = t * kKeys + 8 * warp + qc + e;
                s[2 * h + e] = key < kv_len ? s[2 * h + e] * scale_log2 : kNegInf;
            }
            mx[h] = quad_max(fmaxf(s[2 * h], s[2 * h + 1]));
            if ((lane & 3) == 0) red_max[warp * kRows + g + 8 * h] = mx[h];
        }
        __syncthreads(); // (A) every warp's maxima are in
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = g + 8 * h;
            float m_new = m_run[h];
#pragma unroll
            for (int w = 0; w < kWarps; ++w) m_new = fmaxf(m_new, red_max[w * kRows + r]);
            // every tile of a split has a visible key, so m_new is finite
            alpha[h] = exp2f(m_run[h] - m_new);
            m_run[h] = m_new;
            const __nv_bfloat162 p =
                __floats2bfloat162_rn(exp2f(s[2 * h] - m_new), exp2f(s[2 * h + 1] - m_new));
            l_part[h] = l_part[h] * alpha[h] + (__low2float(p) + __high2float(p));
            *reinterpret_cast<__nv_bfloat162*>(ps + r * kPStride + 8 * warp + qc) = p;
        }
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }
        __syncthreads(); // (B) P complete
        // O[16, 128 warp ..] += P[16, 32] V[32, 128 warp ..]
#pragma unroll
        for (int k0 = 0; k0 < kKeys; k0 += 16) {
            uint32_t a[4];
            ldmatrix_x4(a, ps + (lane & 15) * kPStride + k0 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < 16; j += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, ks + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride +
                                         128 * warp + 8 * j + (lane >> 4) * 8);
                mma_bf16(o[j], a, b[0], b[1]);
                mma_bf16(o[j + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); // (C) done with buffer `buf`, P and red_max before they are reused
    }
    kt_cp_async_wait_all();

    // Row sums: the quad's share, then the warps' in a fixed order.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float l = quad_sum(l_part[h]);
        if ((lane & 3) == 0) red_sum[warp * kRows + g + 8 * h] = l;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = g + 8 * h;
        if (row0 + r >= heads) continue;
        float l = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) l += red_sum[w * kRows + r];
        const float inv = 1.0f / l; // l >= 1: the row's maximum key contributes 2^0
        float* po = part_o + ((size_t)split * heads + row0 + r) * kLat + 128 * warp + qc;
#pragma unroll
        for (int j = 0; j < 16; ++j)
            *reinterpret_cast<float2*>(po + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
        if (warp == 0 && (lane & 3) == 0) part_lse[(size_t)split * heads + row0 + r] = m_run[h] + log2f(l);
    }
}

// out[h, :] = sum_s w_s part_o[s, h, :] / sum_s w_s, w_s = 2^(lse_s - max lse), over the splits
// kt_mla_decode_small_bf16 used for kv_lens[0] (the same plan). Block (h, c): head h, columns
// 128 c .. 128 c + 127 (4 per lane); warp w adds splits w, w + 8, ... (their loads in flight
// together), then the 8 warps' sums are added in order. Every split holds a visible key, so
// every weight is positive and max lse is finite.
extern "C" __global__ void __launch_bounds__(kCombineThreads)
    kt_mla_decode_small_combine(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                                const int* __restrict__ kv_lens, int heads, int max_splits,
                                __nv_bfloat16* __restrict__ out) {
    constexpr int kW = kCombineThreads / 32;
    __shared__ float w_s[kMaxSplits];
    __shared__ float4 acc_s[kW][32];
    __shared__ float red[kW];
    int splits, per;
    // kv_lens is complete before the wait: the attention kernel (an ordinary launch) started
    // after whatever wrote it, and lets this kernel start only from its own first instruction
    plan(kv_lens[0], max_splits, splits, per);
    // launched as a programmatic dependent of the attention kernel: its partials are complete
    // and visible only after this
    kt_wait_prerequisites();
    const int h = blockIdx.x, col0 = 128 * blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // the first kPre partials of each warp's splits load beside the lse values (they do not
    // depend on the weights): one trip to memory instead of two before the sums
    constexpr int kPre = 8;
    const float* src = part_o + (size_t)h * kLat + col0 + 4 * lane;
    float4 pre[kPre];
#pragma unroll
    for (int j = 0; j < kPre; ++j) {
        const int s = warp + j * kW;
        if (s < splits) pre[j] = *reinterpret_cast<const float4*>(src + (size_t)s * heads * kLat);
    }

    // each thread's lse values stay in registers between the max and the weights
    constexpr int kPer = kMaxSplits / kCombineThreads;
    float lse[kPer];
    float mx = kNegInf;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int s = tid + i * kCombineThreads;
        lse[i] = s < splits ? part_lse[(size_t)s * heads + h] : kNegInf;
        mx = fmaxf(mx, lse[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
#pragma unroll
    for (int w = 1; w < kW; ++w) mx = fmaxf(mx, red[w]);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int s = tid + i * kCombineThreads;
        if (s < splits) w_s[s] = exp2f(lse[i] - mx);
    }
    __syncthreads();

    // splits warp, warp + kW, ... in order: the prefetched ones, then the rest
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float wsum = 0.0f;
    auto add = [&](int s, const float4 v) {
        const float w = w_s[s];
        wsum += w;
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
    };
#pragma unroll
    for (int j = 0; j < kPre; ++j) {
        const int s = warp + j * kW;
        if (s < splits) add(s, pre[j]);
    }
#pragma unroll 4
    for (int s = warp + kPre * kW; s < splits; s += kW)
        add(s, *reinterpret_cast<const float4*>(src + (size_t)s * heads * kLat));
    acc_s[warp][lane] = acc;
    if (lane == 0) red[warp] = wsum; // every thread read red (the maxima) before the barrier above
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int w = 1; w < kW; ++w) {
        const float4 v = acc_s[w][lane];
        wsum += red[w];
        acc.x += v.x;
        acc.y += v.y;
        acc.z += v.z;
        acc.w += v.w;
    }
    const float inv = 1.0f / wsum;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + (size_t)h * kLat + col0 + 4 * lane);
    dst[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
    dst[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
}
