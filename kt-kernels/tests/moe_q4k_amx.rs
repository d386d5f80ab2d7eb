//! The AMX Q4_K GEMM (`cpu/amx/q4_k.rs`, the GGUF blocks as stored) through the MoE
//! operator, against `moe_support::expected` (the same quantized activations in f64):
//! token counts on both sides of the kernel's AMX threshold (1, 2, 7 run the AVX512
//! kernel; 12 and up AMX), partial 16-token groups, several K chunks per row block
//! (H = 2304: nine super-blocks, while a 64-token block's chunk holds eight), experts
//! no token chose, skewed routing and a token listing one expert twice, busy blocks
//! whose few last positions run as an item of their own on the AVX512 kernel; outputs
//! start as NaN. Skipped, with a message, on a CPU without AMX.
//!
//! `matmul_backends.rs` runs the same kernel through the matmul driver on odd shapes
//! (rows that are not a multiple of 16, 13 to 80 tokens) against the scalar backend.

mod moe_support;

use kt_kernels::cpu::moe::MoeContext;
use kt_kernels::cpu::{dispatch, Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Built, Routing, Spec};
use std::sync::Arc;

/// True when this CPU has AMX; otherwise says the test is skipped.
fn amx_here(test: &str) -> bool {
    let here = Isa::available().contains(&Isa::Amx);
    if !here {
        eprintln!("{test}: skipped, this CPU has no AMX");
    }
    here
}

fn q4_k_layer(hidden: usize, inter: usize, down: QType, seed: u64) -> Built {
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

/// Runs `tokens` x `k` on the AMX table and checks every output against the expected.
fn run_amx(b: &Built, tokens: usize, k: usize, mode: Routing, seed: u64) {
    let (ids, w) = moe_support::routing(mode, tokens, k, b.spec.experts, seed);
    check_amx(b, tokens, k, &ids, &w, &format!("{mode:?}"), seed);
}

/// Runs the routing `ids`, `w` (`[tokens, k]`) on the AMX table and checks every output.
fn check_amx(b: &Built, tokens: usize, k: usize, ids: &[u32], w: &[f32], what: &str, seed: u64) {
    let h = b.spec.hidden;
    let x = moe_support::activations(tokens, h, seed);
    let (y, tol, tightness) = moe_support::expected(b, 0..b.spec.inter, &x, ids, w);
    assert!(
        tightness < 0.05,
        "{:?}: the tolerance is {:.2}% of the outputs' rms",
        b.spec,
        100.0 * tightness
    );
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let ctx = MoeContext::new(pool, Isa::Amx, tokens, k, &[&b.layer]).unwrap();
    let mut out = moe_support::poisoned(tokens * h);
    ctx.forward(&b.layer, &x, ids, w, &mut out).unwrap();
    let label = format!("amx H={h} I={} T={tokens} k={k} {what}", b.spec.inter);
    moe_support::check(&label, &out, &y, &tol);
}

#[test]
fn the_amx_table_runs_q4_k_on_amx() {
    if !amx_here("the_amx_table_runs_q4_k_on_amx") {
        return;
    }
    let k = dispatch::table(Isa::Amx).unwrap().get(QType::Q4_K).unwrap();
    assert_eq!(k.gemm_isa, Isa::Amx);
    assert_eq!(k.act, QType::Q8_K);
}

#[test]
fn q4_k_everywhere_every_token_count() {
    if !amx_here("q4_k_everywhere_every_token_count") {
        return;
    }
    let b = q4_k_layer(512, 256, QType::Q4_K, 11);
    for (i, tokens) in [1, 2, 7, 9, 10, 12, 64, 513].into_iter().enumerate() {
        for k in [6, 8] {
            run_amx(
                &b,
                tokens,
                k,
                Routing::Uniform,
                1000 + 10 * i as u64 + k as u64,
            );
        }
    }
}

#[test]
fn several_k_chunks_partial_token_groups_and_a_q5_0_down() {
    if !amx_here("several_k_chunks_partial_token_groups_and_a_q5_0_down") {
        return;
    }
    // Gate/up K = 2304 (nine super-blocks): 64-token blocks take two K chunks.
    let b = q4_k_layer(2304, 96, QType::Q5_0, 12);
    for (tokens, k) in [(40, 6), (130, 8)] {
        run_amx(&b, tokens, k, Routing::Uniform, 1100 + tokens as u64);
    }
}

#[test]
fn skewed_routing_and_duplicate_experts() {
    if !amx_here("skewed_routing_and_duplicate_experts") {
        return;
    }
    let b = q4_k_layer(512, 256, QType::Q4_K, 13);
    run_amx(&b, 300, 8, Routing::Skewed, 1200);
    run_amx(&b, 64, 8, Routing::Duplicates, 1201);
    run_amx(&b, 513, 6, Routing::Duplicates, 1202);
}

#[test]
fn busy_items_of_256_rows_and_a_partial_last_one() {
    if !amx_here("busy_items_of_256_rows_and_a_partial_last_one") {
        return;
    }
    // Busy items on AMX K-quants have 256 rows: gate/up's 352 rows split 256 + 96 (the
    // Q5_0 down keeps 128-row items), and a Q4_K down of 1280 rows makes five; 16 experts
    // and 200 x 8 pairs give ~100 positions each (two token blocks, a partial one).
    let b = q4_k_layer(768, 352, QType::Q5_0, 14);
    run_amx(&b, 200, 8, Routing::Uniform, 1300);
    run_amx(&b, 150, 6, Routing::Skewed, 1301);
    let b = q4_k_layer(1280, 256, QType::Q4_K, 15);
    run_amx(&b, 200, 8, Routing::Uniform, 1302);
}

#[test]
fn busy_blocks_with_tails_of_few_positions() {
    if !amx_here("busy_blocks_with_tails_of_few_positions") {
        return;
    }
    // 99 tokens, k = 3. First choices: experts 0, 1, 2, 4 get 17, 22, 38, 22 positions
    // (tails of 1, 6, 6, 6 past a 16-token group); second: expert 3 gets all 99 (a 64-token
    // block, then 35 = 32 + a tail of 3); third: expert 5 gets 9 (below the AMX threshold),
    // experts 6..15 about 10 each. The tails run as items of their own, on the AVX512
    // kernel.
    let tokens = 99;
    let first = |t: usize| match t {
        0..17 => 0,
        17..39 => 1,
        39..77 => 2,
        _ => 4,
    };
    let ids: Vec<u32> = (0..tokens)
        .flat_map(|t| [first(t), 3, if t < 9 { 5 } else { 6 + (t % 9) as u32 }])
        .collect();
    let w: Vec<f32> = (0..ids.len())
        .map(|i| [0.5, 0.3, 0.2][i % 3] + 0.01 * (i % 7) as f32)
        .collect();
    let b = q4_k_layer(512, 256, QType::Q4_K, 16);
    check_amx(&b, tokens, 3, &ids, &w, "tails", 1400);
}
