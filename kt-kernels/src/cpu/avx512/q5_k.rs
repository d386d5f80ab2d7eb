//! Q5_K weights in the column layout: Q4_K's nibbles (see [`super::q4_k`]) plus a fifth
//! bit per weight. Bit `j` of `qh[e]` is the high bit of element `e` of sub-block `j`,
//! so chunk `c` takes `qh` dword `c` in every lane and rotates bit `j` of each byte to
//! bit 4. Unlike Q4_K the high nibble must be shifted down (a quant is up to 31).

use std::arch::x86_64::*;

use super::q4_k::scales_mins;
use super::tile::{f16_pair, per_chunk_column, per_column, ColumnFormat, Scales};
use crate::quant::QType;

/// Bytes of a Q5_K block: d, dmin, 12 scale bytes, 32 high-bit bytes, 128 nibble bytes.
const BLOCK: usize = 176;

/// Chunk `c`, lane `j`: `qs` dword `8 * (j / 2) + c` (the nibble layout of Q4_K).
const QS_DWORD: [__m512i; 8] = {
    let mut f = [[0i32; 8]; 8];
    let mut c = 0;
    while c < 8 {
        let mut j = 0;
        while j < 8 {
            f[c][j] = 8 * (j as i32 / 2) + c as i32;
            j += 1;
        }
        c += 1;
    }
    per_chunk_column(f)
};
const NIBBLE_SHIFT: __m512i = per_column([0, 4, 0, 4, 0, 4, 0, 4]);
/// Rotation bringing bit `j` of each byte to bit 4: `(4 - j) mod 32`.
const HIGH_BIT_ROTATE: __m512i = per_column([4, 3, 2, 1, 0, 31, 30, 29]);

pub(super) struct Q5K;

#[derive(Clone, Copy)]
pub(super) struct Q5KRow {
    lo: __m512i,
    hi: __m512i,
    qh: *const u8,
}

// SAFETY: reads only the block at `w` (BLOCK bytes).
unsafe impl ColumnFormat for Q5K {
    const ACT: QType = QType::Q8_K;
    const SPLIT: bool = false;
    const GROUP_BYTES: usize = BLOCK;
    const MAX_TILE: usize = 16;
    const MAX_RM: usize = 4;
    type Row = Q5KRow;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, _valid: usize) -> Q5KRow {
        // SAFETY: qh at 16..48, qs at 48..176 of the block.
        unsafe {
            Q5KRow {
                lo: _mm512_loadu_si512(w.add(48).cast()),
                hi: _mm512_loadu_si512(w.add(112).cast()),
                qh: w.add(16),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &Q5KRow, c: usize) -> __m512i {
        let nib = _mm512_permutex2var_epi32(row.lo, QS_DWORD[c], row.hi);
        let nib = _mm512_and_si512(_mm512_srlv_epi32(nib, NIBBLE_SHIFT), _mm512_set1_epi8(0x0F));
        // SAFETY: qh dword c (c < 8) is inside the block's 32 qh bytes.
        let qh = _mm512_set1_epi32(unsafe { row.qh.add(4 * c).cast::<i32>().read_unaligned() });
        let bit4 = _mm512_rolv_epi32(qh, HIGH_BIT_ROTATE);
        // nib | (bit4 & 0x10)
        _mm512_ternarylogic_epi32::<0xF8>(nib, bit4, _mm512_set1_epi8(0x10))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, _valid: usize) -> Scales {
        // SAFETY: d, dmin at 0..4 and the scales at 4..16 (+4 qh bytes) of the block.
        let ((d, dmin), (sc, m)) = unsafe { (f16_pair(w), scales_mins(w.add(4))) };
        let z = _mm512_setzero_ps();
        Scales {
            s_lo: _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d),
            s_hi: z,
            c_lo: _mm512_mul_ps(_mm512_cvtepi32_ps(m), dmin),
            c_hi: z,
        }
    }
}
