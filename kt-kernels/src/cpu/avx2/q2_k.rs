//! Q2_K on AVX2: 2-bit quants, a 4-bit scale and a 4-bit minimum per 16-weight
//! sub-block. Chunk `J` (elements `32J..32J + 32`) is bits `2 * (J % 4)` of the 32
//! bytes `qs[32 * (J / 4)..]`; it covers sub-blocks `2J` and `2J + 1`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, scale_16, scales_16, KQuant};

/// Byte offsets in the 84-byte block: 16 scale bytes (scale low nibble, minimum high
/// nibble), 64 bytes of 2-bit quants, `d, dmin: f16`.
const SCALES: usize = 0;
const QS: usize = 16;
const D: usize = 80;

pub(super) struct Q2K;

impl KQuant for Q2K {
    const BLOCK_BYTES: usize = 84;
    const OFFSET_BY_D: bool = false;
    type Scales = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [__m256i; 2] {
        // SAFETY: 16 scale bytes at SCALES.
        let sm = unsafe { _mm_loadu_si128(x.add(SCALES) as *const __m128i) };
        scales_16(_mm_and_si128(sm, _mm_set1_epi8(0x0f)), false)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // SAFETY: 16 scale bytes at SCALES.
        let sm = unsafe { _mm_loadu_si128(x.add(SCALES) as *const __m128i) };
        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), _mm_set1_epi8(0x0f)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[__m256i; 2]) -> (__m256i, __m256i) {
        // SAFETY: 64 quant bytes at QS; J / 4 < 2.
        let raw = unsafe { load32(x.add(QS + 32 * (J / 4))) };
        let shifted = match J % 4 {
            0 => raw,
            1 => _mm256_srli_epi16::<2>(raw),
            2 => _mm256_srli_epi16::<4>(raw),
            _ => _mm256_srli_epi16::<6>(raw),
        };
        (
            _mm256_and_si256(shifted, _mm256_set1_epi8(3)),
            scale_16::<J>(sc),
        )
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the 4 bytes at D.
        unsafe { read_u32(x.add(D)) }
    }
}
