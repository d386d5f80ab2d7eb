//! The scalar models of ggml's AVX2 K-quant dot order (`cpu::scalar::ggml_order`)
//! against ggml's own `vec_dot` outputs in `tests/fixtures/quant` (made by an x86 build
//! of ggml, whose Q5_K / Q6_K dots take the AVX2 code): bit for bit, every row kind
//! (zeros, constants, outliers, tiny values) and every activation row.

mod common;

use common::*;
use kt_kernels::cpu::scalar::ggml_order::{
    hsum_float_8, vec_dot_q5_k_q8_k_ggml_order, vec_dot_q6_k_q8_k_ggml_order,
};
use kt_kernels::quant::{self, QType};

/// The fixture activations quantized to Q8_K by the reference quantizer (ggml's bytes,
/// checked by `quant_fixtures_kquants`).
fn q8k_activations() -> Vec<Vec<u8>> {
    let rb = QType::Q8_K.row_bytes(COLS).unwrap();
    activations()
        .chunks_exact(COLS)
        .map(|row| {
            let mut q = vec![0u8; rb];
            quant::quantize(QType::Q8_K, row, &mut q).unwrap();
            q
        })
        .collect()
}

/// Checks `model` against ggml's dots of `t` bit for bit; returns how many of them the
/// plain reference (exact super-block sums, one f32 accumulator) gets bit for bit, so
/// a test can show that the fixture tells the two orders apart.
fn check_bits(t: QType, model: fn(usize, &[u8], &[u8]) -> f32) -> usize {
    let w = ggml_quant(t);
    let rb = t.row_bytes(COLS).unwrap();
    let want = ggml_dot(t);
    let acts = q8k_activations();
    let mut reference_exact = 0;
    for r in 0..ROWS {
        let row = &w[r * rb..(r + 1) * rb];
        for (a, act) in acts.iter().enumerate() {
            let got = model(COLS, row, act);
            let expect = want[r * ACT_ROWS + a];
            assert_eq!(
                got.to_bits(),
                expect.to_bits(),
                "{t} row {r} (kind {}) act {a}: model {got:e}, ggml {expect:e}",
                r % 8
            );
            let plain = quant::vec_dot(t, COLS, row, act).unwrap();
            reference_exact += usize::from(plain.to_bits() == expect.to_bits());
        }
    }
    reference_exact
}

#[test]
fn q5_k_model_is_ggmls_dot_bit_for_bit() {
    let plain = check_bits(QType::Q5_K, vec_dot_q5_k_q8_k_ggml_order);
    eprintln!("Q5_K: the plain reference matches {plain} of {} ggml dots", ROWS * ACT_ROWS);
    assert!(plain < ROWS * ACT_ROWS, "the fixture does not tell the orders apart");
}

#[test]
fn q6_k_model_is_ggmls_dot_bit_for_bit() {
    let plain = check_bits(QType::Q6_K, vec_dot_q6_k_q8_k_ggml_order);
    eprintln!("Q6_K: the plain reference matches {plain} of {} ggml dots", ROWS * ACT_ROWS);
    assert!(plain < ROWS * ACT_ROWS, "the fixture does not tell the orders apart");
}

#[test]
fn hsum_float_8_adds_halves_then_pairs() {
    // 1 + 2^-24 lies halfway between two f32: which values meet first decides.
    let tiny = f32::EPSILON / 2.0;
    let y = [tiny, tiny, tiny, tiny, 1.0, tiny, tiny, tiny];
    // Halves: [1 + tiny -> 1 (to even), 2 tiny, 2 tiny, 2 tiny]; then
    // (1 + 2 tiny) + (2 tiny + 2 tiny) = 1 + 6 tiny, exact.
    assert_eq!(hsum_float_8(y), 1.0 + 6.0 * tiny);
    // In lane order the four leading tinies sum exactly to 4 tiny and each later one
    // is lost to rounding to even: 1 + 4 tiny.
    assert_eq!(y.iter().sum::<f32>(), 1.0 + 4.0 * tiny);
}
