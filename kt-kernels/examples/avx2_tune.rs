//! Throughput of the AVX2 matmul kernels, for tuning the register tiles.
//!
//! `cargo run --release -p kt-kernels --example avx2_tune -- [qtype ...]` (default q4_K)
//! times `matmul_quantized_with(Isa::Avx2, ..)` (activations quantized beforehand) for
//! 2048x7168 and 7168x2048 weights at 1 and 512 tokens on 1 and 2 threads, and prints
//! the weight bandwidth (GB/s: weight bytes per second, what a GEMV is bound by) and
//! GFLOP/s (2 * rows * cols * tokens per second), from the best wall-clock call. On a
//! shared machine a long call is often descheduled, so single-thread runs also report
//! GFLOP/s from the calling thread's CPU time (`cpu GF/s`: what the kernel does while
//! it runs). `KT_TUNE_SHAPES=RxC,..` and
//! `KT_TUNE_TOKENS=1,8,..` override the shapes and token counts. Weights are random
//! blocks (random quants, random normal f16 scales).

use std::time::{Duration, Instant};

use kt_kernels::cpu::{matmul_quantized_with, quantize_activations_with, Isa, ThreadPool};
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;

fn f16_fields(t: QType) -> &'static [usize] {
    match t {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => &[0],
        QType::Q4_1 | QType::Q5_1 => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_weights(t: QType, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let bytes = t.row_bytes(cols).expect("whole blocks") * rows;
    let mut w: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
    if matches!(t, QType::F32 | QType::F16 | QType::BF16) {
        // Keep the exponents sane: small normals in every element.
        let elem = t.block_bytes();
        for e in w.chunks_exact_mut(elem) {
            let v = 0.02 * rng.normal();
            match t {
                QType::F32 => e.copy_from_slice(&v.to_le_bytes()),
                QType::F16 => e.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => e.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
    } else {
        for block in w.chunks_exact_mut(t.block_bytes()) {
            for &off in f16_fields(t) {
                block[off..off + 2]
                    .copy_from_slice(&half::f16::from_f32(0.01 * rng.normal()).to_le_bytes());
            }
        }
    }
    w
}

/// CPU time of the calling thread (excludes time it was descheduled).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn parse_list<T>(var: &str, default: Vec<T>, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    match std::env::var(var) {
        Ok(v) => v.split(',').filter_map(|s| parse(s.trim())).collect(),
        Err(_) => default,
    }
}

fn main() -> kt_kernels::Result<()> {
    Isa::Avx2.check()?;
    let qtypes: Vec<QType> = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.is_empty() {
            vec![QType::Q4_K]
        } else {
            args.iter()
                .map(|a| QType::from_name(a).unwrap_or_else(|| panic!("unknown qtype {a}")))
                .collect()
        }
    };
    let shapes = parse_list("KT_TUNE_SHAPES", vec![(2048, 7168), (7168, 2048)], |s| {
        let (r, c) = s.split_once('x')?;
        Some((r.parse().ok()?, c.parse().ok()?))
    });
    let token_counts = parse_list("KT_TUNE_TOKENS", vec![1, 512], |s| s.parse().ok());
    let pools = [ThreadPool::new(1)?, ThreadPool::new(2)?];
    let mut rng = SplitMix64::new(7);
    println!("qtype  rows x cols   tokens threads   ms/call    GB/s  GFLOP/s  cpu GF/s");
    for &qt in &qtypes {
        for &(rows, cols) in &shapes {
            let w = random_weights(qt, rows, cols, &mut rng);
            for &tokens in &token_counts {
                let mut x = vec![0f32; tokens * cols];
                rng.fill_normal(&mut x, 1.0);
                let act_row = qt.vec_dot_type().row_bytes(cols)?;
                let mut xq = vec![0u8; tokens * act_row];
                quantize_activations_with(Isa::Avx2, &pools[1], qt, &x, cols, tokens, &mut xq)?;
                let mut out = vec![0f32; tokens * rows];
                for pool in &pools {
                    let mut run = || {
                        matmul_quantized_with(
                            Isa::Avx2,
                            pool,
                            qt,
                            &w,
                            rows,
                            cols,
                            &xq,
                            tokens,
                            &mut out,
                        )
                    };
                    run()?;
                    // Repeat for at least 0.5 s; report the best call (the machine is shared).
                    let mut best = Duration::MAX;
                    let mut best_cpu = f64::MAX;
                    let start = Instant::now();
                    let mut calls = 0;
                    while calls < 3 || start.elapsed() < Duration::from_millis(500) {
                        let (t, c) = (Instant::now(), thread_cpu_seconds());
                        run()?;
                        best = best.min(t.elapsed());
                        best_cpu = best_cpu.min(thread_cpu_seconds() - c);
                        calls += 1;
                    }
                    let s = best.as_secs_f64();
                    let flops = 2.0 * (rows * cols * tokens) as f64;
                    let cpu = if pool.threads() == 1 {
                        format!("{:>9.1}", flops / best_cpu / 1e9)
                    } else {
                        "        -".into()
                    };
                    println!(
                        "{:<6} {:>5} x {:<5} {:>6} {:>7} {:>9.3} {:>7.1} {:>8.1} {cpu}",
                        qt.name(),
                        rows,
                        cols,
                        tokens,
                        pool.threads(),
                        s * 1e3,
                        w.len() as f64 / s / 1e9,
                        flops / s / 1e9
                    );
                }
            }
        }
    }
    Ok(())
}
