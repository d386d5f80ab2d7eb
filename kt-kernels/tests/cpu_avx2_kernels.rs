//! The AVX2 backend against ggml's fixtures and against the scalar backend.
//!
//! - Activation quantizers: the AVX2 bytes equal ggml's (`q8_K.quant` is ggml's Q8_K of
//!   `weights.f32`) and the reference quantizer's, byte for byte, on random rows and on
//!   all-zero, tiny, huge and non-finite rows.
//! - Kernels: `matmul_with(Isa::Avx2)` equals ggml's fixture dots and
//!   `matmul_with(Isa::Scalar)` within 1e-5 of the pair's `sum |w| * |a|` (exact integer
//!   sums in both; only the order of the f32 scale products differs), over random weight
//!   blocks and shapes that hit every register-tile edge, with NaN-poisoned outputs.
//!
//! Everything is skipped (with a message) on a CPU without AVX2 + FMA + F16C.

mod common;

use std::sync::OnceLock;

use kt_kernels::cpu::{
    matmul_quantized_with, matmul_with, quantize_activations_with, Isa, ThreadPool,
};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;

use common::*;

fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(2).expect("a 2-thread pool"))
}

fn have_avx2() -> bool {
    match Isa::Avx2.check() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping the AVX2 kernel tests: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------------
// Test data.

/// `tokens` activation rows of `k` elements: normal values with a per-token scale, one
/// all-zero token when there are several, and a token of tiny values when there are
/// more than two.
fn random_activations(tokens: usize, k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut x = vec![0f32; tokens * k];
    for (t, row) in x.chunks_exact_mut(k).enumerate() {
        let scale = match t {
            1 => 0.0,
            2 => 1e-7,
            _ => rng.uniform(0.1, 10.0),
        };
        rng.fill_normal(row, scale);
    }
    x
}

/// `sum_c |W[r,c]| * |A[t,c]|` of the dequantized weights and the dequantized quantized
/// activations, laid out as the output: the scale the f32 rounding error is relative to.
fn magnitudes(t: QType, w: &[u8], rows: usize, k: usize, xq: &[u8], tokens: usize) -> Vec<f64> {
    let act = t.vec_dot_type();
    let mut wf = vec![0f32; rows * k];
    quant::dequantize(t, w, &mut wf).unwrap();
    let mut af = vec![0f32; tokens * k];
    quant::dequantize(act, xq, &mut af).unwrap();
    let mut m = vec![0f64; rows * tokens];
    for tk in 0..tokens {
        for r in 0..rows {
            m[tk * rows + r] = wf[r * k..(r + 1) * k]
                .iter()
                .zip(&af[tk * k..(tk + 1) * k])
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
        }
    }
    m
}

fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f64], rows: usize) {
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-5 * m + 1e-30;
        assert!(
            (g as f64 - w as f64).abs() <= tol,
            "{what}: token {} row {}: got {g}, want {w} (|w|.|a| = {m:e})",
            i / rows,
            i % rows
        );
    }
}

#[test]
fn every_weight_format_has_an_avx2_kernel() {
    if !have_avx2() {
        return;
    }
    let table = kt_kernels::cpu::dispatch::table(Isa::Avx2).unwrap();
    for t in QType::WEIGHTS {
        let k = table.get(t).unwrap();
        assert_eq!(k.gemm_isa, Isa::Avx2, "{t}");
        assert_eq!(k.act, t.vec_dot_type(), "{t}");
    }
}

// ---------------------------------------------------------------------------------
// Against ggml's fixtures.

#[test]
fn q8_k_quantizer_reproduces_ggml_bytes() {
    if !have_avx2() {
        return;
    }
    let x = weights();
    let want = ggml_quant(QType::Q8_K);
    let mut got = vec![0xA5u8; want.len()];
    quantize_activations_with(Isa::Avx2, pool(), QType::Q4_K, &x, COLS, ROWS, &mut got).unwrap();
    const BLOCK: usize = 292;
    for (b, (g, w)) in got
        .chunks_exact(BLOCK)
        .zip(want.chunks_exact(BLOCK))
        .enumerate()
    {
        let (row, kind) = (b / (COLS / 256), b / (COLS / 256) % 8);
        assert_eq!(
            g[..260],
            w[..260],
            "d and qs of block {b} (weights.f32 row {row}, kind {kind})"
        );
        // ggml leaves the bsums of an all-zero block unwritten (the fixture holds
        // whatever its buffer held); kt writes zeros there.
        let zero_block = x[b * 256..(b + 1) * 256].iter().all(|&v| v == 0.0);
        let want_bsums = if zero_block {
            &[0u8; 32][..]
        } else {
            &w[260..]
        };
        assert_eq!(
            &g[260..],
            want_bsums,
            "bsums of block {b} (weights.f32 row {row}, kind {kind})"
        );
    }
}

