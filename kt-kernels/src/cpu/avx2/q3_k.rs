//! Q3_K on AVX2: 3-bit quants `q - 4` (two low bits in `qs` laid out as Q2_K's, the
//! third bit in `hmask`: bit `J` of byte `l` for element `32J + l`) and a signed 6-bit
//! scale per 16-weight sub-block. The kernel multiplies the unsigned `q` (0..8) and
//! takes the offset back through the bsums: `sum sc * (q - 4) * a =
//! sum sc * q * a - 4 * sum_groups sc * bsum`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, scale_16, scales_16, KQuant};

/// Byte offsets in the 110-byte block: 32 bytes of high bits, 64 bytes of 2-bit
/// quants, 12 bytes of packed scales, `d: f16`.
const HMASK: usize = 0;
const QS: usize = 32;
const SCALES: usize = 96;
const D: usize = 108;

pub(super) struct Q3K;

/// The 16 signed scales from their 12 packed bytes: scale `j` has its low 4 bits in a
/// nibble of byte `j % 8` (low nibble for `j < 8`) and its top 2 bits at bit
/// `2 * (j / 4)` of byte `8 + j % 4`, biased by 32.
///
/// # Safety
/// `p .. p + 12` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_scales(p: *const u8) -> __m128i {
    // Three 4-byte words; reading 16 bytes could run past the end of the last block.
    // SAFETY: the caller's contract.
    let (a, b, c) = unsafe { (read_u32(p), read_u32(p.add(4)), read_u32(p.add(8))) };
    const LOW4: u32 = 0x0f0f_0f0f;
    const TWO: u32 = 0x0303_0303;
    let s0 = (a & LOW4) | ((c & TWO) << 4);
    let s1 = (b & LOW4) | (((c >> 2) & TWO) << 4);
    let s2 = ((a >> 4) & LOW4) | (((c >> 4) & TWO) << 4);
    let s3 = ((b >> 4) & LOW4) | (((c >> 6) & TWO) << 4);
    _mm_sub_epi8(
        _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32),
        _mm_set1_epi8(32),
    )
}

impl KQuant for Q3K {
    const BLOCK_BYTES: usize = 110;
    const OFFSET_BY_D: bool = true;
    type Scales = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [__m256i; 2] {
        // SAFETY: 12 scale bytes at SCALES.
        scales_16(unsafe { unpack_scales(x.add(SCALES)) }, true)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // The offset 4 times each group's scale.
        // SAFETY: 12 scale bytes at SCALES.
        _mm256_slli_epi16::<2>(_mm256_cvtepi8_epi16(unsafe {
            unpack_scales(x.add(SCALES))
        }))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[__m256i; 2]) -> (__m256i, __m256i) {
        // SAFETY: 64 quant bytes at QS (J / 4 < 2) and 32 hmask bytes at HMASK.
        let (raw, hm) = unsafe { (load32(x.add(QS + 32 * (J / 4))), load32(x.add(HMASK))) };
        let low = match J % 4 {
            0 => raw,
            1 => _mm256_srli_epi16::<2>(raw),
            2 => _mm256_srli_epi16::<4>(raw),
            _ => _mm256_srli_epi16::<6>(raw),
        };
        let low = _mm256_and_si256(low, _mm256_set1_epi8(3));
        // Bit J of each byte moved to bit 2 (a lone bit never crosses a byte).
        let bit = _mm256_and_si256(hm, _mm256_set1_epi8((1u8 << J) as i8));
        let high = match J {
            0 => _mm256_slli_epi16::<2>(bit),
            1 => _mm256_slli_epi16::<1>(bit),
            2 => bit,
            3 => _mm256_srli_epi16::<1>(bit),
            4 => _mm256_srli_epi16::<2>(bit),
            5 => _mm256_srli_epi16::<3>(bit),
            6 => _mm256_srli_epi16::<4>(bit),
            _ => _mm256_srli_epi16::<5>(bit),
        };
        (_mm256_or_si256(low, high), scale_16::<J>(sc))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d is the 2 bytes at D, the block's last.
        unsafe { std::ptr::read_unaligned(x.add(D) as *const u16) as u32 }
    }
}
