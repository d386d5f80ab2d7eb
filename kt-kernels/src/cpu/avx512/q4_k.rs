//! Q4_K weights in the column layout (and the 6-bit scale/min unpacking Q5_K shares).
//!
//! Column `j` is sub-block `j` (32 weights): the low nibbles of `qs[32p..32p + 32]` for
//! `j = 2p`, the high nibbles for `j = 2p + 1`. Chunk `c` therefore needs `qs` dword
//! `8p + c` in lane `j`: one two-source permute over the 128 `qs` bytes, then a mask
//! keeping the low nibble (even `j`) or the high nibble in place (odd `j`, which leaves
//! the quant times 16; its scale is divided by 16, exactly, in f32).
//! `w = d * sc_j * q - dmin * m_j`: the minimum is subtracted through the column sums.

use std::arch::x86_64::*;

use super::tile::{f16_pair, per_chunk_column, per_column, vps, ColumnFormat, Scales};
use crate::quant::QType;

/// Bytes of a Q4_K block: f16 d, f16 dmin, 12 scale bytes, 128 quant bytes.
const BLOCK: usize = 144;

/// Chunk `c`, lane `j`: `qs` dword `8 * (j / 2) + c`.
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
const LO: i32 = 0x0F0F_0F0F;
const HI: i32 = 0xF0F0_F0F0_u32 as i32;
/// Even columns keep the low nibbles, odd columns the high nibbles (times 16).
const NIBBLE: __m512i = per_column([LO, HI, LO, HI, LO, HI, LO, HI]);
/// Undoes the odd columns' factor 16.
const NIBBLE_SCALE: __m512 = {
    let (a, b) = (1.0, 1.0 / 16.0);
    vps([a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b])
};

/// `pshufb` controls placing the scale bytes of column `j` in dword lane `j`:
/// byte 0 = the low bits' byte, byte 1 = the byte holding the top two bits (or zero).
const fn ctrl(x: [i32; 8], y: [i32; 8]) -> __m512i {
    let mut f = [0i32; 8];
    let mut j = 0;
    while j < 8 {
        f[j] = x[j] | (y[j] << 8) | (0x80 << 16) | (0x80u32 << 24) as i32;
        j += 1;
    }
    per_column(f)
}
const Z: i32 = 0x80;
/// Scale of sub-block j: j < 4: `s[j] & 63`; else `(s[j + 4] & 15) | (s[j - 4] >> 6) << 4`.
const SC_CTRL: __m512i = ctrl([0, 1, 2, 3, 8, 9, 10, 11], [Z, Z, Z, Z, 0, 1, 2, 3]);
/// Min of sub-block j: j < 4: `s[j + 4] & 63`; else `(s[j + 4] >> 4) | (s[j] >> 6) << 4`.
const MIN_CTRL: __m512i = ctrl([4, 5, 6, 7, 8, 9, 10, 11], [Z, Z, Z, Z, 4, 5, 6, 7]);
const LOW_MASK: __m512i = per_column([63, 63, 63, 63, 15, 15, 15, 15]);
const TOP_MASK: __m512i = per_column([0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30]);
const MIN_SHIFT: __m512i = per_column([0, 0, 0, 0, 4, 4, 4, 4]);

/// The 8 six-bit scales and mins of a Q4_K/Q5_K block as int32 lanes `h * 8 + j`.
///
/// # Safety
/// 16 bytes are readable at `p` (the 12 scale bytes and 4 more of the same block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) unsafe fn scales_mins(p: *const u8) -> (__m512i, __m512i) {
    // SAFETY: 16 readable bytes (the caller's contract).
    let bytes = unsafe { _mm_loadu_si128(p.cast()) };
    scales_mins_of(_mm512_broadcast_i32x4(bytes))
}

/// [`scales_mins`] of the scale bytes already in place: 128-bit lanes `2h` and `2h + 1`
/// hold the 12 scale bytes (and 4 more) of the block whose values go to lanes
/// `h * 8 + j` (the same block twice, or two rows' blocks).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn scales_mins_of(bc: __m512i) -> (__m512i, __m512i) {
    // The top two bits sit in byte 1 at bits 14..16: shifting by 10 puts them at 4..6.
    let t = _mm512_shuffle_epi8(bc, SC_CTRL);
    let sc = _mm512_or_si512(
        _mm512_and_si512(t, LOW_MASK),
        _mm512_and_si512(_mm512_srli_epi32::<10>(t), TOP_MASK),
    );
    let t = _mm512_shuffle_epi8(bc, MIN_CTRL);
    let m = _mm512_or_si512(
        _mm512_and_si512(_mm512_srlv_epi32(t, MIN_SHIFT), LOW_MASK),
        _mm512_and_si512(_mm512_srli_epi32::<10>(t), TOP_MASK),
    );
    (sc, m)
}

pub(super) struct Q4K;

/// The 128 quant bytes of one block.
#[derive(Clone, Copy)]
pub(super) struct Q4KRow {
    lo: __m512i,
    hi: __m512i,
}

// SAFETY: reads only the block at `w` (BLOCK bytes).
unsafe impl ColumnFormat for Q4K {
    const ACT: QType = QType::Q8_K;
    const SPLIT: bool = false;
    const GROUP_BYTES: usize = BLOCK;
    const MAX_TILE: usize = 16;
    const MAX_RM: usize = 4;
    type Row = Q4KRow;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load(w: *const u8, _valid: usize) -> Q4KRow {
        // SAFETY: bytes 16..144 of the block.
        unsafe {
            Q4KRow {
                lo: _mm512_loadu_si512(w.add(16).cast()),
                hi: _mm512_loadu_si512(w.add(80).cast()),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn chunk(row: &Q4KRow, c: usize) -> __m512i {
        _mm512_and_si512(
            _mm512_permutex2var_epi32(row.lo, QS_DWORD[c], row.hi),
            NIBBLE,
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn scales(w: *const u8, _valid: usize) -> Scales {
        // SAFETY: d, dmin at 0..4 and the scales at 4..16 (+4 quant bytes) of the block.
        let ((d, dmin), (sc, m)) = unsafe { (f16_pair(w), scales_mins(w.add(4))) };
        let z = _mm512_setzero_ps();
        Scales {
            s_lo: _mm512_mul_ps(_mm512_cvtepi32_ps(sc), _mm512_mul_ps(d, NIBBLE_SCALE)),
            s_hi: z,
            c_lo: _mm512_mul_ps(_mm512_cvtepi32_ps(m), dmin),
            c_hi: z,
        }
    }
}
