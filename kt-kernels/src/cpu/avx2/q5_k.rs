//! Q5_K on AVX2: Q4_K's nibbles and packed scales plus a fifth bit per weight: bit `J`
//! of byte `l` of `qh` is bit 4 of element `32J + l`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, KQuant, Order};
use super::q4_k::{mins_32, scale_pairs_32, unpack_scales_mins};

/// Byte offsets in the 176-byte block: `d, dmin: f16`, 12 bytes of packed scales, 32
/// bytes of fifth bits, 128 bytes of nibbles.
const SCALES: usize = 4;
const QH: usize = 16;
const QS: usize = 48;

pub(crate) struct Q5K;

impl KQuant for Q5K {
    const BLOCK_BYTES: usize = 176;
    /// As Q6_K's (its 8-row tile spills): +15..16% cache-resident, +16..22% from DRAM.
    const GEMV_ROWS: usize = 4;
    const OFFSET_BY_D: bool = false;
    const ORDER: Order = Order::GgmlLanes;
    type Scales = [u32; 8];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [u32; 8] {
        // SAFETY: 12 scale bytes at SCALES and more block bytes after them.
        scale_pairs_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // SAFETY: as in decode.
        mins_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[u32; 8]) -> (__m256i, __m256i) {
        // SAFETY: 128 nibble bytes at QS (J / 2 < 4) and 32 bytes of fifth bits at QH.
        let (raw, qh) = unsafe { (load32(x.add(QS + 32 * (J / 2))), load32(x.add(QH))) };
        let nib = _mm256_set1_epi8(0x0f);
        let low = if J.is_multiple_of(2) {
            _mm256_and_si256(raw, nib)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)
        };
        // Bit J of each byte moved to bit 4 (a lone bit never crosses a byte).
        let bit = _mm256_and_si256(qh, _mm256_set1_epi8((1u8 << J) as i8));
        let high = match J {
            0 => _mm256_slli_epi16::<4>(bit),
            1 => _mm256_slli_epi16::<3>(bit),
            2 => _mm256_slli_epi16::<2>(bit),
            3 => _mm256_slli_epi16::<1>(bit),
            4 => bit,
            5 => _mm256_srli_epi16::<1>(bit),
            6 => _mm256_srli_epi16::<2>(bit),
            _ => _mm256_srli_epi16::<3>(bit),
        };
        (_mm256_or_si256(low, high), _mm256_set1_epi32(sc[J] as i32))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the block's first 4 bytes.
        unsafe { read_u32(x) }
    }
}
