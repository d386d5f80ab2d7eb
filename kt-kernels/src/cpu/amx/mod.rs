//! AMX kernels: the repacked expert layouts of [`crate::cpu::moe::repack`] through
//! [`repack::gemm`], and of the GGUF-native formats Q4_K with many tokens
//! ([`q4_k`]: `register` replaces the AVX512 table's Q4_K GEMM with one that keeps the
//! AVX512 kernel for fewer than [`q4_k::AMX_MIN_TOKENS`] tokens; its two step kernels are
//! [`q4_k_per_sub`] and [`q4_k_folded`]), BF16 ([`bf16`]:
//! `tdpbf16ps`, from [`bf16::AMX_MIN_TOKENS`] tokens) and Q8_0 ([`q8_0`]: `tdpbssd`, from
//! [`q8_0::AMX_MIN_TOKENS`]); those two share [`blocks`]. The other GGUF formats keep
//! their AVX512 kernels.
//!
//! AMX needs the Linux permission request ([`crate::cpu::isa`]'s `amx_permission`), made
//! once per process by `Isa::Amx.check()`; every entry here is reached only after it
//! passed. Each work item loads its own tile configuration on the thread that runs it and
//! releases the tiles at its end, so pool threads never share tile state.

use super::dispatch::{FormatKernels, GemmFn, KernelTable};
use super::isa::Isa;
use crate::quant::QType;

mod bf16;
mod blocks;
pub(crate) mod q4_k;
mod q4_k_folded;
mod q4_k_per_sub;
mod q8_0;
pub(crate) mod repack;
mod tiles;

pub(crate) fn register(t: &mut KernelTable) {
    if let Ok(&lower) = t.get(QType::Q4_K) {
        t.set(
            QType::Q4_K,
            FormatKernels {
                gemm: q4_k::install(lower.gemm),
                gemm_isa: Isa::Amx,
                ..lower
            },
        );
    }
    for (q, install) in [
        (QType::BF16, bf16::install as fn(GemmFn) -> GemmFn),
        (QType::Q8_0, q8_0::install),
    ] {
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
