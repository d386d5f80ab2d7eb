// MLA attention (DeepSeek V2/V3) in the latent space, over a paged latent cache: the core of
// the weight-absorbed form of kt_kernels::ops::mla_absorbed, with W_uk already folded into
// the query and W_uv left to the caller's next GEMM.
//
//   q      [rows, 576] bf16: per (token, head) row, q_lat (512, = W_uk^T q_nope) then q_pe (64)
//   cache  [num_blocks, block_size, 576] bf16: per token, the latent c (512) then k_pe (64)
//   table  [batch, max_blocks] int: sequence b's token k lives in block table[b][k / block_size]
//   out    [rows, 512] bf16: softmax(scale q . cache_k) . cache_k[:512]
//
// Sequence b owns query tokens cu_q[b] .. cu_q[b + 1] (rows token * heads + head) and
// kv_len[b] cache tokens, its new tokens being the last ones: token t of n sees cache tokens
// 0 ..= kv_len - n + t (decode: n = 1; causal prefill: n > 1).
//
// One block takes 64 query rows of one sequence (for 128 heads: half the heads of one token)
// and one split of its keys (flash-decoding); all 64 rows share each 32-key cache tile, which
// is loaded once per block with cp.async (double-buffered) and used by tensor-core mma for
// both products. Eight warps, three steps per tile:
//  1. scores: warp w multiplies rows 32 (w % 2) .. + 32 by the tile's keys over dims
//     144 (w / 2) .. + 144 (eight independent mma chains) and stores that partial S;
//  2. softmax: warp w adds the four partials of rows 8 w .. 8 w + 7 in a fixed order, masks,
//     updates the rows' running max and sum and writes P (bf16) and the rescale factor;
//  3. output: warp w keeps O for rows 32 (w % 2) .. + 32 and columns 128 (w / 2) .. + 128
//     (128 f32 accumulators per thread): O = alpha O + P V, V = the tile's latents.
// With one split the block writes `out`; with several it writes f32 partials (normalised
// output and log2-sum-exp per row) that kt_mla_combine_bf16 merges in a fixed order, so
// results are reproducible.
#include "include/kt_common.cuh"

#include "include/kt_async.cuh"
#include "include/kt_mma.cuh"

