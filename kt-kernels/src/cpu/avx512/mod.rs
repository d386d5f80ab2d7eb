//! AVX512 kernels (F/BW/VL/DQ + VNNI; BF16 dot products with AVX512-BF16 where the CPU
//! has it). The integer formats share one register-tile driver over a "column" layout
//! ([`tile`]) in which `vpdpbusd` sums whole 32-element columns, so each format only
//! says how to rearrange its weight bytes ([`tile::ColumnFormat`]); with many tokens the
//! weights are rearranged once per tile into a scratch first ([`unpacked`]). BF16 has its own
//! small tile ([`bf16`]). Formats not registered here fall through to AVX2; the formats
//! whose activations are Q8_K or Q8_0 get the AVX512 activation quantizers either way.
//! One-token products of the integer formats take [`gemv`] instead, which puts two
//! weight rows (not two tokens) in the halves of every vector. With `KT_KQUANT_ORDER=ggml`
//! Q4_K, Q5_K and Q6_K take [`kquant_rows`] instead (llama.cpp's f32 order; `cpu::order`).

mod act;
mod bf16;
mod gemv;
mod kquant_rows;
pub(crate) mod nibbles;
mod q2_k;
mod q3_k;
pub(crate) mod q4_k;
mod q5_k;
mod q6_k;
mod q8_0;
mod quantize;
mod tile;
mod unpacked;

use super::dispatch::{FormatKernels, GemmFn, GemmTile, KernelTable};
use super::isa::Isa;
use super::order::KquantOrder;
use crate::quant::QType;
use gemv::PairFormat;
use tile::ColumnFormat;