/// ggml's dot of every fixture weight row with every fixture activation row quantized
/// by the AVX2 quantizer.
fn check_fixture_dots(t: QType) {
    if !have_avx2() {
        return;
    }
    let w = ggml_quant(t);
    let x = activations();
    let act_row = t.vec_dot_type().row_bytes(COLS).unwrap();
    let mut xq = vec![0u8; ACT_ROWS * act_row];
    quantize_activations_with(Isa::Avx2, pool(), t, &x, COLS, ACT_ROWS, &mut xq).unwrap();
    let mut out = poisoned(ROWS * ACT_ROWS);
    matmul_quantized_with(
        Isa::Avx2,
        pool(),
        t,
        &w,
        ROWS,
        COLS,
        &xq,
        ACT_ROWS,
        &mut out,
    )
    .unwrap();
    // ggml's layout is [row][token], ours [token][row].
    let dots = ggml_dot(t);
    let want: Vec<f32> = (0..ACT_ROWS * ROWS)
        .map(|i| dots[(i % ROWS) * ACT_ROWS + i / ROWS])
        .collect();
    let wf = ggml_dequant(t);
    let mag: Vec<f64> = (0..ACT_ROWS * ROWS)
        .map(|i| {
            let (tk, r) = (i / ROWS, i % ROWS);
            wf[r * COLS..(r + 1) * COLS]
                .iter()
                .zip(&x[tk * COLS..(tk + 1) * COLS])
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum()
        })
        .collect();
    assert_close(&format!("{t} vs ggml"), &out, &want, &mag, ROWS);
}

#[test]
fn k_quants_match_ggml_dots() {
    for t in [
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
    ] {
        check_fixture_dots(t);
    }
}

#[test]
fn small_blocks_and_floats_match_ggml_dots() {
    for t in [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::F16,
        QType::BF16,
    ] {
        check_fixture_dots(t);
    }
}

// ---------------------------------------------------------------------------------
// Activation quantizers against the reference, byte for byte.

/// Rows that stress a quantizer: random scales, all zeros, tiny, denormal, huge,
/// exact rounding ties, repeated maxima of both signs, and NaN / infinite entries.
fn quantizer_rows(k: usize, rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for scale in [1.0, 1e-3, 1e3, 1e-20, 1e20] {
        let mut r = vec![0f32; k];
        rng.fill_normal(&mut r, scale);
        rows.push(r);
    }
    rows.push(vec![0.0; k]);
    rows.push(
        (0..k)
            .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
            .collect(),
    );
    rows.push((0..k).map(|_| 1e-39 * rng.normal()).collect()); // denormals only
    rows.push((0..k).map(|_| 1e-45 * (rng.below(3) as f32)).collect()); // smallest denormal
                                                                        // Ties: the maximum maps to an integer scale, the rest land on .5 exactly.
    rows.push(
        (0..k)
            .map(|i| {
                if i % 32 == 5 {
                    127.0
                } else {
                    (i % 64) as f32 - 31.5
                }
            })
            .collect(),
    );
    rows.push(
        (0..k)
            .map(|i| {
                if i % 7 == 0 {
                    -2.5
                } else if i % 7 == 1 {
                    2.5
                } else {
                    0.5 * rng.normal()
                }
            })
            .collect(),
    );
    let mut special = vec![0f32; k];
    rng.fill_normal(&mut special, 1.0);
    special[3 % k] = f32::NAN;
    rows.push(special.clone());
    special[k / 2] = f32::INFINITY;
    rows.push(special.clone());
    special[k - 1] = f32::NEG_INFINITY;
    rows.push(special);
    rows.push(vec![f32::NAN; k]);
    rows
}

fn check_quantizer(weight_type: QType, k: usize) {
    if !have_avx2() {
        return;
    }
    let act = weight_type.vec_dot_type();
    let mut rng = SplitMix64::new(11 + k as u64);
    for (i, row) in quantizer_rows(k, &mut rng).iter().enumerate() {
        let n = act.row_bytes(k).unwrap();
        let mut want = vec![0x5Au8; n];
        kt_kernels::quant::reference::quantize(act, row, &mut want);
        let mut got = vec![0xA5u8; n];
        quantize_activations_with(Isa::Avx2, pool(), weight_type, row, k, 1, &mut got).unwrap();
        assert_eq!(got, want, "{act} quantizer, stress row {i}, k = {k}");
    }
}

#[test]
fn q8_k_quantizer_matches_reference_bytes() {
    for k in [256, 512, 7 * 256] {
        check_quantizer(QType::Q4_K, k);
    }
}

