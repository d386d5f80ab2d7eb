// Kernels of the hybrid (GPU + CPU experts) forward pass that the other files lack:
// - kt_gemm_nt_<A>_<B>_<O>: batched, strided out[b, m, n] = sum_k A[b, m, k] * B[b, n, k]
//   with f32 accumulation (the bf16 `linear` of the placement rules at batch 1, and the
//   per-head MLA absorption products W_uk^T q_nope and W_uv o_lat at batch = heads);
// - kt_gemv_nt_{s,v}_<A>_<B>_<O>: the same product for m <= GEMV_MAX_M rows (decode), one
//   warp per output column streaming its weight row once (v: 16-byte loads);
// - kt_rmsnorm_w32_<X>: RMSNorm with f32 weights, bf16 output and an optional f32 copy;
// - kt_add_rmsnorm_w32_<D>: the residual add x += d fused with the RMSNorm of the new x;
// - kt_wait_add2_rmsnorm_w32: the hybrid decode graph's return from the CPU experts: wait for a
//   host flag, x += routed (page-locked host memory) + shared (+ the GPU's resident experts),
//   then the next RMSNorm;
// - kt_mla_cache_write: normalize the latent half of new kv rows into the bf16 cache;
// - kt_copy_cols_bf16, kt_add_f32_<X>, kt_cast_<X>_<Y>: strided copies, residual add, casts;
// - kt_prefetch_l2: L2 prefetches of a byte range (the decode graph's next-layer weights).
// All arithmetic is f32; each stored value is rounded once.
#include "include/kt_common.cuh"
#include "include/kt_host_flag.cuh"
#include "include/kt_pdl.cuh"

// ---- batched NT GEMM -------------------------------------------------------------------
// Block tile 64 (m) x 64 (n), k steps of 32, 256 threads; thread (tx, ty) owns rows
// ty + 16 i and columns tx + 16 j (i, j < 4), so the shared-memory reads of a warp hit
// distinct banks. Tiles are converted to f32 when staged. Correctness first: no tensor
// cores (decode shapes are bound by the weight stream, which each block reads once).
constexpr int GEMM_BM = 64;
constexpr int GEMM_BN = 64;
constexpr int GEMM_BK = 32;
constexpr int GEMM_THREADS = 256;

struct GemmNtArgs {
    long long a_off, a_batch, a_row; // element offset of A[0,0,0], batch and row strides
    long long b_batch, b_row;        // B[b, n, k] = B[b * b_batch + n * b_row + k]
    long long o_off, o_batch, o_row; // out[b, m, n] = out[o_off + b * o_batch + m * o_row + n]
    int m, n, k;
};

template <typename TA, typename TB, typename TO>
__device__ void gemm_nt(const TA* __restrict__ a, const TB* __restrict__ b, TO* __restrict__ out,
                        GemmNtArgs p) {
    __shared__ float as[GEMM_BK][GEMM_BM + 1];
    __shared__ float bs[GEMM_BK][GEMM_BN + 1];
    const int batch = blockIdx.z;
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const TA* ab = a + p.a_off + (long long)batch * p.a_batch;
    const TB* bb = b + (long long)batch * p.b_batch;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < p.k; k0 += GEMM_BK) {
        // 64 x 32 elements of each tile, 8 per thread, consecutive threads along k.
        for (int e = threadIdx.x; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
            const int r = e / GEMM_BK, kk = e % GEMM_BK;
            const int gm = m0 + r, gn = n0 + r, gk = k0 + kk;
            as[kk][r] = (gm < p.m && gk < p.k) ? kt_to_f32(ab[gm * p.a_row + gk]) : 0.0f;
            bs[kk][r] = (gn < p.n && gk < p.k) ? kt_to_f32(bb[gn * p.b_row + gk]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    TO* ob = out + p.o_off + (long long)batch * p.o_batch;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= p.m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gn = n0 + tx + 16 * j;
            if (gn < p.n) ob[gm * p.o_row + gn] = kt_from_f32<TO>(acc[i][j]);
        }
    }
}

#define KT_GEMM_NT(SA, TA, SB, TB, SO, TO)                                                         \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                     \
        kt_gemm_nt_##SA##_##SB##_##SO(const TA* a, const TB* b, TO* out, GemmNtArgs p) {           \
        gemm_nt<TA, TB, TO>(a, b, out, p);                                                         \
    }

KT_GEMM_NT(bf16, __nv_bfloat16, bf16, __nv_bfloat16, bf16, __nv_bfloat16)
KT_GEMM_NT(bf16, __nv_bfloat16, bf16, __nv_bfloat16, f32, float)
KT_GEMM_NT(f32, float, f32, float, f32, float)

