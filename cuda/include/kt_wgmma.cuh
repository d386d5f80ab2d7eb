// Hopper warpgroup MMA (wgmma, sm_90a only): shared-memory matrix descriptors, the fences and
// group waits around the asynchronous MMAs, and the shapes MLA uses. Operands live in
// shared memory as blocks of 128-byte rows with the 128-byte swizzle (16-byte chunk c of row
// r stored at chunk c ^ (r % 8), 8-row atoms of 1024 bytes, atoms 1024-byte aligned): the
// layout kt_swz128 computes. Include only from code compiled for sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL); other targets must not reach these instructions.
#pragma once

#include <stdint.h>

// Byte offset of (row, 16-byte chunk) inside a 128-byte-swizzled block of 128-byte rows.
__host__ __device__ constexpr uint32_t kt_swz128(int row, int chunk) {
    return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Descriptor of a swizzled (128-byte) operand at shared address `addr`. K-major (the k
// elements of a row contiguous): lbo unused (1), sbo = 1024, the distance between 8-row
// groups. MN-major (transposed B): lbo = distance between 64-element blocks along N, sbo =
// distance between 8-row groups along K. Addresses, lbo and sbo are stored in 16-byte units.
__device__ __forceinline__ uint64_t kt_wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
           (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

// The descriptor of the operand `bytes` past `desc`'s (same layout): only the start address
// field (the low 14 bits, in 16-byte units) changes, and it cannot carry out of them while
// both addresses lie in the 256 KiB shared window. Stepping along an operand this way costs
// one integer add per MMA instead of rebuilding the descriptor.
__device__ __forceinline__ uint64_t kt_wgmma_desc_step(uint64_t desc, uint32_t bytes) {
    const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
    return (desc & 0xFFFFFFFF00000000ull) | lo;
}

// Orders this thread's register and shared-memory accesses before the next wgmma.
__device__ __forceinline__ void kt_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void kt_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N committed groups of this warpgroup are still running.
template <int N> __device__ __forceinline__ void kt_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to
// the async proxy (wgmma operand reads); a barrier must follow before the MMA is issued.
__device__ __forceinline__ void kt_fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Pins accumulator registers across an asynchronous MMA: the compiler may not move reads or
// writes of `v` across this point.
__device__ __forceinline__ void kt_reg_fence(float& v) { asm volatile("" : "+f"(v)::"memory"); }
// The same for a register an MMA reads asynchronously (an A fragment): it stays this value,
// in its register, up to this point.
__device__ __forceinline__ void kt_reg_fence_u32(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], both from shared memory (descriptors); D in the 32
// f32 accumulators of each thread of the warpgroup. `accumulate` 0 overwrites D.
template <int TransB>
__device__ __forceinline__ void wgmma_m64n64k16(float* d, uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, %35;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(accumulate), "n"(TransB));
}

// The 128 f32 accumulator operands of an m64n256 wgmma (each thread's D fragment): their
// place-holders in the instruction text and the operands, shared by both variants below.
#define KT_WGMMA_D128_TEXT \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define KT_WGMMA_D128_OPERANDS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D[64 x 256] (+)= A[64 x 16] B[16 x 256], both from shared memory (descriptors); D in
// the 128 f32 accumulators of each thread of the warpgroup. `accumulate` 0 overwrites D.
template <int TransB>
__device__ __forceinline__ void wgmma_m64n256k16(float* d, uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        KT_WGMMA_D128_TEXT
        "}, %128, %129, p, 1, 1, 0, %131;\n}\n"
        : KT_WGMMA_D128_OPERANDS(d)
        : "l"(a), "l"(b), "r"(accumulate), "n"(TransB));
}

// D[64 x 256] (+)= A[64 x 16] B[16 x 256] with A in registers: `a` holds this thread's four
// bf16 pairs of the A fragment (rows lane / 4 and + 8 of the warp's 16, columns 2 (lane % 4)
// and + 8: the layout of a k16 slice of an f32 accumulator, rounded and packed), B from
// shared memory (descriptor). The MMA reads `a` asynchronously: keep those registers
// unchanged until it is waited for.
template <int TransB>
__device__ __forceinline__ void wgmma_m64n256k16_rs(float* d, const uint32_t* a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        KT_WGMMA_D128_TEXT
        "}, {%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
        : KT_WGMMA_D128_OPERANDS(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TransB));
}

// Stores four 8 x 8 bf16 matrices to shared memory (stmatrix .x4): register i of every lane
// holds its two elements of matrix i (row lane / 4, columns 2 (lane % 4) and + 1, the layout
// of an m64nNk16 accumulator's 8-column group after packing to bf16); lanes 8 i .. 8 i + 7 give
// the shared addresses of matrix i's rows 0 .. 7 (16 bytes each).
__device__ __forceinline__ void kt_stmatrix_x4(uint32_t addr, const uint32_t* r) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
                 "r"(r[2]), "r"(r[3])
                 : "memory");
}
