//! Criterion benches of the quantized matmul on DeepSeek shapes, on every ISA the
//! machine has. `kt-bench matmul` reports the same cases as fractions of the measured
//! bandwidth and peak; these benches track regressions over time.
//!
//! Weights are 64 quantized random rows repeated to the full shape (see kt-bench).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kt_kernels::cpu::{self, Isa};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

const FORMATS: [QType; 6] = [
    QType::Q4_K,
    QType::Q5_K,
    QType::Q2_K,
    QType::Q6_K,
    QType::Q8_0,
    QType::BF16,
];
const SHAPES: [(usize, usize); 5] = [
    (2048, 7168),
    (7168, 2048),
    (1408, 2048),
    (2048, 1408),
    (18432, 7168),
];

fn weights(q: QType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = q.row_bytes(cols).unwrap();
    let distinct = rows.min(64);
    let mut f = vec![0f32; distinct * cols];
    SplitMix64::new(1).fill_normal(&mut f, 0.05);
    let mut base = vec![0u8; distinct * rb];
    quant::quantize(q, &f, &mut base).unwrap();
    (0..rows)
        .flat_map(|r| {
            base[(r % distinct) * rb..(r % distinct + 1) * rb]
                .iter()
                .copied()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = cpu::pool::global();
    for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
        for q in FORMATS {
            for (rows, cols) in SHAPES {
                if q.row_bytes(cols).is_err() {
                    continue;
                }
                let w = weights(q, rows, cols);
                for tokens in [1usize, 512] {
                    let mut g = c.benchmark_group(format!("matmul/{isa}/{q}/{rows}x{cols}"));
                    g.sample_size(10);
                    if tokens == 1 {
                        g.throughput(Throughput::Bytes(w.len() as u64));
                    } else {
                        g.throughput(Throughput::Elements((2 * rows * cols * tokens) as u64));
                    }
                    let mut x = vec![0f32; tokens * cols];
                    SplitMix64::new(2).fill_normal(&mut x, 1.0);
                    let mut out = vec![0f32; tokens * rows];
                    g.bench_function(BenchmarkId::new("tokens", tokens), |b| {
                        b.iter(|| {
                            cpu::matmul_with(isa, pool, q, &w, rows, cols, &x, tokens, &mut out)
                                .unwrap()
                        })
                    });
                    g.finish();
                }
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