// ---- small-m NT GEMM (decode) ---------------------------------------------------------
// The tiled kernel above wastes 63 of its 64 rows at m = 1 and reads each weight row through
// shared memory in 32-wide strips; decode products are bound by the weight stream, so here
// each warp owns one output column n of one batch, reads B[b, n, :] once (coalesced, 16 bytes
// per lane when VEC), multiplies it with all m (<= GEMV_MAX_M) rows of A (small, cached)
// and reduces across the warp. Each lane sums its k slice in k order, then the warp's
// butterfly adds the 32 partial sums: a different order than the tiled kernel's, same bound.
constexpr int GEMV_MAX_M = 8;
constexpr int GEMV_WARPS = 8;

// 16 loaded bytes of N elements of T as f32 values.
template <typename T, int N>
__device__ __forceinline__ void kt_cvt16(const uint4& raw, float (&v)[N]) {
    static_assert(N * sizeof(T) == 16, "16-byte vectors");
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = kt_to_f32(e[i]);
}

// 16 bytes at p (aligned) as f32 values. (Written out rather than through kt_cvt16: that form
// changed the register allocation of the mid and long GEMVs and slowed them, 12.5 -> 14.4 and
// 11.6 -> 25.3 us: session 29 call G.)
template <typename T, int N>
__device__ __forceinline__ void kt_load16(const T* __restrict__ p, float (&v)[N]) {
    static_assert(N * sizeof(T) == 16, "16-byte loads");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = kt_to_f32(e[i]);
}

// Rows of B of at most 16 vectors (k <= 16 V; the MLA query absorption's k = 128 in bf16):
// with one column per warp, lanes 16..31 would load nothing, and the many small blocks cost
// more than their loads. Here a warp takes GEMV_SHORT_COLS = 8 columns, four per half-warp, a
// lane loading one vector of each (all in flight together; two a lane measured 12.8 us for V3's
// 128 heads, cold). Lane l of a half holds what lane l holds in gemv_nt below (the same
// products in the same order), and the sums skip only the butterfly step that adds the idle
// lanes' zeros: gemv_nt's results bit for bit. A kernel of its own (kt_gemv_nt_h_*, as
// gemv_nt_mid below), launched by the host with 8 columns per warp when k <= 16 V
// (kt-kernels/src/cuda/linear.rs).
constexpr int GEMV_SHORT_COLS = 8;
constexpr int GEMV_SHORT_HALF = GEMV_SHORT_COLS / 2;
template <typename TA, typename TB, typename TO>
__device__ void gemv_nt_short(const TA* __restrict__ a, const TB* __restrict__ b,
                              TO* __restrict__ out, GemmNtArgs p) {
    constexpr int V = 16 / sizeof(TB);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane % 16;
    const int n0 =
        (blockIdx.x * GEMV_WARPS + warp) * GEMV_SHORT_COLS + (lane / 16) * GEMV_SHORT_HALF;
    const long long batch = blockIdx.z;
    const TA* ab = a + p.a_off + batch * p.a_batch;
    const int k0 = sub * V;
    const bool k_in = k0 < p.k;
    // the weights stay packed (4 registers a vector) until used
    uint4 wraw[GEMV_SHORT_HALF];
    float acc[GEMV_SHORT_HALF][GEMV_MAX_M] = {};
#pragma unroll
    for (int c = 0; c < GEMV_SHORT_HALF; ++c)
        if (k_in && n0 + c < p.n)
            wraw[c] = *reinterpret_cast<const uint4*>(b + batch * p.b_batch +
                                                      (long long)(n0 + c) * p.b_row + k0);
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) {
        if (r < p.m && k_in) {
            float av[V];
            kt_load16<TA, V>(ab + r * p.a_row + k0, av);
#pragma unroll
            for (int c = 0; c < GEMV_SHORT_HALF; ++c) {
                if (n0 + c < p.n) {
                    float wv[V];
                    kt_cvt16<TB, V>(wraw[c], wv);
#pragma unroll
                    for (int i = 0; i < V; ++i) acc[c][r] = fmaf(av[i], wv[i], acc[c][r]);
                }
            }
        }
    }
    TO* ob = out + p.o_off + batch * p.o_batch;
#pragma unroll
    for (int c = 0; c < GEMV_SHORT_HALF; ++c) {
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r) {
            if (r < p.m) { // uniform over the warp: every lane joins the shuffle
                float s = acc[c][r];
#pragma unroll
                for (int off = 8; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (sub == 0 && n0 + c < p.n) ob[r * p.o_row + n0 + c] = kt_from_f32<TO>(s);
            }
        }
    }
}

