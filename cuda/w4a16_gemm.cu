// W4A16 GEMM (Marlin-style): out[m, n] = sum_k x[m, k] * W[n, k], with W stored as 4-bit
// symmetric integers (q - 8) and one scale per column per group of 128 along k, and x in
// f16 or bf16 (the scales have the activations' type). Tensor cores (mma.sync m16n8k16,
// sm_80+), a 4-stage cp.async pipeline, f32 accumulation.
//
// Weight layout (written by kt-kernels/src/cuda/w4a16.rs, the only producer): for each
// 64-column tile nt and each 16-deep k step ks, 32 lanes x 16 bytes; lane l holds, for the
// eight 8-column sub-tiles j, the four values its mma B fragment needs:
// column n = 64 nt + 8 j + l / 4 at k = 16 ks + 2 (l % 4) + {0, 1, 8, 9}. Word w (of 4)
// packs sub-tiles 2w and 2w+1 as nibbles {0: k+0, 4: k+1, 1: k+8, 5: k+9} and
// {2: k+0, 6: k+1, 3: k+8, 7: k+9}, so one mask-and-or per nibble pair yields a
// ready-made f16x2 / bf16x2 register (see dequant below). Chunk (nt, ks) starts at byte
// ((nt * K/16 + ks) * 32) * 16: each 64-column tile streams contiguously along k.
// Scales: [K/128][N] row-major.
//
// Two kernels read this layout:
// - kt_w4a16_gemv_* (m <= 16, decode and short chunks; the "small-m path" below): a
//   streaming kernel whose warps each own one 64-column tile and a slice of k.
// - kt_w4a16_gemm_* (any m; the host uses it past 16 rows), described next.
//
// Grid: x = N/64 column tiles, y = k splits, z = 16*MT-row tiles. Each of the 4 warps takes
// one 16-deep step of every 64-deep stage; the warps' partial sums are added in a fixed
// order through shared memory, so results are reproducible. With one split the block
// writes `out`; with several, f32 partials [split][M][N] that kt_w4a16_reduce_* adds up.
#include "include/kt_common.cuh"
#include "include/kt_pdl.cuh"

#include <cooperative_groups.h>

namespace {

constexpr int kThreads = 128; // 4 warps
constexpr int kStages = 4;
constexpr int kBN = 64;       // output columns per block
constexpr int kBK = 64;       // k per pipeline stage: one 16-deep mma step per warp
constexpr int kGroup = 128;   // quantization group along k
constexpr int kBBytes = kBN * kBK / 2;      // packed weights per stage
constexpr int kSBytes = kBN * 2;            // one group's scales for the tile's columns

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes 0 fills the destination with zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    cp_async16(smem_addr(dst), src, src_bytes);
}
// A 16-byte async copy issued only if `pred` (no branch around it); L1: also kept in L1
// (.ca: other blocks of the multiprocessor that read the same bytes hit there), else read
// from L2 only (.cg).
template <bool L1 = false> __device__ __forceinline__ void cp_async16_if(uint32_t dst, const void* src, bool pred) {
    if constexpr (L1) {
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
                     " @p cp.async.ca.shared.global [%0], [%1], 16;\n}\n" ::"r"(dst), "l"(src), "r"((int)pred));
    } else {
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
                     " @p cp.async.cg.shared.global [%0], [%1], 16;\n}\n" ::"r"(dst), "l"(src), "r"((int)pred));
    }
}
// A 16-byte async copy of src_bytes (the rest zero-filled) issued only if `pred`; L1 as above.
template <bool L1 = false>
__device__ __forceinline__ void cp_async16_zfill_if(uint32_t dst, const void* src, int src_bytes, bool pred) {
    if constexpr (L1) {
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n"
                     " @p cp.async.ca.shared.global [%0], [%1], 16, %2;\n}\n" ::"r"(dst), "l"(src),
                     "r"(src_bytes), "r"((int)pred));
    } else {
        asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n"
                     " @p cp.async.cg.shared.global [%0], [%1], 16, %2;\n}\n" ::"r"(dst), "l"(src),
                     "r"(src_bytes), "r"((int)pred));
    }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) { ldmatrix_x4(r, smem_addr(p)); }

template <typename T> struct Kind;

