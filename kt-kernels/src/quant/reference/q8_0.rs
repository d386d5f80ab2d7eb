//! Q8_0 scalar reference: blocks of 32 int8 `q` with one f16 scale, `w = d * q`. Q8_0 is
//! both a weight format and the activation format of the Q4_0 / Q5_0 / Q8_0 dots.
//!
//! ggml has two Q8_0 quantizers that differ only in rounding: the `_ref` one written into
//! model files (inverse scale `1 / d`, `roundf`: half away from zero) and the CPU
//! backend's `from_float` that quantizes activations before a dot (on x86 with AVX/AVX2:
//! inverse scale `127 / amax`, round half to even). They disagree only where `x * id`
//! lies on, or within an ulp of, a .5 boundary: about 3 elements in a million of normal
//! data, and none of the 4096 fixture activations, so the fixture dots are reproduced by
//! both (`tests/quant_fixtures_small.rs` checks this). [`quantize`] follows the CPU
//! rounding because that is what ggml's dots on this (x86) machine see, so activations
//! quantized through it are ggml's bit for bit. [`quantize_ggml_ref`] keeps the `_ref`
//! rounding, the one that writes ggml's Q8_0 model files.

use half::f16;

use crate::quant::blocks::{block_count, read_block, write_block, BlockQ8_0};
use crate::quant::QK;

/// Which of ggml's two Q8 block quantizers to follow (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Q8Rounding {
    /// ggml-cpu's x86 `quantize_row_q8_0` / `q8_1`: `id = 127 / amax`, half to even.
    Cpu,
    /// ggml's `quantize_row_q8_0_ref` / `q8_1_ref`: `id = 1 / d`, half away from zero.
    Ref,
}

/// Quantizes one block to int8 with scale `amax / 127`. Returns the scale in f32 (before
/// its rounding to f16: Q8_1's `s` is computed from it) and the quants.
pub(super) fn quantize_block(x: &[f32], rounding: Q8Rounding) -> (f32, [i8; QK]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let mut qs = [0i8; QK];
    match rounding {
        Q8Rounding::Cpu => {
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round_ties_even() as i8;
            }
        }
        Q8Rounding::Ref => {
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round() as i8;
            }
        }
    }
    (d, qs)
}

fn quantize_with(src: &[f32], dst: &mut [u8], rounding: Q8Rounding) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let (d, qs) = quantize_block(x, rounding);
        write_block(
            dst,
            i,
            &BlockQ8_0 {
                d: f16::from_f32(d),
                qs,
            },
        );
    }
}

/// The activation quantizer of ggml's x86 CPU backend (the one the dots use).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_with(src, dst, Q8Rounding::Cpu);
}

/// ggml's `quantize_row_q8_0_ref` rounding (what `ggml_quantize_chunk` writes to files).
pub fn quantize_ggml_ref(src: &[f32], dst: &mut [u8]) {
    quantize_with(src, dst, Q8Rounding::Ref);
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK).enumerate() {
        let b: BlockQ8_0 = read_block(src, i);
        let d = b.d.to_f32();
        for (out, &q) in y.iter_mut().zip(&b.qs) {
            *out = q as f32 * d;
        }
    }
}

/// Weight row (Q8_0) · activation row (Q8_0): integer sum per block, one float multiply
/// by `dx * dy` per block, f32 accumulation.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    debug_assert_eq!(block_count::<BlockQ8_0>(w), n / QK);
    let mut sum = 0.0f32;
    for i in 0..n / QK {
        let x: BlockQ8_0 = read_block(w, i);
        let y: BlockQ8_0 = read_block(act, i);
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_equal_inverse_scales_only_ties_differ() {
        // amax 127 makes both inverse scales exactly 1, so only the tie rule differs.
        let mut x = [0.0f32; QK];
        x[..6].copy_from_slice(&[127.0, 2.5, -2.5, 3.5, 2.4, -0.5]);
        let (d, cpu) = quantize_block(&x, Q8Rounding::Cpu);
        let (_, by_ref) = quantize_block(&x, Q8Rounding::Ref);
        assert_eq!(d, 1.0);
        assert_eq!(cpu[..6], [127, 2, -2, 4, 2, 0]);
        assert_eq!(by_ref[..6], [127, 3, -3, 4, 2, -1]);
    }

    #[test]
    fn the_two_inverse_scales_can_round_differently() {
        // amax 0.3: 127/amax and 1/(amax/127) differ by one ulp, and this element lands
        // on 3.4999998 with the first and on 3.5 with the second.
        let mut x = [0.0f32; QK];
        x[0] = 0.3;
        x[1] = f32::from_bits(0x3C07_7551);
        assert_eq!(quantize_block(&x, Q8Rounding::Cpu).1[..2], [127, 3]);
        assert_eq!(quantize_block(&x, Q8Rounding::Ref).1[..2], [127, 4]);
    }

    #[test]
    fn round_trip_and_dot_of_a_ramp() {
        let x: Vec<f32> = (0..2 * QK).map(|j| (j as f32 - 31.0) * 0.25).collect();
        let mut q = [0u8; 68];
        quantize(&x, &mut q);
        let mut y = [f32::NAN; 2 * QK];
        dequantize(&q, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 7.75 / 127.0 * 0.5 + 1e-3, "{a} -> {b}");
        }
        let exact: f32 = y.iter().map(|v| v * v).sum();
        assert!((vec_dot(2 * QK, &q, &q) - exact).abs() <= 1e-5 * exact);
    }
}