// Rows of B of 17..64 vectors (the MLA value expansion's k = 512 in bf16): with one column per
// warp a lane loads one vector, multiplies, then loads the next, one trip to memory after
// another, and the many small blocks cost more than their loads. Here a warp takes
// GEMV_MID_COLS = 4 columns and each lane issues its vectors of all four before it multiplies.
// Each column's lane partials (k order) and warp butterfly are gemv_nt's below: its results
// bit for bit. A kernel of its own (kt_gemv_nt_m_*: its registers would lower the occupancy of
// the others' paths), launched by the host for 16 V < k <= 64 V with 4 columns per warp
// (kt-kernels/src/cuda/linear.rs).
constexpr int GEMV_MID_COLS = 4;
template <typename TA, typename TB, typename TO>
__device__ void gemv_nt_mid(const TA* __restrict__ a, const TB* __restrict__ b,
                            TO* __restrict__ out, GemmNtArgs p) {
    constexpr int V = 16 / sizeof(TB);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_MID_COLS;
    if (n0 >= p.n) return; // the whole warp leaves together
    const long long batch = blockIdx.z;
    const TA* ab = a + p.a_off + batch * p.a_batch;
    const TB* bb = b + batch * p.b_batch;
    float acc[GEMV_MID_COLS][GEMV_MAX_M] = {};
    for (int k0 = lane * V; k0 < p.k; k0 += 32 * V) {
        float wv[GEMV_MID_COLS][V];
#pragma unroll
        for (int c = 0; c < GEMV_MID_COLS; ++c)
            if (n0 + c < p.n) kt_load16<TB, V>(bb + (long long)(n0 + c) * p.b_row + k0, wv[c]);
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r) {
            if (r < p.m) {
                float av[V];
                kt_load16<TA, V>(ab + r * p.a_row + k0, av);
#pragma unroll
                for (int c = 0; c < GEMV_MID_COLS; ++c)
                    if (n0 + c < p.n)
#pragma unroll
                        for (int i = 0; i < V; ++i) acc[c][r] = fmaf(av[i], wv[c][i], acc[c][r]);
            }
        }
    }
    TO* ob = out + p.o_off + batch * p.o_batch + n0;
#pragma unroll
    for (int c = 0; c < GEMV_MID_COLS; ++c) {
#pragma unroll
        for (int r = 0; r < GEMV_MAX_M; ++r) {
            if (r < p.m && n0 + c < p.n) { // uniform over the warp: every lane joins the shuffle
                const float s = kt_warp_sum(acc[c][r]);
                if (lane == 0) ob[r * p.o_row + c] = kt_from_f32<TO>(s);
            }
        }
    }
}

template <typename TA, typename TB, typename TO, bool VEC>
__device__ void gemv_nt(const TA* __restrict__ a, const TB* __restrict__ b, TO* __restrict__ out,
                        GemmNtArgs p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n = blockIdx.x * GEMV_WARPS + warp;
    if (n >= p.n) return; // the whole warp leaves together
    const long long batch = blockIdx.z;
    const TA* ab = a + p.a_off + batch * p.a_batch;
    const TB* br = b + batch * p.b_batch + (long long)n * p.b_row;
    float acc[GEMV_MAX_M] = {};
    if constexpr (VEC) {
        static_assert(sizeof(TA) == sizeof(TB), "one vector width for A and B");
        constexpr int V = 16 / sizeof(TB), STEP = 32 * V, C = 4;
        // the lane's vectors in chunks of C whose loads issue together (a plain loop tests
        // k0 < k before each load: one trip to memory per vector, 56 for a 7168-wide f32 row);
        // vectors past the row are clamped to the lane's last one and their products dropped
        // (selected away, no branch, so the loads can go ahead): the same fmaf chain in k order
        const int first = lane * V;
        if (first < p.k) {
            const int last = first + (p.k - V - first) / STEP * STEP; // k % V == 0 (host)
            for (int k00 = first; k00 < p.k; k00 += C * STEP) {
                float wv[C][V];
#pragma unroll
                for (int j = 0; j < C; ++j) kt_load16<TB, V>(br + min(k00 + j * STEP, last), wv[j]);
#pragma unroll
                for (int r = 0; r < GEMV_MAX_M; ++r) {
                    if (r < p.m) {
                        float av[C][V];
#pragma unroll
                        for (int j = 0; j < C; ++j)
                            kt_load16<TA, V>(ab + r * p.a_row + min(k00 + j * STEP, last), av[j]);
#pragma unroll
                        for (int j = 0; j < C; ++j) {
                            float t = acc[r];
#pragma unroll
                            for (int i = 0; i < V; ++i) t = fmaf(av[j][i], wv[j][i], t);
                            acc[r] = k00 + j * STEP < p.k ? t : acc[r];
                        }
                    }
                }
            }
        }
    } else {
        for (int k = lane; k < p.k; k += 32) {
            const float w = kt_to_f32(br[k]);
#pragma unroll
            for (int r = 0; r < GEMV_MAX_M; ++r)
                if (r < p.m) acc[r] = fmaf(kt_to_f32(ab[r * p.a_row + k]), w, acc[r]);
        }
    }
    TO* ob = out + p.o_off + batch * p.o_batch + n;
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; ++r) {
        if (r < p.m) { // uniform over the warp: every lane joins the shuffle
            const float s = kt_warp_sum(acc[r]);
            if (lane == 0) ob[r * p.o_row] = kt_from_f32<TO>(s);
        }
    }
}

