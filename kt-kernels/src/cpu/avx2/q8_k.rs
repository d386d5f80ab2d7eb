//! The Q8_K activation quantizer on AVX2, byte-identical to the reference
//! (`quant::reference::q8_k`): per 256 elements, the element of largest magnitude (the
//! first one on ties, NaNs ignored) maps to -127 through `iscale = -127 / max`, every
//! element to `round_half_even(iscale * x)` (NaN products to 0, capped at 127),
//! `d = 1 / iscale`, and `bsums` are the sums of each 16 quants.

use std::arch::x86_64::*;

use crate::quant::reference;
use crate::quant::QK_K;

const BLOCK_BYTES: usize = 292;

/// The [`QuantizeActFn`](crate::cpu::dispatch::QuantizeActFn) of the K-quants.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `dst.len()` is the Q8_K row size of `src.len()`
/// elements (a multiple of 256), as the driver guarantees.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_act(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / QK_K * BLOCK_BYTES, dst.len());
    for (x, out) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(
            x.try_into().expect("chunks of 256"),
            out.try_into().expect("chunks of 292"),
        );
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(x: &[f32; QK_K], i: usize) -> __m256 {
    let v: &[f32; 8] = x[8 * i..8 * i + 8].try_into().expect("8 floats");
    // SAFETY: `v` is 8 readable f32; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// `round_half_even(x * scale)` as i32, NaN products as 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize8(x: __m256, scale: __m256) -> __m256i {
    let p = _mm256_mul_ps(x, scale);
    // cvtps rounds half to even (the default MXCSR mode); NaN would become i32::MIN, so
    // an ordered compare masks it to 0 as the reference's cast does.
    let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
    _mm256_and_si256(_mm256_cvtps_epi32(p), ordered)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    // max_ps returns its second operand when either is NaN, so NaNs never win.
    let mut m = _mm256_setzero_ps();
    for i in 0..QK_K / 8 {
        m = _mm256_max_ps(_mm256_and_ps(load8(x, i), abs_mask), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<0b01>(m2, m2)));
    if amax == 0.0 {
        out.fill(0);
        return;
    }
    // The signed value of the first element of magnitude amax.
    let target = _mm256_set1_ps(amax);
    // amax is the magnitude of some element, so the scan always stops.
    let mut first = 0;
    for i in 0..QK_K / 8 {
        let abs = _mm256_and_ps(load8(x, i), abs_mask);
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs, target));
        if hit != 0 {
            first = 8 * i + hit.trailing_zeros() as usize;
            break;
        }
    }
    let iscale = -127.0 / x[first];
    if !iscale.is_finite() {
        // A largest magnitude below ~1.5e-36: the products overflow and the reference's
        // integer conversions decide the bytes; such a block is rare enough to hand over.
        reference::quantize(crate::quant::QType::Q8_K, x, out);
        return;
    }

    let vscale = _mm256_set1_ps(iscale);
    let quant8 = |i: usize| quantize8(load8(x, i), vscale);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); 8];
    for (c, sum) in sums.iter_mut().enumerate() {
        // 32 quants: the signed saturating packs cap at 127 like the reference's min.
        let p01 = _mm256_packs_epi32(quant8(4 * c), quant8(4 * c + 1));
        let p23 = _mm256_packs_epi32(quant8(4 * c + 2), quant8(4 * c + 3));
        let q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
        // SAFETY: bytes 4 + 32c .. 36 + 32c of the 292-byte block (c < 8).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(4 + 32 * c) as *mut __m256i, q) };
        // Lanes 0..4 sum quants 0..16, lanes 4..8 quants 16..32 (4 each).
        *sum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    }
    // Horizontal adds: [b0 b2 b4 b6 | b1 b3 b5 b7] and the same for b8..b15.
    let h0 = _mm256_hadd_epi32(
        _mm256_hadd_epi32(sums[0], sums[1]),
        _mm256_hadd_epi32(sums[2], sums[3]),
    );
    let h1 = _mm256_hadd_epi32(
        _mm256_hadd_epi32(sums[4], sums[5]),
        _mm256_hadd_epi32(sums[6], sums[7]),
    );
    let p = _mm256_packs_epi32(h0, h1); // [even groups | odd groups] as i16
    let (even, odd) = (_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
    // SAFETY: bytes 260..292 of the block.
    unsafe {
        _mm_storeu_si128(
            out.as_mut_ptr().add(260) as *mut __m128i,
            _mm_unpacklo_epi16(even, odd),
        );
        _mm_storeu_si128(
            out.as_mut_ptr().add(276) as *mut __m128i,
            _mm_unpackhi_epi16(even, odd),
        );
    }
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
