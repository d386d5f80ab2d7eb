//! AVX512 activation quantizers: Q8_K (the K-quants' activations) and Q8_0 (Q8_0, Q4_0,
//! Q5_0). They produce the same bytes as the scalar references, so every ISA's kernels
//! see identical activations: the same scale arithmetic in the same f32 order, the same
//! rounding (nearest, ties to even, as ggml's x86 CPU backend), the same choice of the
//! signed maximum (the first element of largest magnitude).

use std::arch::x86_64::*;

use half::f16;

use super::tile::vps;

/// Bytes of a Q8_K block: f32 d, 256 int8, 16 int16 sums of 16.
const Q8K_BLOCK: usize = 292;
/// Bytes of a Q8_0 block: f16 d, 32 int8.
const Q80_BLOCK: usize = 34;

const CAP_HI: __m512 = vps([127.0; 16]);
const CAP_LO_Q8K: __m512 = vps([-2147483648.0; 16]);
const CAP_LO_Q80: __m512 = vps([-128.0; 16]);

/// Quantizes `src` (a whole number of 256-element blocks) to Q8_K:
/// `d = max / -127` of the signed element of largest magnitude, `q = round(x * -127 /
/// max)` capped at 127, and the sums of each 16 quants. An all-zero block is all zeros.
///
/// # Safety
/// `dst.len() == src.len() / 256 * 292` (checked by the driver); AVX512F/BW/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn q8_k(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / 256 * Q8K_BLOCK, dst.len());
    for (x, y) in src.chunks_exact(256).zip(dst.chunks_exact_mut(Q8K_BLOCK)) {
        let mut v = [_mm512_setzero_ps(); 16];
        let mut amax = _mm512_setzero_ps();
        for (i, vi) in v.iter_mut().enumerate() {
            // SAFETY: 16 * 16 = 256 floats of the chunk.
            *vi = unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * i)) };
            // vmaxps returns its second operand when one is NaN: NaNs are skipped, as
            // the reference's `>` comparison skips them.
            amax = _mm512_max_ps(_mm512_abs_ps(*vi), amax);
        }
        let amax = _mm512_reduce_max_ps(amax);
        if amax == 0.0 {
            y.fill(0);
            continue;
        }
        // The reference keeps the first element whose magnitude is the maximum.
        let target = _mm512_set1_ps(amax);
        let mut first = 0;
        for (i, &vi) in v.iter().enumerate() {
            let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(vi), target);
            if m != 0 {
                first = 16 * i + m.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0f32 / x[first];
        let scale = _mm512_set1_ps(iscale);
        let mut sums = [0i16; 16];
        for (i, &vi) in v.iter().enumerate() {
            // The reference rounds to nearest even, converts saturating to i32 (NaN to
            // 0), caps at 127 and keeps the low byte. Clamping to [-2^31, 127] first
            // makes the default-rounding conversion agree, also for the infinite scaled
            // values of a subnormal block; a NaN stays NaN and converts to 0x80000000,
            // whose low byte is 0 as well.
            let c = _mm512_min_ps(CAP_HI, _mm512_max_ps(CAP_LO_Q8K, _mm512_mul_ps(vi, scale)));
            let b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c));
            // SAFETY: bytes 4 + 16i .. 4 + 16(i + 1) of the 292-byte block.
            unsafe { _mm_storeu_si128(y.as_mut_ptr().add(4 + 16 * i).cast(), b) };
            sums[i] = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(b)) as i16;
        }
        y[..4].copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
        for (i, s) in sums.iter().enumerate() {
            y[260 + 2 * i..262 + 2 * i].copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// Quantizes `src` (a whole number of 32-element blocks) to Q8_0 the way ggml's x86
/// CPU backend quantizes activations (the reference's `q8_0::quantize`): `d = amax /
/// 127` stored as f16, `q = x * (127 / amax)` rounded to nearest, ties to even (0 for an
/// all-zero block).
///
/// # Safety
/// `dst.len() == src.len() / 32 * 34` (checked by the driver); AVX512F/BW/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn q8_0(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / 32 * Q80_BLOCK, dst.len());
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(Q80_BLOCK)) {
        // SAFETY: 32 floats of the chunk.
        let v = unsafe {
            [
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            ]
        };
        // NaNs are skipped (vmaxps returns its second operand), as by f32::max.
        let amax = _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps());
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[1]), amax));
        y[..2].copy_from_slice(&f16::from_f32(amax / 127.0).to_bits().to_le_bytes());
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        for (i, &vi) in v.iter().enumerate() {
            // The reference rounds to nearest even and converts saturating to i8 (NaN
            // to 0): clamp to [-128, 127] (a NaN stays NaN, converts to 0x80000000 and
            // keeps the low byte 0), then convert with the default rounding.
            let c = _mm512_min_ps(CAP_HI, _mm512_max_ps(CAP_LO_Q80, _mm512_mul_ps(vi, id)));
            let q = _mm512_cvtps_epi32(c);
            // SAFETY: bytes 2 + 16i .. 2 + 16(i + 1) of the 34-byte block.
            unsafe {
                _mm_storeu_si128(
                    y.as_mut_ptr().add(2 + 16 * i).cast(),
                    _mm512_cvtepi32_epi8(q),
                )
            };
        }
    }
}