// Each lets a programmatic dependent (the int4 output projection after the MLA expansion) be
// scheduled from its start: it loads its weights while this runs and waits for this grid's
// end before it reads the output.
#define KT_GEMV_NT(SA, TA, SB, TB, SO, TO)                                                         \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                                  \
        kt_gemv_nt_s_##SA##_##SB##_##SO(const TA* a, const TB* b, TO* out, GemmNtArgs p) {         \
        kt_launch_dependents();                                                                    \
        gemv_nt<TA, TB, TO, false>(a, b, out, p);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                                  \
        kt_gemv_nt_v_##SA##_##SB##_##SO(const TA* a, const TB* b, TO* out, GemmNtArgs p) {         \
        kt_launch_dependents();                                                                    \
        gemv_nt<TA, TB, TO, true>(a, b, out, p);                                                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                                  \
        kt_gemv_nt_m_##SA##_##SB##_##SO(const TA* a, const TB* b, TO* out, GemmNtArgs p) {         \
        kt_launch_dependents();                                                                    \
        gemv_nt_mid<TA, TB, TO>(a, b, out, p);                                                     \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                                  \
        kt_gemv_nt_h_##SA##_##SB##_##SO(const TA* a, const TB* b, TO* out, GemmNtArgs p) {         \
        kt_launch_dependents();                                                                    \
        gemv_nt_short<TA, TB, TO>(a, b, out, p);                                                   \
    }

KT_GEMV_NT(bf16, __nv_bfloat16, bf16, __nv_bfloat16, bf16, __nv_bfloat16)
KT_GEMV_NT(bf16, __nv_bfloat16, bf16, __nv_bfloat16, f32, float)
KT_GEMV_NT(f32, float, f32, float, f32, float)

// ---- RMSNorm with f32 weights ----------------------------------------------------------
// out[t, :] = w * x[t, :] / sqrt(mean(x[t, :]^2) + eps), stored as bf16 and, when out32 is
// not null, also as f32. Rows are x_row apart in x (the norm of a slice of a wider row).
// One block per row.

// The second half of a row's norm: ss is this thread's sum of squares of its elements
// (i = threadIdx.x, += blockDim.x); reduces it and stores w * xr * inv for the block's row.
template <typename TX>
__device__ __forceinline__ void rms_store(const TX* __restrict__ xr, float ss,
                                          const float* __restrict__ w,
                                          __nv_bfloat16* __restrict__ out,
                                          float* __restrict__ out32, int n, float eps,
                                          float* scratch) {
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    const long long base = (long long)blockIdx.x * n;
    const int bd = blockDim.x, last = kt_row_last(n);
    for (int i0 = threadIdx.x; i0 < n; i0 += KT_ROW_CHUNK * bd) {
        float xv[KT_ROW_CHUNK], wv[KT_ROW_CHUNK];
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = min(i0 + j * bd, last);
            xv[j] = kt_to_f32(xr[i]);
            wv[j] = w[i];
        }
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = i0 + j * bd;
            if (i < n) {
                const float y = wv[j] * (xv[j] * inv);
                out[base + i] = __float2bfloat16_rn(y);
                if (out32 != nullptr) out32[base + i] = y;
            }
        }
    }
}

template <typename TX>
__device__ void rmsnorm_w32(const TX* __restrict__ x, long long x_row, const float* __restrict__ w,
                            __nv_bfloat16* __restrict__ out, float* __restrict__ out32, int n,
                            float eps) {
    __shared__ float scratch[32];
    const TX* xr = x + (long long)blockIdx.x * x_row;
    const int bd = blockDim.x, last = kt_row_last(n);
    float ss = 0.0f;
    for (int i0 = threadIdx.x; i0 < n; i0 += KT_ROW_CHUNK * bd) {
        float v[KT_ROW_CHUNK];
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) v[j] = kt_to_f32(xr[min(i0 + j * bd, last)]);
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j)
            if (i0 + j * bd < n) ss += v[j] * v[j];
    }
    rms_store(xr, ss, w, out, out32, n, eps, scratch);
}

