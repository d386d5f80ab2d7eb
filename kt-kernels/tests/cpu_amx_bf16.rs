//! The AMX BF16 GEMM (`cpu/amx/bf16.rs`, `tdpbf16ps`) against the scalar backend: token
//! counts on both sides of its threshold and past one 32-token block, rows around the
//! 16-row tiles, K around the 32-element steps (odd K: the zero-padded last step) and
//! past one transposed K chunk (2048 elements: the C tiles reloaded from the output).
//!
//! Every test skips (saying so) when this CPU has no AMX.

mod common;

use std::sync::OnceLock;

use common::poisoned;
use half::bf16;
use kt_kernels::cpu::dispatch::{self, GemmTile};
use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;

fn amx_here(test: &str) -> bool {
    let here = Isa::available().contains(&Isa::Amx);
    if !here {
        eprintln!("{test}: skipped, this CPU has no AMX");
    }
    here
}

fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(2).expect("2-thread pool"))
}

/// Random bf16 weight rows of varied scale (no row all zero).
fn weights(rows: usize, k: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut w = Vec::with_capacity(rows * k * 2);
    for r in 0..rows {
        let scale = [1.0f32, 0.01, 40.0][r % 3];
        for _ in 0..k {
            w.extend(bf16::from_f32(scale * rng.normal()).to_le_bytes());
        }
    }
    w
}

/// Random activations at varied scales, with an all-zero and a tiny token.
fn activations(tokens: usize, k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut x = Vec::with_capacity(tokens * k);
    for t in 0..tokens {
        let scale = match t % 7 {
            3 => 0.0,
            5 => 1e-6,
            _ => [0.1f32, 1.0, 30.0][rng.below(3)],
        };
        x.extend((0..k).map(|_| scale * rng.normal()));
    }
    x
}

/// `sum |w| |a|` over the bf16 values of weight row `r` and the bf16-rounded token `t`.
fn magnitude(w: &[u8], x: &[f32], k: usize, r: usize, t: usize) -> f64 {
    (0..k)
        .map(|i| {
            let wv = bf16::from_le_bytes([w[2 * (r * k + i)], w[2 * (r * k + i) + 1]]).to_f32();
            let av = bf16::from_f32(x[t * k + i]).to_f32();
            (wv.abs() * av.abs()) as f64
        })
        .sum()
}

/// `got` (tokens x rows) against the scalar backend's f64 sums. `tdpbf16ps` adds the K
/// products one after the other into an f32 (each product of two bf16 is exact in f32),
/// so each of the K additions may round by half an ulp of a partial sum, itself at most
/// `sum |w| |a|`: the error is at most (K + 1) * 2^-24 of that magnitude.
fn assert_matches_scalar(what: &str, w: &[u8], x: &[f32], rows: usize, k: usize, got: &[f32]) {
    let tokens = x.len() / k;
    let mut want = poisoned(tokens * rows);
    cpu::matmul_with(Isa::Scalar, pool(), QType::BF16, w, rows, k, x, tokens, &mut want).unwrap();
    let u = f64::from(f32::EPSILON) / 2.0;
    for t in 0..tokens {
        for r in 0..rows {
            let (g, s) = (got[t * rows + r], want[t * rows + r]);
            let tol = (k as f64 + 1.0) * u * magnitude(w, x, k, r, t) + 1e-30;
            assert!(
                g.is_finite() && ((g - s).abs() as f64) <= tol,
                "{what}: token {t} row {r}: got {g}, want {s} (|diff| {}, tol {tol})",
                (g - s).abs()
            );
        }
    }
}

fn check(rows: usize, k: usize, tokens: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let w = weights(rows, k, &mut rng);
    let x = activations(tokens, k, &mut rng);
    let mut got = poisoned(tokens * rows);
    cpu::matmul_with(Isa::Amx, pool(), QType::BF16, &w, rows, k, &x, tokens, &mut got).unwrap();
    let what = format!("bf16 amx rows {rows} k {k} tokens {tokens}");
    assert_matches_scalar(&what, &w, &x, rows, k, &got);
}

