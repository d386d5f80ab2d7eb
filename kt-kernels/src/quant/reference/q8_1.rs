//! Q8_1 scalar reference: Q8_0 plus `s = d * sum(q)` per block, the activation format of
//! the Q4_1 / Q5_1 dots (`s` carries the weights' minimum term). No dot of its own.
//!
//! ggml computes `s` from the f32 scale (before its rounding to f16) times the integer
//! sum of the quants, then rounds the product to f16 (the fixture dots confirm it: `s`
//! taken from the f16 scale misses them by more than 1e-5). Rounding follows the same choice
//! as Q8_0 (see `q8_0.rs`): [`quantize`] is ggml's x86 CPU `from_float`,
//! [`quantize_ggml_ref`] is `quantize_row_q8_1_ref`.

use half::f16;

use super::q8_0::{quantize_block, Q8Rounding};
use crate::quant::blocks::{read_block, write_block, BlockQ8_1};
use crate::quant::QK;

fn quantize_with(src: &[f32], dst: &mut [u8], rounding: Q8Rounding) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let (d, qs) = quantize_block(x, rounding);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        let s = f16::from_f32(sum as f32 * d);
        write_block(
            dst,
            i,
            &BlockQ8_1 {
                d: f16::from_f32(d),
                s,
                qs,
            },
        );
    }
}

/// The activation quantizer of ggml's x86 CPU backend (the one the dots use).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_with(src, dst, Q8Rounding::Cpu);
}

/// ggml's `quantize_row_q8_1_ref` rounding.
pub fn quantize_ggml_ref(src: &[f32], dst: &mut [u8]) {
    quantize_with(src, dst, Q8Rounding::Ref);
}

/// `w = d * q` (`s` is redundant for dequantization).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK).enumerate() {
        let b: BlockQ8_1 = read_block(src, i);
        let d = b.d.to_f32();
        for (out, &q) in y.iter_mut().zip(&b.qs) {
            *out = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_is_the_f32_scale_times_the_sum_of_quants() {
        // amax 1.0: d = 1/127 is not an f16, and with 31 elements at level 31 (sum 1088)
        // f16(d * sum) = 8.5703125 differs from f16(f16(d) * sum) = 8.5625.
        let x: Vec<f32> = (0..QK).map(|j| if j == 0 { 1.0 } else { 0.244 }).collect();
        let mut q = [0u8; 36];
        quantize(&x, &mut q);
        let b: BlockQ8_1 = read_block(&q, 0);
        let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
        assert_eq!(sum, 127 + 31 * 31);
        assert_eq!(b.s, f16::from_f32(sum as f32 * (1.0f32 / 127.0)));
        assert_ne!(b.s, f16::from_f32(sum as f32 * b.d.to_f32()));
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y[1], 31.0 * b.d.to_f32());
    }
}
