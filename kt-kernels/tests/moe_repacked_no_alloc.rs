//! A repacked MoE call allocates nothing, synchronous or submitted: the scratch is sized
//! when the runner is built. A counting global allocator sees every allocation of every
//! thread (the caller, the driver, the pool workers); this file holds a single test so no
//! other test allocates meanwhile.

mod alloc_counter;
mod moe_support;

use std::sync::Arc;

use kt_kernels::cpu::moe::repack::{RepackFormat, RepackedLayer, RepackedMoe};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Routing, Spec};

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

#[test]
fn repacked_calls_allocate_nothing() {
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
    let int4 = RepackedLayer::from_layer(
        &b.layer,
        RepackFormat::Int4 { group: 128 },
        RepackFormat::Int8 { group: 64 },
    )
    .unwrap();
    let bf16 = RepackedLayer::from_layer(&b.layer, RepackFormat::Bf16, RepackFormat::Bf16).unwrap();
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let mut counts = Vec::new();
    // AVX2 runs the scalar kernel, as Scalar does.
    for isa in Isa::available().into_iter().filter(|&i| i != Isa::Avx2) {
        let r = RepackedMoe::new(pool.clone(), isa, 64, 8, &[&int4, &bf16]).unwrap();
        // Decode and prefill sizes (AMX items at 64 tokens), made before counting.
        let mut cases: Vec<_> = [(1usize, 8usize), (7, 6), (64, 8)]
            .into_iter()
            .flat_map(|(t, k)| [&int4, &bf16].map(|l| (l, t, k)))
            .map(|(l, t, k)| {
                let x = moe_support::activations(t, 512, t as u64);
                let (ids, w) = moe_support::routing(Routing::Uniform, t, k, 16, t as u64);
                (l, x, ids, w, vec![0f32; t * 512])
            })
            .collect();
        // First calls: lazily detected features, thread-locals.
        for (l, x, ids, w, out) in cases.iter_mut() {
            r.forward(l, x, ids, w, out).unwrap();
        }
        let window = alloc_counter::Window::open();
        for (l, x, ids, w, out) in cases.iter_mut() {
            r.forward(l, x, ids, w, out).unwrap();
            r.submit(l, x, ids, w).unwrap().sync(out).unwrap();
        }
        counts.push((isa, window.close()));
        assert!(
            cases.iter().all(|c| c.4.iter().all(|v| v.is_finite())),
            "{isa}: non-finite outputs"
        );
    }
    assert!(
        counts.iter().all(|(_, seen)| seen.allocations == 0),
        "allocations in 12 repacked MoE calls per ISA (the test thread is tid {}): {counts:?}",
        alloc_counter::this_tid()
    );
}
