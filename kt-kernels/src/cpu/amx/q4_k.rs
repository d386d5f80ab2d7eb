//! Q4_K weights as stored in the GGUF (no repack), many tokens, on AMX `tdpbusd`: two
//! step kernels of the [`kquant`](super::kquant) pipeline that differ in where the
//! sub-block scales go.
//!
//! A Q4_K row block (256 weights) is `w = d * sc_j * q - dmin * m_j` for sub-block `j`
//! (32 weights, `q` in 0..16, `sc_j` and `m_j` in 0..64); a Q8_K activation block is
//! `a = da * s` (`s` int8) with the sums of its 16-element groups. So one block's dot is
//! `da * (d * sum_j sc_j * I_j - dmin * sum_j m_j * S_j)` with `I_j` the int8 dot of
//! sub-block `j` and `S_j` the activations' sum over it.
//!
//! - [`q4_k_per_sub`](super::q4_k_per_sub): one C tile per sub-block (`tdpbusd` with
//!   K = 32 on the plain quants), the scales applied in the f32 epilogue: eight C tiles
//!   stored and scaled per step, but a cheap unpacking.
//! - [`q4_k_folded`](super::q4_k_folded): the scales folded into the unpacked weights
//!   (`q * hi_j`, `q * lo_j` with `sc_j = 8 hi_j + lo_j`), two C tiles accumulating the
//!   whole super-block in int32: a quarter of the C stores and a lighter epilogue, for
//!   twice the unpacking (two A operands, one multiply each).
//!
//! The unpacking is per row block and super-block, shared by the token groups of a token
//! block, the epilogue per token group: with one or two groups (the ~16 tokens per expert
//! of V3 prefill) the folded kernel's dearer unpacking outweighs its lighter epilogue, with
//! three or more it wins (dev VM, 1 thread, one 2048x7168 tile, weights resident: 16 / 32
//! / 64 / 512 tokens 1.32 / 2.20 / 3.78 / 31.8 ms folded, 1.20 / 2.13 / 4.31 / 48.8 per
//! sub-block; `bench-results/2026-11-22-s6-kqamx`). So calls of more than
//! [`FOLD_MIN_TOKENS`] tokens take the folded kernel (a threshold set on the device).

use std::sync::OnceLock;

use super::kquant::{gemm_or_lower, Pretransposed};
use super::q4_k_folded::{Folded, Q4K};
use super::q4_k_per_sub::PerSub;
use crate::cpu::dispatch::{GemmFn, GemmTile};

/// Sub-blocks per super-block.
pub(super) const SUBS: usize = 8;

/// Below this many tokens the AVX512 kernel is used: a C tile's 16 token columns would
/// be mostly empty. 10 since session 12 (12 before; the matmul driver's Q4_K tiles share
/// it). Device, 16 threads, V3 Q4_K 512 tokens: in one process (variants taking turns per
/// call, four processes) AMX from 10 / 8 / 6 tokens ran 1.6 / 1.4 / 2.5% faster than from
/// 12 on average (from 10: -1.5 / -6.1 / -2.2 / +3.4%), in separate processes interleaved
/// with base 203 / 195 / 179 ms against 217 / 192 / 196, and with the folded step kernel
/// from 10 tokens 3-12% faster than from 12. Small, at this device's spread, but pointing
/// one way (`bench-results/2026-11-22-s12-moe12`); session 11 had found 12 better than
/// 14, 17 and 21.
pub(crate) const AMX_MIN_TOKENS: usize = 10;

/// Above this many tokens the folded step kernel is used (see the module comment). 64, not
/// the dev VM's crossover of 32: on the device (16 threads, two calls, session 6) the MoE
/// prefill, whose calls carry at most 64 tokens per expert, ran V3 Q4_K at 512 tokens
/// 10-14% slower with folded calls above 32 tokens (191-241 ms vs 174-213 per sub-block
/// only) and V2-Lite no faster, while one 512-token GEMM gained 4-6%
/// (`bench-results/2026-11-22-s6-final`). So the MoE keeps the per-sub-block kernel.
/// Session 12 (device, 16 threads, V3 Q4_K 512 in one process, the two choices taking
/// turns per call, three processes): the folded kernel for every AMX tile ran 4-14% slower
/// (170.9 / 170.7 / 187.0 ms vs 180.3 / 194.5 / 193.9), though it issues 24 tile operations
/// a 16 x 16 x 256 step against 40 (2 C stores against 8): with one token group the second
/// A operand's unpacking is not shared, and at 16 threads that vector work costs more
/// than the tile operations it saves (`bench-results/2026-11-22-s12-moe12`).
pub(crate) const FOLD_MIN_TOKENS: usize = 64;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// Where sub-block `j` sits in an unpacked row: quant byte `i` of pair `p = j / 2` holds
/// element `i` of sub-block `2p` (low nibble) and `2p + 1` (high nibble); each 64 bytes
/// of quants unpack to their 64 low nibbles, then their 64 high nibbles.
pub(super) const fn sub_offset(j: usize) -> usize {
    let p = j / 2;
    (p / 2) * 128 + (j % 2) * 64 + (p % 2) * 32
}

/// The pipeline over call-wide records for tiles of up to `tokens` tokens (the same step
/// kernel choice as [`gemm`]), `None` where [`gemm`] takes the AVX512 kernel.
pub(super) fn pretransposed(tokens: usize) -> Option<Pretransposed> {
    if tokens < AMX_MIN_TOKENS {
        None
    } else if tokens > FOLD_MIN_TOKENS {
        Some(Pretransposed::of::<Folded<Q4K>>())
    } else {
        Some(Pretransposed::of::<PerSub>())
    }
}

/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &GemmTile) {
    // SAFETY: forwarded.
    unsafe {
        if t.tokens > FOLD_MIN_TOKENS {
            gemm_or_lower::<Folded<Q4K>>(t, &LOWER, AMX_MIN_TOKENS)
        } else {
            gemm_or_lower::<PerSub>(t, &LOWER, AMX_MIN_TOKENS)
        }
    };
}
