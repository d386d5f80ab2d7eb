//! Q4_K on AVX2: 4-bit quants, a 6-bit scale and a 6-bit minimum per 32-weight
//! sub-block. Chunk `J` is sub-block `J`: the low nibbles of `qs[32 * (J / 2)..]` for
//! even `J`, the high nibbles for odd `J`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, KQuant};

/// Byte offsets in the 144-byte block: `d, dmin: f16`, 12 bytes of packed scales, 128
/// bytes of nibbles.
const SCALES: usize = 4;
const QS: usize = 16;

pub(super) struct Q4K;

/// Unpacks the 12 bytes of 6-bit scales and minimums of Q4_K / Q5_K into 8 scale bytes
/// and 8 minimum bytes (each as a little-endian u64).
///
/// Layout: bytes 0..4 hold the low 6 bits of scales 0..3 (top 2 bits: high bits of
/// scales 4..7), bytes 4..8 the same for the minimums, and bytes 8..12 the low 4 bits
/// of scales 4..7 (low nibble) and minimums 4..7 (high nibble).
///
/// # Safety
/// `p .. p + 12` is readable.
#[inline]
pub(super) unsafe fn unpack_scales_mins(p: *const u8) -> (u64, u64) {
    // SAFETY: the caller's contract.
    let (a, b, c) = unsafe { (read_u32(p), read_u32(p.add(4)), read_u32(p.add(8))) };
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    // Bits 6..7 of each byte moved to bits 4..5 (the shift drags bits of the next
    // byte into bits 6..7, which the mask drops).
    const TOP2: u32 = 0x3030_3030;
    let sc_lo = a & LOW6;
    let sc_hi = (c & LOW4) | ((a >> 2) & TOP2);
    let m_lo = b & LOW6;
    let m_hi = ((c >> 4) & LOW4) | ((b >> 2) & TOP2);
    (sc_lo as u64 | (sc_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// 8 sub-block scale bytes as i16 in both 128-bit lanes (for per-chunk broadcasts), and
/// 8 minimum bytes as the 16 i16 `bsums` multipliers (each minimum covers two groups).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales_and_mins_32(scales: u64, mins: u64) -> (__m256i, __m256i) {
    let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
    let m = _mm_cvtsi64_si128(mins as i64);
    (sc, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)))
}

/// Scale `J` of [`scales_and_mins_32`]'s scales broadcast to all 16 i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn broadcast_scale_32<const J: usize>(sc: __m256i) -> __m256i {
    let pick = (2 * J | (2 * J + 1) << 8) as i16;
    _mm256_shuffle_epi8(sc, _mm256_set1_epi16(pick))
}

impl KQuant for Q4K {
    const BLOCK_BYTES: usize = 144;
    const OFFSET_BY_D: bool = false;
    type Scales = __m256i;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the block holds 12 scale bytes at SCALES.
        let (sc, m) = unsafe { unpack_scales_mins(x.add(SCALES)) };
        scales_and_mins_32(sc, m)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &__m256i) -> (__m256i, __m256i) {
        // SAFETY: 128 nibble bytes at QS; J / 2 < 4.
        let raw = unsafe { load32(x.add(QS + 32 * (J / 2))) };
        let nib = _mm256_set1_epi8(0x0f);
        let q = if J % 2 == 0 {
            _mm256_and_si256(raw, nib)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)
        };
        (q, broadcast_scale_32::<J>(*sc))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the block's first 4 bytes.
        unsafe { read_u32(x) }
    }
}