template <> struct Kind<__half> {
    using T2 = __half2;
    // (q & 0x000f000f) | 0x64006400 is the f16 pair (1024 + q_lo, 1024 + q_hi), exactly.
    static constexpr uint32_t kMagic = 0x64006400u;
    static __device__ __forceinline__ T2 offset() { return __float2half2_rn(1032.0f); }
    static __device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
            "{%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

template <> struct Kind<__nv_bfloat16> {
    using T2 = __nv_bfloat162;
    // bf16 keeps 7 mantissa bits: 0x4300 is 128.0 and 0x4300 | q is 128 + q, exactly.
    static constexpr uint32_t kMagic = 0x43004300u;
    static __device__ __forceinline__ T2 offset() { return __float2bfloat162_rn(136.0f); }
    static __device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
            "{%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// Nibbles 0 and 4 of `q` (after the caller's shift) to the pair s * (q - 8): the subtraction
// is exact, the product rounds once (the host reference rounds the same way).
template <typename T>
__device__ __forceinline__ uint32_t dequant(uint32_t q, typename Kind<T>::T2 s) {
    using T2 = typename Kind<T>::T2;
    uint32_t bits = (q & 0x000f000fu) | Kind<T>::kMagic;
    T2 v = __hsub2(*reinterpret_cast<T2*>(&bits), Kind<T>::offset());
    v = __hmul2_rn(v, s);
    return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T, int MT>
__device__ __forceinline__ void w4a16_gemm(const T* __restrict__ x, const uint4* __restrict__ qw,
                                           const T* __restrict__ scales, T* __restrict__ out,
                                           float* __restrict__ partial, int M, int N, int K,
                                           int groups_per_split) {
    constexpr int BM = 16 * MT;
    constexpr int kABytes = BM * kBK * 2;
    constexpr int kStageBytes = kABytes + kBBytes + kSBytes;
    static_assert(BM * kBN * 4 <= kStages * kStageBytes, "reduction buffer fits the pipeline");
    __shared__ __align__(128) uint8_t smem[kStages * kStageBytes];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int nt = blockIdx.x;
    const int n0 = nt * kBN;
    const int m0 = blockIdx.z * BM;
    const int k_tiles = K / kBK;
    const int kt_begin = blockIdx.y * groups_per_split * (kGroup / kBK);
    const int kt_end = min(kt_begin + groups_per_split * (kGroup / kBK), k_tiles);
    const int n_kt = kt_end - kt_begin;

    // Issues the copies of k tile `kt` into pipeline slot `slot`.
    auto load_stage = [&](int slot, int kt) {
        uint8_t* st = smem + slot * kStageBytes;
        const int k0 = kt * kBK;
        // Activations: BM rows x 8 chunks of 16 bytes; chunk c of row r lands at c ^ (r % 8)
        // so that ldmatrix's eight row reads hit eight different bank groups.
#pragma unroll
        for (int c = tid; c < BM * 8; c += kThreads) {
            const int r = c >> 3;
            const int ch = c & 7;
            const int row = m0 + r;
            const bool ok = row < M;
            const T* src = ok ? x + (size_t)row * K + k0 + ch * 8 : x;
            cp_async16(st + r * 128 + ((ch ^ (r & 7)) << 4), src, ok ? 16 : 0);
        }
        // Weights: 4 k steps x 32 lanes x 16 bytes, contiguous in global memory.
        cp_async16(st + kABytes + tid * 16, qw + ((size_t)nt * (K / 16) + (size_t)kt * 4) * 32 + tid, 16);
        // Scales of the group holding this k tile, for the tile's 64 columns.
        if (tid < kSBytes / 16) {
            cp_async16(st + kABytes + kBBytes + tid * 16, scales + (size_t)(k0 / kGroup) * N + n0 + tid * 8, 16);
        }
    };

    float acc[MT][8][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < n_kt) load_stage(s, kt_begin + s);
        cp_async_commit(); // empty groups keep the wait counts uniform
    }

    for (int it = 0; it < n_kt; ++it) {
        cp_async_wait<kStages - 2>();
        __syncthreads(); // tile `it` landed for all threads; slot (it - 1) % kStages is free
        if (it + kStages - 1 < n_kt) load_stage((it + kStages - 1) % kStages, kt_begin + it + kStages - 1);
        cp_async_commit();

        const uint8_t* st = smem + (it % kStages) * kStageBytes;
        uint32_t a[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            const int r = i * 16 + (lane & 15);
            const int ch = warp * 2 + (lane >> 4);
            ldmatrix_x4(a[i], st + r * 128 + ((ch ^ (r & 7)) << 4));
        }
        const uint4 bq = *reinterpret_cast<const uint4*>(st + kABytes + (warp * 32 + lane) * 16);
        const T* s_tile = reinterpret_cast<const T*>(st + kABytes + kBBytes);
        const uint32_t words[4] = {bq.x, bq.y, bq.z, bq.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            using T2 = typename Kind<T>::T2;
            const T s0 = s_tile[(2 * w) * 8 + (lane >> 2)];
            const T s1 = s_tile[(2 * w + 1) * 8 + (lane >> 2)];
            const T2 sj0 = T2(s0, s0);
            const T2 sj1 = T2(s1, s1);
            const uint32_t q = words[w];
            const uint32_t b00 = dequant<T>(q, sj0);
            const uint32_t b01 = dequant<T>(q >> 4, sj0);
            const uint32_t b10 = dequant<T>(q >> 8, sj1);
            const uint32_t b11 = dequant<T>(q >> 12, sj1);
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                Kind<T>::mma(acc[i][2 * w], a[i], b00, b01);
                Kind<T>::mma(acc[i][2 * w + 1], a[i], b10, b11);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the pipeline buffers are reused for the cross-warp sum

    float* red = reinterpret_cast<float*>(smem); // [BM][64]
#pragma unroll
    for (int round = 0; round < kThreads / 32; ++round) {
        if (warp == round) {
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = i * 16 + (lane >> 2) + 8 * h;
                        const int c = j * 8 + 2 * (lane & 3);
                        float* dst = red + r * kBN + c;
                        if (round == 0) {
                            dst[0] = acc[i][j][2 * h];
                            dst[1] = acc[i][j][2 * h + 1];
                        } else {
                            dst[0] += acc[i][j][2 * h];
                            dst[1] += acc[i][j][2 * h + 1];
                        }
                    }
        }
        __syncthreads();
    }

    for (int e = tid; e < BM * kBN; e += kThreads) {
        const int r = e / kBN;
        const int c = e % kBN;
        const int row = m0 + r;
        if (row >= M) continue;
        const float v = red[e];
        if (partial) {
            partial[((size_t)blockIdx.y * M + row) * N + n0 + c] = v;
        } else {
            out[(size_t)row * N + n0 + c] = kt_from_f32<T>(v);
        }
    }
}

// out = sum over splits of partial[split], in split order.
template <typename T>
__device__ __forceinline__ void w4a16_reduce(const float* __restrict__ partial, T* __restrict__ out,
                                             int splits, size_t mn) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < mn; e += (size_t)gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s) v += partial[(size_t)s * mn + e];
        out[e] = kt_from_f32<T>(v);
    }
}

