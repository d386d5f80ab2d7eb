//! AVX512 kernels (F/BW/VL/DQ + VNNI; BF16 dot products with AVX512-BF16 where the CPU
//! has it). The integer formats share one register-tile driver over a "column" layout
//! ([`tile`]) in which `vpdpbusd` sums whole 32-element columns, so each format only
//! says how to rearrange its weight bytes ([`tile::ColumnFormat`]); with many tokens the
//! weights are rearranged once per tile into a scratch first ([`unpacked`]). BF16 has its own
//! small tile ([`bf16`]). Formats not registered here fall through to AVX2; the formats
//! whose activations are Q8_K or Q8_0 get the AVX512 activation quantizers either way.
//! One-token Q4_K and Q2_K products run the AVX2 kernel (measured faster; see the end of
//! this file).

mod act;
mod bf16;
mod q2_k;
pub(crate) mod q4_k;
mod q5_k;
mod q6_k;
mod q8_0;
mod quantize;
mod tile;
mod unpacked;

use super::dispatch::{FormatKernels, GemmTile, KernelTable};
use super::isa::Isa;
use crate::quant::QType;

pub(crate) fn register(t: &mut KernelTable) {
    let k_quant = |gemm| FormatKernels {
        act: QType::Q8_K,
        quantize_act: quantize::q8_k,
        gemm,
        gemm_isa: Isa::Avx512,
    };
    t.set(QType::Q2_K, k_quant(q2_k_gemm));
    t.set(QType::Q4_K, k_quant(q4_k_gemm));
    t.set(QType::Q5_K, k_quant(tile::gemm::<q5_k::Q5K>));
    t.set(QType::Q6_K, k_quant(tile::gemm::<q6_k::Q6K>));
    t.set(
        QType::Q8_0,
        FormatKernels {
            act: QType::Q8_0,
            quantize_act: quantize::q8_0,
            gemm: tile::gemm::<q8_0::Q8_0>,
            gemm_isa: Isa::Avx512,
        },
    );
    if let Ok(lower) = t.get(QType::BF16) {
        // BF16 activations are a plain conversion: keep the lower level's converter.
        let quantize_act = lower.quantize_act;
        t.set(
            QType::BF16,
            FormatKernels {
                act: QType::BF16,
                quantize_act,
                gemm: bf16::gemm,
                gemm_isa: Isa::Avx512,
            },
        );
    }
    t.set_quantize_act(QType::Q3_K, quantize::q8_k);
    t.set_quantize_act(QType::Q4_0, quantize::q8_0);
    t.set_quantize_act(QType::Q5_0, quantize::q8_0);
}

// One token: the column layout puts a token pair in the two halves of every vector, so at
// one token half of each `vpdpbusd` and of the weight rearranging is wasted, and the AVX2
// K-quant kernel (8 rows x 1 token per register tile, with a row prefetch) is faster on
// the Xeons measured. Dev Xeon (Sapphire Rapids class), 2026-11-21, `kt-bench matmul
// --tokens 1`, GB/s of weights, AVX512 column layout vs AVX2 kernel:
//   1 thread, cache-resident (`--resident`, 1408x2048 / 512x7168): Q4_K 14.6 vs 17.5,
//     Q2_K 7.9 vs 10.3;
//   1 thread, from DRAM (1408x2048, 2048x7168): Q4_K 8.7-9.1 vs 10.2-11.2 and 9.4-11.4 vs
//     12.3-14.0, Q2_K 5.7-7.0 vs 7.9-8.8 and 6.7-7.4 vs 9.1-9.8.
// From two tokens on the pairs are full and the column layout wins (Q4_K resident at two
// tokens: 14.3 vs 10.9).

/// Q4_K: the AVX2 kernel at one token, the column layout otherwise.
///
/// # Safety
/// As [`crate::cpu::dispatch::GemmFn`]; the CPU has AVX512 (and so AVX2, FMA, F16C: the
/// AVX512 level's check includes the AVX2 level's).
unsafe fn q4_k_gemm(t: &GemmTile) {
    // SAFETY: forwarded contract; both kernels' ISAs are present.
    unsafe {
        if t.tokens == 1 {
            super::avx2::Q4_K_GEMM(t)
        } else {
            tile::gemm::<q4_k::Q4K>(t)
        }
    }
}

/// Q2_K: as [`q4_k_gemm`].
///
/// # Safety
/// As [`q4_k_gemm`].
unsafe fn q2_k_gemm(t: &GemmTile) {
    // SAFETY: forwarded contract; both kernels' ISAs are present.
    unsafe {
        if t.tokens == 1 {
            super::avx2::Q2_K_GEMM(t)
        } else {
            tile::gemm::<q2_k::Q2K>(t)
        }
    }
}