#[test]
fn the_amx_table_runs_bf16_on_amx() {
    if !amx_here("the_amx_table_runs_bf16_on_amx") {
        return;
    }
    let k = dispatch::table(Isa::Amx).unwrap().get(QType::BF16).unwrap();
    assert_eq!(k.gemm_isa, Isa::Amx);
}

/// K lengths around the 32-element steps and the 2048-element chunks.
const KS: [usize; 12] = [1, 2, 31, 32, 33, 64, 97, 1000, 2047, 2048, 2049, 4133];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn bf16_gemm_matches_scalar(kp in 0usize..KS.len(), rows in 1usize..=70,
                                tp in 1usize..=18, seed in any::<u64>()) {
        if amx_here("bf16_gemm_matches_scalar") {
            // 1..=17 tokens (the AVX512 kernel below 9, AMX from 9), or 513.
            let tokens = if tp == 18 { 513 } else { tp };
            check(rows, KS[kp], tokens, seed);
        }
    }
}

/// Every block edge deterministically: token halves (9, 16, 17, 31, 32, 33, 513), row
/// halves (1, 15, 16, 17, 32, 33) and K steps and chunks.
#[test]
fn every_block_edge_matches_scalar() {
    if !amx_here("every_block_edge_matches_scalar") {
        return;
    }
    for (rows, k, tokens) in [
        (1, 32, 9),
        (15, 33, 16),
        (16, 31, 17),
        (17, 64, 31),
        (32, 1, 32),
        (33, 2049, 33),
        (47, 4133, 40),
        (130, 256, 513),
    ] {
        check(rows, k, tokens, (rows * 1009 + k * 7 + tokens) as u64);
    }
}

/// One tile through the table's `gemm` directly, inside a larger NaN-poisoned output
/// (`ldo` > rows, an offset): more rows and tokens than the driver's items, K over
/// several chunks ending in a partial step; elements outside the tile stay untouched.
#[test]
fn one_large_tile_leaves_the_rest_of_the_output_alone() {
    if !amx_here("one_large_tile_leaves_the_rest_of_the_output_alone") {
        return;
    }
    let (rows, tokens, k, ldo, off) = (203, 37, 4133, 211, 3);
    let mut rng = SplitMix64::new(77);
    let w = weights(rows, k, &mut rng);
    let x = activations(tokens, k, &mut rng);
    let act_row = cpu::act_row_bytes(QType::BF16, k).unwrap();
    let mut xq = vec![0u8; tokens * act_row];
    cpu::quantize_activations_with(Isa::Amx, pool(), QType::BF16, &x, k, tokens, &mut xq).unwrap();
    let mut big = poisoned(off + tokens * ldo);
    let tile = GemmTile {
        qtype: QType::BF16,
        k,
        w: w.as_ptr(),
        w_stride: 2 * k,
        rows,
        a: xq.as_ptr(),
        a_stride: act_row,
        tokens,
        out: big[off..].as_mut_ptr(),
        ldo,
    };
    let kernels = dispatch::table(Isa::Amx).unwrap().get(QType::BF16).unwrap();
    // SAFETY: the tile describes the weights (rows x 2k bytes), the converted
    // activations (tokens x act_row) and output elements inside `big`; the AMX table
    // exists only when this CPU runs AMX (checked above).
    unsafe { (kernels.gemm)(&tile) };
    let mut got = vec![0f32; tokens * rows];
    for (i, v) in big.iter().enumerate() {
        let inside = i >= off && (i - off) % ldo < rows && (i - off) / ldo < tokens;
        if inside {
            got[(i - off) / ldo * rows + (i - off) % ldo] = *v;
        } else {
            assert!(v.is_nan(), "element {i} outside the tile was written");
        }
    }
    assert_matches_scalar("bf16 amx one tile", &w, &x, rows, k, &got);
}