// ---- Small-m path: out = x W^T for m <= 16 rows, a register-direct stream over the weights ----
//
// At a few rows the GEMM is a matrix-vector product bound by reading each weight byte once.
// The packed layout already holds, per lane, ready mma fragments, so the weights never touch
// shared memory: each warp streams its 64-column tile along k with 128-bit loads straight
// into registers (one uint4 per lane and 16-deep k step = four 16 x 16 A fragments), the next
// group of 128 (4 KiB per warp) in flight while it multiplies the current one; no barrier
// until the end. Per group and warp that is 8 weight loads, 16 NT loads of x, 8 of scales,
// 9 (f16) or 11 (bf16) dequantizing instructions per 256 weights and 4 NT mma per k step:
// ~390 SASS instructions per group at m <= 8 in f16 (12 per 256 weights; the shared-memory
// pipeline this replaced issued 21).
// A block's 4 warps cover TW = 4 / KW consecutive 64-column tiles, KW warps per tile
// (k-ways), over one slice of k (whole groups); k-way j takes groups j, j + KW, ... of the
// slice, so a tile's k-ways together read it front to back.
// The mma runs transposed, out^T = W x^T: the 16 columns of sub-tiles 2w and 2w + 1 of a
// lane's packed word w form exactly the mma A fragment (rows g and g + 8 at k pairs 2q and
// 2q + 8, g = lane / 4, q = lane % 4), and the rows of x are the n = 8 side (B), so m <= 8
// costs 4 mma per tile and k step (NT = 1 token tile) and m <= 16 costs 8 (NT = 2). A lane's B
// registers are x[8 t + g][16 s + 2 q + {0, 1}] and [.. + 8 + {0, 1}], read from global memory
// (through L1) at the start of their group at m <= 8; past 8 rows the block stages x in
// shared memory (gemv_stream_xs below) and the weights use one register buffer, not two.
// The A fragments are the integers q themselves (exact in f16 and bf16; the products with x
// are exact in the f32 accumulators): a group is summed unscaled and then added to the output
// sums as scale * sum in f32, one fused rounding per group. This is the exact int4 weight
// q * scale, where the tiled kernel multiplies with q * scale rounded to T.
// The k-ways of a tile are summed through shared memory in k-way order (at 4 k-ways all
// warps of the block add and write a quarter each, after one barrier; else the last k-way's
// warp, after KW - 1 in turn). With one k slice the block then writes `out`; with
// several it writes f32 partials [slice][M][N], and the last block of its column group to
// finish (an atomic counter per group, reset by that block for the next launch) adds the
// slices in slice order: deterministic, and no second launch. With
// 2-3 slices on compute capability 9.0+ the host launches each column group's slices as one
// thread-block cluster instead (`clustered`): the slices' sums meet in distributed shared
// memory and rank 0 adds them in the same order (the same bits), no partials, fence or counter.
// Launched as a programmatic dependent (host's choice, 9.0+), the kernel loads its first
// weights before griddepcontrol.wait and reads x only after it (see w4a16_gemv).
constexpr int kGvWarps = 4;
constexpr int kGvThreads = 32 * kGvWarps;
constexpr int kGvSteps = kGroup / 16; // 16-deep k steps per group

// A 16-byte load of data read once (served from L2 without allocating in L1, which keeps x),
// issued only if `pred`. The result is an output-only operand: where `pred` is false the
// registers hold garbage that the caller never reads, and the compiler need not keep (copy)
// their previous value as it must for a plain conditional load.
__device__ __forceinline__ uint4 ld_stream_if(const uint4* p, bool pred) {
    uint4 r;
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
                 " @p ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p), "r"((int)pred));
    return r;
}

// (a & MASK) | MAGIC in one lop3 (plain C++ becomes two: SASS takes one immediate).
template <uint32_t MASK, uint32_t MAGIC> __device__ __forceinline__ uint32_t and_or(uint32_t a) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "n"(MASK), "n"(MAGIC));
    return r;
}

// A packed word's four mma A registers as the integers q = nibble - 8 (see the layout at the
// top): {nibbles 0, 4}, {2, 6}, {1, 5}, {3, 7}.
template <typename T> struct Int4;

template <> struct Int4<__half> {
    static __device__ __forceinline__ uint32_t lo(uint32_t v) { // nibbles at bits 0 and 16
        uint32_t bits = and_or<0x000f000fu, 0x64006400u>(v);   // f16 1024 + nibble, exactly
        __half2 r = __hsub2(*reinterpret_cast<__half2*>(&bits), __float2half2_rn(1032.0f));
        return *reinterpret_cast<uint32_t*>(&r);
    }
    static __device__ __forceinline__ uint32_t hi(uint32_t v) { // nibbles at bits 4 and 20
        uint32_t bits = and_or<0x00f000f0u, 0x64006400u>(v);   // f16 1024 + 16 nibble, exactly
        __half2 r = __hfma2(*reinterpret_cast<__half2*>(&bits), __float2half2_rn(0.0625f),
                            __float2half2_rn(-72.0f));          // 64 + nibble - 72, exactly
        return *reinterpret_cast<uint32_t*>(&r);
    }
    static __device__ __forceinline__ void frag(uint32_t v, uint32_t* a) {
        const uint32_t v8 = v >> 8;
        a[0] = lo(v);
        a[1] = lo(v8);
        a[2] = hi(v);
        a[3] = hi(v8);
    }
};

template <> struct Int4<__nv_bfloat16> {
    // bf16 has 7 mantissa bits, so a nibble fits below the exponent only at bits 0-3.
    static __device__ __forceinline__ uint32_t lo(uint32_t v) {
        uint32_t bits = and_or<0x000f000fu, 0x43004300u>(v); // bf16 128 + nibble, exactly
        __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&bits), __float2bfloat162_rn(136.0f));
        return *reinterpret_cast<uint32_t*>(&r);
    }
    static __device__ __forceinline__ void frag(uint32_t v, uint32_t* a) {
        a[0] = lo(v);
        a[1] = lo(v >> 8);
        a[2] = lo(v >> 4);
        a[3] = lo(v >> 12);
    }
};

