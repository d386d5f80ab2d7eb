//! Q2_K weights in the column layout. Byte `32n + e` of `qs` holds, at bits `2s..2s + 2`,
//! element `e` of column `4n + s`; so chunk `c` takes `qs` dword `8n + c` in lane `j`
//! (a one-source permute of the 64 `qs` bytes) shifted right by `2s`. Scales and mins
//! are per 16 elements (4 bits each): the two halves of a column are summed apart.
//! `w = d * sc * q - dmin * m`.

use std::arch::x86_64::*;

use super::tile::{
    f16_pair, per_chunk_column, per_column, ColumnFormat, Scales, EVEN_LANES, ODD_LANES,
};
use crate::quant::QType;

/// Bytes of a Q2_K block: 16 scale/min bytes, 64 quant bytes, f16 d, f16 dmin.
const BLOCK: usize = 84;

/// Chunk `c`, lane `j`: `qs` dword `8 * (j / 4) + c`.
pub(super) const QS_DWORD: [__m512i; 8] = {
    let mut f = [[0i32; 8]; 8];
    let mut c = 0;
    while c < 8 {
        let mut j = 0;
        while j < 8 {
            f[c][j] = 8 * (j as i32 / 4) + c as i32;
            j += 1;
        }
        c += 1;
    }
    per_chunk_column(f)
};
pub(super) const CRUMB_SHIFT: __m512i = per_column([0, 2, 4, 6, 0, 2, 4, 6]);

pub(super) struct Q2K;

// SAFETY: reads only the block at `w` (BLOCK bytes).
unsafe impl ColumnFormat for Q2K {
    const ACT: QType = QType::Q8_K;
    const SPLIT: bool = true;
    const GROUP_BYTES: usize = BLOCK;
    const MAX_TILE: usize = 8;
    const MAX_RM: usize = 4;
    const FOLD: bool = true;
    /// The 64 quant bytes.
    type Row = __m512i;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, _valid: usize) -> __m512i {
        // SAFETY: bytes 16..80 of the block.
        unsafe { _mm512_loadu_si512(w.add(16).cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &__m512i, c: usize) -> __m512i {
        let q = _mm512_permutexvar_epi32(QS_DWORD[c], *row);
        _mm512_and_si512(_mm512_srlv_epi32(q, CRUMB_SHIFT), _mm512_set1_epi8(3))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, _valid: usize) -> Scales {
        // SAFETY: scales at 0..16, d and dmin at 80..84 of the block.
        let (bytes, (d, dmin)) = unsafe { (_mm_loadu_si128(w.cast()), f16_pair(w.add(80))) };
        let k = _mm512_cvtepu8_epi32(bytes);
        let sc = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_and_si512(k, _mm512_set1_epi32(15))),
            d,
        );
        let m = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(k)), dmin);
        Scales {
            s_lo: _mm512_permutexvar_ps(EVEN_LANES, sc),
            s_hi: _mm512_permutexvar_ps(ODD_LANES, sc),
            c_lo: _mm512_permutexvar_ps(EVEN_LANES, m),
            c_hi: _mm512_permutexvar_ps(ODD_LANES, m),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn folded(w: *const u8) -> (__m512i, __m512i, Scales) {
        // SAFETY: forwarded contract (the block at w).
        let (bytes, s) = unsafe { (_mm_loadu_si128(w.cast()), Self::scales(w, 8)) };
        let sc = _mm512_and_si512(_mm512_cvtepu8_epi32(bytes), _mm512_set1_epi32(15));
        // A 2-bit quant times a 4-bit scale is at most 45: the 16-bit products of a
        // word holding two quants never carry into the neighbouring byte.
        let words = |v: __m512i| _mm512_or_si512(v, _mm512_slli_epi32::<16>(v));
        let lo = words(_mm512_permutexvar_epi32(EVEN_LANES, sc));
        let hi = words(_mm512_permutexvar_epi32(ODD_LANES, sc));
        // SAFETY: d at 80..82 of the block.
        let d = unsafe { f16_pair(w.add(80)).0 };
        (lo, hi, Scales { s_lo: d, ..s })
    }
}
