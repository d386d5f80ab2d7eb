//! The nibble formats Q4_0, Q5_0, Q4_1 and Q5_1 as stored
//! ([`crate::cpu::avx512::nibbles`]), many tokens: the small-block step kernel
//! ([`super::small_block`]) of the [`kquant`](super::kquant) pipeline with the quants
//! unpacked to `q - offset` (signed; Q4_1 / Q5_1 keep `q` and their minimum), from
//! [`AMX_MIN_TOKENS`] tokens; fewer take the AVX512 kernels. Q5_0 is the `ffn_down` of
//! V2-Lite's Q4_K_M layers without "more bits", Q5_1 of its Q5_K_M layers, Q4_0 the experts
//! of Q4_0 files.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::small_block::BlockFormat;
use crate::cpu::avx512::nibbles::{quants, NibbleFormat};
use crate::cpu::GEMV_MAX_TOKENS;

/// From this many tokens on the AMX kernels run (as Q8_0's).
pub(crate) const AMX_MIN_TOKENS: usize = GEMV_MAX_TOKENS + 1;

/// Nibble format `N` as a block format of the step kernel.
pub(super) struct Signed<N>(PhantomData<N>);

// SAFETY: reads the block it is given.
unsafe impl<N: NibbleFormat> BlockFormat for Signed<N> {
    const BLOCK: usize = N::BLOCK;
    const MIN: bool = N::MIN;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn quants(b: *const u8) -> __m256i {
        // SAFETY: one whole block at b (the caller's contract).
        let q = unsafe { quants::<N>(b, 0, 1) };
        _mm256_sub_epi8(q, _mm256_set1_epi8(N::OFFSET as i8))
    }
}

/// The entry points of nibble format `$format` in module `$name` (one module each: every
/// format keeps its own lower kernel in a static).
macro_rules! nibble_entry_points {
    ($($name:ident: $format:ident),*) => {$(
        #[doc = concat!(stringify!($format), "'s entry points.")]
        pub(super) mod $name {
            use super::super::kquant::single_step_entry_points;
            use super::super::small_block::SmallBlock;
            use super::{Signed, AMX_MIN_TOKENS};
            use crate::cpu::avx512::nibbles::$format;

            single_step_entry_points!(SmallBlock<Signed<$format>>, AMX_MIN_TOKENS);
        }
    )*};
}

nibble_entry_points!(q4_0: Q4_0, q5_0: Q5_0, q4_1: Q4_1, q5_1: Q5_1);
