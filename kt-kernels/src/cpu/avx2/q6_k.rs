//! Q6_K on AVX2: 6-bit quants stored as `q` = value + 32 (low 4 bits in `ql`, high 2
//! bits in `qh`) and a signed 8-bit scale per 16-weight sub-block. Chunk `J = 4n + c`
//! (half `n` of the block, `c` in 0..4) takes its low bits from `ql[64n + 32(c % 2)..]`
//! (low nibbles for `c < 2`, high for `c >= 2`) and its high bits from bits `2c..2c+2`
//! of `qh[32n..]`. The offset 32 comes back through the bsums:
//! `sum sc * (q - 32) * a = sum sc * q * a - 32 * sum_groups sc * bsum`.

use std::arch::x86_64::*;

use super::kquant::{load32, scale_16, scales_16, KQuant, Order};

/// Byte offsets in the 210-byte block: 128 bytes of low nibbles, 64 bytes of high bit
/// pairs, 16 signed scales, `d: f16`.
const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

pub(crate) struct Q6K;

impl KQuant for Q6K {
    const BLOCK_BYTES: usize = 210;
    /// Its 8-row tile spills (8 f32 lane accumulators of ggml's order beside the 8 sums):
    /// dev VM's Zen 5, 1 thread, 1408x2048 one token, 4 rows against 8: +26..29%
    /// cache-resident, +35..38% streamed from DRAM; with the scales in registers too
    /// +37..41% / +39..45% (`BENCHMARKS.md`, session 13).
    const GEMV_ROWS: usize = 4;
    const SCALES_IN_REGISTERS: bool = true;
    const OFFSET_BY_D: bool = true;
    const ORDER: Order = Order::GgmlLanes;
    type Scales = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [__m256i; 2] {
        // SAFETY: 16 scale bytes at SCALES.
        scales_16(
            unsafe { _mm_loadu_si128(x.add(SCALES) as *const __m128i) },
            true,
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // The offset 32 times each group's scale.
        // SAFETY: 16 scale bytes at SCALES.
        let sc = unsafe { _mm_loadu_si128(x.add(SCALES) as *const __m128i) };
        _mm256_slli_epi16::<5>(_mm256_cvtepi8_epi16(sc))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[__m256i; 2]) -> (__m256i, __m256i) {
        let (n, c) = (J / 4, J % 4);
        // SAFETY: 128 bytes at QL and 64 at QH; n < 2, c < 4.
        let (ql, qh) = unsafe {
            (
                load32(x.add(QL + 64 * n + 32 * (c % 2))),
                load32(x.add(QH + 32 * n)),
            )
        };
        let nib = _mm256_set1_epi8(0x0f);
        let low = if c < 2 {
            _mm256_and_si256(ql, nib)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql), nib)
        };
        // Bits 2c..2c+2 of each byte moved to bits 4..6 (masked first, so nothing
        // crosses a byte).
        let bits = _mm256_and_si256(qh, _mm256_set1_epi8((3u8 << (2 * c)) as i8));
        let high = match c {
            0 => _mm256_slli_epi16::<4>(bits),
            1 => _mm256_slli_epi16::<2>(bits),
            2 => bits,
            _ => _mm256_srli_epi16::<2>(bits),
        };
        (_mm256_or_si256(low, high), scale_16::<J>(sc))
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d is the 2 bytes at D, the block's last.
        unsafe { std::ptr::read_unaligned(x.add(D) as *const u16) as u32 }
    }
}
