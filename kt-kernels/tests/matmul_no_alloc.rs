//! A matmul call allocates nothing once its thread's scratch has grown to the call's size
//! (the quantized activations, and for the AMX K-quant GEMM the call's transposed
//! activation records): a counting global allocator sees every allocation of every thread;
//! this file holds a single test so no other test allocates meanwhile.

mod alloc_counter;

use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

/// One call's format, weights, activations, output and tokens.
type Case = (QType, Vec<u8>, Vec<f32>, Vec<f32>, usize);

#[test]
fn calls_allocate_nothing() {
    alloc_counter::assert_counting();
    let (rows, cols) = (48, 2048);
    let pool = ThreadPool::new(2).unwrap();
    let mut rng = SplitMix64::new(11);
    let mut f = vec![0f32; rows * cols];
    rng.fill_normal(&mut f, 0.05);
    // Inputs made before counting: every format with an AMX or K-quant GEMM, token counts
    // of the GEMV, the small GEMM and two token blocks.
    let mut cases = Vec::new();
    for q in [
        QType::Q4_K,
        QType::Q5_K,
        QType::Q2_K,
        QType::Q6_K,
        QType::Q8_0,
        QType::BF16,
    ] {
        let mut w = vec![0u8; rows * q.row_bytes(cols).unwrap()];
        quant::quantize(q, &f, &mut w).unwrap();
        for tokens in [1, 16, 40, 130] {
            let mut x = vec![0f32; tokens * cols];
            rng.fill_normal(&mut x, 1.0);
            cases.push((q, w.clone(), x, vec![0f32; tokens * rows], tokens));
        }
    }
    let mut counts = Vec::new();
    for isa in Isa::available() {
        let run = |cases: &mut Vec<Case>| {
            for (q, w, x, out, tokens) in cases.iter_mut() {
                cpu::matmul_with(isa, &pool, *q, w, rows, cols, x, *tokens, out).unwrap();
            }
        };
        // First calls: lazily built kernel tables, the scratch grown to its largest.
        run(&mut cases);
        let window = alloc_counter::Window::open();
        run(&mut cases);
        run(&mut cases);
        counts.push((isa, window.close()));
    }
    assert!(
        counts.iter().all(|(_, seen)| seen.allocations == 0),
        "allocations in 48 matmul calls per ISA (the test thread is tid {}): {counts:?}",
        alloc_counter::this_tid()
    );
}
