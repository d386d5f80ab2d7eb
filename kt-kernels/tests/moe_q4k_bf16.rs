//! The dequantize-to-bf16 AMX path (`cpu/amx/dequant_gemm.rs`, Q4_K's dequantizer in
//! `cpu/amx/q4_k_bf16.rs`), which the MoE operator runs, when enabled
//! (`dispatch::set_bf16_gemm_enabled`, on for this whole test binary), for experts with
//! more than `GEMV_MAX_TOKENS` positions:
//! - the dequantizer: bit for bit the bf16 rounding (nearest-even) of the scalar
//!   dequantization, at a K offset, into a strided destination whose margins stay
//!   untouched;
//! - the GEMM on odd tiles (rows not a multiple of 16 and above the 128-row group, 1 to
//!   64 tokens, K over several 2048-element chunks) against the f64 dot of the same bf16
//!   operands, within the f32 accumulation bound `k 2^-24 sum |w a|`; NaN-poisoned output
//!   whose margins must stay NaN;
//! - the MoE operator on AMX against the f32 reference of the dequantized weights (no
//!   rounding at all), within a bound derived from the bf16 and Q8_K roundings
//!   (`moe_support::Q8_BF16_PATH_TOL`), and per element against the f64 model of its own
//!   arithmetic (`moe_support::expected_on`, a rigorous but wide bound), for T in
//!   {1, 2, 7, 64, 513} and k in {6, 8}, skewed routing, tokens listing one expert twice
//!   and experts no token chose; outputs start as NaN. `moe_correctness.rs` and
//!   `moe_q4k_amx.rs` check the same path on their shapes.
//!
//! Skipped, with a message, where the CPU has no AMX (or no AVX512-BF16).

mod common;
mod moe_support;

use std::sync::Arc;

use kt_kernels::cpu::dispatch::{self, Bf16Gemm};
use kt_kernels::cpu::moe::{self, MoeContext};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use moe_support::{bf16_round, Routing, Spec};

/// The table's bf16 GEMM of Q4_K, or `None` (with a message) where this CPU has none.
/// Turns the MoE operator's use of it on for this process (every test here wants it).
fn bf16_q4_k(test: &str) -> Option<Bf16Gemm> {
    dispatch::set_bf16_gemm_enabled(true);
    let k = Isa::available()
        .contains(&Isa::Amx)
        .then(|| dispatch::table(Isa::Amx).unwrap().bf16_gemm(QType::Q4_K))
        .flatten();
    if k.is_none() {
        eprintln!("{test}: skipped, this CPU has no AMX-BF16 path");
    }
    k
}

/// `rows x k` random Q4_K weights (rows of different scales, a few outliers) and their
/// scalar dequantization.
fn q4_k_rows(rows: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let mut f = vec![0f32; rows * k];
    for (r, row) in f.chunks_mut(k).enumerate() {
        rng.fill_normal(row, 0.02 * [1.0, 0.3, 2.5, 0.7][r % 4]);
        if r % 5 == 2 {
            row[rng.below(k)] *= 8.0;
        }
    }
    let mut bytes = vec![0u8; rows * QType::Q4_K.row_bytes(k).unwrap()];
    quant::quantize(QType::Q4_K, &f, &mut bytes).unwrap();
    let mut deq = vec![0f32; f.len()];
    quant::dequantize(QType::Q4_K, &bytes, &mut deq).unwrap();
    (bytes, deq)
}

#[test]
fn q4_k_dequantizes_to_the_bf16_rounding_of_the_reference() {
    let Some(bf) = bf16_q4_k("q4_k_dequantizes_to_the_bf16_rounding_of_the_reference") else {
        return;
    };
    let (rows, k) = (7, 1024);
    let (w, deq) = q4_k_rows(rows, k, 1);
    let stride = QType::Q4_K.row_bytes(k).unwrap();
    // Elements 256..768 of each row into rows of 600 elements at offset 40; the rest
    // stays poisoned.
    let (k0, kn, dst_stride, off) = (256, 512, 600, 40);
    const POISON: u16 = 0x7FC1;
    let mut dst = vec![POISON; off + rows * dst_stride];
    // SAFETY: rows x (k0 + kn) elements lie in `w`; the destination rows (dst_stride
    // apart from `off`, kn each) lie in `dst`; the table holds this kernel only where the
    // CPU runs it.
    unsafe {
        (bf.dequant)(
            w.as_ptr(),
            stride,
            rows,
            k0,
            kn,
            dst[off..].as_mut_ptr(),
            dst_stride,
        )
    };
    for (i, &v) in dst.iter().enumerate() {
        let inside = i >= off && (i - off) % dst_stride < kn;
        if !inside {
            assert_eq!(v, POISON, "element {i} outside the rows was written");
            continue;
        }
        let (r, c) = ((i - off) / dst_stride, (i - off) % dst_stride);
        let want = half::bf16::from_f32(deq[r * k + k0 + c]).to_bits();
        assert_eq!(v, want, "row {r} element {}", k0 + c);
    }
}

