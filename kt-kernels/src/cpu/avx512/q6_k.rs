//! Q6_K weights in the column layout. Column `j = 4n + s` (elements `32j..32j + 32`) has
//! its low 4 bits in `ql[64n + 32(s & 1) + e]` (low nibble for `s < 2`, high otherwise)
//! and its top 2 bits at bits `2s..2s + 2` of `qh[32n + e]`. Chunk `c` is one permute of
//! `ql`, one of `qh`, a shift, a rotate and a merge. Quants are stored as `q + 32` with
//! an int8 scale per 16 elements: the offset is removed through the half-column sums
//! (`32 * d * sc * sum(a)`).

use std::arch::x86_64::*;

use super::tile::{
    f16_one, per_chunk_column, per_column, ColumnFormat, Scales, EVEN_LANES, ODD_LANES,
};
use crate::quant::QType;

/// Bytes of a Q6_K block: 128 ql, 64 qh, 16 int8 scales, f16 d.
const BLOCK: usize = 210;

/// Chunk `c`, lane `j = 4n + s`: `ql` dword `16n + 8(s & 1) + c` (`qh`: false) or `qh`
/// dword `8n + c` (`qh`: true).
const fn dword_table(qh: bool) -> [__m512i; 8] {
    let mut t = [[0i32; 8]; 8];
    let mut c = 0;
    while c < 8 {
        let mut j = 0;
        while j < 8 {
            let (n, s) = (j as i32 / 4, j as i32 % 4);
            t[c][j] = if qh {
                8 * n + c as i32
            } else {
                16 * n + 8 * (s & 1) + c as i32
            };
            j += 1;
        }
        c += 1;
    }
    per_chunk_column(t)
}
const QL_DWORD: [__m512i; 8] = dword_table(false);
const QH_DWORD: [__m512i; 8] = dword_table(true);
const NIBBLE_SHIFT: __m512i = per_column([0, 0, 4, 4, 0, 0, 4, 4]);
/// Rotation bringing bits `2s, 2s + 1` of each byte to bits 4, 5: `(4 - 2s) mod 32`.
const TOP_ROTATE: __m512i = per_column([4, 2, 0, 30, 4, 2, 0, 30]);

pub(super) struct Q6K;

#[derive(Clone, Copy)]
pub(super) struct Q6KRow {
    ql0: __m512i,
    ql1: __m512i,
    qh: __m512i,
}

// SAFETY: reads only the block at `w` (BLOCK bytes).
unsafe impl ColumnFormat for Q6K {
    const ACT: QType = QType::Q8_K;
    const SPLIT: bool = true;
    const GROUP_BYTES: usize = BLOCK;
    const MAX_TILE: usize = 8;
    const MAX_RM: usize = 2;
    const OFFSET: i32 = 32;
    type Row = Q6KRow;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, _valid: usize) -> Q6KRow {
        // SAFETY: ql at 0..128, qh at 128..192 of the block.
        unsafe {
            Q6KRow {
                ql0: _mm512_loadu_si512(w.cast()),
                ql1: _mm512_loadu_si512(w.add(64).cast()),
                qh: _mm512_loadu_si512(w.add(128).cast()),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &Q6KRow, c: usize) -> __m512i {
        let low = _mm512_permutex2var_epi32(row.ql0, QL_DWORD[c], row.ql1);
        let low = _mm512_and_si512(_mm512_srlv_epi32(low, NIBBLE_SHIFT), _mm512_set1_epi8(0x0F));
        let top = _mm512_rolv_epi32(_mm512_permutexvar_epi32(QH_DWORD[c], row.qh), TOP_ROTATE);
        // low | (top & 0x30)
        _mm512_ternarylogic_epi32::<0xF8>(low, top, _mm512_set1_epi8(0x30))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, _valid: usize) -> Scales {
        // SAFETY: the int8 scales at 192..208 and d at 208..210 of the block.
        let (bytes, d) = unsafe { (_mm_loadu_si128(w.add(192).cast()), f16_one(w.add(208))) };
        let sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), d);
        let s_lo = _mm512_permutexvar_ps(EVEN_LANES, sc);
        let s_hi = _mm512_permutexvar_ps(ODD_LANES, sc);
        let offset = _mm512_set1_ps(32.0);
        Scales {
            s_lo,
            s_hi,
            c_lo: _mm512_mul_ps(s_lo, offset),
            c_hi: _mm512_mul_ps(s_hi, offset),
        }
    }
}
