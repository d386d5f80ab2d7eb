//! CPU kernels: run-time ISA detection ([`Isa`], `KT_ISA`), the per-format kernel tables
//! ([`dispatch`]), the pinned thread pool ([`pool`]) and the format-agnostic matmul
//! driver ([`matmul`]).
//!
//! Layout: `scalar/` is the reference backend; `avx2/`, `avx512/`, `amx/` hold one file
//! per format family per ISA. Each backend registers what it has into the table of its
//! level; everything it lacks falls through to the level below.

mod cache_hint;
pub mod dequant;
pub mod dispatch;
pub mod isa;
pub mod matmul;
pub mod membw;
pub mod moe;
pub mod order;
pub mod peak;
pub mod pool;
pub mod scalar;
mod shared_ptr;

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

pub use dequant::dequantize;
pub use isa::Isa;
pub use matmul::{
    act_row_bytes, gemv_bound, matmul, matmul_f32_reference, matmul_quantized_with, matmul_with,
    quantize_activations_with, GEMV_MAX_TOKENS,
};
pub use order::{kquant_order, KquantOrder};
pub use pool::ThreadPool;
