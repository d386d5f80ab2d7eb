//! The AVX512 activation quantizer (int8, one scale per group): the same arithmetic as
//! `act::quantize_row` (the maximum is exact in any order; `x * (1/d)` is one f32
//! multiply; `vcvtps2dq` rounds to nearest even), so the bytes are identical.

use std::arch::x86_64::*;

/// `src.len()` a multiple of `group` (a multiple of 16), `dst` of `src.len() + 4 *
/// groups` bytes.
///
/// # Safety
/// The CPU has AVX512 F/BW; the lengths are as above.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn quantize_int8(src: &[f32], dst: &mut [u8], group: usize) {
    let n = src.len();
    assert!(
        n.is_multiple_of(group) && group.is_multiple_of(16) && dst.len() == n + 4 * (n / group)
    );
    let (vals, scales) = dst.split_at_mut(n);
    let lo = _mm512_set1_epi32(-127);
    let hi = _mm512_set1_epi32(127);
    for (g, (x, q)) in src
        .chunks_exact(group)
        .zip(vals.chunks_exact_mut(group))
        .enumerate()
    {
        // SAFETY: every load reads 16 floats of `x` and every store writes 16 bytes of
        // `q` at offsets below `group` (a multiple of 16).
        unsafe {
            let mut m = _mm512_setzero_ps();
            for c in (0..group).step_by(16) {
                m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(c))));
            }
            let d = _mm512_reduce_max_ps(m) / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            for c in (0..group).step_by(16) {
                let v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c)), inv));
                let v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
                _mm_storeu_si128(
                    q.as_mut_ptr().add(c) as *mut __m128i,
                    _mm512_cvtepi32_epi8(v),
                );
            }
            scales[4 * g..4 * g + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
}