// Both let a programmatic dependent (the int4 projection that reads the norm, e.g. V3's q_b
// after the query LoRA's norm) be scheduled from their start: it loads its weights while the
// norm runs and waits for this grid's end before it reads the output.
extern "C" __global__ void __launch_bounds__(1024)
    kt_rmsnorm_w32_f32(const float* x, long long x_row, const float* w, __nv_bfloat16* out,
                       float* out32, int n, float eps) {
    kt_launch_dependents();
    rmsnorm_w32<float>(x, x_row, w, out, out32, n, eps);
}
extern "C" __global__ void __launch_bounds__(1024)
    kt_rmsnorm_w32_bf16(const __nv_bfloat16* x, long long x_row, const float* w,
                        __nv_bfloat16* out, float* out32, int n, float eps) {
    kt_launch_dependents();
    rmsnorm_w32<__nv_bfloat16>(x, x_row, w, out, out32, n, eps);
}

// x[t, :] += d[t, :] (the residual add of kt_add_f32_<D>), then the norm of the new row as
// kt_rmsnorm_w32_f32 computes it: the same per-thread elements and sum order, so the result
// is bit for bit the unfused pair's at the same block size. x rows are contiguous (n).
template <typename TD>
__device__ void add_rmsnorm_w32(float* __restrict__ x, const TD* __restrict__ d,
                                const float* __restrict__ w, __nv_bfloat16* __restrict__ out,
                                float* __restrict__ out32, int n, float eps) {
    __shared__ float scratch[32];
    float* xr = x + (long long)blockIdx.x * n;
    const TD* dr = d + (long long)blockIdx.x * n;
    const int bd = blockDim.x, last = kt_row_last(n);
    float ss = 0.0f;
    for (int i0 = threadIdx.x; i0 < n; i0 += KT_ROW_CHUNK * bd) {
        float v[KT_ROW_CHUNK];
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = min(i0 + j * bd, last);
            v[j] = xr[i] + kt_to_f32(dr[i]);
        }
#pragma unroll
        for (int j = 0; j < KT_ROW_CHUNK; ++j) {
            const int i = i0 + j * bd;
            if (i < n) {
                xr[i] = v[j];
                ss += v[j] * v[j];
            }
        }
    }
    rms_store<float>(xr, ss, w, out, out32, n, eps, scratch);
}

extern "C" __global__ void __launch_bounds__(1024)
    kt_add_rmsnorm_w32_bf16(float* x, const __nv_bfloat16* d, const float* w, __nv_bfloat16* out,
                            float* out32, int n, float eps) {
    add_rmsnorm_w32<__nv_bfloat16>(x, d, w, out, out32, n, eps);
}
extern "C" __global__ void __launch_bounds__(1024)
    kt_add_rmsnorm_w32_f32(float* x, const float* d, const float* w, __nv_bfloat16* out,
                           float* out32, int n, float eps) {
    add_rmsnorm_w32<float>(x, d, w, out, out32, n, eps);
}

