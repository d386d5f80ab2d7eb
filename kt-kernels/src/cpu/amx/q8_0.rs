//! Q8_0 weights as stored (34-byte blocks: f16 `d`, 32 int8), many tokens: the
//! small-block step kernel ([`super::small_block`]) of the [`kquant`](super::kquant)
//! pipeline, from [`AMX_MIN_TOKENS`] tokens; fewer are a GEMV (the AVX512 kernel).

use std::arch::x86_64::*;

use super::kquant::single_step_entry_points;
use super::small_block::{BlockFormat, SmallBlock};
use crate::cpu::GEMV_MAX_TOKENS;

/// From this many tokens on the AMX kernel runs.
pub(crate) const AMX_MIN_TOKENS: usize = GEMV_MAX_TOKENS + 1;

pub(super) struct Q8;

// SAFETY: reads the 32 quants of the block it is given.
unsafe impl BlockFormat for Q8 {
    const BLOCK: usize = 34;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn quants(b: *const u8) -> __m256i {
        // SAFETY: the block's quants are bytes 2..34 (the caller's contract).
        unsafe { _mm256_loadu_si256(b.add(2).cast()) }
    }
}

single_step_entry_points!(SmallBlock<Q8>, AMX_MIN_TOKENS);