// acc[t][w][e] += scale * sum[t][w][e] for a group, in f32: sum[t][w][e] belongs to column
// 16 w + g (e < 2) or 16 w + 8 + g (e >= 2), whose scale is sc[w][e / 2].
template <typename T, int NT>
__device__ __forceinline__ void gemv_scale_add(float (&acc)[NT][4][4], const float (&sum)[NT][4][4],
                                               const T (&sc)[4][2]) {
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const float s0 = kt_to_f32(sc[w][0]);
        const float s1 = kt_to_f32(sc[w][1]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            acc[t][w][0] = fmaf(s0, sum[t][w][0], acc[t][w][0]);
            acc[t][w][1] = fmaf(s0, sum[t][w][1], acc[t][w][1]);
            acc[t][w][2] = fmaf(s1, sum[t][w][2], acc[t][w][2]);
            acc[t][w][3] = fmaf(s1, sum[t][w][3], acc[t][w][3]);
        }
    }
}

// 9-16 rows: x through shared memory. The m <= 8 form reads x itself: 32 4-byte loads per
// group and warp (each touching 8 rows' 32-byte sectors) whose 32 registers stay live for
// the whole group, 200 registers at 16 rows (2 blocks per multiprocessor). Here the block
// stages round r's x, groups g0 + r KW .. + KW - 1 as 16 full 256-byte rows each (16 threads
// per row, two 16-byte cp.async per thread and group), S - 1 rounds ahead in S buffers,
// plus each warp's scales of its group in that round; k-way j of every tile multiplies group
// g0 + r KW + j, its B registers from one ldmatrix.x4 per k step (both 8-row token tiles),
// and the block's TW = 4 / KW tiles share each group's x. One barrier per round: all warps
// run every round (tiles past n and k-ways past the slice's end only help staging).
// Weights: one register buffer; step u of the warp's next group is loaded as soon as step u
// of this one has been read (~160 registers, 3 blocks per multiprocessor).
// Measured (H100, session 8): 8-31% faster than the m <= 8 form at 16 rows on the DeepSeek
// shapes, best with 4 k-ways (no x shared between warps), and a first version in which each
// warp staged its own x (16 rows x 32 bytes per copy instruction) was no faster than the
// register form: the gain seems to come from x requested in whole rows, not from fewer x
// bytes (not profiled). x is staged with cp.async.ca, so that it stays in L1 too, where the
// other blocks of the multiprocessor (which read the same rows of x) hit it: H100, session
// 9, against L2-only copies (.cg), 1-2% at 9-16 rows on q_b_proj and kv_b_proj, the rest
// within noise (the blocks of a multiprocessor need not be in the same k range at once).
// Buffer layout: group j of buffer b at (b KW + j) 4 KiB; row r's 16-byte chunk c (k 8c..8c+7)
// at r * 256 + 16 (c ^ (r % 8)), so that the eight rows of an ldmatrix 8 x 8 matrix and the
// sixteen chunks of a row hit different bank groups. Rows past m are zero-filled.
constexpr int kXsRowBytes = kGroup * 2;
constexpr int kXsBytes = 16 * kXsRowBytes;

