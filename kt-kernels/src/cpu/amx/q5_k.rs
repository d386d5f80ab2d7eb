//! Q5_K weights as stored in the GGUF, many tokens, on AMX: the folded step kernel of
//! Q4_K ([`super::q4_k_folded`]) with a fifth quant bit. A Q5_K block is Q4_K's `d`,
//! `dmin` and scales, then 32 bytes `qh` (bit `j` of `qh[e]` is the high bit of element
//! `e` of sub-block `j`) and Q4_K's 128 nibble bytes. Quants reach 31: `q * hi_j` is at
//! most 217, still an unsigned byte.
//!
//! One step kernel for every token count from [`AMX_MIN_TOKENS`] (32): unlike Q4_K there
//! is no per-sub-block variant for the MoE's ~16 tokens per expert, which keep the AVX512
//! kernel.

use std::arch::x86_64::*;

use super::kquant::single_step_entry_points;
use super::q4_k_folded::{Folded, FoldedQuants};

/// Below this many tokens the AVX512 kernel is used: with one 16-token group the folded
/// unpacking (two products and the fifth bit) is not shared. Device (16 threads, session
/// 7), AMX / AVX512 ms, 7168x2048 and 2048x7168: 16 tokens 0.237 / 0.235 and 0.316 /
/// 0.244, 32 tokens 0.328 / 0.381 and 0.377 / 0.433 (the AVX512 kernel's time grows with
/// the tokens, the AMX one's with the groups: they cross near 27 tokens).
pub(crate) const AMX_MIN_TOKENS: usize = 32;

single_step_entry_points!(Folded<Q5K>, AMX_MIN_TOKENS);

/// Q5_K's quants: Q4_K's nibbles (bytes 48..176) plus 16 where the `qh` bit is set.
pub(super) struct Q5K;

// SAFETY: reads bytes 16..176 of the block.
unsafe impl FoldedQuants for Q5K {
    const W_BLOCK: usize = 176;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn planes(b: *const u8, h: usize) -> [__m512i; 2] {
        let nib = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        // SAFETY: qh at bytes 16..48, nibbles 48 + 64h..112 + 64h of the block (h < 2).
        let (v, qh) = unsafe {
            (
                _mm512_loadu_si512(b.add(48 + 64 * h).cast()),
                _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16).cast())),
            )
        };
        let low = [
            _mm512_and_si512(v, nib),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib),
        ];
        std::array::from_fn(|p| {
            // Bytes 0..32 are sub-block j = 4h + p (bit j of qh[e]), 32..64 sub-block j + 2.
            let j = 4 * h + p;
            let bits = _mm512_mask_blend_epi8(
                0xFFFF_FFFF_0000_0000,
                _mm512_set1_epi8(1 << j),
                _mm512_set1_epi8((1u8 << (j + 2)) as i8),
            );
            let high = _mm512_test_epi8_mask(qh, bits);
            _mm512_mask_add_epi8(low[p], high, low[p], sixteen)
        })
    }
}
