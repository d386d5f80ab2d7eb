//! ggml's AVX2 f32 order of the Q5_K, Q6_K, Q4_1 and Q5_1 dot products, bit for bit:
//!
//! - the scalar models (`cpu::scalar::ggml_order`) against ggml's own `vec_dot` outputs
//!   in `tests/fixtures/quant` (made by an x86 build of ggml, whose dots take the AVX2
//!   code; the FMA of the minimums' sum shows there): every row kind (zeros,
//!   constants, outliers, tiny values) and every activation row;
//! - every SIMD backend this CPU runs (AVX2, AVX512, AMX) against the models, on the
//!   fixtures and on random blocks (every quant and sub-scale bit pattern) over shapes
//!   that hit every register tile and the one-token GEMV, outputs poisoned with NaN.

mod common;

use common::*;
use kt_kernels::cpu::scalar::ggml_order::{
    hsum_float_8, vec_dot_q4_1_q8_1_ggml_order, vec_dot_q4_k_q8_k_repack_order,
    vec_dot_q5_1_q8_1_ggml_order, vec_dot_q5_k_q8_k_ggml_order, vec_dot_q6_k_q8_k_ggml_order,
};
use kt_kernels::cpu::{
    kquant_order, matmul_quantized_with, quantize_activations_with, Isa, KquantOrder, ThreadPool,
};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;
use std::sync::OnceLock;

/// The fixture activations quantized to `t`'s activation type by the reference
/// quantizer (ggml's bytes, checked by the `quant_fixtures_*` tests).
fn fixture_activations(t: QType) -> Vec<Vec<u8>> {
    let act = t.vec_dot_type();
    let rb = act.row_bytes(COLS).unwrap();
    activations()
        .chunks_exact(COLS)
        .map(|row| {
            let mut q = vec![0u8; rb];
            quant::quantize(act, row, &mut q).unwrap();
            q
        })
        .collect()
}

/// Checks `model` against ggml's dots of `t` bit for bit, and that the plain reference
/// (exact super-block sums, one f32 accumulator) misses some of them: the fixture tells
/// the two orders apart.
fn check_bits(t: QType, model: fn(usize, &[u8], &[u8]) -> f32) {
    let w = ggml_quant(t);
    let rb = t.row_bytes(COLS).unwrap();
    let want = ggml_dot(t);
    let acts = fixture_activations(t);
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
    let total = ROWS * ACT_ROWS;
    eprintln!("{t}: the plain reference matches {reference_exact} of {total} ggml dots");
    assert!(
        reference_exact < total,
        "{t}: the fixture does not tell the orders apart"
    );
}

#[test]
fn q5_k_model_is_ggmls_dot_bit_for_bit() {
    check_bits(QType::Q5_K, vec_dot_q5_k_q8_k_ggml_order);
}

#[test]
fn q6_k_model_is_ggmls_dot_bit_for_bit() {
    check_bits(QType::Q6_K, vec_dot_q6_k_q8_k_ggml_order);
}

#[test]
fn q4_1_model_is_ggmls_dot_bit_for_bit() {
    check_bits(QType::Q4_1, vec_dot_q4_1_q8_1_ggml_order);
}

#[test]
fn q5_1_model_is_ggmls_dot_bit_for_bit() {
    check_bits(QType::Q5_1, vec_dot_q5_1_q8_1_ggml_order);
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

fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(2).expect("a 2-thread pool"))
}

/// The ggml-order model of `t`.
fn model(t: QType) -> fn(usize, &[u8], &[u8]) -> f32 {
    match t {
        QType::Q5_K => vec_dot_q5_k_q8_k_ggml_order,
        QType::Q6_K => vec_dot_q6_k_q8_k_ggml_order,
        QType::Q4_1 => vec_dot_q4_1_q8_1_ggml_order,
        QType::Q4_K => vec_dot_q4_k_q8_k_repack_order,
        QType::Q5_1 => vec_dot_q5_1_q8_1_ggml_order,
        other => unreachable!("no ggml-order model of {other}"),
    }
}

/// Switches llama.cpp's order on for the AVX512 K-quant kernels (`KT_KQUANT_ORDER=ggml`,
/// read once per process): every kernel check of this file calls it before its first kernel
/// call, so whichever thread builds the first kernel table sees it.
fn ggml_order_on() {
    std::env::set_var("KT_KQUANT_ORDER", "ggml");
    assert_eq!(kquant_order().unwrap(), KquantOrder::Ggml);
}

/// The SIMD backends this CPU runs.
fn simd_isas() -> Vec<Isa> {
    let isas: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|&i| i >= Isa::Avx2)
        .collect();
    if isas.is_empty() {
        eprintln!("skipping: this CPU runs no SIMD backend");
    }
    isas
}