// The hybrid decode graph's return from the CPU's routed experts, in one launch instead of a
// stream wait, a copy and two kernels: waits until the host flag `flag` reaches `value` (the
// CPU has written `routed`, page-locked host memory read through its device address), then
// x[t, :] = (x[t, :] + routed[t, :]) + shared[t, :] (shared may be null: x += routed), then
// + extra[t, :] when extra is not null (the GPU's resident experts), rounded as kt_add2_f32 /
// kt_add_f32 round, then out = the RMSNorm of the new row as
// kt_rmsnorm_w32_f32 computes it at the same block size (the same per-thread elements and sum
// order): bit for bit the unfused chain. One block of at most KT_RETURN_THREADS threads per
// row, x rows contiguous (n).
// Only `routed` depends on the host: while thread 0 waits for the flag, every thread loads its
// first KT_RETURN_STAGED elements of x, shared, extra and the norm's weights into registers, so
// after the flag one trip over PCIe (the routed sum) and the block sum remain before the output.
// Elements past the staged ones (rows longer than KT_RETURN_STAGED x the block) are read after
// the flag, in the same per-thread order.
#define KT_RETURN_THREADS 256
#define KT_RETURN_STAGED 32 // rows up to 8192 (V3's 7168): one PCIe trip for the routed sum
static_assert(KT_RETURN_STAGED % KT_ROW_CHUNK == 0, "whole chunks");
extern "C" __global__ void __launch_bounds__(KT_RETURN_THREADS)
    kt_wait_add2_rmsnorm_w32(const uint32_t* flag, uint32_t value, float* __restrict__ x,
                             const float* routed, const __nv_bfloat16* __restrict__ shared,
                             const float* __restrict__ extra, const float* __restrict__ w,
                             __nv_bfloat16* __restrict__ out, int n, float eps) {
    __shared__ float scratch[32];
    // the next kernel (the next layer's int4 query projection, a programmatic dependent) may
    // start loading its weights while this one waits for the host; it waits for this grid's
    // end before it reads the norm
    kt_launch_dependents();
    float* xr = x + (long long)blockIdx.x * n;
    const __nv_bfloat16* sr = shared != nullptr ? shared + (long long)blockIdx.x * n : nullptr;
    const float* er = extra != nullptr ? extra + (long long)blockIdx.x * n : nullptr;
    const int tid = threadIdx.x, bd = blockDim.x, last = kt_row_last(n);
    // the staged elements in chunks of KT_ROW_CHUNK whose loads issue together (see
    // KT_ROW_CHUNK); a chunk is loaded when the thread has its first element
    constexpr int CHUNKS = KT_RETURN_STAGED / KT_ROW_CHUNK;
    float xv[KT_RETURN_STAGED], sv[KT_RETURN_STAGED] = {}, ev[KT_RETURN_STAGED] = {};
    float wv[KT_RETURN_STAGED];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        if (tid + c * KT_ROW_CHUNK * bd < n) {
#pragma unroll
            for (int j = c * KT_ROW_CHUNK; j < (c + 1) * KT_ROW_CHUNK; ++j) {
                const int i = min(tid + j * bd, last);
                xv[j] = xr[i];
                wv[j] = w[i];
            }
            if (sr != nullptr) {
#pragma unroll
                for (int j = c * KT_ROW_CHUNK; j < (c + 1) * KT_ROW_CHUNK; ++j)
                    sv[j] = __bfloat162float(sr[min(tid + j * bd, last)]);
            }
            if (er != nullptr) {
#pragma unroll
                for (int j = c * KT_ROW_CHUNK; j < (c + 1) * KT_ROW_CHUNK; ++j)
                    ev[j] = er[min(tid + j * bd, last)];
            }
        }
    }
    kt_block_wait_flag(flag, value);
    // volatile: the host wrote these after the last launch; no cached line may serve them
    const volatile float* rr = routed + (long long)blockIdx.x * n;
    float rv[KT_RETURN_STAGED];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        if (tid + c * KT_ROW_CHUNK * bd < n) {
#pragma unroll
            for (int j = c * KT_ROW_CHUNK; j < (c + 1) * KT_ROW_CHUNK; ++j)
                rv[j] = rr[min(tid + j * bd, last)];
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < KT_RETURN_STAGED; ++j) {
        const int i = tid + j * bd;
        if (i < n) {
            const float s = xv[j] + rv[j];
            const float s2 = sr != nullptr ? s + sv[j] : s;
            const float v = er != nullptr ? s2 + ev[j] : s2;
            xr[i] = v;
            xv[j] = v;
            ss += v * v;
        }
    }
#pragma unroll 8
    for (int i = tid + KT_RETURN_STAGED * bd; i < n; i += bd) {
        const float s = xr[i] + rr[i];
        const float s2 = sr != nullptr ? s + __bfloat162float(sr[i]) : s;
        const float v = er != nullptr ? s2 + er[i] : s2;
        xr[i] = v;
        ss += v * v;
    }
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    const long long base = (long long)blockIdx.x * n;
#pragma unroll
    for (int j = 0; j < KT_RETURN_STAGED; ++j) {
        const int i = tid + j * bd;
        if (i < n) out[base + i] = __float2bfloat16_rn(wv[j] * (xv[j] * inv));
    }
#pragma unroll 8
    for (int i = tid + KT_RETURN_STAGED * bd; i < n; i += bd)
        out[base + i] = __float2bfloat16_rn(w[i] * (xr[i] * inv));
}

// ---- MLA cache rows --------------------------------------------------------------------
// kv is [tokens, rank + rope] (the kv_a projection, its rope part already rotated); token t
// becomes cache row `rows[t]` when `rows` is given (read on the device, so a captured graph
// writes each step's row; rows past `cache_rows` are skipped, the host checks them before it
// uploads), else `first_row + t`: rmsnorm(kv[t, :rank]) * w, then kv[t, rank:] as is.
// One block per token.
extern "C" __global__ void __launch_bounds__(1024)
    kt_mla_cache_write(const __nv_bfloat16* __restrict__ kv, const float* __restrict__ w,
                       __nv_bfloat16* __restrict__ cache, long long first_row,
                       const unsigned* __restrict__ rows, long long cache_rows, int rank, int rope,
                       float eps) {
    __shared__ float scratch[32];
    const int width = rank + rope;
    const long long row = rows != nullptr ? (long long)rows[blockIdx.x] : first_row + blockIdx.x;
    if (row >= cache_rows) return;
    const __nv_bfloat16* src = kv + (long long)blockIdx.x * width;
    __nv_bfloat16* dst = cache + row * width;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < rank; i += blockDim.x) {
        const float v = __bfloat162float(src[i]);
        ss += v * v;
    }
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)rank + eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        dst[i] = i < rank ? __float2bfloat16_rn(w[i] * (__bfloat162float(src[i]) * inv)) : src[i];
    }
}

