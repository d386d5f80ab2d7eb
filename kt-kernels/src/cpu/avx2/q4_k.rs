//! Q4_K on AVX2: 4-bit quants, a 6-bit scale and a 6-bit minimum per 32-weight
//! sub-block. Chunk `J` is sub-block `J`: the low nibbles of `qs[32 * (J / 2)..]` for
//! even `J`, the high nibbles for odd `J`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, KQuant, Order};

/// Byte offsets in the 144-byte block: `d, dmin: f16`, 12 bytes of packed scales, 128
/// bytes of nibbles.
const SCALES: usize = 4;
const QS: usize = 16;

pub(crate) struct Q4K;

/// Unpacks the 12 bytes of 6-bit scales and minimums of Q4_K / Q5_K into
/// `[scale 0..8, min 0..8]` (one byte each).
///
/// Layout, by 4-byte words: word 0 holds the low 6 bits of scales 0..3 (its top 2
/// bits: the high bits of scales 4..7), word 1 the same for the minimums, and word 2
/// the low 4 bits of scales 4..7 (low nibbles) and of minimums 4..7 (high nibbles).
///
/// # Safety
/// `p .. p + 16` is readable (the 12 bytes and 4 bytes after them, which are ignored).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_scales_mins(p: *const u8) -> __m128i {
    // SAFETY: the caller's contract; loadu has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    // Low parts, by output word: [w0 & 63, w2 & 15, w1 & 63, (w2 >> 4) & 15].
    let low = _mm_and_si128(
        _mm_srlv_epi32(
            _mm_shuffle_epi32::<0b10_01_10_00>(v),
            _mm_setr_epi32(0, 0, 0, 4),
        ),
        _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
    );
    // High 2 bits of scales / minimums 4..7: bits 6..7 of words 0 / 1 moved to bits
    // 4..5 (the shift drags bits of the next byte into bits 6..7; the mask drops them).
    let high = _mm_and_si128(
        _mm_srli_epi32::<2>(_mm_shuffle_epi32::<0b01_00_00_00>(v)),
        _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030),
    );
    _mm_or_si128(low, high)
}

/// 8 sub-block scales (bytes 0..8 of `sm`), each as the u32 `scale | scale << 16`:
/// broadcast, it is the 16 i16 lanes `madd` multiplies a 32-weight chunk's pair sums
/// with. Kept in memory so the broadcast is a load (`vpbroadcastd m32`), not a shuffle.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scale_pairs_32(sm: __m128i) -> [u32; 8] {
    let sc = _mm_cvtepu8_epi16(sm);
    let mut out = [0u32; 8];
    // SAFETY: `out` is 32 writable bytes; storeu has no alignment requirement.
    unsafe {
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm_unpacklo_epi16(sc, sc));
        _mm_storeu_si128(
            out.as_mut_ptr().add(4) as *mut __m128i,
            _mm_unpackhi_epi16(sc, sc),
        );
    }
    out
}

/// The 16 i16 `bsums` multipliers of 8 minimums (bytes 8..16 of `sm`) of 32-weight
/// sub-blocks: each minimum covers two 16-element groups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mins_32(sm: __m128i) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm))
}

impl KQuant for Q4K {
    const BLOCK_BYTES: usize = 144;
    const OFFSET_BY_D: bool = false;
    const ORDER: Order = Order::Repack;
    type Scales = [u32; 8];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [u32; 8] {
        // SAFETY: the block holds 12 scale bytes at SCALES and 128 bytes after them.
        scale_pairs_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // SAFETY: the block holds 12 scale bytes at SCALES and 128 bytes after them.
        mins_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[u32; 8]) -> (__m256i, __m256i) {
        // SAFETY: 128 nibble bytes at QS; J / 2 < 4.
        let raw = unsafe { load32(x.add(QS + 32 * (J / 2))) };
        let nib = _mm256_set1_epi8(0x0f);
        let q = if J.is_multiple_of(2) {
            _mm256_and_si256(raw, nib)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)
        };
        (q, _mm256_set1_epi32(sc[J] as i32))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the block's first 4 bytes.
        unsafe { read_u32(x) }
    }
}
