// Top-p (nucleus) sampling of one token per row of f32 logits with a caller-supplied uniform
// per row: the GPU form of kt_kernels::ops::sampling::top_p_sample (its module doc is the
// definition; this kernel picks the same token).
//
// No sort: tokens are ranked by the ordered integer key of their logit (-0.0 folded into
// 0.0), and "mass from key k up" A(k) = sum of w_i over key_i >= k is a block reduction (f64,
// fixed order). The nucleus cut is the largest key with A(key) >= top_p * Z, found by
// bisection over the 32-bit keys; equal logits share one weight, so how many of the cut
// key's tokens join follows from a division. The sample is found the same way with
// uniform * Zn, and the r-th tied token of its key (lowest index first) by a block scan.
// One block of 512 threads per row; about 70 passes over the row (L2-resident).
// A row holding NaN or +inf, or only -inf, gets 0xffffffff.
#include "include/kt_common.cuh"

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kInvalid = 0xffffffffu;

// Monotone map of floats to unsigned keys (x < y  <=>  key(x) < key(y)); -0.0 maps as 0.0.
__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t b = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Block sum in a fixed order; every thread gets the total. scratch: one double per warp.
__device__ double block_sum_f64(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads(); // scratch may still be read by the previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum_f64(lane < kWarps ? scratch[lane] : 0.0);
}

__device__ uint32_t block_or_u32(uint32_t v, uint32_t* scratch) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, off);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < kWarps ? scratch[threadIdx.x & 31] : 0u;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ uint32_t block_max_u32(uint32_t v, uint32_t* scratch) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < kWarps ? scratch[threadIdx.x & 31] : 0u;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

struct Row {
    const float* x;
    int n;
    float max;
    double inv_t;
    double* dscratch;
    uint32_t* uscratch;

    __device__ __forceinline__ double weight(float l) const { return exp(((double)l - (double)max) * inv_t); }

    // A(k): the weight of every token whose key is >= k.
    __device__ __forceinline__ double mass_from(uint32_t k) const {
        double s = 0.0;
        for (int i = threadIdx.x; i < n; i += kThreads) {
            const float l = x[i];
            if (order_key(l) >= k) s += weight(l);
        }
        return block_sum_f64(s, dscratch);
    }

    // Largest key k in [lo, hi) with A(k) `pass`-ing, given A(lo) passes and A(hi) does
    // not (A falls as k grows).
    template <typename Pass> __device__ __forceinline__ uint32_t bisect(uint32_t lo, uint32_t hi, Pass pass) const {
        while (hi - lo > 1) {
            const uint32_t mid = lo + (hi - lo) / 2;
            if (pass(mass_from(mid))) lo = mid;
            else hi = mid;
        }
        return lo;
    }

    // How many tokens have key k.
    __device__ __forceinline__ uint32_t count_key(uint32_t k) const {
        double c = 0.0;
        for (int i = threadIdx.x; i < n; i += kThreads) c += order_key(x[i]) == k ? 1.0 : 0.0;
        return (uint32_t)block_sum_f64(c, dscratch);
    }

    // Index of the r-th (from 0, lowest index first) token with key k; r < count_key(k).
    // Each thread scans a contiguous chunk; a block-wide exclusive scan of the chunks' counts
    // finds the chunk holding it.
    __device__ __forceinline__ uint32_t nth_with_key(uint32_t k, uint32_t r) const {
        __shared__ uint32_t counts[kThreads];
        __shared__ uint32_t found;
        const int chunk = (n + kThreads - 1) / kThreads;
        const int begin = min(n, (int)threadIdx.x * chunk), end = min(n, begin + chunk);
        uint32_t c = 0;
        for (int i = begin; i < end; ++i) c += order_key(x[i]) == k;
        counts[threadIdx.x] = c;
        if (threadIdx.x == 0) found = kInvalid;
        __syncthreads();
        // Hillis-Steele inclusive scan over the threads' counts.
        for (int off = 1; off < kThreads; off <<= 1) {
            const uint32_t add = threadIdx.x >= (unsigned)off ? counts[threadIdx.x - off] : 0u;
            __syncthreads();
            counts[threadIdx.x] += add;
            __syncthreads();
        }
        const uint32_t incl = counts[threadIdx.x], excl = incl - c;
        if (r >= excl && r < incl) {
            uint32_t seen = excl;
            for (int i = begin; i < end; ++i) {
                if (order_key(x[i]) != k) continue;
                if (seen == r) {
                    found = (uint32_t)i;
                    break;
                }
                ++seen;
            }
        }
        __syncthreads();
        return found;
    }
};

