//! Criterion benches of the fused MoE operator on DeepSeek-V2-Lite's layer shape
//! (H = 2048, I = 1408, 64 experts, top-6), decode (1 token) and prefill (64 tokens), on
//! every SIMD ISA the machine has. `kt-bench moe` reports the same cases against the
//! measured bandwidth and peak; these track regressions over time.
//!
//! Weights are 64 quantized random rows repeated to fill every expert (see kt-bench);
//! the routing cycles through 64 pre-drawn uniform routings so the experts read vary
//! from call to call.
//!
//! `repack/...` times the load-time conversion of one expert stack into the repacked
//! layouts (`kt_kernels::cpu::moe::repack`).

use std::cell::Cell;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kt_kernels::cpu::moe::repack::{RepackFormat, RepackedStack};
use kt_kernels::cpu::moe::{ExpertStack, MoeContext, MoeLayer, PoolRef};
use kt_kernels::cpu::{self, Isa};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

const H: usize = 2048;
const I: usize = 1408;
const E: usize = 64;
const K: usize = 6;

fn stack(q: QType, rows: usize, cols: usize, seed: u64) -> ExpertStack {
    let rb = q.row_bytes(cols).unwrap();
    let distinct = 64;
    let mut f = vec![0f32; distinct * cols];
    SplitMix64::new(seed).fill_normal(&mut f, 0.05);
    let mut base = vec![0u8; distinct * rb];
    quant::quantize(q, &f, &mut base).unwrap();
    let bytes = (0..E * rows)
        .flat_map(|r| {
            base[(r % distinct) * rb..(r % distinct + 1) * rb]
                .iter()
                .copied()
        })
        .collect();
    ExpertStack::from_vec(q, bytes, E, rows, cols).unwrap()
}

/// `n` routings of `tokens` tokens, k distinct uniform experts each.
fn routings(n: usize, tokens: usize) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut rng = SplitMix64::new(3);
    (0..n)
        .map(|_| {
            let mut ids = Vec::new();
            for _ in 0..tokens {
                let start = ids.len();
                while ids.len() < start + K {
                    let e = rng.below(E) as u32;
                    if !ids[start..].contains(&e) {
                        ids.push(e);
                    }
                }
            }
            (ids, vec![1.0 / K as f32; tokens * K])
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = cpu::pool::global();
    // Q4_K_M's mix on V2-Lite (down rows of 1408 fall back to Q5_0), and the Q8_0 down
    // of its "more bits" layers.
    for down in [QType::Q5_0, QType::Q8_0] {
        let layer = MoeLayer::new(
            stack(QType::Q4_K, I, H, 1),
            stack(QType::Q4_K, I, H, 2),
            stack(down, H, I, 3),
        )
        .unwrap();
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
            let ctx = MoeContext::new(PoolRef::Static(pool), isa, 64, K, &[&layer]).unwrap();
            for tokens in [1usize, 64] {
                let mut g = c.benchmark_group(format!("moe/{isa}/v2-lite/q4_K+{down}"));
                g.sample_size(10);
                if tokens == 1 {
                    g.throughput(Throughput::Bytes((K * layer.expert_bytes()) as u64));
                } else {
                    g.throughput(Throughput::Elements((2 * tokens * K * 3 * H * I) as u64));
                }
                let routes = routings(64, tokens);
                let mut x = vec![0f32; tokens * H];
                SplitMix64::new(2).fill_normal(&mut x, 1.0);
                let mut out = vec![0f32; tokens * H];
                let next = Cell::new(0usize);
                g.bench_function(BenchmarkId::new("tokens", tokens), |b| {
                    b.iter(|| {
                        let (ids, w) = &routes[next.get() % routes.len()];
                        next.set(next.get() + 1);
                        ctx.forward(&layer, &x, ids, w, &mut out).unwrap()
                    })
                });
                g.finish();
            }
        }
    }
}

/// The load-time repack of one V2-Lite gate stack (64 Q4_K experts of 1408 x 2048) into
/// the AMX / AVX512-VNNI layouts, on every thread of the pool.
fn bench_repack(c: &mut Criterion) {
    let gate = stack(QType::Q4_K, I, H, 1);
    let mut g = c.benchmark_group("repack/v2-lite/gate/q4_K");
    g.sample_size(10);
    g.throughput(Throughput::Elements((E * I * H) as u64));
    for f in [
        RepackFormat::Int4 { group: 128 },
        RepackFormat::Int8 { group: 128 },
    ] {
        g.bench_function(f.name(), |b| {
            b.iter(|| RepackedStack::from_stack(&gate, f).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_repack);
criterion_main!(benches);