namespace {

constexpr int kLat = 512;            // kv_lora_rank
constexpr int kDim = 576;            // kv_lora_rank + rope: one cache row, one query row
constexpr int kDimPart = kDim / 4;   // dims one warp scores over (9 mma steps)
constexpr int kRows = 64;            // query rows per block
constexpr int kKeys = 32;            // keys per cache tile
constexpr int kThreads = 256;        // 8 warps
// Shared rows are padded by 16 bytes: a row is then 73 16-byte chunks, so the 8 rows one
// ldmatrix reads start in 8 different bank groups (unpadded, 72 chunks, they all collide).
constexpr int kStride = kDim + 8;
constexpr int kChunks = kDim / 8;    // 16-byte chunks per row
// Partial-score rows of 36 floats: a quad-strided float2 access of 8 rows hits every bank
// exactly twice (the minimum for 256 bytes).
constexpr int kSStride = kKeys + 4;
// P rows of 40 bf16 (5 chunks of 16 bytes): ldmatrix's 8 rows start in distinct bank groups.
constexpr int kPStride = kKeys + 8;
constexpr int kQBytes = kRows * kStride * 2;
constexpr int kKBytes = kKeys * kStride * 2;
constexpr int kSBytes = 4 * kRows * kSStride * 4; // one partial-score tile per dim quarter
constexpr int kPBytes = kRows * kPStride * 2;
constexpr int kSmemBytes = kQBytes + 2 * kKBytes + kSBytes + kPBytes + 3 * kRows * 4;
// kt-kernels/src/cuda/mla.rs launches with this much dynamic shared memory (SMEM_BYTES).
static_assert(kSmemBytes == 192256, "update SMEM_BYTES in kt-kernels/src/cuda/mla.rs");
constexpr float kNegInf = -__builtin_huge_valf();


// Rounds (lo, hi) to a bf16 pair; `sum` gets the rounded values, so the softmax denominator
// adds exactly the weights the mma multiplies by.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi, float& sum) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    sum += __low2float(v) + __high2float(v);
    return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

__device__ void mla_attn(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                         const int* __restrict__ table, const int* __restrict__ cu_q,
                         const int* __restrict__ kv_lens, int heads, int block_size, int max_blocks,
                         float scale_log2, __nv_bfloat16* __restrict__ out,
                         float* __restrict__ part_o, float* __restrict__ part_lse, int rows_total,
                         const int* __restrict__ live_splits) {
    extern __shared__ __align__(128) uint8_t smem[];
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* ks0 = reinterpret_cast<__nv_bfloat16*>(smem + kQBytes);
    float* sp = reinterpret_cast<float*>(smem + kQBytes + 2 * kKBytes);
    __nv_bfloat16* ps = reinterpret_cast<__nv_bfloat16*>(smem + kQBytes + 2 * kKBytes + kSBytes);
    float* m_s = reinterpret_cast<float*>(smem + kQBytes + 2 * kKBytes + kSBytes + kPBytes);
    float* l_s = m_s + kRows;
    float* a_s = l_s + kRows;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int rh = warp & 1;  // 32-row half of the 64 rows (S and O)
    const int wq = warp >> 1; // quarter of the dims (S) or of the output columns (O)
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
    if (row0 >= nrows) return; // a shorter sequence than the grid's longest
    const int kv_len = kv_lens[b];
    const int first_key_row = kv_len - ntok; // cache position of the sequence's first new token
    const int last_row = min(row0 + kRows, nrows) - 1;
    const int vis_max = first_key_row + last_row / heads + 1;
    const int tiles_seq = (kv_len + kKeys - 1) / kKeys;
    const int per_split = (tiles_seq + splits - 1) / splits;
    const int t_begin = split * per_split;
    const int t_end = min(min(t_begin + per_split, tiles_seq), (vis_max + kKeys - 1) / kKeys);
    const size_t grow0 = (size_t)tok0 * heads + row0; // global index of local row 0

    // The query tile, once; rows past the sequence are zeros (and see no key).
    for (int c = tid; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, ch = c % kChunks;
        const bool ok = row0 + r < nrows;
        const __nv_bfloat16* src = ok ? q + (grow0 + r) * kDim + ch * 8 : q;
        kt_cp_async16(qs + r * kStride + ch * 8, src, ok ? 16 : 0);
    }
    // Cache tile t into buffer `buf`: each row looks up its own block, so any block size works.
    auto load_tile = [&](int t, int buf) {
        __nv_bfloat16* dst = ks0 + buf * (kKeys * kStride);
        for (int c = tid; c < kKeys * kChunks; c += kThreads) {
            const int r = c / kChunks, ch = c % kChunks;
            const int key = t * kKeys + r;
            const __nv_bfloat16* src = cache;
            if (key < kv_len) {
                const int blk = table[(size_t)b * max_blocks + key / block_size];
                src = cache + ((size_t)blk * block_size + key % block_size) * kDim + ch * 8;
            }
            kt_cp_async16(dst + r * kStride + ch * 8, src, key < kv_len ? 16 : 0);
        }
    };
    if (t_begin < t_end) load_tile(t_begin, 0);
    kt_cp_async_commit();
    if (tid < kRows) {
        m_s[tid] = kNegInf;
        l_s[tid] = 0.0f;
    }

    // Softmax role: row srow, keys skc .. skc + 7 of each tile; it sees `svis` keys.
    const int srow = 8 * warp + (lane >> 2);
    const int skc = 8 * (lane & 3);
    const int svis = row0 + srow < nrows ? first_key_row + (row0 + srow) / heads + 1 : 0;
    const int qc = 2 * (lane & 3); // fragment column within an 8-wide tile

    float o[2][16][4]; // rows 32 rh + 16 i + {lane/4, lane/4 + 8}, columns 128 wq + 8 n + qc
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int n = 0; n < 16; ++n) o[i][n][0] = o[i][n][1] = o[i][n][2] = o[i][n][3] = 0.0f;

