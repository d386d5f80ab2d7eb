//! Q5_0 and Q5_1 on AVX2: Q4_0's / Q4_1's nibbles plus a fifth bit per element, bit
//! `j` of the little-endian u32 `qh` for element `j`. Q5_0 (`d, qh, qs`) is
//! `d * (q - 16)`; Q5_1 (`d, m, qh, qs`) is `d * q + m`.

use std::arch::x86_64::*;

use super::q4_0::nibbles_32;
use super::small_block::SmallBlock;

/// The 5-bit quants of a block whose `qh` is at `qh` and nibbles at `qs`.
///
/// # Safety
/// `qh .. qh + 4` and `qs .. qs + 16` are readable; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quants_5bit(qh: *const u8, qs: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    let bits = unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(qh as *const i32)) };
    // SAFETY: as above.
    unsafe { quants_5bit_at::<0>(bits, qs) }
}

/// [`quants_5bit`] with `qh` at byte `AT` of each 64-bit lane of `bits`.
///
/// # Safety
/// `qs .. qs + 16` is readable; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quants_5bit_at<const AT: i64>(bits: __m256i, qs: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    let low = unsafe { nibbles_32(qs) };
    // Byte j takes byte j / 8 of qh and keeps bit j % 8 of it: 0 or 2^(j % 8).
    let pick = |b: i64| (AT + b) * 0x0101_0101_0101_0101;
    let spread = _mm256_shuffle_epi8(bits, _mm256_setr_epi64x(pick(0), pick(1), pick(2), pick(3)));
    let bit = _mm256_and_si256(spread, _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64));
    // `sign(c, bit)` is 0 where the bit is clear, `c` where it is positive and `-c` where it
    // is 0x80 (bit 7, a negative byte): with c = 16 in bytes j % 8 < 7 and -16 in bytes
    // j % 8 = 7 it is 16 wherever the bit is set. One instruction less than or-ing in the
    // other bits, comparing with all-ones and masking 16 (dev VM's Zen 5, 1 thread, Q5_0
    // 2048x1408 cache-resident: +8%).
    let sixteen = _mm256_set1_epi64x(0xf010_1010_1010_1010_u64 as i64);
    _mm256_or_si256(low, _mm256_sign_epi8(sixteen, bit))
}

pub(super) struct Q5_0;

impl SmallBlock for Q5_0 {
    const BLOCK_BYTES: usize = 22;
    const OFFSET: i8 = 16;
    const SIGNED: bool = false;
    const HAS_MIN: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(x: *const u8) -> __m256i {
        // SAFETY: qh at 2, 16 nibble bytes at 6.
        unsafe { quants_5bit(x.add(2), x.add(6)) }
    }

    const HEAD: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_head(x: *const u8) -> (__m256i, __m256i) {
        // One 8-byte broadcast load (`vbroadcastsd`, a pure load, where an i64 broadcast
        // goes through a general register) for d (word 0) and qh (bytes 2..6); an f64 copy
        // keeps its bits, NaN patterns included.
        // SAFETY: 16 nibble bytes at 6; the block's first 8 bytes are readable.
        unsafe {
            let head =
                _mm256_castpd_si256(_mm256_set1_pd(std::ptr::read_unaligned(x as *const f64)));
            (quants_5bit_at::<2>(head, x.add(6)), head)
        }
    }
}

pub(super) struct Q5_1;

impl SmallBlock for Q5_1 {
    const BLOCK_BYTES: usize = 24;
    const OFFSET: i8 = 0;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const GGML_LANES: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(x: *const u8) -> __m256i {
        // SAFETY: qh at 4, 16 nibble bytes at 8.
        unsafe { quants_5bit(x.add(4), x.add(8)) }
    }
}
