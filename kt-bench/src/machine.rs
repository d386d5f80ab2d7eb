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
    /// Also probe the read bandwidth over these buffer sizes (bytes; `cycle` = what the
    /// DRAM-bound benchmarks cycle through): whether 1 GiB is past the last-level cache.
    #[arg(long, value_delimiter = ',')]
    pub probe_bytes: Vec<String>,
}

/// What was measured about the machine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub isa: String,
    pub threads: usize,
    /// The read probe: its best pattern's median pass over buffers read in turn
    /// (`membw::Bandwidth::gbps`); the fractions of bandwidth are taken against it.
    pub dram_gbps: f64,
    /// The probe's fastest single pass (what `dram_gbps` was before session 35).
    pub dram_gbps_best_pass: f64,
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

/// The largest cache of cpu 0 (`/sys/devices/system/cpu/cpu0/cache`), 32 MiB when unknown.
pub fn last_level_cache_bytes() -> usize {
    (0..8)
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
                .ok()
        })
        .filter_map(|s| {
            let s = s.trim();
            let (num, mul) = match s.chars().last() {
                Some('K') => (&s[..s.len() - 1], 1 << 10),
                Some('M') => (&s[..s.len() - 1], 1 << 20),
                Some('G') => (&s[..s.len() - 1], 1 << 30),
                _ => (s, 1),
            };
            num.parse::<usize>().ok().map(|n| n * mul)
        })
        .max()
        .unwrap_or(32 << 20)
}

/// `MemAvailable` of `/proc/meminfo`.
pub fn available_memory_bytes() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<usize>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Bytes of each of the read probe's buffers (`membw::COLD_SLICES` of them, read in turn):
/// 1 GiB, or a sixteenth of the memory free when first asked where that is less (at least
/// 64 MiB), so the probe's buffers never take more than a quarter of it. Fixed for the
/// process at the first call, so every reading of a run reads buffers of one size.
pub fn probe_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| probe_bytes_for(available_memory_bytes()))
}

fn probe_bytes_for(avail: Option<usize>) -> usize {
    const MOST: usize = 1 << 30;
    avail.map_or(MOST, |a| (a / 16).clamp(64 << 20, MOST))
}

/// Bytes of weights a DRAM-bound benchmark cycles through so that a weight comes back to
/// the last-level cache's window rarely enough to be read from DRAM: 16 x the last-level
/// cache, at least 1 GiB. (On the device, with a 300 MiB L3, GEMVs cycling through 1 GiB
/// read up to 118% of the old one-stream probe; through 5 GB still up to 130%: the probe
/// was low, not the cache serving them, which `membw`'s read patterns now account for.)
pub fn cycle_bytes() -> usize {
    (1usize << 30).max(16 * last_level_cache_bytes())
}

/// Measures the pool's read bandwidth over buffers of [`probe_bytes`] read in turn (well
/// past any last-level cache; the best of `membw::PATTERNS` by its median pass) and the arithmetic
/// peak of `isa`.
pub fn measure(pool: &ThreadPool, isa: Isa) -> Result<Machine, kt_kernels::KtError> {
    let bw = membw::measure_read_bandwidth(pool, probe_bytes(), 5);
    with_bandwidth(pool, isa, bw)
}

/// [`measure`] with the read bandwidth already measured.
fn with_bandwidth(
    pool: &ThreadPool,
    isa: Isa,
    bw: membw::Bandwidth,
) -> Result<Machine, kt_kernels::KtError> {
    let pk = peak::measure_peak(pool, isa)?;
    Ok(Machine {
        cpu: cpu_model(),
        isa: isa.to_string(),
        threads: pool.threads(),
        dram_gbps: bw.gbps,
        dram_gbps_best_pass: bw.best_pass_gbps,
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
    // Each pattern's median and best pass; the highest median is the machine's figure (as
    // `measure` finds it).
    let patterns = membw::measure_patterns(pool, probe_bytes(), 5, &membw::PATTERNS);
    let m = with_bandwidth(pool, isa, membw::best_pattern(patterns.clone()))?;
    let sizes = a
        .probe_bytes
        .iter()
        .map(|s| match s.trim() {
            "cycle" => Ok(cycle_bytes()),
            n => n
                .parse::<usize>()
                .map_err(|_| format!("--probe-bytes {n:?}: expected a byte count or `cycle`")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let probes: Vec<(usize, f64)> = sizes
        .iter()
        .map(|&b| (b, membw::measure_read_bandwidth(pool, b, 5).gbps))
        .collect();
    if a.json {
        let mut j = serde_json::to_value(&m)?;
        j["last_level_cache_bytes"] = last_level_cache_bytes().into();
        j["read_patterns"] = patterns
            .iter()
            .map(|b| serde_json::json!({"pattern": b.pattern, "gbps": b.gbps, "best_pass_gbps": b.best_pass_gbps}))
            .collect();
        j["probes"] = probes
            .iter()
            .map(|&(b, g)| serde_json::json!({"bytes": b, "gbps": g}))
            .collect();
        println!("{j}");
    } else {
        println!("cpu: {}\nisa: {}  threads: {}", m.cpu, m.isa, m.threads);
        println!(
            "memory read bandwidth: {:.1} GB/s (median pass; fastest pass {:.1})\npeak ({}): {:.1} GOP/s",
            m.dram_gbps, m.dram_gbps_best_pass, m.peak_kind, m.peak_gops
        );
        for b in &patterns {
            println!(
                "  read pattern {}: {:.1} GB/s (fastest pass {:.1})",
                b.pattern, b.gbps, b.best_pass_gbps
            );
        }
        for (b, g) in probes {
            println!("read bandwidth over {:.2} GB: {g:.1} GB/s", b as f64 / 1e9);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_buffers_follow_the_free_memory() {
        const GIB: usize = 1 << 30;
        // plenty free, or unknown: 1 GiB a buffer
        assert_eq!(probe_bytes_for(Some(100 * GIB)), GIB);
        assert_eq!(probe_bytes_for(None), GIB);
        // 8 GiB free: a sixteenth, so the 4 buffers take a quarter
        assert_eq!(probe_bytes_for(Some(8 * GIB)), GIB / 2);
        assert!(kt_kernels::cpu::membw::COLD_SLICES * probe_bytes_for(Some(8 * GIB)) <= 2 * GIB);
        // very little: no smaller than 64 MiB
        assert_eq!(probe_bytes_for(Some(GIB / 2)), 64 << 20);
        // fixed for the process
        assert_eq!(probe_bytes(), probe_bytes());
    }
}