// Returns the staging buffer (S KW 4 KiB), which the caller may reuse once every warp of the
// block is past its last round (a barrier; the last round stages nothing, so only empty
// cp.async groups can be pending).
template <typename T, int KW>
__device__ __forceinline__ uint8_t* gemv_stream_xs(float (&acc)[2][4][4], const T* __restrict__ x,
                                               const uint4* __restrict__ qw, const T* __restrict__ scales,
                                               int M, int N, int K, int nt, bool tile_ok, int kway, int g0,
                                               int g_end) {
    // Rounds in flight: S - 1 (S buffers), as far as the 48 KiB of static shared memory allow.
    constexpr int S = KW == 4 ? 2 : 3;
    __shared__ __align__(128) uint8_t xs[S * KW * kXsBytes];
    __shared__ __align__(16) T xs_scales[kGvWarps * S * kBN];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = lane >> 2;
    const int rounds = (g_end - g0 + KW - 1) / KW; // >= 1: every slice has a group

    // Staging: thread t copies chunk t % 16 of rows t / 16 and t / 16 + 8 of each group (16
    // threads read one 256-byte row); (r + 8) % 8 == r % 8, so the second row's place is the
    // first's + 8 rows. Row t / 16 < 8 < m always holds here (m > 8).
    const int r0 = tid >> 4;
    const int ch = tid & 15;
    const uint32_t x_base = smem_addr(xs);
    const uint32_t x_st = x_base + r0 * kXsRowBytes + ((ch ^ r0) << 4);
    const int hi_bytes = r0 + 8 < M ? 16 : 0;
    // The next round to stage: its x rows (the high row a valid address even past m), the
    // warp's scales and how many of the slice's groups are left from it on. The staging
    // advances these by one round per call, so that a round's copies cost one predicate and
    // one 16-byte copy each, at immediate offsets from two pointers (indexing by the round
    // made ptxas rebuild every 64-bit address each round: 639 SASS instructions per round at
    // 4 k-ways in f16 then, 552 now).
    const T* xn_lo = x + (size_t)r0 * K + (size_t)g0 * kGroup + ch * 8;
    const T* xn_hi = hi_bytes ? xn_lo + (size_t)8 * K : xn_lo;
    const T* sn = scales + (size_t)(g0 + kway) * N + nt * kBN + (lane & 7) * 8;
    int left = g_end - g0;
    T* const ss = xs_scales + warp * S * kBN;
    const uint32_t ss_st = smem_addr(ss + (lane & 7) * 8);
    const bool s_copier = lane < 8 && tile_ok;
    // Issues the next round's copies into buffer `buf`.
    auto stage = [&](int buf) {
        const uint32_t d = x_st + buf * (KW * kXsBytes);
#pragma unroll
        for (int j = 0; j < KW; ++j) {
            cp_async16_if<true>(d + j * kXsBytes, xn_lo + j * kGroup, j < left);
            cp_async16_zfill_if<true>(d + j * kXsBytes + 8 * kXsRowBytes, xn_hi + j * kGroup, hi_bytes, j < left);
        }
        cp_async16_if(ss_st + buf * (kBN * (int)sizeof(T)), sn, s_copier && kway < left);
        xn_lo += KW * kGroup;
        xn_hi += KW * kGroup;
        sn += (size_t)KW * N;
        left -= KW;
    };
    // This lane's ldmatrix row for k step u of a group is at x_ld ^ 32 u from the group's
    // place: matrix l / 8 is rows 8 (l / 16) .. + 7 at k chunk 2 u + l / 8 % 2, lane l gives
    // row l % 8, and (2 u + s) ^ r == 2 u ^ (s ^ r) for s < 2 (the XOR changes only the chunk).
    const int mi = lane >> 3;
    const uint32_t x_ld = ((mi >> 1) * 8 + (lane & 7)) * kXsRowBytes + (((mi & 1) ^ (lane & 7)) << 4);

    constexpr int kWStride = KW * kGvSteps * 32; // uint4
    const uint4* wf = qw + ((size_t)nt * (K / 16) + (size_t)(g0 + kway) * kGvSteps) * 32 + lane;
    uint4 wb[kGvSteps];
    const bool first = tile_ok && g0 + kway < g_end;
#pragma unroll
    for (int u = 0; u < kGvSteps; ++u) wb[u] = ld_stream_if(wf + u * 32, first);
    wf += kWStride;
    kt_wait_prerequisites(); // x is the previous kernel's output: staged only from here on
#pragma unroll
    for (int rr = 0; rr < S - 1; ++rr) {
        if (rr < rounds) stage(rr);
        cp_async_commit(); // empty groups keep the wait count uniform
    }

    int buf = 0; // rr % S
    for (int rr = 0; rr < rounds; ++rr, buf = buf == S - 1 ? 0 : buf + 1) {
        cp_async_wait<S - 2>();
        __syncthreads(); // round rr landed for all; every warp is done with round rr - 1's buffer
        if (rr + S - 1 < rounds) stage(buf == 0 ? S - 1 : buf - 1);
        cp_async_commit();
        const int gw = g0 + rr * KW + kway;
        if (!tile_ok || gw >= g_end) continue; // nothing of this warp's in this round
        const bool next = gw + KW < g_end;
        const uint32_t x_grp = x_base + (buf * KW + kway) * kXsBytes;

        float sum[2][4][4]; // this group's unscaled sums
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int e = 0; e < 4; ++e) sum[t][w][e] = 0.0f;
#pragma unroll
        for (int u = 0; u < kGvSteps; ++u) {
            const uint4 v = wb[u];
            wb[u] = ld_stream_if(wf + u * 32, next);
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
            uint32_t xr[4]; // B registers of token tile t: xr[2 t], xr[2 t + 1]
            ldmatrix_x4(xr, (x_ld ^ (32u * u)) + x_grp);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                uint32_t a[4];
                Int4<T>::frag(words[w], a);
#pragma unroll
                for (int t = 0; t < 2; ++t) Kind<T>::mma(sum[t][w], a, xr[2 * t], xr[2 * t + 1]);
            }
        }
        wf += kWStride;
        T sc[4][2]; // read only now: no registers held across the group
#pragma unroll
        for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int h = 0; h < 2; ++h) sc[w][h] = ss[buf * kBN + 16 * w + 8 * h + g];
        gemv_scale_add<T, 2>(acc, sum, sc);
    }
    return xs;
}

// Visits the accumulators of a warp's NT x 4 m16n8 fragments (acc[t][w][e] of a thread,
// flattened as i = (t * 4 + w) * 4 + e): f(row, column, i) with row 8 t + 2 q + e % 2 and
// column col0 + 16 w + g + 8 (e / 2), unrolled. One place for the fragment layout that
// the direct store, the cluster sum and the partials share.
template <int NT, typename F>
__device__ __forceinline__ void kt_for_each_acc(int q, int g, int col0, F&& f) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int e = 0; e < 4; ++e) f(8 * t + 2 * q + (e & 1), col0 + 16 * w + g + 8 * (e >> 1), (t * 4 + w) * 4 + e);
}

