//! AVX2 + FMA + F16C kernels.
//!
//! Layout: [`tile`] covers a [`GemmTile`](super::dispatch::GemmTile) with register tiles
//! of RM rows x RN tokens and calls a format's microkernel, written once over const
//! RM x RN. The K-quants share one microkernel ([`kquant`]) and differ only in how a
//! super-block's 32-weight chunks and sub-block scales are unpacked (`q2_k.rs` ...
//! `q6_k.rs`); the 32-element block formats share [`small_block`] the same way
//! (`q4_0.rs`, `q5_0.rs`, `q8_0.rs`); `float.rs` holds F32 / F16 / BF16. The activation
//! quantizers (`q8_k.rs`, `q8_0_act.rs`) produce the reference quantizers' exact bytes.
//!
//! Every function here that uses AVX2 is `#[target_feature(enable = "avx2,fma,f16c")]`
//! and only reachable through the dispatch table, which is built after
//! [`Isa::Avx2`](super::isa::Isa)'s check passed.

mod kquant;
mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;
mod tile;

use super::dispatch::{FormatKernels, KernelTable};
use super::isa::Isa;
use crate::quant::QType;

pub(crate) fn register(t: &mut KernelTable) {
    let mut set = |q: QType, quantize_act, gemm| {
        t.set(q, FormatKernels { act: q.vec_dot_type(), quantize_act, gemm, gemm_isa: Isa::Avx2 });
    };
    let q8_k = q8_k::quantize_act as super::dispatch::QuantizeActFn;
    set(QType::Q2_K, q8_k, tile::gemm::<kquant::KQuantKernel<q2_k::Q2K>>);
    set(QType::Q3_K, q8_k, tile::gemm::<kquant::KQuantKernel<q3_k::Q3K>>);
    set(QType::Q4_K, q8_k, tile::gemm::<kquant::KQuantKernel<q4_k::Q4K>>);
    set(QType::Q5_K, q8_k, tile::gemm::<kquant::KQuantKernel<q5_k::Q5K>>);
    set(QType::Q6_K, q8_k, tile::gemm::<kquant::KQuantKernel<q6_k::Q6K>>);
}
