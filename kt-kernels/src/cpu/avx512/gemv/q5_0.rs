//! Q5_0 two rows at a time, a group of up to 8 blocks per step, against Q8_0 activations.
//! A block (22 bytes: f16 `d`, 32 high bits `qh`, 16 bytes of nibbles) holds element `i <
//! 16` in the low nibble of byte `i` and element `i + 16` in its high nibble, the fifth
//! bit in bit `i` of `qh`; a weight is `d * (q - 16)` with `q` in 0..32.
//!
//! Vector `j` is block `j` of both rows: the 16 nibble bytes of each row loaded twice
//! into a 128-bit lane pair (low nibbles, then high ones), the fifth bits added from one
//! 64-bit mask of the two `qh`. Its integer sum starts at `-16` times the activations'
//! 4-element sums, so each lane ends with the exact dot of its 4 elements, and gets its
//! block's scale in f32 at once, as [`super::q8_0`] does.

use std::arch::x86_64::*;

use super::q8_0::{block_pairs, repack_group, Q80Act};
use super::PairFormat;
use crate::cpu::avx512::tile::COLS;

/// Bytes of a Q5_0 block.
const Q50_BLOCK: usize = 22;

pub(in crate::cpu::avx512) struct Q5_0;

// SAFETY: pair reads the `valid` blocks of the group of each row.
unsafe impl PairFormat for Q5_0 {
    const BLOCK: usize = COLS * Q50_BLOCK;
    type Act = Q80Act;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, valid: usize, out: *mut Q80Act) {
        // SAFETY: forwarded contract (the activations are Q8_0 rows).
        unsafe { repack_group(a, g, valid, -16, out) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair(
        w0: *const u8,
        w1: *const u8,
        act: &Q80Act,
        valid: usize,
        acc: __m512,
    ) -> __m512 {
        let low = _mm512_set1_epi8(0x0f);
        let fifth = _mm512_set1_epi8(0x10);
        // 16-bit shift counts: 0 in 128-bit lanes 0 and 2, 4 in lanes 1 and 3.
        let by4 = 0x0004_0004_0004_0004;
        let shift = _mm512_setr_epi64(0, 0, by4, by4, 0, 0, by4, by4);
        // SAFETY: the `valid` blocks of the group of each row (the caller's contract):
        // block j's qh at bytes 2..6, its nibbles at 6..22.
        unsafe {
            block_pairs(w0, w1, Q50_BLOCK, act, valid, acc, |j| {
                let at = j * Q50_BLOCK;
                // 128-bit lanes: row 0's nibble bytes twice, then row 1's twice; lanes 0
                // and 2 keep the low nibbles (elements 0..16), 1 and 3 the high ones
                // (16..32), shifted down by a per-lane count.
                let both = _mm512_mask_broadcast_i32x4(
                    _mm512_broadcast_i32x4(_mm_loadu_si128(w0.add(at + 6).cast())),
                    0xff00,
                    _mm_loadu_si128(w1.add(at + 6).cast()),
                );
                let nib = _mm512_and_si512(_mm512_srlv_epi16(both, shift), low);
                let qh0 = w0.add(at + 2).cast::<u32>().read_unaligned() as u64;
                let qh1 = w1.add(at + 2).cast::<u32>().read_unaligned() as u64;
                _mm512_mask_add_epi8(nib, _cvtu64_mask64(qh0 | qh1 << 32), nib, fifth)
            })
        }
    }
}