#[test]
fn q4_k_gemm_matches_the_bf16_operands_on_odd_tiles() {
    let Some(bf) = bf16_q4_k("q4_k_gemm_matches_the_bf16_operands_on_odd_tiles") else {
        return;
    };
    let act = QType::Q8_K;
    for (rows, k, tokens) in [
        (16, 256, 1),
        (13, 512, 2),
        (40, 2304, 7),
        (150, 4352, 33),
        (33, 768, 16),
        (128, 2048, 64),
        (17, 6144, 17),
    ] {
        let (w, deq) = q4_k_rows(rows, k, rows as u64 * 31 + k as u64);
        let x = moe_support::activations(tokens, k, tokens as u64);
        let act_row = act.row_bytes(k).unwrap();
        let mut xq = vec![0u8; tokens * act_row];
        quant::quantize(act, &x, &mut xq).unwrap();
        let mut xd = vec![0f32; tokens * k];
        quant::dequantize(act, &xq, &mut xd).unwrap();
        let got = common::strided_tile_with(
            // SAFETY: the runner's tile describes valid memory; the table holds this
            // kernel only where the CPU runs it, and its dequantizer is Q4_K's.
            |t| unsafe { (bf.gemm)(t, bf.dequant) },
            QType::Q4_K,
            &w,
            rows,
            k,
            &xq,
            act_row,
            tokens,
            (5, rows + 3),
        );
        for t in 0..tokens {
            for r in 0..rows {
                let (mut dot, mut abs) = (0f64, 0f64);
                for c in 0..k {
                    let p = bf16_round(deq[r * k + c]) as f64 * bf16_round(xd[t * k + c]) as f64;
                    dot += p;
                    abs += p.abs();
                }
                let tol = moe_support::bf16_dot_eps(k) * abs + 1e-30;
                let g = got[t * rows + r] as f64;
                assert!(
                    (g - dot).abs() <= tol,
                    "rows {rows} k {k} tokens {tokens}: out[{t}][{r}] = {g}, expected {dot} +- {tol}"
                );
            }
        }
    }
}

fn q4_k_layer(hidden: usize, inter: usize, down: QType, seed: u64) -> moe_support::Built {
    moe_support::build(
        Spec {
            hidden,
            inter,
            experts: 16,
            gate: QType::Q4_K,
            up: QType::Q4_K,
            down,
        },
        seed,
    )
}

/// Runs `tokens` x `k` on AMX against the f32 reference and the f64 model of the path.
fn run(b: &moe_support::Built, tokens: usize, k: usize, mode: Routing, seed: u64) {
    let h = b.spec.hidden;
    let x = moe_support::activations(tokens, h, seed);
    let (ids, w) = moe_support::routing(mode, tokens, k, b.spec.experts, seed);
    let mut f32_ref = moe_support::poisoned(tokens * h);
    moe::reference(&b.layer, &x, &ids, &w, &mut f32_ref).unwrap();
    let (y, tol, tightness) = moe_support::expected_on(Isa::Amx, b, 0..b.spec.inter, &x, &ids, &w);
    // The bf16 path's per-element model is a sanity bound (`tightness_guard`); below, the
    // f32 check carries the power.
    assert!(
        moe_support::tightness_guard(Isa::Amx, b, &ids).is_none_or(|l| tightness < l),
        "{:?}: the tolerance is {:.2}% of the outputs' rms",
        b.spec,
        100.0 * tightness
    );
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let ctx = MoeContext::new(pool, Isa::Amx, tokens, k, &[&b.layer]).unwrap();
    let mut out = moe_support::poisoned(tokens * h);
    ctx.forward(&b.layer, &x, &ids, &w, &mut out).unwrap();
    let label = format!("amx bf16 {:?} T={tokens} k={k} {mode:?}", b.spec);
    moe_support::check(&label, &out, &y, &tol);
    let rel = moe_support::max_token_rel_l2(&out, &f32_ref, h);
    assert!(
        rel <= moe_support::Q8_BF16_PATH_TOL,
        "{label}: relative L2 error {rel:.4} vs the f32 reference > {}",
        moe_support::Q8_BF16_PATH_TOL
    );
    eprintln!(
        "{label}: max token rel L2 vs f32 {rel:.4}, tolerance {:.2}% of rms",
        100.0 * tightness
    );
}

#[test]
fn moe_on_the_bf16_path_every_token_count() {
    if bf16_q4_k("moe_on_the_bf16_path_every_token_count").is_none() {
        return;
    }
    let b = q4_k_layer(512, 256, QType::Q4_K, 51);
    for (i, tokens) in [1, 2, 7, 64, 513].into_iter().enumerate() {
        for k in [6, 8] {
            run(
                &b,
                tokens,
                k,
                Routing::Uniform,
                5000 + 10 * i as u64 + k as u64,
            );
        }
    }
}

#[test]
fn moe_on_the_bf16_path_skewed_duplicates_and_long_rows() {
    if bf16_q4_k("moe_on_the_bf16_path_skewed_duplicates_and_long_rows").is_none() {
        return;
    }
    let b = q4_k_layer(512, 256, QType::Q4_K, 52);
    run(&b, 300, 8, Routing::Skewed, 5100);
    run(&b, 513, 6, Routing::Duplicates, 5101);
    // K = 2304 (two 2048-element chunks) for gate/up, a Q5_0 down on the integer path.
    let b = q4_k_layer(2304, 96, QType::Q5_0, 53);
    run(&b, 130, 8, Routing::Uniform, 5102);
}
