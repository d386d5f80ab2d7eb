//! Q8_0 weights on AVX2: 32 signed bytes after the f16 scale.

use std::arch::x86_64::*;

use super::kquant::load32;
use super::small_block::SmallBlock;

pub(super) struct Q8_0;

impl SmallBlock for Q8_0 {
    const BLOCK_BYTES: usize = 34;
    const OFFSET: i8 = 0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(x: *const u8) -> __m256i {
        // SAFETY: 32 quant bytes after the 2-byte scale.
        unsafe { load32(x.add(2)) }
    }
}
