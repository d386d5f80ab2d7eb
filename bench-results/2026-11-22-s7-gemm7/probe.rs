//! Scratch probe (gemm7, dev VM): per-call process CPU time of one GEMM, min over reps.
//! usage: gemm7_probe ISA FORMAT ROWS COLS TOKENS[,TOKENS..] REPS
use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

fn cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; the clock id is
    // a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let isa = match a[1].as_str() { "amx" => Isa::Amx, "avx512" => Isa::Avx512, _ => panic!() };
    let q = QType::from_name(&a[2]).expect("format");
    let (rows, cols): (usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let reps: usize = a[6].parse().unwrap();
    let pool = ThreadPool::new(1).unwrap();
    let mut rng = SplitMix64::new(7);
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut w = vec![0u8; rows * q.row_bytes(cols).unwrap()];
    quant::quantize(q, &wf, &mut w).unwrap();
    for tokens in a[5].split(',').map(|t| t.parse::<usize>().unwrap()) {
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.normal()).collect();
        let mut xq = vec![0u8; tokens * cpu::act_row_bytes(q, cols).unwrap()];
        let mut qbest = f64::MAX;
        for _ in 0..reps {
            let t0 = cpu_now();
            cpu::quantize_activations_with(isa, &pool, q, &x, cols, tokens, &mut xq).unwrap();
            qbest = qbest.min(cpu_now() - t0);
        }
        let mut out = vec![0f32; tokens * rows];
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t0 = cpu_now();
            cpu::matmul_quantized_with(isa, &pool, q, &w, rows, cols, &xq, tokens, &mut out).unwrap();
            best = best.min(cpu_now() - t0);
        }
        println!("{} {} {}x{} t{} {:.3} ms (quantize {:.3} ms)", a[1], a[2], rows, cols, tokens, best * 1e3, qbest * 1e3);
    }
}
