//! AMX kernels: the repacked expert layouts of [`crate::cpu::moe::repack`] through
//! [`repack::gemm`], and of the GGUF-native formats with many tokens: the K-quants and
//! the small-block formats through one pipeline ([`kquant`]) with a step kernel per
//! format, Q4_K ([`q4_k`]: two step kernels, [`q4_k_per_sub`] and [`q4_k_folded`]), Q5_K
//! ([`q5_k`], Q4_K's folded kernel with a fifth bit), Q2_K ([`q2_k`]), Q3_K ([`q3_k`]),
//! Q6_K ([`q6_k`]), Q8_0 ([`q8_0`]), Q4_0, Q5_0, Q4_1 and Q5_1 ([`nibbles`]) (all
//! [`small_block`]: `tdpbssd` per 32-element block), each keeping the AVX512 kernel below
//! its `AMX_MIN_TOKENS` (Q3_K, Q5_K, Q6_K, Q4_1 and Q5_1 only in kt's own f32 order, not
//! with `KT_KQUANT_ORDER=ggml`); BF16 ([`bf16`]: `tdpbf16ps`, from
//! [`bf16::AMX_MIN_TOKENS`] tokens, over [`blocks`]). The other GGUF formats keep their
//! AVX512 kernels.
//!
//! AMX needs the Linux permission request ([`crate::cpu::isa`]'s `amx_permission`), made
//! once per process by `Isa::Amx.check()`; every entry here is reached only after it
//! passed. Each work item loads its own tile configuration on the thread that runs it and
//! releases the tiles at its end, so pool threads never share tile state.

use super::dispatch::{FormatKernels, GemmFn, KernelTable};
use super::isa::Isa;
use super::order::KquantOrder;
use crate::quant::QType;

mod bf16;
mod blocks;
pub(crate) mod kquant;
mod nibbles;
mod q2_k;
mod q3_k;
pub(crate) mod q4_k;
mod q4_k_folded;
mod q4_k_per_sub;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_k_lines;
pub(crate) mod repack;
mod small_block;
#[cfg(test)]
mod stage_check;
mod tiles;

pub(crate) fn register(t: &mut KernelTable) {
    // `KT_KQUANT_ORDER=ggml` asks for llama.cpp's f32 order bit for bit, which the lower
    // table's Q3_K, Q5_K, Q6_K, Q4_1 and Q5_1 kernels follow and the AMX ones (exact int32 sums)
    // do not: they stay. (Q4_K's AMX kernel keeps its own order in both modes, as before.)
    let ggml_order = super::order::kquant_order() == Ok(KquantOrder::Ggml);
    for (q, install) in [
        (QType::Q4_K, q4_k::install as fn(GemmFn) -> GemmFn),
        (QType::Q5_K, q5_k::install),
        (QType::Q2_K, q2_k::install),
        (QType::Q3_K, q3_k::install),
        (QType::Q6_K, q6_k::install),
        (QType::BF16, bf16::install),
        (QType::Q8_0, q8_0::install),
        (QType::Q4_0, nibbles::q4_0::install),
        (QType::Q5_0, nibbles::q5_0::install),
        (QType::Q4_1, nibbles::q4_1::install),
        (QType::Q5_1, nibbles::q5_1::install),
    ] {
        let ggml_kept = [
            QType::Q3_K,
            QType::Q5_K,
            QType::Q6_K,
            QType::Q4_1,
            QType::Q5_1,
        ];
        if ggml_order && ggml_kept.contains(&q) {
            continue;
        }
        if let Ok(&lower) = t.get(q) {
            t.set(
                q,
                FormatKernels {
                    gemm: install(lower.gemm),
                    gemm_isa: Isa::Amx,
                    ..lower
                },
            );
        }
    }
}