// The MLA step between the projections and the attention, in one launch (decode's critical
// path is a chain of small launches): blocks [0, tokens) write token t's cache row pos[t]
// (rmsnorm(kv[t, :rank]) * w, then kv[t, rank:] rotated); the grid's other T x qblocks blocks,
// `qblocks` per token, write the rotated q_pe of token t's heads into the rope slot of their
// absorbed query rows (q_lat[t * heads + h, rank:]; the latent slot is the absorption GEMM's).
// Rotation as
// kt_rope_*: pairs (2i, 2i + 1) by the tables' row pos[t], NaN past the tables. Rows past
// `cache_rows` are skipped (the host checks the positions before it uploads them). Token t's
// query heads start at q + t * q_row, its kv row at kv + t * kv_row: separate buffers, or one
// buffer of [q | kv] rows where q_proj and kv_a ran as one stacked GEMV.
// Query pairs a thread of kt_mla_rope_cache_write loads together (the host sizes its query
// blocks so that a thread has at most 4).
#define KT_ROPE_CHUNK 4
__device__ __forceinline__ void rope_pair(const __nv_bfloat16* src, __nv_bfloat16* dst,
                                          const float* cos_t, const float* sin_t, uint32_t p,
                                          int i, int half, uint32_t rope_rows) {
    if (p >= rope_rows) {
        dst[0] = dst[1] = __float2bfloat16_rn(__int_as_float(0x7fc00000));
        return;
    }
    const float c = cos_t[(size_t)p * half + i];
    const float s = sin_t[(size_t)p * half + i];
    const float a = __bfloat162float(src[0]), b = __bfloat162float(src[1]);
    dst[0] = __float2bfloat16_rn(a * c - b * s);
    dst[1] = __float2bfloat16_rn(a * s + b * c);
}

extern "C" __global__ void __launch_bounds__(1024)
    kt_mla_rope_cache_write(const __nv_bfloat16* __restrict__ q, long long q_row, int heads,
                            int q_dim, int nope, __nv_bfloat16* __restrict__ q_lat,
                            const __nv_bfloat16* __restrict__ kv, long long kv_row,
                            const float* __restrict__ w, __nv_bfloat16* __restrict__ cache,
                            const unsigned* __restrict__ pos, long long cache_rows,
                            const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                            int half, unsigned rope_rows, int rank, int tokens, float eps) {
    __shared__ float scratch[32];
    const int width = rank + 2 * half;
    // the grid holds `qblocks` query blocks per token after the T cache blocks (V3's 128 heads
    // x 32 pairs over one block of 256 threads were 16 trips to memory one after another);
    // a thread's pairs (4 on V3) load in chunks of KT_ROPE_CHUNK, all before any is used
    // (see KT_ROW_CHUNK: past the last pair the indices clamp to the thread's own last one)
    const int qblocks = (int)(gridDim.x - tokens) / tokens;
    const bool query = blockIdx.x >= (unsigned)tokens;
    const int qi = query ? (int)blockIdx.x - tokens : 0;
    const int t = query ? qi / qblocks : blockIdx.x;
    const uint32_t p = pos[t];
    if (query) {
        const int step = qblocks * blockDim.x, total = heads * half;
        const int e0 = (qi % qblocks) * blockDim.x + threadIdx.x;
        if (e0 >= total) return;
        const int last = e0 + (total - 1 - e0) / step * step;
        if (p >= rope_rows) { // past the tables every pair is NaN (rope_pair's rule)
            for (int e = e0; e < total; e += step) {
                const int h = e / half, i = e % half;
                __nv_bfloat16* dst = q_lat + ((size_t)t * heads + h) * width + rank + 2 * i;
                dst[0] = dst[1] = __float2bfloat16_rn(__int_as_float(0x7fc00000));
            }
            return;
        }
        const size_t tp = (size_t)p * half;
        for (int eb = e0; eb < total; eb += KT_ROPE_CHUNK * step) {
            float a[KT_ROPE_CHUNK], b[KT_ROPE_CHUNK], c[KT_ROPE_CHUNK], sn[KT_ROPE_CHUNK];
#pragma unroll
            for (int j = 0; j < KT_ROPE_CHUNK; ++j) {
                const int e = min(eb + j * step, last);
                const int h = e / half, i = e % half;
                const __nv_bfloat16* src = q + t * q_row + (size_t)h * q_dim + nope + 2 * i;
                a[j] = __bfloat162float(src[0]);
                b[j] = __bfloat162float(src[1]);
                c[j] = cos_t[tp + i];
                sn[j] = sin_t[tp + i];
            }
#pragma unroll
            for (int j = 0; j < KT_ROPE_CHUNK; ++j) {
                const int e = eb + j * step;
                if (e > last) break;
                const int h = e / half, i = e % half;
                __nv_bfloat16* dst = q_lat + ((size_t)t * heads + h) * width + rank + 2 * i;
                dst[0] = __float2bfloat16_rn(a[j] * c[j] - b[j] * sn[j]);
                dst[1] = __float2bfloat16_rn(a[j] * sn[j] + b[j] * c[j]);
            }
        }
        return;
    }
    if ((long long)p >= cache_rows) return; // the whole block: before the block sum
    const __nv_bfloat16* src = kv + (long long)t * kv_row;
    __nv_bfloat16* dst = cache + (long long)p * width;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < rank; i += blockDim.x) {
        const float v = __bfloat162float(src[i]);
        ss += v * v;
    }
    ss = kt_block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)rank + eps);
    for (int i = threadIdx.x; i < rank; i += blockDim.x) {
        dst[i] = __float2bfloat16_rn(w[i] * (__bfloat162float(src[i]) * inv));
    }
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        rope_pair(src + rank + 2 * i, dst + rank + 2 * i, cos_t, sin_t, p, i, half, rope_rows);
    }
}