    for (int t = t_begin; t < t_end; ++t) {
        const int buf = (t - t_begin) & 1;
        kt_cp_async_wait_all();
        __syncthreads(); // tile t (and Q) landed; everyone is done with tile t - 1, S and P
        if (t + 1 < t_end) load_tile(t + 1, buf ^ 1);
        kt_cp_async_commit();
        const __nv_bfloat16* ks = ks0 + buf * (kKeys * kStride);

        // Partial scores S[32 rows, 32 keys] over this warp's 144 dims: eight independent
        // accumulator chains of nine mma each.
        {
            float acc[2][4][4];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int n = 0; n < 4; ++n) acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.0f;
            const __nv_bfloat16* qa =
                qs + (32 * rh + (lane & 15)) * kStride + kDimPart * wq + (lane >> 4) * 8;
            const __nv_bfloat16* kb =
                ks + ((lane >> 4) * 8 + (lane & 7)) * kStride + kDimPart * wq + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < kDimPart / 16; ++kk) {
                uint32_t a0[4], a1[4], b0[4], b1[4];
                ldmatrix_x4(a0, qa + kk * 16);
                ldmatrix_x4(a1, qa + 16 * kStride + kk * 16);
                ldmatrix_x4(b0, kb + kk * 16);
                ldmatrix_x4(b1, kb + 16 * kStride + kk * 16);
                mma_bf16(acc[0][0], a0, b0[0], b0[1]);
                mma_bf16(acc[0][1], a0, b0[2], b0[3]);
                mma_bf16(acc[0][2], a0, b1[0], b1[1]);
                mma_bf16(acc[0][3], a0, b1[2], b1[3]);
                mma_bf16(acc[1][0], a1, b0[0], b0[1]);
                mma_bf16(acc[1][1], a1, b0[2], b0[3]);
                mma_bf16(acc[1][2], a1, b1[0], b1[1]);
                mma_bf16(acc[1][3], a1, b1[2], b1[3]);
            }
            float* dst = sp + wq * (kRows * kSStride);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = 32 * rh + 16 * i + (lane >> 2);
#pragma unroll
                for (int n = 0; n < 4; ++n) {
                    *reinterpret_cast<float2*>(dst + r * kSStride + 8 * n + qc) =
                        make_float2(acc[i][n][0], acc[i][n][1]);
                    *reinterpret_cast<float2*>(dst + (r + 8) * kSStride + 8 * n + qc) =
                        make_float2(acc[i][n][2], acc[i][n][3]);
                }
            }
        }
        __syncthreads();

        // Online softmax, once per row: the four partial scores added in a fixed order, scaled
        // (log2 domain), masked; P rounded to bf16 for the mma, the row's running max, sum and
        // rescale factor kept in shared memory.
        {
            float sv[8];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float4 part[4];
#pragma unroll
                for (int d = 0; d < 4; ++d)
                    part[d] = *reinterpret_cast<const float4*>(sp + d * (kRows * kSStride) +
                                                               srow * kSStride + skc + 4 * h);
                sv[4 * h + 0] = (part[0].x + part[1].x) + (part[2].x + part[3].x);
                sv[4 * h + 1] = (part[0].y + part[1].y) + (part[2].y + part[3].y);
                sv[4 * h + 2] = (part[0].z + part[1].z) + (part[2].z + part[3].z);
                sv[4 * h + 3] = (part[0].w + part[1].w) + (part[2].w + part[3].w);
            }
            const int key0 = t * kKeys + skc;
            float mx = kNegInf;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                sv[i] = key0 + i < svis ? sv[i] * scale_log2 : kNegInf;
                mx = fmaxf(mx, sv[i]);
            }
            const float m_old = m_s[srow];
            const float m_new = fmaxf(m_old, quad_max(mx));
            // A row that has seen no key yet keeps m = -inf; subtracting 0 keeps exp2 at 0.
            const float base = m_new == kNegInf ? 0.0f : m_new;
            const float alpha = exp2f(m_old - base);
            float sum = 0.0f;
            uint4 packed;
            packed.x = pack_bf16(exp2f(sv[0] - base), exp2f(sv[1] - base), sum);
            packed.y = pack_bf16(exp2f(sv[2] - base), exp2f(sv[3] - base), sum);
            packed.z = pack_bf16(exp2f(sv[4] - base), exp2f(sv[5] - base), sum);
            packed.w = pack_bf16(exp2f(sv[6] - base), exp2f(sv[7] - base), sum);
            *reinterpret_cast<uint4*>(ps + srow * kPStride + skc) = packed;
            sum = quad_sum(sum);
            if ((lane & 3) == 0) {
                l_s[srow] = l_s[srow] * alpha + sum;
                m_s[srow] = m_new;
                a_s[srow] = alpha;
            }
        }
        __syncthreads();

        // O[32 rows, 128 columns] = alpha O + P[32, 32] V[32, 128], V = the tile's latents.
        {
            float al[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                al[i][0] = a_s[32 * rh + 16 * i + (lane >> 2)];
                al[i][1] = a_s[32 * rh + 16 * i + (lane >> 2) + 8];
            }
            const bool keep = al[0][0] == 1.0f && al[0][1] == 1.0f && al[1][0] == 1.0f && al[1][1] == 1.0f;
            if (!__all_sync(0xffffffffu, keep)) { // most tiles leave every row's max alone
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int n = 0; n < 16; ++n) {
                        o[i][n][0] *= al[i][0];
                        o[i][n][1] *= al[i][0];
                        o[i][n][2] *= al[i][1];
                        o[i][n][3] *= al[i][1];
                    }
            }
            uint32_t pa[2][2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j)
                    ldmatrix_x4(pa[i][j], ps + (32 * rh + 16 * i + (lane & 15)) * kPStride + 16 * j +
                                              (lane >> 4) * 8);
            const __nv_bfloat16* vb =
                ks + (((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + 128 * wq + (lane >> 4) * 8;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
#pragma unroll
                for (int np = 0; np < 8; ++np) {
                    uint32_t bv[4];
                    ldmatrix_x4_trans(bv, vb + 16 * j * kStride + 16 * np);
                    mma_bf16(o[0][2 * np], pa[0][j], bv[0], bv[1]);
                    mma_bf16(o[0][2 * np + 1], pa[0][j], bv[2], bv[3]);
                    mma_bf16(o[1][2 * np], pa[1][j], bv[0], bv[1]);
                    mma_bf16(o[1][2 * np + 1], pa[1][j], bv[2], bv[3]);
                }
            }
        }
    }
    kt_cp_async_wait_all(); // nothing may land in shared memory after the block exits
    __syncthreads();     // the row sums are final (and initialised, if no tile ran)

    const int col0 = 128 * wq + qc;
    float* po = part_o + (size_t)split * rows_total * kLat;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int r = 32 * rh + 16 * i + (lane >> 2) + 8 * hh;
            if (row0 + r >= nrows) continue;
            const float l = l_s[r];
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            const size_t g = grow0 + r;
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                const float x = o[i][n][2 * hh] * inv, y = o[i][n][2 * hh + 1] * inv;
                if (splits == 1) {
                    *reinterpret_cast<__nv_bfloat162*>(out + g * kLat + col0 + 8 * n) = __floats2bfloat162_rn(x, y);
                } else {
                    *reinterpret_cast<float2*>(po + g * kLat + col0 + 8 * n) = make_float2(x, y);
                }
            }
        }
    }
    if (splits > 1 && tid < kRows && row0 + tid < nrows) {
        // log2 of the split's softmax denominator in the scores' own scale; -inf: no key seen.
        const float l = l_s[tid];
        part_lse[(size_t)split * rows_total + grow0 + tid] = l > 0.0f ? m_s[tid] + log2f(l) : kNegInf;
    }
}

