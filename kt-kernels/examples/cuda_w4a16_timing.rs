//! Timing of the W4A16 GEMM on DeepSeek shapes, run on a GPU machine:
//! `cargo run --release -p kt-kernels --features cuda --example cuda_w4a16_timing`.
//! Prints one line per shape: microseconds per GEMM, the weight bandwidth and the
//! arithmetic rate. (A benchmark, so not a test.)

#[path = "../tests/cuda_common/mod.rs"]
mod cuda_common;

use cuda_common::{gpu_or_skip, random};
use half::f16;
use kt_kernels::cuda::w4a16::{GemmWorkspace, Int4Weights};
use kt_kernels::util::SplitMix64;

fn main() {
    let Some(gpu) = gpu_or_skip("w4a16_timing") else {
        return;
    };
    let s = gpu.stream();
    eprintln!("device: {:?}", gpu.info());
    let mut ws = GemmWorkspace::default();
    // (n, k): V3 expert gate+up and down, V3 dense 7168 x 7168 scale, V2-Lite expert.
    for &(n, k) in &[
        (4096usize, 7168usize),
        (7168, 2048),
        (7168, 7168),
        (2816, 2048),
        (2048, 1408),
    ] {
        let mut rng = SplitMix64::new(n as u64 ^ k as u64);
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.02).collect();
        let (q, _) = Int4Weights::<f16>::quantize(&w, n, k).unwrap();
        let wd = s.upload_w4a16(&q).unwrap();
        for &m in &[1usize, 16, 64, 128] {
            let x = s.upload(&random::<f16>(&mut rng, m * k, 1.0)).unwrap();
            let mut out = s.alloc_zeroed::<f16>(m * n).unwrap();
            for _ in 0..5 {
                s.w4a16_gemm(&wd, &x, m, &mut out, &mut ws).unwrap();
            }
            let iters = 50;
            let start = s.record_event().unwrap();
            for _ in 0..iters {
                s.w4a16_gemm(&wd, &x, m, &mut out, &mut ws).unwrap();
            }
            let end = s.record_event().unwrap();
            let us = start.elapsed_ms(&end).unwrap() as f64 * 1000.0 / iters as f64;
            let gbs = (n * k / 2 + n * k / 64) as f64 / (us * 1e3);
            let tflops = 2.0 * (m * n * k) as f64 / (us * 1e6);
            println!(
                "KT_W4A16 m={m} n={n} k={k} us={us:.2} weight_GB/s={gbs:.0} TFLOP/s={tflops:.2}"
            );
        }
    }
}
