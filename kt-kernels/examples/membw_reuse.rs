//! Whether the read probe's figure owes part of itself to the last-level cache. The probe
//! (`cpu::membw::ReadProbe::measure`) reads one 1 GiB buffer 3 x 5 times back to back and
//! keeps the best pass; a last-level cache that does not evict in strict LRU order can keep
//! part of a buffer read over and over (a 1 GiB cycle against a 300 MiB L3), so later passes
//! can read some lines from it, while a kernel's weights (fresh experts, cycled copies) come
//! from DRAM. Here, in rounds: the probe's passes over one buffer (`hot`), and the same
//! patterns each over the next of several other 1 GiB buffers in turn (`cold`: a buffer is
//! read again only after the others, GiBs later).
//!   cargo run --release -p kt-kernels --example membw_reuse -- THREADS COLD_GIB ROUNDS

use kt_kernels::cpu::membw::{self, PATTERNS};
use kt_kernels::cpu::ThreadPool;

const GIB: usize = 1 << 30;

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    args.get(i).map_or(Ok(default), |a| {
        a.parse().map_err(|_| format!("argument {i}: {a:?}"))
    })
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = arg(&args, 0, 2)?;
    let cold = arg(&args, 1, 4)?.max(2);
    let rounds = arg(&args, 2, 2)?;
    let pool = ThreadPool::new(threads).map_err(|e| e.to_string())?;
    // slice 0 is the hot buffer, 1..=cold the cold ones
    let buf = membw::filled(&pool, (1 + cold) * GIB);
    let slice = |k: usize| &buf.as_slice()[k * GIB..(k + 1) * GIB];
    let mut next_cold = 0;
    for round in 0..rounds {
        for kind in ["hot", "cold"] {
            // per pattern, its three passes' GB/s, the patterns taking turns as in the probe
            let mut each = vec![Vec::new(); PATTERNS.len()];
            for _ in 0..3 {
                for (j, pat) in PATTERNS.iter().enumerate() {
                    let region = if kind == "hot" {
                        slice(0)
                    } else {
                        next_cold = next_cold % cold + 1;
                        slice(next_cold)
                    };
                    let bw = membw::measure_region(&pool, region, 1, std::slice::from_ref(pat));
                    each[j].push(bw[0].gbps);
                }
            }
            let all: Vec<f64> = each.iter().flatten().copied().collect();
            let (lo, med, hi) = stats(&all);
            let best_pattern = each
                .iter()
                .enumerate()
                .max_by(|a, b| stats(a.1).2.total_cmp(&stats(b.1).2))
                .map(|(j, _)| PATTERNS[j].name)
                .unwrap_or("");
            let (_, med_best, _) = stats(
                &each[PATTERNS
                    .iter()
                    .position(|p| p.name == best_pattern)
                    .unwrap_or(0)],
            );
            println!(
                "{{\"round\":{round},\"kind\":\"{kind}\",\"best\":{hi:.2},\"median\":{med:.2},\"min\":{lo:.2},\"best_pattern\":\"{best_pattern}\",\"best_pattern_median\":{med_best:.2},\"passes\":{:?}}}",
                each.iter()
                    .map(|v| v.iter().map(|g| (g * 10.0).round() / 10.0).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}