// The k stream and the sums; m <= 8 (NT = 1) streams x itself, m > 8 calls gemv_stream_xs.
// The block works on column group blockIdx.x / slices, k slice blockIdx.x % slices, or with
// SPREAD on column group `group_arg`, k slice `slice_arg` (see w4a16_gemv_spread).
template <typename T, int NT, int KW, bool SPREAD = false>
__device__ __forceinline__ void w4a16_gemv(const T* __restrict__ x, const uint4* __restrict__ qw,
                                           const T* __restrict__ scales, T* __restrict__ out,
                                           float* __restrict__ partial, unsigned* __restrict__ counters,
                                           int M, int N, int K, int steps_per_slice, int slices,
                                           int clustered, int group_arg = 0, int slice_arg = 0) {
    constexpr int TW = kGvWarps / KW;
    constexpr int kAcc = NT * 16; // accumulators per lane
    constexpr bool PR = KW == 4; // the k-ways summed in parallel (see below)
    __shared__ float red[KW > 1 && !PR ? TW * kAcc * 32 : 1];
    __shared__ unsigned is_last;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = lane >> 2;
    const int q = lane & 3;
    const int tile_in = warp % TW;
    const int kway = warp / TW;
    const int group = SPREAD ? group_arg : blockIdx.x / slices; // column group: TW tiles
    const int slice = SPREAD ? slice_arg : blockIdx.x % slices;
    const int nt = group * TW + tile_in;
    const bool tile_ok = nt < N / kBN;
    const int per_slice = steps_per_slice / kGvSteps; // groups
    const int g_first = slice * per_slice + kway;
    const int g_end = min((slice + 1) * per_slice, K / kGroup);
    const int n_mine = tile_ok && g_first < g_end ? (g_end - g_first + KW - 1) / KW : 0;

    float acc[NT][4][4];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[t][w][e] = 0.0f;

    // Programmatic dependent launch: each stream below loads its first weights, which no kernel
    // writes, before it waits for the previous kernel; x, the scales, the workspace and the
    // output are touched only after the wait. The kernel lets its own dependents start only at
    // its exit (no griddepcontrol.launch_dependents): triggered as soon as all blocks ran, or
    // once all had streamed their k range, the next kernel's blocks took the free slots of
    // multiprocessors still busy with this one and packed a grid of under ~2 blocks per
    // multiprocessor unevenly (H100: shared expert down at 16 rows 8.5 us instead of 5.0).
    uint8_t* x_staging = nullptr; // 9-16 rows: the x staging buffer, free after a barrier
    if constexpr (NT == 2) {
        x_staging = gemv_stream_xs<T, KW>(acc, x, qw, scales, M, N, K, nt, tile_ok, kway, slice * per_slice, g_end);
    } else if (n_mine == 0) {
        kt_wait_prerequisites(); // before the writes below (this warp may be the writer)
    } else {
        // The three streams, each advanced by KW groups per group of this warp: weights (read
        // one group ahead), x and scales (read at the start of their group; the scales are
        // needed only at its end).
        constexpr int kWStride = KW * kGvSteps * 32; // uint4
        const int x_stride = KW * kGroup / 2;        // uint32 (pairs of x)
        const size_t s_stride = (size_t)KW * N;
        const uint4* wf = qw + ((size_t)nt * (K / 16) + (size_t)g_first * kGvSteps) * 32 + lane;
        const T* sp = scales + (size_t)g_first * N + nt * kBN + g;
        const uint32_t* xp[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            // Lanes of rows past m read row m - 1: their products land in output rows that are
            // never written, and every load stays unconditional.
            const int row = min(8 * t + g, M - 1);
            xp[t] = reinterpret_cast<const uint32_t*>(x + (size_t)row * K + g_first * kGroup + 2 * q);
        }

        // Two register buffers of one group each: group j + 1's weights go out at the start of
        // group j, into the buffer that group j - 1 has just consumed. The loop is unrolled by
        // two so that the buffer index is a compile-time constant.
        uint4 wb[2][kGvSteps];
#pragma unroll
        for (int u = 0; u < kGvSteps; ++u) wb[0][u] = ld_stream_if(wf + u * 32, true);
        wf += kWStride;
        kt_wait_prerequisites(); // x is the previous kernel's output: read only from here on
        for (int j0 = 0; j0 < n_mine; j0 += 2) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                const int j = j0 + b;
                if (j >= n_mine) break;
#pragma unroll
                for (int u = 0; u < kGvSteps; ++u) wb[b ^ 1][u] = ld_stream_if(wf + u * 32, j + 1 < n_mine);
                wf += kWStride;
                // xb[t][u] = the B registers of token tile t at step u; sc[w][h] = the scale of
                // column 16 w + 8 h + g.
                uint32_t xb[NT][kGvSteps][2];
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int u = 0; u < kGvSteps; ++u)
#pragma unroll
                        for (int h = 0; h < 2; ++h) xb[t][u][h] = __ldg(xp[t] + u * 8 + h * 4);
                T sc[4][2];
#pragma unroll
                for (int w = 0; w < 4; ++w)
#pragma unroll
                    for (int h = 0; h < 2; ++h) sc[w][h] = __ldg(sp + 16 * w + 8 * h);
#pragma unroll
                for (int t = 0; t < NT; ++t) xp[t] += x_stride;
                sp += s_stride;

                float sum[NT][4][4]; // this group's unscaled sums
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int w = 0; w < 4; ++w)
#pragma unroll
                        for (int e = 0; e < 4; ++e) sum[t][w][e] = 0.0f;
