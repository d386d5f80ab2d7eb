//! A repacked MoE call allocates nothing, synchronous or submitted: the scratch is sized
//! when the runner is built. A counting global allocator sees every allocation of every
//! thread (the caller, the driver, the pool workers); this file holds a single test so no
//! other test allocates meanwhile.

mod moe_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kt_kernels::cpu::moe::repack::{RepackFormat, RepackedLayer, RepackedMoe};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Routing, Spec};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn repacked_calls_allocate_nothing() {
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
        let before = ALLOCS.load(Ordering::SeqCst);
        for (l, x, ids, w, out) in cases.iter_mut() {
            r.forward(l, x, ids, w, out).unwrap();
            r.submit(l, x, ids, w).unwrap().sync(out).unwrap();
        }
        counts.push((isa, ALLOCS.load(Ordering::SeqCst) - before));
        assert!(
            cases.iter().all(|c| c.4.iter().all(|v| v.is_finite())),
            "{isa}: non-finite outputs"
        );
    }
    assert!(
        counts.iter().all(|&(_, n)| n == 0),
        "allocations in 12 repacked MoE calls per ISA: {counts:?}"
    );
}
