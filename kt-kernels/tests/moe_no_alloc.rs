//! A MoE call allocates nothing: the scratch is sized when the context is built. A
//! counting global allocator sees every allocation of every thread (the caller, the
//! driver, the pool workers); this file holds a single test so no other test allocates
//! meanwhile, and keeps it under libtest's 60 s "has been running" notice, which
//! allocates.

mod alloc_counter;
mod moe_support;

use std::sync::Arc;

use kt_kernels::cpu::moe::MoeContext;
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Routing, Spec};

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

#[test]
fn calls_allocate_nothing() {
    alloc_counter::assert_counting();
    let spec = Spec {
        hidden: 512,
        inter: 256,
        experts: 16,
        gate: QType::Q4_K,
        up: QType::Q4_K,
        down: QType::Q8_0,
    };
    let b = moe_support::build(spec, 1);
    let spec2 = Spec {
        gate: QType::Q8_0,
        up: QType::Q5_K,
        down: QType::BF16,
        ..spec
    };
    let b2 = moe_support::build(spec2, 2);
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let mut counts = Vec::new();
    for isa in Isa::available() {
        let ctx = MoeContext::new(pool.clone(), isa, 64, 8, &[&b.layer, &b2.layer]).unwrap();
        // Inputs of decode and prefill sizes for both layers, made before counting.
        let cases: Vec<_> = [(1usize, 8usize), (7, 6), (64, 8)]
            .into_iter()
            .flat_map(|(t, k)| [&b, &b2].map(|built| (built, t, k)))
            .map(|(built, t, k)| {
                let x = moe_support::activations(t, 512, t as u64);
                let (ids, w) = moe_support::routing(Routing::Uniform, t, k, 16, t as u64);
                (built, x, ids, w, vec![0f32; t * 512])
            })
            .collect();
        let mut cases = cases;
        // First calls: lazily built kernel tables, thread-locals, and (through `submit`) the
        // driver thread's start, which allocates its name: `forward` runs on the caller, so
        // without it a driver the OS starts late allocates inside the window.
        for (built, x, ids, w, out) in cases.iter_mut() {
            ctx.forward(&built.layer, x, ids, w, out).unwrap();
            ctx.submit(&built.layer, x, ids, w)
                .unwrap()
                .sync(out)
                .unwrap();
        }
        let window = alloc_counter::Window::open();
        for _ in 0..2 {
            for (built, x, ids, w, out) in cases.iter_mut() {
                let handle = ctx.submit(&built.layer, x, ids, w).unwrap();
                handle.sync(out).unwrap();
            }
        }
        counts.push((isa, window.close()));
    }
    assert!(
        counts.iter().all(|(_, seen)| seen.allocations == 0),
        "allocations in 12 MoE calls per ISA (the test thread is tid {}): {counts:?}",
        alloc_counter::this_tid()
    );
}
