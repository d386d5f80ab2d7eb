//! Q4_0 and Q4_1 on AVX2: 16 bytes of nibbles, element `j` in the low nibble of byte
//! `j` and element `j + 16` in its high nibble. Q4_0 is `d * (q - 8)` after its f16
//! `d`; Q4_1 is `d * q + m` after `d, m`.

use std::arch::x86_64::*;

use super::small_block::SmallBlock;

/// The 32 nibbles of the 16 bytes at `p`, in element order: the bytes loaded into both
/// halves (a broadcast load, no shuffle), the upper half shifted right by 4.
///
/// # Safety
/// `p .. p + 16` is readable; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)) };
    let both = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

pub(super) struct Q4_0;

impl SmallBlock for Q4_0 {
    const BLOCK_BYTES: usize = 18;
    const OFFSET: i8 = 8;
    const SIGNED: bool = false;
    const HAS_MIN: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(x: *const u8) -> __m256i {
        // SAFETY: 16 nibble bytes after d.
        unsafe { nibbles_32(x.add(2)) }
    }
}

pub(super) struct Q4_1;

impl SmallBlock for Q4_1 {
    const BLOCK_BYTES: usize = 20;
    const OFFSET: i8 = 0;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const GGML_LANES: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(x: *const u8) -> __m256i {
        // SAFETY: 16 nibble bytes after d and m.
        unsafe { nibbles_32(x.add(4)) }
    }
}
