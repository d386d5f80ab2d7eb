//! Activation rows for the repacked kernels.
//!
//! INT8/INT4 weights: each token's row is quantized to signed int8 with one f32 scale
//! per group of G elements (the weights' group), `d = absmax / 127`, `x * (1/d)` rounded
//! to nearest even (what `vcvtps2dq` does, so the AVX512 quantizer in `act_avx512.rs`
//! gives the same bytes). Signed (not u8 with an offset): AMX `tdpbssd` multiplies
//! s8 x s8 directly, so the prefill path needs no zero-point correction, and a group's integer dot is
//! scaled once by `d_w * d_a`. Per group rather than per token: one outlier then only
//! coarsens its own group (DeepSeek's hidden states have a few large channels). The
//! VNNI kernels (`vpdpbusd` is u8 x s8) handle the sign on the weight side instead.
//!
//! Row layout: `cols` int8 values, then `cols / G` f32 scales (little endian).
//! BF16 weights: the row in bf16, round to nearest even.

use half::bf16;

use super::format::RepackFormat;

/// Quantizes one row with the fastest quantizer `isa` allows (same bytes as
/// [`quantize_row`]).
pub fn quantize_row_with(isa: crate::cpu::Isa, format: RepackFormat, src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = isa >= crate::cpu::Isa::Avx512
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    if let (true, Some(g)) = (avx512, format.group()) {
        // SAFETY: AVX512 F/BW were detected; quantize_int8 checks the lengths.
        unsafe { super::act_avx512::quantize_int8(src, dst, g) };
        return;
    }
    quantize_row(format, src, dst);
}

/// Quantizes one row (`src.len()` = cols) into `dst` (`format.act_row_bytes(cols)` bytes).
/// The scalar reference; lengths are checked by the callers.
pub fn quantize_row(format: RepackFormat, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), format.act_row_bytes(src.len()));
    match format.group() {
        None => {
            for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        Some(g) => {
            let (vals, scales) = dst.split_at_mut(src.len());
            for ((x, q), s) in src
                .chunks_exact(g)
                .zip(vals.chunks_exact_mut(g))
                .zip(scales.chunks_exact_mut(4))
            {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
                }
                s.copy_from_slice(&d.to_le_bytes());
            }
        }
    }
}

/// The f32 values a quantized row stands for (tests and the exact reference).
pub fn dequantize_row(format: RepackFormat, src: &[u8], cols: usize, out: &mut [f32]) {
    match format.group() {
        None => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Some(g) => {
            for (k, o) in out.iter_mut().enumerate().take(cols) {
                *o = src[k] as i8 as f32 * act_scale(src, cols, k / g);
            }
        }
    }
}

/// Scale of group `g` of a quantized row of `cols` elements.
pub fn act_scale(row: &[u8], cols: usize, g: usize) -> f32 {
    let o = cols + 4 * g;
    f32::from_le_bytes([row[o], row[o + 1], row[o + 2], row[o + 3]])
}
