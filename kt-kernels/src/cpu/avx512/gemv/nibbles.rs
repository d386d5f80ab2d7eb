//! The nibble formats Q4_0 and Q5_0 ([`crate::cpu::avx512::nibbles`]) two rows at a time,
//! a group of up to 8 blocks per step, against Q8_0 activations. Vector `j` is block `j`
//! of both rows: the 16 nibble bytes of each row loaded twice into a 128-bit lane pair
//! (low nibbles, then high ones), Q5_0's fifth bits added from one 64-bit mask of the two
//! `qh`. Its integer sum starts at `-offset` times the activations' 4-element sums, so
//! each lane ends with the exact dot of its 4 elements, and gets its block's scale in f32
//! at once, as [`super::q8_0`] does.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::q8_0::{block_pairs, repack_group, Q80Act};
use super::PairFormat;
use crate::cpu::avx512::nibbles::NibbleFormat;
use crate::cpu::avx512::tile::COLS;

/// The row-pair kernel of nibble format `N`.
pub(in crate::cpu::avx512) struct Nibbles<N>(PhantomData<N>);

// SAFETY: pair reads the `valid` blocks of the group of each row.
unsafe impl<N: NibbleFormat> PairFormat for Nibbles<N> {
    const BLOCK: usize = COLS * N::BLOCK;
    type Act = Q80Act;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, valid: usize, out: *mut Q80Act) {
        const { assert!(!N::MIN, "formats with a minimum take Q8_1 activations") };
        // SAFETY: forwarded contract (the activations are Q8_0 rows).
        unsafe { repack_group(a, g, valid, -N::OFFSET, out) }
    }

    /// One token in practice (`MAX_TOKENS` is 1: the column layout serves several tokens).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair_n<const M: usize>(
        w0: *const u8,
        w1: *const u8,
        acts: [&Q80Act; M],
        valid: usize,
        acc: [__m512; M],
    ) -> [__m512; M] {
        let low = _mm512_set1_epi8(0x0f);
        let fifth = _mm512_set1_epi8(0x10);
        // 16-bit shift counts: 0 in 128-bit lanes 0 and 2, 4 in lanes 1 and 3.
        let by4 = 0x0004_0004_0004_0004;
        let shift = _mm512_setr_epi64(0, 0, by4, by4, 0, 0, by4, by4);
        // SAFETY: the `valid` blocks of the group of each row (the caller's contract):
        // block j's nibbles at QS..QS + 16 (and qh, read by `fifth`).
        let weights = |j: usize| unsafe {
            let at = j * N::BLOCK;
            // 128-bit lanes: row 0's nibble bytes twice, then row 1's twice; lanes 0 and 2
            // keep the low nibbles (elements 0..16), 1 and 3 the high ones (16..32),
            // shifted down by a per-lane count.
            let both = _mm512_mask_broadcast_i32x4(
                _mm512_broadcast_i32x4(_mm_loadu_si128(w0.add(at + N::QS).cast())),
                0xff00,
                _mm_loadu_si128(w1.add(at + N::QS).cast()),
            );
            let nib = _mm512_and_si512(_mm512_srlv_epi16(both, shift), low);
            let qh0 = N::fifth(w0.add(at)) as u64;
            let qh1 = N::fifth(w1.add(at)) as u64;
            _mm512_mask_add_epi8(nib, _cvtu64_mask64(qh0 | qh1 << 32), nib, fifth)
        };
        // SAFETY: as above; `weights` reads only those blocks.
        unsafe { block_pairs(w0, w1, N::BLOCK, acts, valid, acc, weights) }
    }
}
