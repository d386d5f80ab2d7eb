//! The MoE operator against its references, on every ISA this machine has:
//! - tightly, against `moe_support::expected` (the fast path's own arithmetic in f64:
//!   same quantized activations, per-element tolerance from the dot rounding and from
//!   the few intermediate elements that sit on a rounding boundary);
//! - loosely, against the f32 reference `moe::reference` (no activation quantization),
//!   within the error two Q8 activation stages make (see `Q8_STAGES_TOL`).
//!
//! Shapes are shrunk for speed (H = 512, I = 96..352, 16 experts); token counts cover
//! decode (1, 2, 7: every expert's tokens in one GEMV item) and prefill (64, 513:
//! 64 x 64 tiles, experts with several token blocks); some experts are never chosen,
//! most are chosen by several tokens. Outputs start as NaN.

mod moe_support;

use kt_kernels::cpu::moe::{self, MoeContext};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Built, Routing, Spec};
use std::sync::Arc;

/// Relative L2 error per token allowed against the f32 reference when activations go
/// through Q8 twice (x before gate/up, the intermediate before down).
///
/// One Q8 stage rounds each element to a step of `amax_block / 127`, an error of at most
/// half a step; spread uniformly over the step its rms is `amax / (127 * 2 * sqrt(3))`.
/// With block maxima up to ~5x the block's rms (normal x; the heavier-tailed
/// `silu(g) * u`), a stage's relative rms error is <= 5 / 440 = 1.1%. Stage 1 reaches the
/// output through gate and up (twice), stage 2 once, and random weights carry a relative
/// L2 error through unchanged on average: ~3 x 1.1% = 3.4%; 4% leaves room for a token's
/// few hundred outputs to fluctuate. A wrong expert, slot, weight or tile moves a token
/// by tens of percent.
const Q8_STAGES_TOL: f64 = 0.04;
/// The same for BF16 activations: half an ulp is 2^-9 relative, rms 2^-9 / sqrt(3).
const BF16_STAGES_TOL: f64 = 3.0 * 0.0020 / 1.732 * 2.0;

fn spec(gate: QType, up: QType, down: QType, inter: usize) -> Spec {
    Spec {
        hidden: 512,
        inter,
        experts: 16,
        gate,
        up,
        down,
    }
}

/// Runs `tokens` x `k` through every ISA and checks both references.
fn run_case(b: &Built, tokens: usize, k: usize, mode: Routing, seed: u64) {
    let h = b.spec.hidden;
    let x = moe_support::activations(tokens, h, seed);
    let (ids, w) = moe_support::routing(mode, tokens, k, b.spec.experts, seed);
    let (y, tol, tightness) = moe_support::expected(b, 0..b.spec.inter, &x, &ids, &w);
    // The check must see any error above ~5% of a typical output (a lost slot, a wrong
    // expert, token or tile moves outputs by tens of percent).
    assert!(
        tightness < 0.05,
        "{:?}: the tolerance is {:.2}% of the outputs' rms",
        b.spec,
        100.0 * tightness
    );
    let mut f32_ref = moe_support::poisoned(tokens * h);
    moe::reference(&b.layer, &x, &ids, &w, &mut f32_ref).unwrap();
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    for isa in Isa::available() {
        let ctx = MoeContext::new(pool.clone(), isa, tokens, k, &[&b.layer]).unwrap();
        let mut out = moe_support::poisoned(tokens * h);
        ctx.forward(&b.layer, &x, &ids, &w, &mut out).unwrap();
        let label = format!("{isa} {:?} T={tokens} k={k} {mode:?}", b.spec);
        moe_support::check(&label, &out, &y, &tol);
        let rel = moe_support::max_token_rel_l2(&out, &f32_ref, h);
        let stages_tol = if b.spec.down.vec_dot_type() == QType::BF16 {
            BF16_STAGES_TOL
        } else {
            Q8_STAGES_TOL
        };
        assert!(
            rel <= stages_tol,
            "{label}: relative L2 error {rel:.4} vs the f32 reference > {stages_tol}"
        );
        eprintln!(
            "{label}: ok; tolerance {:.3}% of rms, {:.2}% rel. L2 vs f32",
            100.0 * tightness,
            100.0 * rel
        );
    }
}

#[test]
fn q4_k_gate_up_q5_0_down_all_token_counts() {
    // V2-Lite's Q4_K_M mix: the down rows (I = 1408 there) are not a multiple of 256.
    let b = moe_support::build(spec(QType::Q4_K, QType::Q4_K, QType::Q5_0, 352), 1);
    for (i, tokens) in [1, 2, 7, 64, 513].into_iter().enumerate() {
        for k in [6, 8] {
            run_case(
                &b,
                tokens,
                k,
                Routing::Uniform,
                100 + i as u64 * 10 + k as u64,
            );
        }
    }
}

