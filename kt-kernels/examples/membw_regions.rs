//! Whether the read probe's figure depends on where its buffer lies: several buffers of the
//! same size, all kept, each read in turn with the probe's best pattern (`cpu::membw`), in
//! rounds. On a VM whose memory comes from more than one place (host NUMA nodes), buffers
//! of the same size can read at different rates, and one probe buffer is then not what a
//! model's gigabytes of weights get.
//!   cargo run --release -p kt-kernels --example membw_regions -- THREADS REGIONS GIB ROUNDS

use kt_kernels::cpu::membw::{self, ReadProbe};
use kt_kernels::cpu::ThreadPool;

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
    let regions: Vec<ReadProbe> = (0..regions).map(|_| ReadProbe::new(&pool, bytes)).collect();
    for round in 0..rounds {
        for (r, probe) in regions.iter().enumerate() {
            // the best of the probe's patterns, two passes each
            let bw = probe.measure(&pool, 2);
            println!(
                "{{\"round\":{round},\"region\":{r},\"bytes\":{},\"pattern\":\"{}\",\"gbps\":{:.2}}}",
                bw.bytes, bw.pattern, bw.gbps
            );
        }
        // and the probe as kt-bench runs it: a fresh 1 GiB buffer, best pattern of five
        let fresh = membw::measure_read_bandwidth(&pool, 1 << 30, 3);
        println!(
            "{{\"round\":{round},\"region\":\"fresh 1 GiB\",\"pattern\":\"{}\",\"gbps\":{:.2}}}",
            fresh.pattern, fresh.gbps
        );
    }
    Ok(())
}
