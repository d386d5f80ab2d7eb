//! The machine facts every report carries: CPU model, ISA, threads, and the memory
//! bandwidth and arithmetic peak measured in the same run.

use kt_kernels::cpu::{self, membw, peak, Isa, ThreadPool};

#[derive(clap::Args)]
pub struct Args {
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What was measured about the machine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub isa: String,
    pub threads: usize,
    pub dram_gbps: f64,
    pub peak_gops: f64,
    pub peak_kind: &'static str,
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Measures the pool's read bandwidth over 1 GiB (well past any last-level cache) and
/// the arithmetic peak of `isa`.
pub fn measure(pool: &ThreadPool, isa: Isa) -> Result<Machine, kt_kernels::KtError> {
    let bw = membw::measure_read_bandwidth(pool, 1 << 30, 5);
    let pk = peak::measure_peak(pool, isa)?;
    Ok(Machine {
        cpu: cpu_model(),
        isa: isa.to_string(),
        threads: pool.threads(),
        dram_gbps: bw.gbps,
        peak_gops: pk.gops,
        peak_kind: pk.kind,
    })
}

/// The global pool sized by `--threads` (or KT_THREADS / all cores).
pub fn pool(threads: Option<usize>) -> Result<&'static ThreadPool, kt_kernels::KtError> {
    match threads {
        Some(n) => cpu::pool::init_global(n),
        None => Ok(cpu::pool::global()),
    }
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = pool(a.threads)?;
    let isa = cpu::isa::selected()?;
    let m = measure(pool, isa)?;
    if a.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        println!("cpu: {}\nisa: {}  threads: {}", m.cpu, m.isa, m.threads);
        println!(
            "memory read bandwidth: {:.1} GB/s\npeak ({}): {:.1} GOP/s",
            m.dram_gbps, m.peak_kind, m.peak_gops
        );
    }
    Ok(())
}