#[test]
fn q8_0_and_q8_1_quantizers_match_reference_bytes() {
    for k in [32, 64, 96, 1408] {
        check_quantizer(QType::Q4_0, k);
        check_quantizer(QType::Q4_1, k);
    }
}

#[test]
fn float_activation_converters_match_reference_bytes() {
    for k in [1, 7, 33, 1408] {
        for t in [QType::F32, QType::F16, QType::BF16] {
            check_quantizer(t, k);
        }
    }
}

// ---------------------------------------------------------------------------------
// Kernels against the scalar backend.

const K_QUANT_KS: [usize; 4] = [256, 512, 7 * 256, 28 * 256];
const SMALL_BLOCK_KS: [usize; 4] = [32, 64, 96, 1408];
/// Float rows have no blocks: odd lengths exercise the zero-padded last group.
const FLOAT_KS: [usize; 6] = [1, 7, 32, 33, 96, 1408];

/// `matmul_with(Isa::Avx2)` against `matmul_with(Isa::Scalar)` on one random problem;
/// the quantized activations of both ISAs must be identical too.
fn check_vs_scalar(t: QType, k: usize, rows: usize, tokens: usize, seed: u64) {
    if !have_avx2() {
        return;
    }
    let mut rng = SplitMix64::new(seed);
    let w = random_weights(t, rows, k, &mut rng);
    let x = random_activations(tokens, k, &mut rng);
    let act_row = t.vec_dot_type().row_bytes(k).unwrap();
    let (mut xq_fast, mut xq_ref) = (vec![0u8; tokens * act_row], vec![0u8; tokens * act_row]);
    quantize_activations_with(Isa::Avx2, pool(), t, &x, k, tokens, &mut xq_fast).unwrap();
    quantize_activations_with(Isa::Scalar, pool(), t, &x, k, tokens, &mut xq_ref).unwrap();
    assert!(
        xq_fast == xq_ref,
        "{t}: AVX2 and scalar activation bytes differ (k {k}, tokens {tokens})"
    );

    let mut got = poisoned(rows * tokens);
    matmul_with(Isa::Avx2, pool(), t, &w, rows, k, &x, tokens, &mut got).unwrap();
    let mut want = poisoned(rows * tokens);
    matmul_with(Isa::Scalar, pool(), t, &w, rows, k, &x, tokens, &mut want).unwrap();
    let mag = magnitudes(t, &w, rows, k, &xq_ref, tokens);
    assert_close(
        &format!("{t} k {k} rows {rows} tokens {tokens} seed {seed}"),
        &got,
        &want,
        &mag,
        rows,
    );
}

macro_rules! vs_scalar {
    ($name:ident, $t:expr, $ks:expr, $cases:expr) => {
        vs_scalar!($name, $t, $ks, $cases, 1usize..=70);
    };
    ($name:ident, $t:expr, $ks:expr, $cases:expr, $tokens:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]
            #[test]
            fn $name(
                k in prop::sample::select(&$ks[..]),
                rows in 1usize..=70,
                tokens in $tokens,
                seed in any::<u64>(),
            ) {
                check_vs_scalar($t, k, rows, tokens, seed);
            }
        }
    };
}

vs_scalar!(q2_k_matches_scalar, QType::Q2_K, K_QUANT_KS, 16);
vs_scalar!(q3_k_matches_scalar, QType::Q3_K, K_QUANT_KS, 16);
vs_scalar!(q4_k_matches_scalar, QType::Q4_K, K_QUANT_KS, 24);
vs_scalar!(q5_k_matches_scalar, QType::Q5_K, K_QUANT_KS, 16);
vs_scalar!(q6_k_matches_scalar, QType::Q6_K, K_QUANT_KS, 16);
vs_scalar!(q8_0_matches_scalar, QType::Q8_0, SMALL_BLOCK_KS, 16);
vs_scalar!(q4_0_matches_scalar, QType::Q4_0, SMALL_BLOCK_KS, 16);
vs_scalar!(q4_1_matches_scalar, QType::Q4_1, SMALL_BLOCK_KS, 16);
vs_scalar!(q5_0_matches_scalar, QType::Q5_0, SMALL_BLOCK_KS, 16);
vs_scalar!(q5_1_matches_scalar, QType::Q5_1, SMALL_BLOCK_KS, 16);
vs_scalar!(f32_matches_scalar, QType::F32, FLOAT_KS, 16);
vs_scalar!(f16_matches_scalar, QType::F16, FLOAT_KS, 16);
vs_scalar!(bf16_matches_scalar, QType::BF16, FLOAT_KS, 16);

// GEMV token counts only (1..=8): the 8x1 .. 2x4 register tiles and the K-quants' 1x5 ..
// 1x8 ones, with the GEMV prefetch of later tiles' rows.
macro_rules! gemv_vs_scalar {
    ($name:ident, $t:expr, $ks:expr) => {
        vs_scalar!($name, $t, $ks, 16, 1usize..=8);
    };
}

