//! Q3_K weights in the column layout (the tiles of more than one token). A block (110
//! bytes: 32 bytes `hmask`, 64 bytes `qs`, 12 bytes of packed 6-bit scales, f16 `d`)
//! holds element `e` of column `j` (elements `32j..32j + 32`) as Q2_K does in `qs` (bits
//! `2s..2s + 2` of byte `32n + e`, `j = 4n + s`), plus a third bit, bit `j` of `hmask[e]`.
//! So chunk `c` is Q2_K's chunk with `hmask` dword `c` rotated per lane to bring bit `j`
//! of each byte to bit 2. The quants are stored as `q + 4` (0..8) with a signed scale per
//! 16 elements: `w = d * sc * q`; the offset is removed through the half-column sums
//! (`4 * d * sc * sum(a)`), as for Q6_K.

use std::arch::x86_64::*;

use super::q2_k::{CRUMB_SHIFT, QS_DWORD};
use super::tile::{f16_one, per_column, ColumnFormat, Scales, EVEN_LANES, ODD_LANES};
use crate::cpu::avx2::q3_k::unpack_scales;
use crate::quant::QType;

/// Bytes of a Q3_K block.
const BLOCK: usize = 110;
/// Rotation bringing bit `j` of each byte of a dword to bit 2: `(j - 2) mod 32` right.
const HIGH_ROTATE: __m512i = per_column([30, 31, 0, 1, 2, 3, 4, 5]);

pub(super) struct Q3K;

#[derive(Clone, Copy)]
pub(super) struct Q3KRow {
    qs: __m512i,
    /// `hmask` in both 256-bit halves.
    hm: __m512i,
}

// SAFETY: reads only the block at `w` (BLOCK bytes).
unsafe impl ColumnFormat for Q3K {
    const ACT: QType = QType::Q8_K;
    const SPLIT: bool = true;
    const GROUP_BYTES: usize = BLOCK;
    const MAX_TILE: usize = 8;
    const MAX_RM: usize = 2;
    const OFFSET: i32 = 4;
    type Row = Q3KRow;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, _valid: usize) -> Q3KRow {
        // SAFETY: hmask at 0..32, qs at 32..96 of the block.
        unsafe {
            let hm = _mm256_loadu_si256(w.cast());
            Q3KRow {
                qs: _mm512_loadu_si512(w.add(32).cast()),
                hm: _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hm), hm),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &Q3KRow, c: usize) -> __m512i {
        let q = _mm512_permutexvar_epi32(QS_DWORD[c], row.qs);
        let low = _mm512_and_si512(_mm512_srlv_epi32(q, CRUMB_SHIFT), _mm512_set1_epi8(3));
        let high = _mm512_rorv_epi32(
            _mm512_permutexvar_epi32(_mm512_set1_epi32(c as i32), row.hm),
            HIGH_ROTATE,
        );
        // low | (high & 4)
        _mm512_ternarylogic_epi32::<0xF8>(low, high, _mm512_set1_epi8(4))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, _valid: usize) -> Scales {
        // SAFETY: the packed scales at 96..108 and d at 108..110 of the block.
        let (bytes, d) = unsafe { (unpack_scales(w.add(96)), f16_one(w.add(108))) };
        let sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), d);
        let s_lo = _mm512_permutexvar_ps(EVEN_LANES, sc);
        let s_hi = _mm512_permutexvar_ps(ODD_LANES, sc);
        let offset = _mm512_set1_ps(Self::OFFSET as f32);
        Scales {
            s_lo,
            s_hi,
            c_lo: _mm512_mul_ps(s_lo, offset),
            c_hi: _mm512_mul_ps(s_hi, offset),
        }
    }
}