// ---- L2 prefetch --------------------------------------------------------------------------
// Asks the L2 for every 128-byte line of [p, p + bytes): the decode graph warms the next layer's
// first weights while the GPU waits for the CPU experts (its kernels then read them from L2).
// Prefetches return nothing, so the loop has no loads to wait on; no value changes anywhere.
extern "C" __global__ void kt_prefetch_l2(const char* __restrict__ p, long long bytes) {
    const long long stride = (long long)gridDim.x * blockDim.x * 128;
    for (long long off = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 128; off < bytes;
         off += stride)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off));
}

// ---- copies, residual add, casts -------------------------------------------------------
// dst[dst_off + r * dst_row + c] = src[src_off + r * src_row + c] for c < cols.
extern "C" __global__ void kt_copy_cols_bf16(const __nv_bfloat16* __restrict__ src,
                                             long long src_off, long long src_row,
                                             __nv_bfloat16* __restrict__ dst, long long dst_off,
                                             long long dst_row, long long rows, int cols) {
    const long long total = rows * cols;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long r = e / cols, c = e % cols;
        dst[dst_off + r * dst_row + c] = src[src_off + r * src_row + c];
    }
}

// acc[i] += x[i] with an f32 accumulator (the residual stream) and x of any type.
template <typename TX>
__device__ void add_f32(float* __restrict__ acc, const TX* __restrict__ x, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        acc[e] += kt_to_f32(x[e]);
    }
}
extern "C" __global__ void kt_add_f32_bf16(float* acc, const __nv_bfloat16* x, long long n) {
    add_f32<__nv_bfloat16>(acc, x, n);
}
extern "C" __global__ void kt_add_f32_f32(float* acc, const float* x, long long n) {
    add_f32<float>(acc, x, n);
}

// acc[i] = (acc[i] + x[i]) + y[i]: two residual adds in one pass, rounded as two add_f32.
template <typename TX, typename TY>
__device__ void add2_f32(float* __restrict__ acc, const TX* __restrict__ x,
                         const TY* __restrict__ y, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const float s = acc[e] + kt_to_f32(x[e]);
        acc[e] = s + kt_to_f32(y[e]);
    }
}
extern "C" __global__ void kt_add2_f32_f32_bf16(float* acc, const float* x,
                                                const __nv_bfloat16* y, long long n) {
    add2_f32<float, __nv_bfloat16>(acc, x, y, n);
}

template <typename TI, typename TO>
__device__ void cast(const TI* __restrict__ x, TO* __restrict__ y, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        y[e] = kt_from_f32<TO>(kt_to_f32(x[e]));
    }
}
extern "C" __global__ void kt_cast_f32_bf16(const float* x, __nv_bfloat16* y, long long n) {
    cast<float, __nv_bfloat16>(x, y, n);
}
extern "C" __global__ void kt_cast_bf16_f32(const __nv_bfloat16* x, float* y, long long n) {
    cast<__nv_bfloat16, float>(x, y, n);
}

// dst[i] = src[i] for n 4-byte words. `src` may be page-locked host memory read through its
// device address: the SMs read it over PCIe, with no copy engine, so the copy does not queue
// behind a large host-to-device copy in flight on another stream (a GPU prefill's weights).
extern "C" __global__ void kt_copy_u32(const unsigned* __restrict__ src,
                                       unsigned* __restrict__ dst, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        dst[e] = src[e];
    }
}