__device__ void top_p(const float* __restrict__ logits, const float* __restrict__ uniforms,
                      uint32_t* __restrict__ out, int n, float temperature, float top_p) {
    __shared__ double dscratch[32];
    __shared__ uint32_t uscratch[32];
    const float* x = logits + (size_t)blockIdx.x * n;

    // Largest key, and whether any logit is NaN or +inf.
    uint32_t kmax = 0, bad = 0;
    for (int i = threadIdx.x; i < n; i += kThreads) {
        const float l = x[i];
        bad |= (l != l || l == __int_as_float(0x7f800000)) ? 1u : 0u;
        kmax = max(kmax, order_key(l));
    }
    bad = block_or_u32(bad, uscratch);
    kmax = block_max_u32(kmax, uscratch);
    const uint32_t kneg_inf = order_key(__int_as_float(0xff800000));
    if (bad || kmax == kneg_inf) {
        if (threadIdx.x == 0) out[blockIdx.x] = kInvalid;
        return;
    }
    Row row{x, n, key_float(kmax), 0.0, dscratch, uscratch};
    if (temperature == 0.0f) {
        const uint32_t i = row.nth_with_key(kmax, 0);
        if (threadIdx.x == 0) out[blockIdx.x] = i;
        return;
    }
    row.inv_t = 1.0 / (double)temperature;

    // Nucleus cut: the largest key whose mass from it up reaches top_p * Z. A(-inf) = Z
    // passes (the same sum in the same order); nothing lies above kmax.
    const double total = row.mass_from(kneg_inf);
    const double cut = (double)top_p * total;
    const uint32_t kc = row.bisect(kneg_inf, kmax + 1, [=](double a) { return a >= cut; });
    const double above_c = row.mass_from(kc + 1);
    const double wc = row.weight(key_float(kc));
    // Tied tokens of the cut key join while the mass before them is below the cut.
    const uint32_t ties_c = row.count_key(kc);
    const double need = ceil((cut - above_c) / wc);
    const uint32_t in_c = (uint32_t)fmin(fmax(need, 1.0), (double)ties_c);
    const double nucleus = above_c + (double)in_c * wc;

    // The sample: the largest key whose nucleus mass from it up exceeds uniform * Zn (at kc
    // that mass is Zn itself).
    const double target = (double)uniforms[blockIdx.x] * nucleus;
    const uint32_t ks = row.bisect(kc, kmax + 1, [=](double a) { return a > target; });
    const double above_s = ks == kc ? above_c : row.mass_from(ks + 1);
    const double ws = row.weight(key_float(ks));
    const uint32_t ties_s = ks == kc ? in_c : row.count_key(ks);
    const double r = floor((target - above_s) / ws);
    const uint32_t pick = (uint32_t)fmin(fmax(r, 0.0), (double)(ties_s - 1));
    const uint32_t i = row.nth_with_key(ks, pick);
    if (threadIdx.x == 0) out[blockIdx.x] = i;
}

} // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    kt_top_p_f32(const float* logits, const float* uniforms, uint32_t* out, int n, float temperature,
                 float top_p_) {
    top_p(logits, uniforms, out, n, temperature, top_p_);
}
