//! The small-block nibble formats Q4_0, Q5_0, Q4_1 and Q5_1 in the column layout (the
//! tiles of more than one token): a group is 8 blocks, column `j` is block `j`, as for
//! [`super::q8_0`]. A block is an f16 `d`, for Q4_1 / Q5_1 an f16 minimum `m`, for Q5_0 /
//! Q5_1 32 fifth bits `qh`, then 16 nibble bytes: element `i < 16` in the low nibble of
//! byte `i`, element `i + 16` in its high nibble, the fifth bit of element `i` in bit `i`
//! of `qh`. A weight is `d * (q - offset)` (Q4_0: 8, Q5_0: 16; Q8_0 activations) or `d * q
//! + m` (Q8_1 activations). The quants `q` are already unsigned bytes for `vpdpbusd`; the
//! `offset * d * sum(a)` they carry is subtracted through the activations' block sums
//! ([`ColumnFormat::OFFSET`]), the minimum's `m * s` added through Q8_1's stored block sums
//! `s` (the correction `c_lo = -m`). The last group of a row may hold fewer than 8 blocks.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::act::{block_chunks, block_scales};
use super::tile::{chunk_of_pairs, ColumnFormat, Scales, COLS};
use crate::quant::QType;

/// A nibble format's block layout.
pub(crate) trait NibbleFormat {
    /// Bytes of a block.
    const BLOCK: usize;
    /// Where its 16 nibble bytes start.
    const QS: usize;
    /// The offset its quants are stored with (0 with a minimum).
    const OFFSET: i32;
    /// Whether a block carries a minimum `m` (f16 at bytes 2..4) against Q8_1 activations.
    const MIN: bool = false;

    /// The fifth bits of the block at `b` (bit `i` for element `i`), 0 where the format
    /// has none.
    ///
    /// # Safety
    /// A whole block is readable at `b`.
    unsafe fn fifth(b: *const u8) -> u32;
}

pub(crate) struct Q4_0;
pub(crate) struct Q5_0;

impl NibbleFormat for Q4_0 {
    const BLOCK: usize = 18;
    const QS: usize = 2;
    const OFFSET: i32 = 8;

    #[inline]
    unsafe fn fifth(_b: *const u8) -> u32 {
        0
    }
}

impl NibbleFormat for Q5_0 {
    const BLOCK: usize = 22;
    const QS: usize = 6;
    const OFFSET: i32 = 16;

    #[inline]
    unsafe fn fifth(b: *const u8) -> u32 {
        // SAFETY: qh is bytes 2..6 of the block (the caller's contract).
        unsafe { b.add(2).cast::<u32>().read_unaligned() }
    }
}

pub(crate) struct Q4_1;
pub(crate) struct Q5_1;

impl NibbleFormat for Q4_1 {
    const BLOCK: usize = 20;
    const QS: usize = 4;
    const OFFSET: i32 = 0;
    const MIN: bool = true;

    #[inline]
    unsafe fn fifth(_b: *const u8) -> u32 {
        0
    }
}

impl NibbleFormat for Q5_1 {
    const BLOCK: usize = 24;
    const QS: usize = 8;
    const OFFSET: i32 = 0;
    const MIN: bool = true;

    #[inline]
    unsafe fn fifth(b: *const u8) -> u32 {
        // SAFETY: qh is bytes 4..8 of the block (the caller's contract).
        unsafe { b.add(4).cast::<u32>().read_unaligned() }
    }
}

/// The column format of nibble format `N`.
pub(super) struct Column<N>(PhantomData<N>);

// SAFETY: reads only the `valid` blocks of the group at `w`.
unsafe impl<N: NibbleFormat> ColumnFormat for Column<N> {
    const ACT: QType = if N::MIN { QType::Q8_1 } else { QType::Q8_0 };
    const SPLIT: bool = false;
    const GROUP_BYTES: usize = COLS * N::BLOCK;
    const MAX_TILE: usize = 16;
    const MAX_RM: usize = 2;
    const OFFSET: i32 = N::OFFSET;
    /// Chunk pairs `[2i | 2i + 1]`.
    type Row = [__m512i; 4];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, valid: usize) -> [__m512i; 4] {
        // SAFETY: forwarded contract: `valid` blocks at w.
        block_chunks(|j| unsafe { quants::<N>(w, j, valid) })
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &[__m512i; 4], c: usize) -> __m512i {
        chunk_of_pairs(row, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, valid: usize) -> Scales {
        let both = |v: __m256| _mm512_insertf32x8::<1>(_mm512_castps256_ps512(v), v);
        // SAFETY: forwarded contract; each block starts with its f16 scale (and minimum).
        let s = both(unsafe { block_scales(w, N::BLOCK, valid) });
        let c = if N::MIN {
            // SAFETY: as above.
            let m = both(unsafe { block_scales(w.add(2), N::BLOCK, valid) });
            _mm512_sub_ps(_mm512_setzero_ps(), m)
        } else {
            _mm512_mul_ps(s, _mm512_set1_ps(N::OFFSET as f32))
        };
        let z = _mm512_setzero_ps();
        Scales {
            s_lo: s,
            s_hi: z,
            c_lo: c,
            c_hi: z,
        }
    }
}

/// The 32 quants (0..16, or 0..32 with fifth bits) of block `j` at `w` as bytes in element
/// order, or zeros when `j >= valid`.
///
/// # Safety
/// `valid` blocks of `N` are readable at `w`; AVX512 BW/VL.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) unsafe fn quants<N: NibbleFormat>(w: *const u8, j: usize, valid: usize) -> __m256i {
    if j >= valid {
        return _mm256_setzero_si256();
    }
    // SAFETY: block j < valid is readable: the nibbles at QS..QS + 16 (and qh, read by
    // `fifth`).
    let (qs, qh) = unsafe {
        let b = w.add(j * N::BLOCK);
        (_mm_loadu_si128(b.add(N::QS).cast()), N::fifth(b))
    };
    let low = _mm_set1_epi8(0x0f);
    let nibbles = _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_and_si128(qs, low)),
        _mm_and_si128(_mm_srli_epi16::<4>(qs), low),
    );
    _mm256_mask_add_epi8(nibbles, qh, nibbles, _mm256_set1_epi8(0x10))
}