/// Every SIMD backend's `[tokens, rows]` product of `w` with `x` equals the model's
/// dots bit for bit.
fn check_kernels(t: QType, w: &[u8], rows: usize, k: usize, x: &[f32], tokens: usize, what: &str) {
    ggml_order_on();
    let rb = t.row_bytes(k).unwrap();
    let ab = t.vec_dot_type().row_bytes(k).unwrap();
    let mut xq_ref = vec![0u8; tokens * ab];
    quantize_activations_with(Isa::Scalar, pool(), t, x, k, tokens, &mut xq_ref).unwrap();
    let f = model(t);
    // The scalar backend runs the models themselves (with the order switched on): checked
    // too, so its table entries are.
    for isa in std::iter::once(Isa::Scalar).chain(simd_isas()) {
        if t == QType::Q4_K && isa == Isa::Amx {
            // AMX's Q4_K GEMM (12 tokens and more) has an order of its own, not ggml's;
            // with fewer tokens it is the AVX512 table's kernel, checked above.
            continue;
        }
        let mut xq = vec![0u8; tokens * ab];
        quantize_activations_with(isa, pool(), t, x, k, tokens, &mut xq).unwrap();
        assert!(
            xq == xq_ref,
            "{isa:?} {t}: activation bytes differ from the reference"
        );
        let mut out = poisoned(tokens * rows);
        matmul_quantized_with(isa, pool(), t, w, rows, k, &xq, tokens, &mut out).unwrap();
        for tk in 0..tokens {
            for r in 0..rows {
                let want = f(k, &w[r * rb..(r + 1) * rb], &xq[tk * ab..(tk + 1) * ab]);
                let got = out[tk * rows + r];
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{isa:?} {t} {what}: token {tk} row {r}: kernel {got:e}, ggml order {want:e}"
                );
            }
        }
    }
}

#[test]
fn kernels_follow_the_models_on_the_fixtures() {
    for t in [
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
        QType::Q4_1,
        QType::Q5_1,
    ] {
        let x = activations();
        // One token (the GEMV), then all four.
        check_kernels(t, &ggml_quant(t), ROWS, COLS, &x[..COLS], 1, "fixture");
        check_kernels(t, &ggml_quant(t), ROWS, COLS, &x, ACT_ROWS, "fixture");
    }
}

/// Random activation rows: normal values with a random scale per token.
fn random_activations(tokens: usize, k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut x = vec![0f32; tokens * k];
    for row in x.chunks_exact_mut(k) {
        let scale = rng.uniform(0.01, 10.0);
        rng.fill_normal(row, scale);
    }
    x
}

fn check_random(t: QType, k: usize, rows: usize, tokens: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let w = random_weights(t, rows, k, &mut rng);
    let x = random_activations(tokens, k, &mut rng);
    check_kernels(
        t,
        &w,
        rows,
        k,
        &x,
        tokens,
        &format!("k {k} rows {rows} seed {seed}"),
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn q5_k_kernels_follow_ggmls_order(
        k in prop::sample::select(&[256usize, 512, 2048][..]),
        rows in 1usize..=40,
        tokens in 1usize..=40,
        seed in any::<u64>(),
    ) {
        check_random(QType::Q5_K, k, rows, tokens, seed);
    }

    #[test]
    fn q4_1_and_q5_1_kernels_follow_ggmls_order(
        five in any::<bool>(),
        k in prop::sample::select(&[32usize, 64, 96, 1024][..]),
        rows in 1usize..=40,
        tokens in 1usize..=40,
        seed in any::<u64>(),
    ) {
        let t = if five { QType::Q5_1 } else { QType::Q4_1 };
        check_random(t, k, rows, tokens, seed);
    }

    #[test]
    fn q4_k_kernels_follow_the_repack_order(
        k in prop::sample::select(&[256usize, 512, 2048][..]),
        rows in 1usize..=40,
        tokens in 1usize..=40,
        seed in any::<u64>(),
    ) {
        check_random(QType::Q4_K, k, rows, tokens, seed);
    }

    #[test]
    fn q6_k_kernels_follow_ggmls_order(
        k in prop::sample::select(&[256usize, 512, 2048][..]),
        rows in 1usize..=40,
        tokens in 1usize..=40,
        seed in any::<u64>(),
    ) {
        check_random(QType::Q6_K, k, rows, tokens, seed);
    }
}

/// Every GEMV token count (1..=8) over rows that need every register tile.
#[test]
fn gemv_token_counts_follow_ggmls_order() {
    for t in [
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
        QType::Q4_1,
        QType::Q5_1,
    ] {
        for tokens in 1..=8 {
            check_random(t, 512, 37, tokens, 7 + tokens as u64);
        }
    }
}

/// Many tokens with a K longer than the AVX512 kernel's unpacked scratch (32 super-blocks):
/// the path that unpacks per register tile.
#[test]
fn long_k_gemm_follows_ggmls_order() {
    for t in [QType::Q4_K, QType::Q5_K, QType::Q6_K] {
        check_random(t, 33 * 256, 5, 13, 99);
    }
}
