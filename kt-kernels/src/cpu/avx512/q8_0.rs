//! Q8_0 weights in the column layout: a group is 8 blocks, column `j` is block `j`.
//! The weights are transposed like the activations ([`super::act::q8_0_chunks`]) and
//! made unsigned by adding 128 (`vpdpbusd` multiplies unsigned by signed bytes); the
//! `128 * d * sum(a)` this adds is subtracted through the activations' block sums.
//! The last group of a row may hold fewer than 8 blocks.

use std::arch::x86_64::*;

use super::act::{q8_0_chunks, q8_0_scales};
use super::tile::{chunk_of_pairs, ColumnFormat, Scales, COLS};
use crate::quant::QType;

pub(super) struct Q8_0;

// SAFETY: reads only the `valid` blocks of the group at `w`.
unsafe impl ColumnFormat for Q8_0 {
    const ACT: QType = QType::Q8_0;
    const SPLIT: bool = false;
    const GROUP_BYTES: usize = COLS * 34;
    const MAX_TILE: usize = 16;
    const MAX_RM: usize = 2;
    const OFFSET: i32 = 128;
    /// Chunk pairs `[2i | 2i + 1]`, offset by 128.
    type Row = [__m512i; 4];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, valid: usize) -> [__m512i; 4] {
        // SAFETY: forwarded contract: `valid` blocks at w.
        let m = unsafe { q8_0_chunks(w, valid) };
        let offset = _mm512_set1_epi8(-128);
        [
            _mm512_xor_si512(m[0], offset),
            _mm512_xor_si512(m[1], offset),
            _mm512_xor_si512(m[2], offset),
            _mm512_xor_si512(m[3], offset),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &[__m512i; 4], c: usize) -> __m512i {
        chunk_of_pairs(row, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, valid: usize) -> Scales {
        // SAFETY: forwarded contract.
        let d = unsafe { q8_0_scales(w, valid) };
        let s = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(d), d);
        let z = _mm512_setzero_ps();
        Scales {
            s_lo: s,
            s_hi: z,
            c_lo: _mm512_mul_ps(s, _mm512_set1_ps(128.0)),
            c_hi: z,
        }
    }
}
