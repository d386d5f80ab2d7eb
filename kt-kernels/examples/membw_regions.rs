//! Whether the read probe's figure depends on where its buffer lies: several buffers of the
//! same size, all kept, each read in turn with the probe's patterns (`cpu::membw`), in
//! rounds. On a VM whose memory comes from more than one place (host NUMA nodes), buffers
//! of the same size can read at different rates, and one probe buffer is then not what a
//! model's gigabytes of weights get.
//!   cargo run --release -p kt-kernels --example membw_regions -- THREADS REGIONS GIB ROUNDS

use kt_kernels::cpu::membw::{self, PATTERNS};
use kt_kernels::cpu::ThreadPool;
use kt_kernels::util::AlignedBuf;

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    args.get(i).map_or(Ok(default), |a| {
        a.parse().map_err(|_| format!("argument {i}: {a:?}"))
    })
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = arg(&args, 0, 2)?;
    let regions = arg(&args, 1, 4)?;
    let gib = arg(&args, 2, 1)?;
    let rounds = arg(&args, 3, 2)?;
    let pool = ThreadPool::new(threads).map_err(|e| e.to_string())?;
    let bytes = gib << 30;
    // each a buffer of its own, filled once and kept
    let regions: Vec<AlignedBuf> = (0..regions).map(|_| membw::filled(&pool, bytes)).collect();
    for round in 0..rounds {
        for (r, buf) in regions.iter().enumerate() {
            // the best of the probe's patterns by the median pass, two passes each over
            // this buffer
            let bw =
                membw::best_pattern(membw::measure_region(&pool, buf.as_slice(), 2, &PATTERNS));
            println!(
                "{{\"round\":{round},\"region\":{r},\"bytes\":{},\"pattern\":\"{}\",\"gbps\":{:.2},\"best_pass_gbps\":{:.2}}}",
                bw.bytes, bw.pattern, bw.gbps, bw.best_pass_gbps
            );
        }
        // and the probe as kt-bench runs it: fresh 1 GiB buffers read in turn
        let fresh = membw::measure_read_bandwidth(&pool, 1 << 30, 3);
        println!(
            "{{\"round\":{round},\"region\":\"fresh probe\",\"pattern\":\"{}\",\"gbps\":{:.2},\"best_pass_gbps\":{:.2}}}",
            fresh.pattern, fresh.gbps, fresh.best_pass_gbps
        );
    }
    Ok(())
}