#pragma unroll
                for (int u = 0; u < kGvSteps; ++u) {
                    const uint4 v = wb[b][u];
                    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int w = 0; w < 4; ++w) {
                        uint32_t a[4];
                        Int4<T>::frag(words[w], a);
#pragma unroll
                        for (int t = 0; t < NT; ++t) Kind<T>::mma(sum[t][w], a, xb[t][u][0], xb[t][u][1]);
                    }
                }
                gemv_scale_add<T, NT>(acc, sum, sc);
            }
        }
    }
    // The sums this warp writes: own[k] is accumulator i0 + k of the tile (kt_for_each_acc's
    // flat index), and `writes` says whether it writes them.
    constexpr int kOwn = PR ? kAcc / KW : kAcc;
    float pr_sums[PR ? kOwn : 1];
    const float* own = PR ? pr_sums : &acc[0][0][0];
    int i0 = 0;
    bool writes;
    if constexpr (PR) {
        // 4 k-ways: every k-way leaves its sums in shared memory and, after one barrier, each
        // warp adds a quarter of them over the k-ways (in k-way order: the same bits as the
        // serial sum below) and writes them: one barrier instead of KW - 1 in turn, and the
        // output's stores spread over the block's warps instead of one. H100, session 10 (same
        // binary): 1-4% faster at 1 and 8 rows (shared expert down 5.76 -> 5.50 us at 1 row).
        // Past 8 rows the sums (16 KiB) reuse the x staging buffer (32 KiB), after a barrier
        // behind every warp's last ldmatrix: with a buffer of their own the block's shared
        // memory grew from 42 to 58 KiB, taken from L1 (x is staged through L1), and dense in
        // at 16 rows went 28.8 -> 31.6 us; overlaid (38 KiB, the serial sum's 4 KiB gone too):
        // 0-4% faster at 9-16 rows than the serial sum (q_b 8.93 -> 8.56 us at 16 rows).
        static_assert(KW == 4 && TW == 1, "the k-ways of one tile per block");
        float* red4; // [k-way][kAcc][32 lanes]
        if constexpr (NT == 1) {
            __shared__ float red4_own[KW * kAcc * 32];
            red4 = red4_own;
        } else {
            static_assert(KW * kAcc * 32 * sizeof(float) <= 2 * KW * kXsBytes, "the sums fit the x staging");
            cp_async_wait<0>();
            __syncthreads(); // every warp has read its last round's x
            red4 = reinterpret_cast<float*>(x_staging);
        }
#pragma unroll
        for (int i = 0; i < kAcc; ++i) red4[(kway * kAcc + i) * 32 + lane] = (&acc[0][0][0])[i];
        __syncthreads();
        i0 = kway * kOwn;
#pragma unroll
        for (int k = 0; k < kOwn; ++k) {
            const float* r4 = red4 + (i0 + k) * 32 + lane;
            pr_sums[k] = r4[0];
#pragma unroll
            for (int j = 1; j < KW; ++j) pr_sums[k] = pr_sums[k] + r4[j * kAcc * 32];
        }
        writes = tile_ok;
    } else {
        // Sum the k-ways of each tile in k-way order; the last k-way's warp ends up with the sum.
        if constexpr (KW > 1) {
            float* r = red + tile_in * kAcc * 32 + lane; // [TW][kAcc][32 lanes]
#pragma unroll
            for (int j = 0; j < KW - 1; ++j) {
                if (kway == j) {
#pragma unroll
                    for (int t = 0; t < NT; ++t)
#pragma unroll
                        for (int w = 0; w < 4; ++w)
#pragma unroll
                            for (int e = 0; e < 4; ++e) {
                                float* d = r + ((t * 4 + w) * 4 + e) * 32;
                                *d = j == 0 ? acc[t][w][e] : *d + acc[t][w][e];
                            }
                }
                __syncthreads();
            }
            if (kway == KW - 1) {
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int w = 0; w < 4; ++w)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            acc[t][w][e] = r[((t * 4 + w) * 4 + e) * 32] + acc[t][w][e];
            }
        }
        writes = tile_ok && kway == KW - 1;
    }
    // f(row, column, k) for each own[k]: accumulator i = (t * 4 + w) * 4 + e is out[row 8 t + 2 q
    // + e % 2][column 64 nt + 16 w + g + 8 (e / 2)].
    auto for_own = [&](auto&& f) {
        if constexpr (PR) {
#pragma unroll
            for (int k = 0; k < kOwn; ++k) {
                const int i = i0 + k;
                f(8 * (i >> 4) + 2 * q + (i & 1), nt * kBN + 16 * ((i >> 2) & 3) + g + 8 * ((i >> 1) & 1), k);
            }
        } else {
            kt_for_each_acc<NT>(q, g, nt * kBN, f); // i0 = 0: k is the accumulator's index
        }
    };

    if (slices == 1) {
        if (!writes) return;
        for_own([&](int row, int col, int k) {
            if (row < M) out[(size_t)row * N + col] = kt_from_f32<T>(own[k]);
        });
        return;
    }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (clustered) {
        // The column group's slices are one thread-block cluster, block rank = slice (the
        // host launched it so): each writer leaves its sums in its shared memory, and rank 0
        // adds all ranks' through distributed shared memory in slice order (the same sums in
        // the same order as the partials path below, so the same bits), with two cluster
        // barriers instead of partials in global memory, a fence and an arrival counter.
        __shared__ float cred[TW * kAcc * 32]; // [TW][kAcc][32 lanes]
        namespace cg = cooperative_groups;
        cg::cluster_group cluster = cg::this_cluster();
        float* mine = cred + (tile_in * kAcc + i0) * 32 + lane;
        if (PR || writes) { // with PR every warp (a tile past n is never read)
#pragma unroll
            for (int k = 0; k < kOwn; ++k) mine[k * 32] = own[k];
        }
        cluster.sync(); // every rank's sums written and visible to the cluster
        if (writes && cluster.block_rank() == 0) {
            float v[kOwn];
#pragma unroll
            for (int k = 0; k < kOwn; ++k) v[k] = 0.0f;
            for (int r = 0; r < slices; ++r) {
                const float* theirs = cluster.map_shared_rank(mine, r);
#pragma unroll
                for (int k = 0; k < kOwn; ++k) v[k] += theirs[k * 32];
            }
            for_own([&](int row, int col, int k) {
                if (row < M) out[(size_t)row * N + col] = kt_from_f32<T>(v[k]);
            });
        }
        cluster.sync(); // no rank exits (freeing its shared memory) before rank 0 has read it
        return;
    }
#endif
    if (writes) {
        for_own([&](int row, int col, int k) {
            if (row < M) partial[((size_t)slice * M + row) * N + col] = own[k];
        });
    }
    // Publish this slice, then count it; the block that completes the group sums it up.
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&counters[group], 1u) == (unsigned)slices - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence(); // the other slices' partials, published before their count, are visible
    // Four columns per item, NT items per thread and pass (16 rows x 64 columns are 256
    // items: one pass at 16 rows, where one item per pass took two L2 round trips in turn:
    // H100, shared expert in at 16 rows 8.04 instead of 8.51 us), every slice's loads of a
    // pass's items issued before the sums.
    const int c0 = group * TW * kBN;
    const int quads = min(TW * kBN, N - c0) / 4;
    const int items = M * quads;
    const size_t stride = (size_t)M * N;
    for (int e0 = tid; e0 < items; e0 += NT * kGvThreads) {
        bool ok[NT];
        size_t o[NT];
        float4 v[NT];
#pragma unroll
        for (int h = 0; h < NT; ++h) {
            // An item past the end reads item e0 again (no predicate on the loads) and is
            // not written.
            ok[h] = h == 0 || e0 + h * kGvThreads < items;
            const int e = ok[h] ? e0 + h * kGvThreads : e0;
            o[h] = (size_t)(e / quads) * N + c0 + 4 * (e % quads);
            v[h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll 8
        for (int s = 0; s < slices; ++s) {
            float4 ps[NT];
#pragma unroll
            for (int h = 0; h < NT; ++h)
                ps[h] = __ldcg(reinterpret_cast<const float4*>(partial + o[h] + s * stride));
#pragma unroll
            for (int h = 0; h < NT; ++h) {
                v[h].x += ps[h].x;
                v[h].y += ps[h].y;
                v[h].z += ps[h].z;
                v[h].w += ps[h].w;
            }
        }
#pragma unroll
        for (int h = 0; h < NT; ++h) {
            if (!ok[h]) continue;
            T* out_h = out + o[h];
            out_h[0] = kt_from_f32<T>(v[h].x);
            out_h[1] = kt_from_f32<T>(v[h].y);
            out_h[2] = kt_from_f32<T>(v[h].z);
            out_h[3] = kt_from_f32<T>(v[h].w);
        }
    }
    if (tid == 0) counters[group] = 0; // ready for the next launch on this workspace
}

} // namespace

