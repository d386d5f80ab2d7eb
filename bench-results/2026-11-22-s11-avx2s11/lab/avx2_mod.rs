#![allow(dead_code, unused_imports)]
pub(crate) mod kquant;
pub(crate) mod q4_0;
pub(crate) mod q4_k;
pub(crate) mod q5_0;
pub(crate) mod q8_0;
pub(crate) mod small_block;
pub(crate) mod tile;
use crate::cpu::dispatch::GemmTile;
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k(t: &GemmTile) { unsafe { tile::gemm::<kquant::KQuantKernel<q4_k::Q4K>>(t) } }
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5_0(t: &GemmTile) { unsafe { tile::gemm::<small_block::SmallBlockKernel<q5_0::Q5_0>>(t) } }
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0(t: &GemmTile) { unsafe { tile::gemm::<small_block::SmallBlockKernel<q8_0::Q8_0>>(t) } }
