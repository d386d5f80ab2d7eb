// The routed experts of a long prompt chunk on the GPU (kt_model::hybrid's GPU prefill):
// the (token, slot) pairs are grouped by expert on the host, these kernels move rows in and
// out of that order around one W4A16 GEMM per expert. Wrappers in
// kt-kernels/src/cuda/moe_experts.rs.

#include "include/kt_common.cuh"

// out[i, :] = x[rows[i], :] for i < n_rows: the normalized hidden state of each pair's
// token, in expert order. One block per row, 8 bf16 (16 bytes) per thread and step when
// the width allows it (the hidden sizes of every DeepSeek model are multiples of 8).
extern "C" __global__ void __launch_bounds__(256)
    kt_moe_gather_bf16(const __nv_bfloat16* __restrict__ x, const int* __restrict__ rows,
                       __nv_bfloat16* __restrict__ out, int width) {
    const long long src = (long long)rows[blockIdx.x] * width;
    const long long dst = (long long)blockIdx.x * width;
    if ((width & 7) == 0) {
        const int4* s = reinterpret_cast<const int4*>(x + src);
        int4* d = reinterpret_cast<int4*>(out + dst);
        for (int c = threadIdx.x; c < width / 8; c += blockDim.x) d[c] = s[c];
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) out[dst + c] = x[src + c];
    }
}

// out[t, c] = sum_j weights[t, j] * y[slot[t, j], c] for j = 0 .. top_k - 1 in that order
// (f32 sums, the same result every run): each token's expert outputs, weighted and summed.
// A negative slot (a pair whose expert ran elsewhere) adds nothing. One block per token.
extern "C" __global__ void __launch_bounds__(256)
    kt_moe_combine_bf16(const __nv_bfloat16* __restrict__ y, const int* __restrict__ slot,
                        const float* __restrict__ weights, float* __restrict__ out, int top_k,
                        int width) {
    const int t = blockIdx.x;
    const int* s = slot + (long long)t * top_k;
    const float* w = weights + (long long)t * top_k;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < top_k; ++j) {
            if (s[j] < 0) continue;
            acc += w[j] * kt_to_f32(y[(long long)s[j] * width + c]);
        }
        out[(long long)t * width + c] = acc;
    }
}
