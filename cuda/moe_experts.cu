// The routed experts of a long prompt chunk on the GPU (kt_model::hybrid's GPU prefill):
// the (token, slot) pairs are grouped by expert on the host, these kernels move rows in and
// out of that order around one W4A16 GEMM per expert. A single-token step's resident
// experts are staged by kt_moe_resident_choices and kt_moe_stage_resident (at the end).
// Wrappers in kt-kernels/src/cuda/moe_experts.rs.

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

// The resident experts of a single-token step (the hybrid decode with `decode_resident`), in
// two launches. kt_moe_resident_choices (one block of at least top_k threads): the token's
// choice j names expert e = words[ids_at + j] (the gating's packed words, in device memory or
// read through the device address of page-locked host memory); chosen[j] = e, slot[j] = j
// when e is below `resident`, else -1, and weights[j] = the choice's weight (f32 bits at
// weights_at + j). Its few reads are the only ones that may cross PCIe: the staging kernel
// reads `chosen` in device memory (a read of host memory by each of its blocks, while the
// CPU's experts keep its memory busy, made the V2-Lite decode's GPU work outlast them).
extern "C" __global__ void kt_moe_resident_choices(const uint32_t* words, int ids_at,
                                                   int weights_at, int resident, int top_k,
                                                   int* __restrict__ chosen,
                                                   int* __restrict__ slot,
                                                   float* __restrict__ weights) {
    const int j = threadIdx.x;
    if (j >= top_k) return;
    // volatile: in host memory these words were written by the gating kernel of this step;
    // no line cached from an earlier replay may serve them
    const volatile uint32_t* w = words;
    const uint32_t e = w[ids_at + j];
    chosen[j] = (int)e;
    slot[j] = e < (uint32_t)resident ? j : -1;
    weights[j] = __uint_as_float(w[weights_at + j]);
}

// kt_moe_stage_resident: when choice j's expert e = chosen[j] is below `resident`, expert e's
// packed weights and scales of the layer's resident gate+up and down slabs are copied into
// expert place j of the staging slabs (place j of a non-resident choice keeps what it held:
// the combine skips it). The copies move 16-byte vectors; `*_vecs` are one expert's sizes in
// them. Grid (top_k, blocks), any block size; a fixed grid (no host data) so a captured graph
// replays it.
extern "C" __global__ void __launch_bounds__(256)
    kt_moe_stage_resident(const int* __restrict__ chosen, int resident,
                          const int4* __restrict__ gu_packed, const int4* __restrict__ gu_scales,
                          const int4* __restrict__ dn_packed, const int4* __restrict__ dn_scales,
                          long long gu_packed_vecs, long long gu_scales_vecs,
                          long long dn_packed_vecs, long long dn_scales_vecs,
                          int4* __restrict__ st_gu_packed, int4* __restrict__ st_gu_scales,
                          int4* __restrict__ st_dn_packed, int4* __restrict__ st_dn_scales) {
    const int j = blockIdx.x;
    const int e = chosen[j];
    if (e < 0 || e >= resident) return;
    const long long first = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.y * blockDim.x;
    const long long src = (long long)e, dst = (long long)j;
    for (long long i = first; i < gu_packed_vecs; i += stride)
        st_gu_packed[dst * gu_packed_vecs + i] = gu_packed[src * gu_packed_vecs + i];
    for (long long i = first; i < gu_scales_vecs; i += stride)
        st_gu_scales[dst * gu_scales_vecs + i] = gu_scales[src * gu_scales_vecs + i];
    for (long long i = first; i < dn_packed_vecs; i += stride)
        st_dn_packed[dst * dn_packed_vecs + i] = dn_packed[src * dn_packed_vecs + i];
    for (long long i = first; i < dn_scales_vecs; i += stride)
        st_dn_scales[dst * dn_scales_vecs + i] = dn_scales[src * dn_scales_vecs + i];
}
