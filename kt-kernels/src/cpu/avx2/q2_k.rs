//! Q2_K on AVX2: 2-bit quants, a 4-bit scale and a 4-bit minimum per 16-weight
//! sub-block. Chunk `J` (elements `32J..32J + 32`) is bits `2 * (J % 4)` of the 32
//! bytes `qs[32 * (J / 4)..]`; it covers sub-blocks `2J` and `2J + 1`.
//!
//! The crumbs are masked where they lie rather than shifted down (the AVX512 GEMV's
//! idea): with `s = J % 4`, chunk `J`'s unsigned bytes are `q * 4^s` for `s < 3` and,
//! shifted by 2 only, `q * 16` for `s = 3` (`q * 64` could saturate `maddubs`: every
//! byte here is at most 48, a pair sum at most `2 * 48 * 128`). The sub-block scales are
//! widened once per super-block by `16 / 4^min(s, 2)`, so every product carries 16,
//! which [`KQuant::SUM_SHIFT`] removes exactly: 1 shift per 128 weights instead of 3.

use std::arch::x86_64::*;

use super::kquant::{load32, opaque, read_u32, scale_16, KQuant};

/// Byte offsets in the 84-byte block: 16 scale bytes (scale low nibble, minimum high
/// nibble), 64 bytes of 2-bit quants, `d, dmin: f16`.
const SCALES: usize = 0;
const QS: usize = 16;
const D: usize = 80;

pub(super) struct Q2K;

/// What each sub-block scale is multiplied by: word `w` of either 128-bit half serves
/// the chunks with `s = w / 2`, whose quants carry `4^min(s, 2)`, so it gets the rest of
/// 16.
static WIDEN: [i16; 16] = [16, 16, 4, 4, 1, 1, 1, 1, 16, 16, 4, 4, 1, 1, 1, 1];

impl KQuant for Q2K {
    const BLOCK_BYTES: usize = 84;
    /// 4 rows with their scales in registers against the 8-row tile (dev VM's Zen 5, 1
    /// thread, 1408x2048 one token): +9..14% cache-resident, level from DRAM; either alone
    /// was level (`BENCHMARKS.md`, session 13).
    const GEMV_ROWS: usize = 4;
    const SCALES_IN_REGISTERS: bool = true;
    const OFFSET_BY_D: bool = false;
    const SUM_SHIFT: i32 = 4;
    /// As [`super::kquant::scales_16`] makes them (`[s0..s8 | s0..s8]`,
    /// `[s8..s16 | s8..s16]`), each widened as [`WIDEN`] says (at most 15 * 16).
    type Scales = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [__m256i; 2] {
        // SAFETY: 16 scale bytes at SCALES.
        let sm = unsafe { _mm_loadu_si128(x.add(SCALES) as *const __m128i) };
        let words = _mm256_cvtepu8_epi16(_mm_and_si128(sm, _mm_set1_epi8(0x0f)));
        // Loaded through `opaque`: LLVM would otherwise turn the multiply by powers of
        // two into 32-bit variable shifts and masks, several instructions for one.
        // SAFETY: WIDEN is 32 readable bytes.
        let widen = unsafe { _mm256_loadu_si256(opaque(WIDEN.as_ptr()) as *const __m256i) };
        let words = _mm256_mullo_epi16(words, widen);
        [
            _mm256_permute4x64_epi64::<0x44>(words),
            _mm256_permute4x64_epi64::<0xee>(words),
        ]
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
        // q * 1, q * 4, q * 16, q * 16 (the top crumb brought down to bits 4..5; the
        // bits the 16-bit shift drags in from the next byte are masked off).
        let q = match J % 4 {
            0 => _mm256_and_si256(raw, _mm256_set1_epi8(0x03)),
            1 => _mm256_and_si256(raw, _mm256_set1_epi8(0x0c)),
            2 => _mm256_and_si256(raw, _mm256_set1_epi8(0x30)),
            _ => _mm256_and_si256(_mm256_srli_epi16::<2>(raw), _mm256_set1_epi8(0x30)),
        };
        (q, scale_16::<J>(sc))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the 4 bytes at D.
        unsafe { read_u32(x.add(D)) }
    }
}