pub(crate) fn register(t: &mut KernelTable) {
    let k_quant = |gemm| FormatKernels {
        act: QType::Q8_K,
        quantize_act: quantize::q8_k,
        gemm,
        gemm_isa: Isa::Avx512,
    };
    t.set(QType::Q2_K, k_quant(by_tokens::<gemv::Q2K, q2_k::Q2K>));
    // `KT_KQUANT_ORDER=ggml`: Q4_K, Q5_K and Q6_K in llama.cpp's f32 order (its REPACK
    // kernels for Q4_K, ggml's AVX2 vec_dot for Q5_K / Q6_K: the AVX2 kernels' arithmetic,
    // two rows per vector, [`kquant_rows`]); by default kt's own, faster order.
    // `dispatch::table` has parsed the variable before any table is built.
    if super::order::kquant_order() == Ok(KquantOrder::Ggml) {
        use super::avx2::{q4_k::Q4K, q5_k::Q5K, q6_k::Q6K};
        t.set(QType::Q4_K, k_quant(kquant_rows::gemm::<Q4K>));
        t.set(QType::Q5_K, k_quant(kquant_rows::gemm::<Q5K>));
        t.set(QType::Q6_K, k_quant(kquant_rows::gemm::<Q6K>));
    } else {
        t.set(QType::Q4_K, k_quant(by_tokens::<gemv::Q4K, q4_k::Q4K>));
        t.set(QType::Q5_K, k_quant(by_tokens::<gemv::Q5K, q5_k::Q5K>));
        t.set(QType::Q6_K, k_quant(by_tokens::<gemv::Q6K, q6_k::Q6K>));
        // With the ggml order Q3_K, Q4_1 and Q5_1 keep the AVX2 kernels, which follow it.
        t.set(QType::Q3_K, k_quant(by_tokens::<gemv::Q3K, q3_k::Q3K>));
        // Q8_1 activations: the lower level's quantizer. More than one token: the column
        // layout; one: the lower level's kernel, which ran 0.136-0.151 ms against the
        // column layout's 0.160 (Q4_1, 2048x7168) and 0.168-0.172 against 0.189-0.196 (Q5_1)
        // on the device (16 threads, session 17 call E), and held V2-Lite's q5_k layer at
        // one token at 0.392-0.422 ms against 0.441-0.453.
        let min_formats: [(QType, GemmFn); 2] = [
            (
                QType::Q4_1,
                one_token_lower::<0, nibbles::Column<nibbles::Q4_1>>,
            ),
            (
                QType::Q5_1,
                one_token_lower::<1, nibbles::Column<nibbles::Q5_1>>,
            ),
        ];
        for (i, (q, gemm)) in min_formats.into_iter().enumerate() {
            if let Ok(&lower) = t.get(q) {
                let _ = ONE_TOKEN_LOWER[i].set(lower.gemm);
                t.set(
                    q,
                    FormatKernels {
                        gemm,
                        gemm_isa: Isa::Avx512,
                        ..lower
                    },
                );
            }
        }
    }
    t.set(
        QType::Q8_0,
        FormatKernels {
            act: QType::Q8_0,
            quantize_act: quantize::q8_0,
            gemm: by_tokens::<gemv::Q8_0, q8_0::Q8_0>,
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
    // The nibble formats: Q5_0 is the `ffn_down` of V2-Lite's Q4_K_M layers without "more
    // bits" (1408-wide rows take no K-quant), Q4_0 the experts of Q4_0 files. One token:
    // the row pairs, whose Q5_0 read 30.3-32.4 GB/s of weights on one dev VM core (Zen 5,
    // cache-resident 2048x1408) where the AVX2 kernel read 26.9; device (session 15, 16
    // threads, from DRAM) 7168x2048 79.6 / 82.8 -> 96.3 / 92.1 GB/s, `kt-bench moe` V2-Lite
    // one token 0.3032 / 0.3181 / 0.3108 -> 0.2858 / 0.2928 / 0.2764 ms. More tokens: the
    // column layout (until session 17 the AVX2 tile kernels, which held V2-Lite's Q4_K_M
    // prefill at half the speed of a Q8_0 down).
    nibble_format::<nibbles::Q4_0>(t, QType::Q4_0);
    nibble_format::<nibbles::Q5_0>(t, QType::Q5_0);
}

/// The lower level's kernels of Q4_1 and Q5_1, for their one-token tiles.
static ONE_TOKEN_LOWER: [std::sync::OnceLock<GemmFn>; 2] =
    [std::sync::OnceLock::new(), std::sync::OnceLock::new()];

/// One token: the lower level's kernel recorded in `ONE_TOKEN_LOWER[I]`; more: the column
/// layout `C`.
///
/// # Safety
/// As [`crate::cpu::dispatch::GemmFn`]; `C` implements `tile.qtype`, whose lower kernel is
/// slot `I`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn one_token_lower<const I: usize, C: ColumnFormat>(t: &GemmTile) {
    // SAFETY: forwarded contract; the lower kernel is the table's below this one.
    unsafe {
        if t.tokens == 1 {
            (ONE_TOKEN_LOWER[I].get().expect("set with the AVX512 table"))(t)
        } else {
            tile::gemm::<C>(t)
        }
    }
}

/// Registers nibble format `N` as `q` (Q8_0 activations).
fn nibble_format<N: nibbles::NibbleFormat>(t: &mut KernelTable, q: QType) {
    const { assert!(!N::MIN, "formats with a minimum take Q8_1 activations") };
    t.set(
        q,
        FormatKernels {
            act: QType::Q8_0,
            quantize_act: quantize::q8_0,
            gemm: by_tokens::<gemv::Nibbles<N>, nibbles::Column<N>>,
            gemm_isa: Isa::Avx512,
        },
    );
}

/// One token: the row-pair kernel `P`; up to `P::MAX_TOKENS` (where its weight
/// rearrangement serves several tokens): `P` over all of them ([`gemv::gemv_tokens`]);
/// more: the column layout `C` of the same format.
///
/// At one token the column layout leaves half of each vector idle and lost to the AVX2
/// kernels; the row pairs beat both. Dev Xeon (Sapphire Rapids class, shared with other
/// jobs: best of 3), 2026-11-21, `kt-bench matmul --threads 1 --tokens 1 --resident
/// --shapes 1408x2048` (cache-resident, so the compute per weight byte shows), GB/s of
/// weights, column layout / AVX2 kernel / row pairs: Q2_K 10.9 / 10.6 / 16.3, Q4_K
/// 18.0 / 18.1 / 26.9, Q5_K 13.2 / 16.2 / 22.9, Q6_K 14.8 / 18.5 / 29.3, Q8_0 21.3 / 24.0
/// / 30.1. From DRAM one core reads only 10-13 GB/s whatever the kernel; there the row
/// pairs are level or ahead (Q2_K 8.9 -> 10.6 on 2048x7168).
///
/// # Safety
/// As [`crate::cpu::dispatch::GemmFn`]; `P` and `C` implement `tile.qtype`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn by_tokens<P: PairFormat, C: ColumnFormat>(t: &GemmTile) {
    // SAFETY: forwarded contract.
    unsafe {
        if t.tokens == 1 {
            gemv::gemv::<P>(t)
        } else if t.tokens <= P::MAX_TOKENS {
            gemv::gemv_tokens::<P>(t)
        } else {
            tile::gemm::<C>(t)
        }
    }
}
