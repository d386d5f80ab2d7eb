//! The Q8_0 and Q8_1 activation quantizers on AVX2, byte-identical to the references
//! (`quant::reference::q8_0` / `q8_1`, which follow ggml's x86 CPU quantizer): per 32
//! elements `amax` = the largest magnitude (NaNs ignored), `d = amax / 127`, each
//! quant `round_half_even(x * (127 / amax))` (0 when `amax` is 0; NaN products to 0,
//! infinite ones saturated), `d` stored as f16; Q8_1 adds `s = f16(d * sum(q))`.

use std::arch::x86_64::*;

use half::f16;

use crate::quant::QK;

/// One block: the f32 scale `d`, the 32 quants, and their sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block(x: &[f32; QK]) -> (f32, __m256i, i32) {
    // SAFETY (both loads): x is 32 readable f32.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    // max_ps returns its second operand when either is NaN, so NaNs never win.
    let mut m = _mm256_setzero_ps();
    for vi in v {
        m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<0b01>(m2, m2)));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let vid = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let quant8 = |vi: __m256| {
        let p = _mm256_mul_ps(vi, vid);
        // Saturate like the reference's float-to-int cast (only reachable when 127 /
        // amax overflows); min/max return their second operand for NaN, so NaN stays
        // NaN and the ordered mask turns it into 0. cvtps rounds half to even (the
        // default MXCSR mode).
        let clamped = _mm256_max_ps(lo, _mm256_min_ps(hi, p));
        let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
        _mm256_and_si256(_mm256_cvtps_epi32(clamped), ordered)
    };
    let p01 = _mm256_packs_epi32(quant8(v[0]), quant8(v[1]));
    let p23 = _mm256_packs_epi32(quant8(v[2]), quant8(v[3]));
    let q = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(p01, p23),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    // Sum of the 32 quants: pairs, then quads, then the 8 lanes.
    let s8 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
        _mm256_set1_epi16(1),
    );
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(s8),
        _mm256_extracti128_si256::<1>(s8),
    );
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2)));
    (amax / 127.0, q, sum)
}

/// Shared driver: `header(d, sum)` gives the bytes before the quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_row<const HEADER: usize>(
    src: &[f32],
    dst: &mut [u8],
    header: impl Fn(f32, i32) -> [u8; HEADER],
) {
    debug_assert_eq!(src.len() / QK * (HEADER + QK), dst.len());
    for (x, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(HEADER + QK)) {
        let (d, q, sum) = quantize_block(x.try_into().expect("chunks of 32"));
        out[..HEADER].copy_from_slice(&header(d, sum));
        // SAFETY: out holds HEADER + 32 bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(HEADER) as *mut __m256i, q) };
    }
}

/// Q8_0 activations (`d: f16, qs: [i8; 32]` per block).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `dst.len()` is the Q8_0 row size of `src.len()`
/// elements (a multiple of 32), as the driver guarantees.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    quantize_row::<2>(src, dst, |d, _| f16::from_f32(d).to_le_bytes());
}

/// Q8_1 activations (`d: f16, s: f16, qs: [i8; 32]` per block), `s = d * sum(qs)` from
/// the f32 `d`.
///
/// # Safety
/// As [`quantize_q8_0`] with the Q8_1 row size.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    quantize_row::<4>(src, dst, |d, sum| {
        let (d16, s16) = (
            f16::from_f32(d).to_le_bytes(),
            f16::from_f32(sum as f32 * d).to_le_bytes(),
        );
        [d16[0], d16[1], s16[0], s16[1]]
    });
}