#define KT_W4A16(SUFFIX, T, MT)                                                                     \
    extern "C" __global__ void __launch_bounds__(kThreads) kt_w4a16_gemm_##SUFFIX##_m##MT(         \
        const T* x, const uint4* qw, const T* scales, T* out, float* partial, int M, int N, int K, \
        int groups_per_split) {                                                                     \
        w4a16_gemm<T, MT>(x, qw, scales, out, partial, M, N, K, groups_per_split);                  \
    }

KT_W4A16(f16, __half, 1)
KT_W4A16(f16, __half, 2)
KT_W4A16(f16, __half, 4)
KT_W4A16(bf16, __nv_bfloat16, 1)
KT_W4A16(bf16, __nv_bfloat16, 2)
KT_W4A16(bf16, __nv_bfloat16, 4)

extern "C" __global__ void kt_w4a16_reduce_f16(const float* partial, __half* out, int splits,
                                               unsigned long long mn) {
    w4a16_reduce<__half>(partial, out, splits, (size_t)mn);
}
extern "C" __global__ void kt_w4a16_reduce_bf16(const float* partial, __nv_bfloat16* out, int splits,
                                                unsigned long long mn) {
    w4a16_reduce<__nv_bfloat16>(partial, out, splits, (size_t)mn);
}

#define KT_W4A16_GEMV(SUFFIX, T, NT, KW)                                                           \
    extern "C" __global__ void __launch_bounds__(kGvThreads, 3) kt_w4a16_gemv_##SUFFIX##_t##NT##_k##KW( \
        const T* x, const uint4* qw, const T* scales, T* out, float* partial, unsigned* counters,   \
        int M, int N, int K, int steps_per_slice, int slices, int clustered) {                     \
        w4a16_gemv<T, NT, KW>(x, qw, scales, out, partial, counters, M, N, K, steps_per_slice,     \
                              slices, clustered);                                                  \
    }
#define KT_W4A16_GEMV_KWAYS(SUFFIX, T, NT) \
    KT_W4A16_GEMV(SUFFIX, T, NT, 1)        \
    KT_W4A16_GEMV(SUFFIX, T, NT, 2)        \
    KT_W4A16_GEMV(SUFFIX, T, NT, 4)

KT_W4A16_GEMV_KWAYS(f16, __half, 1)
KT_W4A16_GEMV_KWAYS(f16, __half, 2)
KT_W4A16_GEMV_KWAYS(bf16, __nv_bfloat16, 1)
KT_W4A16_GEMV_KWAYS(bf16, __nv_bfloat16, 2)

// The spread form (4 k-ways, one tile per block): the first `whole` blocks stream tiles
// 0..whole - 1 whole; the other blocks each stream one k slice (of `slices`) of a tile past
// them, summed as in the plain form (partials, the last block of the tile adds them). The
// host takes 2 blocks per multiprocessor as `whole` where a tile per block would leave some
// multiprocessors with 3 tiles and the rest with 2: blocks start in index order, breadth-first
// over the multiprocessors, so the short blocks are the third ones (see gemv.rs).
template <typename T, int NT>
__device__ __forceinline__ void w4a16_gemv_spread(const T* __restrict__ x, const uint4* __restrict__ qw,
                                                  const T* __restrict__ scales, T* __restrict__ out,
                                                  float* __restrict__ partial, unsigned* __restrict__ counters,
                                                  int M, int N, int K, int steps_per_slice, int slices,
                                                  int whole) {
    const int b = blockIdx.x;
    const int e = b - whole; // this block's place among the slices, if >= 0
    const bool cut = e >= 0;
    w4a16_gemv<T, NT, 4, true>(x, qw, scales, out, partial, counters, M, N, K, cut ? steps_per_slice : K / 16,
                               cut ? slices : 1, 0, cut ? whole + e / slices : b, cut ? e % slices : 0);
}

#define KT_W4A16_GEMV_SPREAD(SUFFIX, T, NT)                                                        \
    extern "C" __global__ void __launch_bounds__(kGvThreads, 3) kt_w4a16_gemv_##SUFFIX##_t##NT##_k4_spread( \
        const T* x, const uint4* qw, const T* scales, T* out, float* partial, unsigned* counters,   \
        int M, int N, int K, int steps_per_slice, int slices, int whole) {                         \
        w4a16_gemv_spread<T, NT>(x, qw, scales, out, partial, counters, M, N, K, steps_per_slice, slices, \
                                 whole);                                                            \
    }

KT_W4A16_GEMV_SPREAD(f16, __half, 1)
KT_W4A16_GEMV_SPREAD(f16, __half, 2)
KT_W4A16_GEMV_SPREAD(bf16, __nv_bfloat16, 1)
KT_W4A16_GEMV_SPREAD(bf16, __nv_bfloat16, 2)
