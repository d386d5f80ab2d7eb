//! Q5_0 weights as stored (22-byte blocks: f16 `d`, 32 fifth bits, 16 nibble bytes), many
//! tokens: the small-block step kernel ([`super::small_block`]) of the
//! [`kquant`](super::kquant) pipeline with the quants unpacked to `q - 16` (signed), from
//! [`AMX_MIN_TOKENS`] tokens; fewer take the AVX512 kernels. Q5_0 is the `ffn_down` of
//! V2-Lite's Q4_K_M layers without "more bits".

use std::arch::x86_64::*;

use super::kquant::single_step_entry_points;
use super::small_block::{BlockFormat, SmallBlock};
use crate::cpu::GEMV_MAX_TOKENS;

/// From this many tokens on the AMX kernel runs (as Q8_0).
pub(crate) const AMX_MIN_TOKENS: usize = GEMV_MAX_TOKENS + 1;

pub(super) struct Q5;

// SAFETY: reads the block it is given.
unsafe impl BlockFormat for Q5 {
    const BLOCK: usize = 22;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn quants(b: *const u8) -> __m256i {
        // SAFETY: one whole block at b (the caller's contract).
        let q = unsafe { crate::cpu::avx512::q5_0::quants(b, 0, 1) };
        _mm256_sub_epi8(q, _mm256_set1_epi8(16))
    }
}

single_step_entry_points!(SmallBlock<Q5>, AMX_MIN_TOKENS);