#[test]
fn q4_k_everywhere_and_small_intermediate_q5_0() {
    let b = moe_support::build(spec(QType::Q4_K, QType::Q4_K, QType::Q4_K, 768), 2);
    for (tokens, k) in [(1, 8), (7, 6), (64, 8)] {
        run_case(&b, tokens, k, Routing::Uniform, 200 + tokens as u64);
    }
    let b = moe_support::build(spec(QType::Q4_K, QType::Q4_K, QType::Q5_0, 96), 3);
    for (tokens, k) in [(1, 6), (7, 8), (64, 6)] {
        run_case(&b, tokens, k, Routing::Uniform, 300 + tokens as u64);
    }
}

#[test]
fn decode_items_of_256_rows() {
    // Eight experts of 2048 intermediate rows: at one and two tokens the gate+up items
    // are 256 rows (DeepSeek-V3's decode split, `plan::GEMV_ROW_BLOCK`).
    let s = Spec {
        hidden: 256,
        experts: 10,
        ..spec(QType::Q4_K, QType::Q4_K, QType::Q4_K, 2048)
    };
    let b = moe_support::build(s, 9);
    for tokens in [1, 2] {
        run_case(&b, tokens, 8, Routing::Uniform, 900 + tokens as u64);
    }
}

#[test]
fn other_k_quants() {
    for (n, q) in [QType::Q2_K, QType::Q5_K, QType::Q6_K]
        .into_iter()
        .enumerate()
    {
        let b = moe_support::build(spec(q, q, q, 256), 10 + n as u64);
        for (tokens, k) in [(1, 8), (7, 6), (64, 8)] {
            run_case(
                &b,
                tokens,
                k,
                Routing::Uniform,
                400 + 10 * n as u64 + tokens as u64,
            );
        }
    }
}

#[test]
fn q8_0_and_bf16() {
    for (n, q) in [QType::Q8_0, QType::BF16].into_iter().enumerate() {
        let b = moe_support::build(spec(q, q, q, 96), 20 + n as u64);
        for (tokens, k) in [(1, 6), (7, 8), (64, 6)] {
            run_case(
                &b,
                tokens,
                k,
                Routing::Uniform,
                500 + 10 * n as u64 + tokens as u64,
            );
        }
    }
}

/// The low-bit and small-block mixes of llama.cpp's Q3_K_M, Q2_K and Q5_K_M files: Q3_K
/// gate/up, and 32-element-block down projections (Q5_1 and Q4_1 with Q8_1 activations,
/// Q4_0) at intermediate sizes of whole 128-element AMX steps (384, 256) and not (96).
#[test]
fn q3_k_and_small_block_mixes() {
    for (n, (gate_up, down, inter)) in [
        (QType::Q3_K, QType::Q5_1, 384),
        (QType::Q3_K, QType::Q4_0, 96),
        (QType::Q4_0, QType::Q4_1, 256),
    ]
    .into_iter()
    .enumerate()
    {
        let b = moe_support::build(spec(gate_up, gate_up, down, inter), 50 + n as u64);
        for (tokens, k) in [(1, 8), (7, 6), (64, 8)] {
            run_case(
                &b,
                tokens,
                k,
                Routing::Uniform,
                800 + 10 * n as u64 + tokens as u64,
            );
        }
    }
}

#[test]
fn mixed_formats_including_different_activation_types_for_gate_and_up() {
    // Gate and up in different formats with one activation type (Q8_K), and gate and up
    // with different activation types (Q8_0 and Q8_K: two quantization passes).
    let b = moe_support::build(spec(QType::Q4_K, QType::Q6_K, QType::Q8_0, 256), 30);
    run_case(&b, 7, 8, Routing::Uniform, 600);
    run_case(&b, 64, 6, Routing::Uniform, 601);
    let b = moe_support::build(spec(QType::Q8_0, QType::Q4_K, QType::Q6_K, 256), 31);
    run_case(&b, 2, 6, Routing::Uniform, 602);
    run_case(&b, 64, 8, Routing::Uniform, 603);
}

#[test]
fn skewed_routing_and_duplicate_experts_in_one_token() {
    let b = moe_support::build(spec(QType::Q4_K, QType::Q4_K, QType::Q5_0, 96), 40);
    // Experts 1 and 2 get ~7/8 of the tokens: several 64-token blocks each.
    run_case(&b, 300, 8, Routing::Skewed, 700);
    run_case(&b, 7, 6, Routing::Duplicates, 701);
    run_case(&b, 64, 8, Routing::Duplicates, 702);
    // One token naming its first expert twice: at one token every other position reads
    // the token's one quantized row, except this expert's two, which get copies.
    run_case(&b, 1, 8, Routing::Duplicates, 703);
}

/// A hidden size that is no multiple of 32 (BF16 has no block): the fused decode job
/// combines the output in blocks of 32 rows, the last one partial.
#[test]
fn bf16_hidden_not_a_multiple_of_32() {
    let s = Spec {
        hidden: 200,
        ..spec(QType::BF16, QType::BF16, QType::BF16, 96)
    };
    let b = moe_support::build(s, 41);
    for (tokens, k) in [(1, 6), (3, 8), (64, 6)] {
        run_case(&b, tokens, k, Routing::Duplicates, 800 + tokens as u64);
    }
}
