//! The op-test harness of the matmul, in the spirit of llama.cpp's test-backend-ops: each
//! case (format, shape, tokens) runs on every ISA this machine has and is compared with
//! the scalar backend (same quantized activations, so only summation order differs) and
//! with the f32 reference (which differs by the activation quantization).
//!
//! `cases()` is shared with the criterion bench through `kt_kernels::cpu::opcases`-style
//! shapes; here they stay small enough for CI.

mod common;

use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use kt_kernels::KtError;
use proptest::prelude::*;

/// Random weights quantized to `q`: rows of mixed kinds (normal, small, with outliers) so
/// scales vary from row to row, never all zero.
fn weights(q: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut f = vec![0f32; rows * cols];
    for (r, row) in f.chunks_mut(cols).enumerate() {
        let scale = [1.0, 0.02, 3.0][r % 3];
        rng.fill_normal(row, scale);
        if r % 5 == 4 {
            row[rng.below(cols)] *= 40.0;
        }
    }
    let mut w = vec![0u8; q.row_bytes(cols).unwrap() * rows];
    quant::quantize(q, &f, &mut w).unwrap();
    w
}

fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0xA5A5);
    let mut x = vec![0f32; tokens * cols];
    rng.fill_normal(&mut x, 1.0);
    x
}

/// Max over outputs of |a - b| / (|W row| · |x token|): the error relative to the scale of
/// the dot product, so rows whose dot cancels to ~0 are judged fairly.
#[allow(clippy::too_many_arguments)]
fn max_scaled_err(
    q: QType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    a: &[f32],
    b: &[f32],
) -> f64 {
    let rb = q.row_bytes(cols).unwrap();
    let mut wf = vec![0f32; cols];
    let mut worst = 0f64;
    for r in 0..rows {
        quant::dequantize(q, &w[r * rb..(r + 1) * rb], &mut wf).unwrap();
        let wn: f64 = wf.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        for t in 0..tokens {
            let xn: f64 = x[t * cols..(t + 1) * cols]
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let (va, vb) = (a[t * rows + r], b[t * rows + r]);
            assert!(
                va.is_finite() && vb.is_finite(),
                "{q} r{r} t{t}: non-finite output {va} / {vb}"
            );
            worst = worst.max((va as f64 - vb as f64).abs() / (wn * xn).max(1e-30));
        }
    }
    worst
}

/// Block-aligned column counts around block boundaries for `q`.
fn col_choices(q: QType) -> Vec<usize> {
    match q.block_elems() {
        256 => vec![256, 512, 768, 1792],
        32 => vec![32, 64, 96, 1408],
        _ => vec![1, 7, 32, 33, 300],
    }
}

fn run_case(
    isa: Isa,
    pool: &ThreadPool,
    q: QType,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
) {
    let w = weights(q, rows, cols, seed);
    let x = activations(tokens, cols, seed);
    let mut fast = common::poisoned(tokens * rows);
    let mut scalar = common::poisoned(tokens * rows);
    cpu::matmul_with(isa, pool, q, &w, rows, cols, &x, tokens, &mut fast).unwrap();
    cpu::matmul_with(
        Isa::Scalar,
        pool,
        q,
        &w,
        rows,
        cols,
        &x,
        tokens,
        &mut scalar,
    )
    .unwrap();
    // Same quantized activations, same integer sums: only float summation order differs.
    let e = max_scaled_err(q, &w, rows, cols, &x, tokens, &fast, &scalar);
    assert!(
        e <= 1e-5,
        "{isa} {q} {rows}x{cols} t{tokens}: scaled error vs scalar {e:e}"
    );

    // Against the f32 reference the difference is the activation quantization: Q8 keeps
    // ~1/254 of each block's max per element, bf16/f16 a relative 2^-8 / 2^-11.
    let mut reference = common::poisoned(tokens * rows);
    cpu::matmul_f32_reference(q, &w, rows, cols, &x, tokens, &mut reference).unwrap();
    let tol = match q.vec_dot_type() {
        QType::F32 => 1e-6,
        QType::F16 => 2e-3,
        _ => 1e-2,
    };
    let e = max_scaled_err(q, &w, rows, cols, &x, tokens, &fast, &reference);
    assert!(
        e <= tol,
        "{isa} {q} {rows}x{cols} t{tokens}: scaled error vs f32 reference {e:e} > {tol}"
    );
}

#[test]
fn every_format_on_every_isa_gemv_and_gemm_edges() {
    let pool = ThreadPool::new(2).unwrap();
    for isa in Isa::available() {
        for q in QType::WEIGHTS {
            for (i, &cols) in col_choices(q).iter().enumerate() {
                // Rows and tokens around tile edges; tokens 1..8 take the GEMV path, more the GEMM path.
                for &(rows, tokens) in &[(1, 1), (17, 1), (33, 3), (16, 9), (70, 13), (5, 70)] {
                    run_case(
                        isa,
                        &pool,
                        q,
                        rows,
                        cols,
                        tokens,
                        (i * 1000 + rows * 7 + tokens) as u64,
                    );
                }
            }
        }
    }
}

