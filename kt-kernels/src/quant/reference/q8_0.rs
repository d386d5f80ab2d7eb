//! Q8_0 scalar reference: blocks of 32 int8 `q` with one f16 scale, `w = d * q`. Q8_0 is
//! both a weight format and the activation format of the Q4_0 / Q5_0 / Q8_0 dots.
//!
//! ggml has two Q8_0 quantizers that differ only in rounding: the `_ref` one written into
//! model files (inverse scale `1 / d`, `roundf`: half away from zero) and the CPU
//! backend's `from_float` that quantizes activations before a dot (on x86: inverse scale
//! `127 / amax`, round half to even). A one-unit difference in one activation element
//! moves a dot by ~1e-4 relative, so the fixtures' dots tell the two apart:
//! `tests/quant_fixtures_small.rs` checks that the CPU variant reproduces every fixture
//! dot within 1e-5 and that the `_ref` variant does not. [`quantize`] therefore follows
//! the CPU variant (what kt's matmul needs for ggml-identical activations);
//! [`quantize_ggml_ref`] keeps the `_ref` rounding, which reproduces ggml's Q8_0 model
//! files byte for byte.

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
