//! The steps of the GPU weights' load-time repack, ns a weight per thread: a Q4_K matrix
//! (4096 x 7168, a DeepSeek-V3 expert's gate and up) dequantized, quantized to int4 g128
//! with its error, packed into the kernel layout, and what a fresh f32 buffer of its size
//! costs to map and touch; each of THREADS threads on a matrix of its own, best of three.
//!   cargo run --release -p kt-kernels --features cuda --example int4_repack_rate -- THREADS
use half::bf16;
use kt_kernels::cuda::w4a16::Int4Weights;
use kt_kernels::quant::{self, QType};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(1, |a| a.parse().unwrap());
    let (n, k) = (4096usize, 7168usize);
    let one = |seed: u64| {
        let mut s = seed;
        let w: Vec<f32> = (0..n * k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let mut qk = vec![0u8; QType::Q4_K.row_bytes(k).unwrap() * n];
        quant::quantize(QType::Q4_K, &w, &mut qk).unwrap();
        let mut deq = vec![0f32; n * k];
        let mut packed = vec![0u8; n * k / 2];
        let mut t = [f64::MAX; 4];
        for _ in 0..3 {
            let a = Instant::now();
            kt_kernels::cpu::dequantize(QType::Q4_K, &qk, &mut deq).unwrap();
            let b = Instant::now();
            let (q, _) = Int4Weights::<bf16>::quantize(&deq, n, k).unwrap();
            let c = Instant::now();
            q.pack_into(&mut packed).unwrap();
            let d = Instant::now();
            let fresh = vec![0f32; n * k];
            let sum: f32 = fresh.iter().step_by(1024).sum();
            std::hint::black_box(sum);
            drop(fresh);
            let e = Instant::now();
            for (i, x) in [b - a, c - b, d - c, e - d].iter().enumerate() {
                t[i] = t[i].min(x.as_secs_f64() / (n * k) as f64 * 1e9);
            }
        }
        t
    };
    let res: Vec<[f64; 4]> = std::thread::scope(|s| {
        let h: Vec<_> = (0..threads)
            .map(|i| s.spawn(move || one(i as u64 + 1)))
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let avg = |j: usize| res.iter().map(|r| r[j]).sum::<f64>() / threads as f64;
    println!("threads {threads} ns/elem per thread: dequant {:.2} quantize+err {:.2} pack_into {:.2} fresh-alloc-touch {:.2}", avg(0), avg(1), avg(2), avg(3));
}
