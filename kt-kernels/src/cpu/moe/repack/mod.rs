//! Repacked expert layouts (INT8 and INT4 with group scales, BF16) and the MoE operator
//! over them: weights converted once at load time into 16-row panels whose 64-byte lines
//! are AMX B-tile rows and AVX512-VNNI operands (see `format.rs`).
//!
//! - [`RepackFormat`], [`RepackedStack`]: the layouts, the converter from f32 or a GGUF
//!   [`ExpertStack`](super::ExpertStack), and [`repack_error`] (relative Frobenius error
//!   against the original's reference dequantization).
//! - `act.rs`: per-token activation rows (int8 with one scale per group or one per
//!   token, or bf16); `fold.rs`: INT4 scales as row scales x integer multipliers.
//! - [`kernel`]: one GEMM tile; the scalar reference, the AVX512 kernel (decode and the
//!   fallback without AMX) and AMX (`cpu::amx::repack`), picked per work item by tokens.
//! - [`RepackedLayer`], [`RepackedMoe`]: the layer kind and its runner. The routing and
//!   the work split are the GGUF-native operator's (`routing.rs`, `plan.rs`); only the
//!   kernels and the activation format differ.
//! - [`reference_exact`]: the operator computed with the repacked weights exactly (scalar
//!   kernel, f64 sums): the tight check of the fast path. The loose check is
//!   [`super::reference`] over the original weights.
//!
//! # Calls
//! [`RepackedMoe::forward`] runs a call on the calling thread; [`RepackedMoe::submit`]
//! hands it to a driver thread and returns a [`MoeHandle`](super::MoeHandle) whose `sync`
//! waits and copies the output: the protocol and the handle are the GGUF-native
//! operator's (`driver.rs`), so a model drives both layer kinds the same way. Buffers are
//! sized when the runner is built; calls allocate nothing.
//!
//! # NUMA: each node a slice of every expert's rows (the mapping, not implemented)
//! A machine with `N` nodes splits the intermediate dimension `I` into `N` ranges
//! `[a_n, b_n)`, each a multiple of the panel (16) and of the down format's group (so a
//! group never straddles two nodes). Node `n` holds, in memory local to it:
//! - gate and up rows `a_n..b_n` of every expert: whole 16-row panels, i.e. the byte
//!   range `a_n / 16 .. b_n / 16` of each expert's panels (and its scales), copied out
//!   as a `RepackedStack` of `E x (b_n - a_n) x H`;
//! - down columns `a_n..b_n` of every expert: inside a panel the reduction runs along
//!   the 64-byte lines, so a group-aligned column range is one contiguous run of lines
//!   per panel, and the node's down stack is `E x H x (b_n - a_n)` made of those runs.
//!
//! Each node runs its own `RepackedMoe` with a thread group pinned to its cores (one
//! `ThreadPool` per node, built after pinning) over a `RepackedLayer` of its slices. The
//! routing and the work split are per node and identical (they depend only on the ids);
//! gate/up items cover the node's `b_n - a_n` rows, the intermediate is quantized per
//! node (group-aligned slices quantize exactly as the full row does: scales are per
//! group), and down produces a partial `[T, H]` over the node's slice. The caller adds
//! the `N` partials (a `N x T x H` f32 reduction, small next to the weights) after
//! syncing every node's handle; the input activations are copied to every node at
//! submit. Weights are then read only from local memory; only `x` and the partial
//! outputs cross nodes.

mod act;
#[cfg(target_arch = "x86_64")]
mod act_avx512;
mod fold;
mod format;
mod fused;
mod items;
pub mod kernel;
mod layer;
mod matrix;
mod reference;
mod run;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use super::silu::silu_mul_with;
pub use act::{
    dequantize_row as dequantize_act_row, quantize_row as quantize_act_row,
    quantize_row_with as quantize_act_row_with, ActScales,
};
pub use fold::{MAX_MULT, MIN_MULT};
pub use format::{RepackFormat, GROUPS, PANEL};
pub(crate) use kernel::Tile;
pub use kernel::{act_scales, amx_min_tokens, Kernel, Prefetch, PrefetchLevel};
pub use layer::RepackedLayer;
pub use matrix::{relative_error, repack_error, RepackedStack};
pub use reference::reference_exact;
pub use run::RepackedMoe;
