// Small element-wise and per-row kernels of the forward pass: RMSNorm, SiLU-and-multiply,
// in-place residual add, embedding gather, arg-max and rotary embedding. Each exists for f32, f16 and bf16
// (suffix _f32 / _f16 / _bf16); all arithmetic is f32, rounding once at the store.
#include "include/kt_common.cuh"

// out[t, :] = w * x[t, :] / sqrt(mean(x[t, :]^2) + eps). One block per token.
template <typename T>
__device__ void rmsnorm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                        int n, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = kt_to_f32(x[base + i]);
        ss += v * v;
    }
    ss = kt_block_sum(ss, scratch);
    // 1/sqrt with IEEE division and sqrt (not rsqrtf): the same value a scalar reference gets.
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        out[base + i] = kt_from_f32<T>(kt_to_f32(w[i]) * (kt_to_f32(x[base + i]) * inv));
    }
}

// gate_up is [tokens, 2 * d] with the gate in the first half of each row (the layout of a
// fused gate/up projection); out[t, i] = silu(gate) * up.
template <typename T>
__device__ void silu_mul(const T* __restrict__ gate_up, T* __restrict__ out, int tokens, int d) {
    const size_t total = (size_t)tokens * d;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t t = e / d;
        const size_t i = e % d;
        const float g = kt_to_f32(gate_up[t * 2 * d + i]);
        const float u = kt_to_f32(gate_up[t * 2 * d + d + i]);
        out[e] = kt_from_f32<T>(g / (1.0f + expf(-g)) * u);
    }
}

// acc[i] += x[i] (the residual stream update).
template <typename T>
__device__ void add_inplace(T* __restrict__ acc, const T* __restrict__ x, size_t n) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        acc[e] = kt_from_f32<T>(kt_to_f32(acc[e]) + kt_to_f32(x[e]));
    }
}

// out[t, :] = table[ids[t], :]. One block per token. An id past the vocabulary fills its row
// with NaN, so a bad id is visible downstream instead of reading out of bounds.
template <typename T>
__device__ void embedding(const T* __restrict__ table, const uint32_t* __restrict__ ids,
                          T* __restrict__ out, uint32_t vocab, int dim) {
    const uint32_t id = ids[blockIdx.x];
    T* row = out + (size_t)blockIdx.x * dim;
    if (id >= vocab) {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = kt_from_f32<T>(__int_as_float(0x7fc00000));
        return;
    }
    const T* src = table + (size_t)id * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = src[i];
}

// out[r] = index of the largest x[r, :] (ties: lowest index; NaN never wins unless the row is
// all NaN). One block per row.
template <typename T>
__device__ void argmax(const T* __restrict__ x, uint32_t* __restrict__ out, int n) {
    __shared__ float best_v[32];
    __shared__ uint32_t best_i[32];
    const T* row = x + (size_t)blockIdx.x * n;
    float v = __int_as_float(0x7fc00000);
    uint32_t idx = 0xffffffffu;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float c = kt_to_f32(row[i]);
        if (kt_argmax_better(c, (uint32_t)i, v, idx)) {
            v = c;
            idx = (uint32_t)i;
        }
    }
    kt_warp_argmax(v, idx);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x >> 5;
        v = lane < nwarps ? best_v[lane] : __int_as_float(0x7fc00000);
        idx = lane < nwarps ? best_i[lane] : 0xffffffffu;
        kt_warp_argmax(v, idx);
        if (lane == 0) out[blockIdx.x] = idx;
    }
}

// Rotary embedding, in place, of the slice [offset, offset + 2 half) of every head of every
// token of x [tokens, heads, head_dim]: pair (2i, 2i + 1) of token t rotates by row pos[t] of
// the [rows, half] cos / sin tables, which the host fills from kt_kernels::ops::RopeYarn (YaRN
// frequencies and magnitude included), so the angles carry no f32 error here. A position
// past the tables turns the token's pairs into NaN. One block per token.
template <typename T>
__device__ void rope(T* __restrict__ x, const uint32_t* __restrict__ pos, const float* __restrict__ cos_t,
                     const float* __restrict__ sin_t, int heads, int head_dim, int offset, int half,
                     uint32_t rows) {
    const uint32_t p = pos[blockIdx.x];
    T* tok = x + (size_t)blockIdx.x * heads * head_dim + offset;
    for (int e = threadIdx.x; e < heads * half; e += blockDim.x) {
        const int h = e / half, i = e % half;
        T* pair = tok + (size_t)h * head_dim + 2 * i;
        if (p >= rows) {
            pair[0] = pair[1] = kt_from_f32<T>(__int_as_float(0x7fc00000));
            continue;
        }
        const float c = cos_t[(size_t)p * half + i];
        const float s = sin_t[(size_t)p * half + i];
        const float a = kt_to_f32(pair[0]), b = kt_to_f32(pair[1]);
        pair[0] = kt_from_f32<T>(a * c - b * s);
        pair[1] = kt_from_f32<T>(a * s + b * c);
    }
}

#define KT_SMALL_OPS(SUFFIX, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(1024)                                             \
        kt_rmsnorm_##SUFFIX(const T* x, const T* w, T* out, int n, float eps) {                  \
        rmsnorm<T>(x, w, out, n, eps);                                                             \
    }                                                                                              \
    extern "C" __global__ void kt_silu_mul_##SUFFIX(const T* gate_up, T* out, int tokens, int d) { \
        silu_mul<T>(gate_up, out, tokens, d);                                                      \
    }                                                                                              \
    extern "C" __global__ void kt_add_inplace_##SUFFIX(T* acc, const T* x, unsigned long long n) { \
        add_inplace<T>(acc, x, (size_t)n);                                                         \
    }                                                                                              \
    extern "C" __global__ void kt_embedding_##SUFFIX(const T* table, const uint32_t* ids, T* out,  \
                                                     uint32_t vocab, int dim) {                    \
        embedding<T>(table, ids, out, vocab, dim);                                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(1024)                                             \
        kt_argmax_##SUFFIX(const T* x, uint32_t* out, int n) {                                    \
        argmax<T>(x, out, n);                                                                      \
    }                                                                                              \
    extern "C" __global__ void kt_rope_##SUFFIX(T* x, const uint32_t* pos, const float* cos_t,      \
                                                const float* sin_t, int heads, int head_dim,       \
                                                int offset, int half, uint32_t rows) {             \
        rope<T>(x, pos, cos_t, sin_t, heads, head_dim, offset, half, rows);                        \
    }

KT_SMALL_OPS(f32, float)
KT_SMALL_OPS(f16, __half)
KT_SMALL_OPS(bf16, __nv_bfloat16)
