//! The 6-bit scales and minimums of Q4_K / Q5_K blocks as int32 lanes (used by the AMX
//! Q4_K kernel). The AVX512 Q4_K / Q5_K products themselves are [`super::kquant_rows`].

use std::arch::x86_64::*;

use super::tile::per_column;

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
fn scales_mins_of(bc: __m512i) -> (__m512i, __m512i) {
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
