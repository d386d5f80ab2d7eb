//! Scratch probe (gemm8's, reused by gemm9 on the dev VM): one GEMM call on a pool of THREADS, weights resident, min
//! and median over REPS calls of the wall time, and the min of the process CPU time (with
//! one thread the CPU time is the least disturbed by the other helpers' load). Not part of
//! the build: copy to kt-kernels/examples/gemm9_probe.rs and
//! `cargo run --release -p kt-kernels --example gemm9_probe -- amx q4_k 1408 2048 512 1 20`.
//! usage: gemm9_probe ISA FORMAT ROWS COLS TOKENS[,TOKENS..] THREADS REPS
use std::time::Instant;

use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; the clock id is
    // a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let isa = match a[1].as_str() {
        "amx" => Isa::Amx,
        "avx512" => Isa::Avx512,
        _ => panic!("isa"),
    };
    let q = QType::from_name(&a[2]).expect("format");
    let (rows, cols): (usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let threads: usize = a[6].parse().unwrap();
    let reps: usize = a[7].parse().unwrap();
    let pool = ThreadPool::new(threads).unwrap();
    let mut rng = SplitMix64::new(7);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut w = vec![0u8; rows * q.row_bytes(cols).unwrap()];
    quant::quantize(q, &wf, &mut w).unwrap();
    for tokens in a[5].split(',').map(|t| t.parse::<usize>().unwrap()) {
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        let mut out = vec![0f32; tokens * rows];
        let mut qt = Vec::with_capacity(reps);
        let mut xq = vec![0u8; tokens * cpu::act_row_bytes(q, cols).unwrap()];
        for _ in 0..reps {
            let t0 = Instant::now();
            cpu::quantize_activations_with(isa, &pool, q, &x, cols, tokens, &mut xq).unwrap();
            qt.push(t0.elapsed().as_secs_f64());
        }
        let mut times = Vec::with_capacity(reps);
        let mut cpu_min = f64::MAX;
        for _ in 0..reps {
            let (t0, c0) = (Instant::now(), cpu_now());
            cpu::matmul_quantized_with(isa, &pool, q, &w, rows, cols, &xq, tokens, &mut out)
                .unwrap();
            times.push(t0.elapsed().as_secs_f64());
            cpu_min = cpu_min.min(cpu_now() - c0);
        }
        let mut all = Vec::with_capacity(reps);
        let mut all_cpu = f64::MAX;
        for _ in 0..reps {
            let (t0, c0) = (Instant::now(), cpu_now());
            cpu::matmul_with(isa, &pool, q, &w, rows, cols, &x, tokens, &mut out).unwrap();
            all.push(t0.elapsed().as_secs_f64());
            all_cpu = all_cpu.min(cpu_now() - c0);
        }
        for v in [&mut times, &mut qt, &mut all] {
            v.sort_by(|x, y| x.total_cmp(y));
        }
        println!(
            "{} {} {}x{} t{} th{} gemm cpu {:.4} min {:.4} med {:.4} ms | quantize min {:.4} | whole cpu {:.4} min {:.4} med {:.4}",
            a[1], a[2], rows, cols, tokens, threads,
            cpu_min * 1e3,
            times[0] * 1e3, times[reps / 2] * 1e3, qt[0] * 1e3, all_cpu * 1e3, all[0] * 1e3, all[reps / 2] * 1e3
        );
    }
}