#[test]
fn successive_gemvs_on_several_threads_read_their_own_activations() {
    // GEMVs of one item a thread, one after another on one pool, each with other
    // activations: an item that read stale quantized activations (the previous call's, in
    // the per-thread scratch) or ran before they were written would miss the reference.
    for threads in [2, 3, 5, 8] {
        let pool = ThreadPool::new(threads).unwrap();
        for isa in Isa::available() {
            for (i, q) in [QType::Q4_K, QType::Q6_K, QType::Q8_0, QType::BF16]
                .into_iter()
                .enumerate()
            {
                for tokens in [1, 2, 8] {
                    for rep in 0..3 {
                        // an item a thread (rows / 16 >= threads), rows off the 4-row tile
                        let rows = 32 * threads + 4 * rep + 2;
                        let seed = (threads * 100 + i * 10 + tokens + 1000 * rep) as u64;
                        run_case(isa, &pool, q, rows, 512, tokens, seed);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes_match_scalar_on_every_isa(
        qi in 0usize..QType::WEIGHTS.len(),
        kb in 1usize..9,
        rows in 1usize..80,
        tokens in 1usize..80,
        seed in any::<u64>(),
    ) {
        let q = QType::WEIGHTS[qi];
        let cols = kb * q.block_elems().max(32);
        let pool = ThreadPool::new(2).unwrap();
        for isa in Isa::available() {
            run_case(isa, &pool, q, rows, cols, tokens, seed);
        }
    }
}

#[test]
fn the_global_entry_point_uses_the_selected_isa() {
    let (rows, cols, tokens) = (24, 512, 3);
    let w = weights(QType::Q4_K, rows, cols, 7);
    let x = activations(tokens, cols, 7);
    let mut out = common::poisoned(tokens * rows);
    cpu::matmul(QType::Q4_K, &w, rows, cols, &x, tokens, &mut out).unwrap();
    let mut reference = common::poisoned(tokens * rows);
    cpu::matmul_f32_reference(QType::Q4_K, &w, rows, cols, &x, tokens, &mut reference).unwrap();
    assert!(max_scaled_err(QType::Q4_K, &w, rows, cols, &x, tokens, &out, &reference) < 1e-2);
}

#[test]
fn bad_shapes_are_typed_errors() {
    let w = weights(QType::Q4_K, 4, 256, 1);
    let x = activations(2, 256, 1);
    let mut out = vec![0f32; 16];
    let e = cpu::matmul(QType::Q4_K, &w[..w.len() - 1], 4, 256, &x, 2, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            KtError::Length {
                what: "weights",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu::matmul(QType::Q4_K, &w, 4, 256, &x[..300], 2, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            KtError::Length {
                what: "activations x",
                ..
            }
        ),
        "{e}"
    );
    let e = cpu::matmul(QType::Q4_K, &w, 4, 256, &x, 2, &mut out[..7]).unwrap_err();
    assert!(matches!(e, KtError::Length { what: "output", .. }), "{e}");
    let e = cpu::matmul(QType::Q4_K, &w[..100], 1, 256, &x[..256], 1, &mut out[..1]).unwrap_err();
    assert!(
        e.to_string().contains("q4_K") && e.to_string().contains("144"),
        "{e}"
    );
    let e = cpu::matmul(QType::Q4_K, &w, 8, 128, &x, 2, &mut out[..16]).unwrap_err();
    assert!(
        matches!(
            e,
            KtError::NotBlockMultiple {
                len: 128,
                block: 256,
                ..
            }
        ),
        "{e}"
    );
    let e = cpu::matmul(
        QType::Q8_K,
        &[0u8; 292],
        1,
        256,
        &x[..256],
        1,
        &mut out[..1],
    )
    .unwrap_err();
    assert!(matches!(e, KtError::Unsupported { .. }), "{e}");
}

#[test]
fn an_isa_the_cpu_lacks_is_an_error_not_a_crash() {
    let pool = ThreadPool::new(1).unwrap();
    let w = weights(QType::Q8_0, 2, 64, 3);
    let x = activations(1, 64, 3);
    let mut out = vec![0f32; 2];
    for isa in Isa::ALL {
        let r = cpu::matmul_with(isa, &pool, QType::Q8_0, &w, 2, 64, &x, 1, &mut out);
        match isa.check() {
            Ok(()) => r.unwrap(),
            Err(_) => assert!(matches!(r, Err(KtError::IsaUnavailable { .. }))),
        }
    }
}
