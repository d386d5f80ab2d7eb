//! Repacked expert layouts (INT8 and INT4 with group scales, BF16) and the MoE operator
//! over them: weights converted once at load time into 16-row panels whose 64-byte lines
//! are AMX B-tile rows and AVX512-VNNI operands (see `format.rs`).
//!
//! - [`RepackFormat`], [`RepackedStack`]: the layouts, the converter from f32 or a GGUF
//!   [`ExpertStack`](super::ExpertStack), and [`repack_error`] (relative Frobenius error
//!   against the original's reference dequantization).
//! - `act.rs`: per-token activation rows (int8 with one scale per group, or bf16).
//! - [`kernel`]: one GEMM tile; the scalar reference, the AVX512 kernel (decode and the
//!   fallback without AMX) and AMX (`cpu::amx::repack`), picked per work item by tokens.
//! - [`RepackedLayer`], [`RepackedMoe`]: the layer kind and its runner. The routing and
//!   the work split are the GGUF-native operator's (`routing.rs`, `plan.rs`); only the
//!   kernels and the activation format differ.
//! - [`reference_exact`]: the operator computed with the repacked weights exactly (scalar
//!   kernel, f64 sums): the tight check of the fast path. The loose check is
//!   [`super::reference`] over the original weights.

mod act;
#[cfg(target_arch = "x86_64")]
mod act_avx512;
mod format;
pub mod kernel;
mod layer;
mod matrix;
mod reference;
mod run;
#[cfg(target_arch = "x86_64")]
mod silu_avx512;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use act::{dequantize_row as dequantize_act_row, quantize_row as quantize_act_row, quantize_row_with as quantize_act_row_with};
pub use format::{RepackFormat, GROUPS, PANEL};
pub(crate) use kernel::Tile;
pub use kernel::{amx_min_tokens, Kernel};
pub use layer::RepackedLayer;
pub use matrix::{relative_error, repack_error, RepackedStack};
pub use reference::reference_exact;
pub use run::{silu_mul_with, RepackedMoe};