gemv_vs_scalar!(q2_k_gemv_matches_scalar, QType::Q2_K, K_QUANT_KS);
gemv_vs_scalar!(q3_k_gemv_matches_scalar, QType::Q3_K, K_QUANT_KS);
gemv_vs_scalar!(q4_k_gemv_matches_scalar, QType::Q4_K, K_QUANT_KS);
gemv_vs_scalar!(q5_k_gemv_matches_scalar, QType::Q5_K, K_QUANT_KS);
gemv_vs_scalar!(q6_k_gemv_matches_scalar, QType::Q6_K, K_QUANT_KS);
gemv_vs_scalar!(q4_0_gemv_matches_scalar, QType::Q4_0, SMALL_BLOCK_KS);
gemv_vs_scalar!(q4_1_gemv_matches_scalar, QType::Q4_1, SMALL_BLOCK_KS);
gemv_vs_scalar!(q5_0_gemv_matches_scalar, QType::Q5_0, SMALL_BLOCK_KS);
gemv_vs_scalar!(q8_0_gemv_matches_scalar, QType::Q8_0, SMALL_BLOCK_KS);
gemv_vs_scalar!(bf16_gemv_matches_scalar, QType::BF16, FLOAT_KS);
gemv_vs_scalar!(f32_gemv_matches_scalar, QType::F32, FLOAT_KS);

/// The one-token GEMV of Q4_0 / Q5_0 prepares its activation terms once per call for rows
/// of up to 576 blocks (k 18432) and falls back to the register tiles beyond: both sides of
/// that bound, with 8-row tiles and edge rows.
#[test]
fn offset_formats_one_token_at_the_prepared_row_bound_match_scalar() {
    for t in [QType::Q4_0, QType::Q5_0] {
        for (k, rows, seed) in [(576 * 32, 13, 1), (577 * 32, 11, 2), (64 * 32, 24, 3)] {
            check_vs_scalar(t, k, rows, 1, seed);
        }
    }
}

/// Q4_0 and Q5_0 blocks at their extremes (every quant 0 or every quant at its maximum)
/// against activations at +-127: the block sums the AVX2 kernel reduces as i16 words reach
/// their largest magnitude (16 products of 16 * 127 per word for Q5_0), where an overflow
/// would show as an error of 65536 * d.
#[test]
fn offset_blocks_at_their_extremes_match_scalar() {
    if !have_avx2() {
        return;
    }
    for t in [QType::Q4_0, QType::Q5_0] {
        // Both: the f16 d, then the quants (Q5_0: qh and qs) to the end of the block.
        let (block, qs) = (t.block_bytes(), 2);
        for (k, rows) in [(32, 8), (96, 13), (1408, 16)] {
            let mut w = vec![0u8; rows * t.row_bytes(k).unwrap()];
            for (i, b) in w.chunks_exact_mut(block).enumerate() {
                b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
                // Row-major blocks: all-max on odd rows, and on every third block.
                let row = i / (k / 32);
                let fill = if row % 2 == 1 || i % 3 == 0 { 0xff } else { 0 };
                b[qs..].fill(fill);
            }
            for tokens in 1..=4 {
                let mut x = vec![0f32; tokens * k];
                for (tk, row) in x.chunks_exact_mut(k).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = match tk {
                            0 => 1.0,
                            1 => -1.0,
                            2 => {
                                if j % 2 == 0 {
                                    1.0
                                } else {
                                    -1.0
                                }
                            }
                            _ => -0.5,
                        };
                    }
                }
                let mut got = poisoned(rows * tokens);
                matmul_with(Isa::Avx2, pool(), t, &w, rows, k, &x, tokens, &mut got).unwrap();
                let mut want = poisoned(rows * tokens);
                matmul_with(Isa::Scalar, pool(), t, &w, rows, k, &x, tokens, &mut want).unwrap();
                let act_row = t.vec_dot_type().row_bytes(k).unwrap();
                let mut xq = vec![0u8; tokens * act_row];
                quantize_activations_with(Isa::Scalar, pool(), t, &x, k, tokens, &mut xq).unwrap();
                let mag = magnitudes(t, &w, rows, k, &xq, tokens);
                assert_close(
                    &format!("{t} extremes k {k} rows {rows} tokens {tokens}"),
                    &got,
                    &want,
                    &mag,
                    rows,
                );
            }
        }
    }
}

/// Every GEMV token count (the driver's row-block tiles) over a few hundred rows.
#[test]
fn gemv_token_counts_match_scalar() {
    for t in QType::WEIGHTS {
        for tokens in 1..=8 {
            check_vs_scalar(t, 512, 300, tokens, 100 + tokens as u64);
        }
    }
}
