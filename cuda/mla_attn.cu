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
// and one split of its keys (flash-decoding); all 64 rows share each cache tile, which is
// loaded once per block with cp.async (double-buffered) and used by tensor-core mma for both
// products: S = Q K^T over 576 dims, then O += P V over the first 512. Eight warps: for S,
// warp w scores rows 16 (w % 4) against keys 16 (w / 4) of the 32-key tile; after the scores
// meet in shared memory, it keeps the online softmax of those 16 rows and the output columns
// 256 (w / 4) ..: 16 x 256 f32 accumulators per warp. With one split the block writes `out`;
// with several it writes f32 partials (normalised output and log2-sum-exp per row) that
// kt_mla_combine_bf16 merges in a fixed order, so results are reproducible.
#include "include/kt_common.cuh"

namespace {

constexpr int kLat = 512;            // kv_lora_rank
constexpr int kDim = 576;            // kv_lora_rank + rope: one cache row, one query row
constexpr int kRows = 64;            // query rows per block
constexpr int kKeys = 32;            // keys per cache tile
constexpr int kThreads = 256;        // 8 warps
// Shared rows are padded by 16 bytes: a row is then 73 16-byte chunks, so the 8 rows one
// ldmatrix reads start in 8 different bank groups (unpadded, 72 chunks, they all collide).
constexpr int kStride = kDim + 8;
constexpr int kChunks = kDim / 8;    // 16-byte chunks per row
// Scores row stride in floats: 40 puts rows 0-3 of a quad-strided read on disjoint banks.
constexpr int kSStride = kKeys + 8;
constexpr int kQBytes = kRows * kStride * 2;
constexpr int kKBytes = kKeys * kStride * 2;
constexpr int kSmemBytes = kQBytes + 2 * kKBytes + kRows * kSStride * 4;
// kt-kernels/src/cuda/mla.rs launches with this much dynamic shared memory (SMEM_BYTES).
static_assert(kSmemBytes == 159744, "update SMEM_BYTES in kt-kernels/src/cuda/mla.rs");
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes 0 fills the destination with zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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
                         float* __restrict__ part_o, float* __restrict__ part_lse, int rows_total) {
    extern __shared__ __align__(128) uint8_t smem[];
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* ks0 = reinterpret_cast<__nv_bfloat16*>(smem + kQBytes);
    float* ss = reinterpret_cast<float*>(smem + kQBytes + 2 * kKBytes);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int rb = warp & 3;   // 16-row block of the 64 rows
    const int half = warp >> 2; // key half for S, output-column half for O
    const int b = blockIdx.z;
    const int split = blockIdx.y;
    const int splits = gridDim.y;

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
        cp_async16(qs + r * kStride + ch * 8, src, ok ? 16 : 0);
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
            cp_async16(dst + r * kStride + ch * 8, src, key < kv_len ? 16 : 0);
        }
    };
    if (t_begin < t_end) load_tile(t_begin, 0);
    cp_async_commit();

    // This thread's two rows (of the S and O fragments) and how many keys they see.
    const int lr0 = 16 * rb + (lane >> 2);
    const int lr1 = lr0 + 8;
    const int vis0 = row0 + lr0 < nrows ? first_key_row + (row0 + lr0) / heads + 1 : 0;
    const int vis1 = row0 + lr1 < nrows ? first_key_row + (row0 + lr1) / heads + 1 : 0;
    const int qc = 2 * (lane & 3); // fragment column within an 8-wide tile

    float o[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;

    for (int t = t_begin; t < t_end; ++t) {
        const int buf = (t - t_begin) & 1;
        cp_async_wait_all();
        __syncthreads(); // tile t (and Q) landed; everyone is done with tile t - 1 and the scores
        if (t + 1 < t_end) load_tile(t + 1, buf ^ 1);
        cp_async_commit();
        const __nv_bfloat16* ks = ks0 + buf * (kKeys * kStride);

        // S[16 rows, 16 keys] over 576 dims.
        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        const __nv_bfloat16* qa = qs + (16 * rb + (lane & 15)) * kStride + (lane >> 4) * 8;
        const __nv_bfloat16* kb =
            ks + (16 * half + (lane >> 4) * 8 + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;
#pragma unroll 4
        for (int kk = 0; kk < kDim / 16; ++kk) {
            uint32_t a[4], bk[4];
            ldmatrix_x4(a, qa + kk * 16);
            ldmatrix_x4(bk, kb + kk * 16);
            mma_bf16(s[0], a, bk[0], bk[1]);
            mma_bf16(s[1], a, bk[2], bk[3]);
        }
        // Scaled (log2 domain) and masked scores to shared memory.
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int col = 16 * half + 8 * j + qc;
            const int key = t * kKeys + col;
            float2 v0, v1;
            v0.x = key < vis0 ? s[j][0] * scale_log2 : kNegInf;
            v0.y = key + 1 < vis0 ? s[j][1] * scale_log2 : kNegInf;
            v1.x = key < vis1 ? s[j][2] * scale_log2 : kNegInf;
            v1.y = key + 1 < vis1 ? s[j][3] * scale_log2 : kNegInf;
            *reinterpret_cast<float2*>(ss + lr0 * kSStride + col) = v0;
            *reinterpret_cast<float2*>(ss + lr1 * kSStride + col) = v1;
        }
        __syncthreads();

        // Online softmax over the tile's 32 keys for rows lr0 and lr1 (both warps of a row block
        // compute the same values from the same scores).
        float p[2][8];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const float2 a0 = *reinterpret_cast<const float2*>(ss + lr0 * kSStride + 16 * j + qc);
            const float2 a1 = *reinterpret_cast<const float2*>(ss + lr1 * kSStride + 16 * j + qc);
            const float2 a2 = *reinterpret_cast<const float2*>(ss + lr0 * kSStride + 16 * j + 8 + qc);
            const float2 a3 = *reinterpret_cast<const float2*>(ss + lr1 * kSStride + 16 * j + 8 + qc);
            p[j][0] = a0.x; p[j][1] = a0.y; p[j][2] = a1.x; p[j][3] = a1.y;
            p[j][4] = a2.x; p[j][5] = a2.y; p[j][6] = a3.x; p[j][7] = a3.y;
        }
        float mx0 = fmaxf(fmaxf(fmaxf(p[0][0], p[0][1]), fmaxf(p[0][4], p[0][5])),
                          fmaxf(fmaxf(p[1][0], p[1][1]), fmaxf(p[1][4], p[1][5])));
        float mx1 = fmaxf(fmaxf(fmaxf(p[0][2], p[0][3]), fmaxf(p[0][6], p[0][7])),
                          fmaxf(fmaxf(p[1][2], p[1][3]), fmaxf(p[1][6], p[1][7])));
        mx0 = fmaxf(m0, quad_max(mx0));
        mx1 = fmaxf(m1, quad_max(mx1));
        // A row that has seen no key yet keeps m = -inf; subtracting 0 instead keeps exp2 at 0.
        const float base0 = mx0 == kNegInf ? 0.0f : mx0;
        const float base1 = mx1 == kNegInf ? 0.0f : mx1;
        const float alpha0 = exp2f(m0 - base0);
        const float alpha1 = exp2f(m1 - base1);
        m0 = mx0;
        m1 = mx1;
        float sum0 = 0.0f, sum1 = 0.0f;
        uint32_t pa[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            pa[j][0] = pack_bf16(exp2f(p[j][0] - base0), exp2f(p[j][1] - base0), sum0);
            pa[j][1] = pack_bf16(exp2f(p[j][2] - base1), exp2f(p[j][3] - base1), sum1);
            pa[j][2] = pack_bf16(exp2f(p[j][4] - base0), exp2f(p[j][5] - base0), sum0);
            pa[j][3] = pack_bf16(exp2f(p[j][6] - base1), exp2f(p[j][7] - base1), sum1);
        }
        l0 = l0 * alpha0 + sum0; // per-thread partial sums; the quad adds them up at the end
        l1 = l1 * alpha1 + sum1;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
            o[n][0] *= alpha0;
            o[n][1] *= alpha0;
            o[n][2] *= alpha1;
            o[n][3] *= alpha1;
        }

        // O[16 rows, 256 columns] += P[16, 32] V[32, 256], V = the tile's latents.
        const __nv_bfloat16* vb =
            ks + (((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + 256 * half + (lane >> 4) * 8;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
            for (int np = 0; np < 16; ++np) {
                uint32_t bv[4];
                ldmatrix_x4_trans(bv, vb + 16 * j * kStride + 16 * np);
                mma_bf16(o[2 * np], pa[j], bv[0], bv[1]);
                mma_bf16(o[2 * np + 1], pa[j], bv[2], bv[3]);
            }
        }
    }
    cp_async_wait_all(); // nothing may land in shared memory after the block exits

    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const bool ok0 = row0 + lr0 < nrows;
    const bool ok1 = row0 + lr1 < nrows;
    const size_t g0 = grow0 + lr0, g1 = grow0 + lr1;
    const int col0 = 256 * half + qc;
    if (splits == 1) {
#pragma unroll
        for (int n = 0; n < 32; ++n) {
            if (ok0) {
                *reinterpret_cast<__nv_bfloat162*>(out + g0 * kLat + col0 + 8 * n) =
                    __floats2bfloat162_rn(o[n][0] * inv0, o[n][1] * inv0);
            }
            if (ok1) {
                *reinterpret_cast<__nv_bfloat162*>(out + g1 * kLat + col0 + 8 * n) =
                    __floats2bfloat162_rn(o[n][2] * inv1, o[n][3] * inv1);
            }
        }
        return;
    }
    float* po = part_o + (size_t)split * rows_total * kLat;
#pragma unroll
    for (int n = 0; n < 32; ++n) {
        if (ok0) *reinterpret_cast<float2*>(po + g0 * kLat + col0 + 8 * n) = make_float2(o[n][0] * inv0, o[n][1] * inv0);
        if (ok1) *reinterpret_cast<float2*>(po + g1 * kLat + col0 + 8 * n) = make_float2(o[n][2] * inv1, o[n][3] * inv1);
    }
    if (half == 0 && (lane & 3) == 0) {
        // log2 of the split's softmax denominator in the scores' own scale; -inf: no key seen.
        float* pl = part_lse + (size_t)split * rows_total;
        if (ok0) pl[g0] = l0 > 0.0f ? m0 + log2f(l0) : kNegInf;
        if (ok1) pl[g1] = l1 > 0.0f ? m1 + log2f(l1) : kNegInf;
    }
}

// out[r, :] = sum_s w_s part_o[s, r, :] / sum_s w_s with w_s = 2^(lse_s - max lse): the
// splits' softmaxes merged into one. One block of 128 threads per row, 4 columns each.
__device__ void mla_combine(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                            __nv_bfloat16* __restrict__ out, int splits, int rows_total) {
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
                     int rows_total) {
    mla_attn(q, cache, table, cu_q, kv_lens, heads, block_size, max_blocks, scale_log2, out, part_o,
             part_lse, rows_total);
}

extern "C" __global__ void __launch_bounds__(128)
    kt_mla_combine_bf16(const float* part_o, const float* part_lse, __nv_bfloat16* out, int splits,
                        int rows_total) {
    mla_combine(part_o, part_lse, out, splits, rows_total);
}