// out[r, :] = sum_s w_s part_o[s, r, :] / sum_s w_s with w_s = 2^(lse_s - max lse): the
// splits' softmaxes merged into one. One block of 128 threads per row, 4 columns each.
__device__ void mla_combine(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                            __nv_bfloat16* __restrict__ out, int splits, int rows_total,
                            const int* __restrict__ live_splits) {
    if (live_splits != nullptr) {
        splits = *live_splits;
        if (splits == 1) return; // the attention kernel wrote `out` itself
    }
    const size_t r = blockIdx.x;
    const int c = 4 * threadIdx.x;
    float mx = kNegInf;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[(size_t)s * rows_total + r]);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float wsum = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float lse = part_lse[(size_t)s * rows_total + r];
        if (lse == kNegInf) continue; // a split with no visible key holds no output
        const float w = exp2f(lse - mx);
        const float4 v = *reinterpret_cast<const float4*>(part_o + ((size_t)s * rows_total + r) * kLat + c);
        wsum += w;
        acc[0] += w * v.x;
        acc[1] += w * v.y;
        acc[2] += w * v.z;
        acc[3] += w * v.w;
    }
    // Every row sees key 0, so split 0 always contributes and wsum >= 1.
    const float inv = 1.0f / wsum;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + r * kLat + c);
    dst[0] = __floats2bfloat162_rn(acc[0] * inv, acc[1] * inv);
    dst[1] = __floats2bfloat162_rn(acc[2] * inv, acc[3] * inv);
}

} // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    kt_mla_attn_bf16(const __nv_bfloat16* q, const __nv_bfloat16* cache, const int* table,
                     const int* cu_q, const int* kv_lens, int heads, int block_size, int max_blocks,
                     float scale_log2, __nv_bfloat16* out, float* part_o, float* part_lse,
                     int rows_total, const int* live_splits) {
    mla_attn(q, cache, table, cu_q, kv_lens, heads, block_size, max_blocks, scale_log2, out, part_o,
             part_lse, rows_total, live_splits);
}

extern "C" __global__ void __launch_bounds__(128)
    kt_mla_combine_bf16(const float* part_o, const float* part_lse, __nv_bfloat16* out, int splits,
                        int rows_total, const int* live_splits) {
    mla_combine(part_o, part_lse, out, splits, rows_total, live_splits);
}
