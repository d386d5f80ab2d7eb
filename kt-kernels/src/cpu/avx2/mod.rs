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

mod float;
pub(crate) mod kquant;
mod q2_k;
pub(crate) mod q3_k;
mod q4_0;
pub(crate) mod q4_k;
mod q5_0;
pub(crate) mod q5_k;
pub(crate) mod q6_k;
mod q8_0;
mod q8_0_act;
mod q8_k;
mod small_block;
pub(crate) mod tile;

use super::dispatch::{FormatKernels, KernelTable};
use super::isa::Isa;
use super::scalar::quantize_act_fn;
use crate::quant::QType;

pub(crate) fn register(t: &mut KernelTable) {
    let mut set = |q: QType, quantize_act, gemm| {
        t.set(
            q,
            FormatKernels {
                act: q.vec_dot_type(),
                quantize_act,
                gemm,
                gemm_isa: Isa::Avx2,
            },
        );
    };
    let q8_k = q8_k::quantize_act as super::dispatch::QuantizeActFn;
    set(
        QType::Q2_K,
        q8_k,
        tile::gemm::<kquant::KQuantKernel<q2_k::Q2K>>,
    );
    set(
        QType::Q3_K,
        q8_k,
        tile::gemm::<kquant::KQuantKernel<q3_k::Q3K>>,
    );
    set(
        QType::Q4_K,
        q8_k,
        tile::gemm::<kquant::KQuantKernel<q4_k::Q4K>>,
    );
    set(
        QType::Q5_K,
        q8_k,
        tile::gemm::<kquant::KQuantKernel<q5_k::Q5K>>,
    );
    set(
        QType::Q6_K,
        q8_k,
        tile::gemm::<kquant::KQuantKernel<q6_k::Q6K>>,
    );

    let q8_0 = q8_0_act::quantize_q8_0 as super::dispatch::QuantizeActFn;
    let q8_1 = q8_0_act::quantize_q8_1 as super::dispatch::QuantizeActFn;
    set(
        QType::Q8_0,
        q8_0,
        tile::gemm::<small_block::SmallBlockKernel<q8_0::Q8_0>>,
    );
    set(
        QType::Q4_0,
        q8_0,
        tile::gemm::<small_block::SmallBlockKernel<q4_0::Q4_0>>,
    );
    set(
        QType::Q5_0,
        q8_0,
        tile::gemm::<small_block::SmallBlockKernel<q5_0::Q5_0>>,
    );
    set(
        QType::Q4_1,
        q8_1,
        tile::gemm::<small_block::SmallBlockKernel<q4_0::Q4_1>>,
    );
    set(
        QType::Q5_1,
        q8_1,
        tile::gemm::<small_block::SmallBlockKernel<q5_0::Q5_1>>,
    );

    // Float activations are a plain conversion: the reference converters (the `half`
    // crate's rounding and NaN rules) are kept, so every ISA sees the same bits.
    set(
        QType::F32,
        quantize_act_fn(QType::F32),
        tile::gemm::<float::FloatKernel<float::F32>>,
    );
    set(
        QType::F16,
        quantize_act_fn(QType::F16),
        tile::gemm::<float::FloatKernel<float::F16>>,
    );
    set(
        QType::BF16,
        quantize_act_fn(QType::BF16),
        tile::gemm::<float::FloatKernel<float::Bf16>>,
    );
}
