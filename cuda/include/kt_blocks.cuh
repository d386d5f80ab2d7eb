// GGUF block layouts, byte for byte: the device-side mirror of
// kt-kernels/src/quant/blocks.rs. Sizes and field offsets are pinned with static_asserts
// here, and kt-kernels/tests/cuda_layouts.rs compiles this header on the host and checks
// every size and offset against the Rust structs, so the two cannot drift apart.
//
// Half-precision fields are stored as their raw 16 bits (uint16_t) so the header also
// compiles as plain host C++ (no cuda_fp16.h needed); kernels reinterpret them.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define KT_QK 32    // elements per block of the small-block formats (Q4_0 .. Q8_1)
#define KT_QK_K 256 // elements per super-block of the K-quants

typedef uint16_t kt_half_bits; // an IEEE binary16 value, stored as its bits

// Q4_0: 32 weights as 4-bit (q - 8) with one scale.
struct kt_block_q4_0 {
    kt_half_bits d;
    uint8_t qs[KT_QK / 2];
};

// Q4_1: 32 weights as 4-bit q with a scale and a minimum.
struct kt_block_q4_1 {
    kt_half_bits d;
    kt_half_bits m;
    uint8_t qs[KT_QK / 2];
};

// Q5_0: 32 weights as 5-bit (q - 16); bit 4 of element j is bit j of qh.
struct kt_block_q5_0 {
    kt_half_bits d;
    uint8_t qh[4];
    uint8_t qs[KT_QK / 2];
};

// Q5_1: 32 weights as 5-bit q with a scale and a minimum.
struct kt_block_q5_1 {
    kt_half_bits d;
    kt_half_bits m;
    uint8_t qh[4];
    uint8_t qs[KT_QK / 2];
};

// Q8_0: 32 weights as int8 with one scale.
struct kt_block_q8_0 {
    kt_half_bits d;
    int8_t qs[KT_QK];
};

// Q8_1: Q8_0 plus s = d * sum(qs).
struct kt_block_q8_1 {
    kt_half_bits d;
    kt_half_bits s;
    int8_t qs[KT_QK];
};

// Q2_K: 16 sub-blocks of 16, 2-bit quants, 4-bit scale and min per sub-block.
struct kt_block_q2_k {
    uint8_t scales[KT_QK_K / 16];
    uint8_t qs[KT_QK_K / 4];
    kt_half_bits d;
    kt_half_bits dmin;
};

// Q3_K: 16 sub-blocks of 16, 3-bit quants (high bit in hmask), 6-bit scales in 12 bytes.
struct kt_block_q3_k {
    uint8_t hmask[KT_QK_K / 8];
    uint8_t qs[KT_QK_K / 4];
    uint8_t scales[12];
    kt_half_bits d;
};

// Q4_K: 8 sub-blocks of 32, 4-bit quants, 6-bit scale and min per sub-block.
struct kt_block_q4_k {
    kt_half_bits d;
    kt_half_bits dmin;
    uint8_t scales[12];
    uint8_t qs[KT_QK_K / 2];
};

// Q5_K: Q4_K plus a fifth bit per weight in qh.
struct kt_block_q5_k {
    kt_half_bits d;
    kt_half_bits dmin;
    uint8_t scales[12];
    uint8_t qh[KT_QK_K / 8];
    uint8_t qs[KT_QK_K / 2];
};

// Q6_K: 16 sub-blocks of 16, 6-bit quants stored as q + 32, int8 scales.
struct kt_block_q6_k {
    uint8_t ql[KT_QK_K / 2];
    uint8_t qh[KT_QK_K / 4];
    int8_t scales[KT_QK_K / 16];
    kt_half_bits d;
};

// Q8_K: the K-quants' activation type: f32 scale, int8 quants, sums of each 16.
struct kt_block_q8_k {
    float d;
    int8_t qs[KT_QK_K];
    int16_t bsums[KT_QK_K / 16];
};

// Sizes: equal to the GGUF block sizes (no padding anywhere).
static_assert(sizeof(kt_block_q4_0) == 18, "q4_0 size");
static_assert(sizeof(kt_block_q4_1) == 20, "q4_1 size");
static_assert(sizeof(kt_block_q5_0) == 22, "q5_0 size");
static_assert(sizeof(kt_block_q5_1) == 24, "q5_1 size");
static_assert(sizeof(kt_block_q8_0) == 34, "q8_0 size");
static_assert(sizeof(kt_block_q8_1) == 36, "q8_1 size");
static_assert(sizeof(kt_block_q2_k) == 84, "q2_k size");
static_assert(sizeof(kt_block_q3_k) == 110, "q3_k size");
static_assert(sizeof(kt_block_q4_k) == 144, "q4_k size");
static_assert(sizeof(kt_block_q5_k) == 176, "q5_k size");
static_assert(sizeof(kt_block_q6_k) == 210, "q6_k size");
static_assert(sizeof(kt_block_q8_k) == 292, "q8_k size");

// Offsets of every field that follows another one.
static_assert(offsetof(kt_block_q4_0, qs) == 2, "q4_0.qs");
static_assert(offsetof(kt_block_q4_1, m) == 2, "q4_1.m");
static_assert(offsetof(kt_block_q4_1, qs) == 4, "q4_1.qs");
static_assert(offsetof(kt_block_q5_0, qh) == 2, "q5_0.qh");
static_assert(offsetof(kt_block_q5_0, qs) == 6, "q5_0.qs");
static_assert(offsetof(kt_block_q5_1, m) == 2, "q5_1.m");
static_assert(offsetof(kt_block_q5_1, qh) == 4, "q5_1.qh");
static_assert(offsetof(kt_block_q5_1, qs) == 8, "q5_1.qs");
static_assert(offsetof(kt_block_q8_0, qs) == 2, "q8_0.qs");
static_assert(offsetof(kt_block_q8_1, s) == 2, "q8_1.s");
static_assert(offsetof(kt_block_q8_1, qs) == 4, "q8_1.qs");
static_assert(offsetof(kt_block_q2_k, qs) == 16, "q2_k.qs");
static_assert(offsetof(kt_block_q2_k, d) == 80, "q2_k.d");
static_assert(offsetof(kt_block_q2_k, dmin) == 82, "q2_k.dmin");
static_assert(offsetof(kt_block_q3_k, qs) == 32, "q3_k.qs");
static_assert(offsetof(kt_block_q3_k, scales) == 96, "q3_k.scales");
static_assert(offsetof(kt_block_q3_k, d) == 108, "q3_k.d");
static_assert(offsetof(kt_block_q4_k, dmin) == 2, "q4_k.dmin");
static_assert(offsetof(kt_block_q4_k, scales) == 4, "q4_k.scales");
static_assert(offsetof(kt_block_q4_k, qs) == 16, "q4_k.qs");
static_assert(offsetof(kt_block_q5_k, dmin) == 2, "q5_k.dmin");
static_assert(offsetof(kt_block_q5_k, scales) == 4, "q5_k.scales");
static_assert(offsetof(kt_block_q5_k, qh) == 16, "q5_k.qh");
static_assert(offsetof(kt_block_q5_k, qs) == 48, "q5_k.qs");
static_assert(offsetof(kt_block_q6_k, qh) == 128, "q6_k.qh");
static_assert(offsetof(kt_block_q6_k, scales) == 192, "q6_k.scales");
static_assert(offsetof(kt_block_q6_k, d) == 208, "q6_k.d");
static_assert(offsetof(kt_block_q8_k, qs) == 4, "q8_k.qs");
static_assert(offsetof(kt_block_q8_k, bsums) == 260, "q8_k.bsums");
