//! The read-bandwidth probe's patterns side by side (`cpu::membw`): which way of reading a
//! work item pulls the most from DRAM on this machine.
//!   cargo run --release -p kt-kernels --example membw_patterns --
//!     THREADS [STREAMS:PREFETCH[l2][@KIB],...] [BYTES]
//! Without a list it tries the probe's own patterns. `@KIB` sets the item (slice) size in
//! KiB (default 1024, the probe's), e.g. `4:1536@288` for a 128-row Q4_K item of 2048 columns
//! read as the one-token GEMV's four streams.

use kt_kernels::cpu::membw::{self, Pattern};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let threads: usize = match args.next() {
        Some(t) => t.parse().map_err(|_| format!("threads {t:?}"))?,
        None => 2,
    };
    let patterns: Vec<Pattern> = match args.next() {
        None => membw::PATTERNS.to_vec(),
        Some(list) => list
            .split(',')
            .map(|p| {
                let (p_, kib) = match p.split_once('@') {
                    Some((q, k)) => (q, k.parse().map_err(|_| format!("slice KiB {k:?}"))?),
                    None => (p, 0usize),
                };
                let (s, pf) = p_
                    .split_once(':')
                    .ok_or(format!("pattern {p:?}: STREAMS:PREFETCH[l2]"))?;
                // `l2` after the distance: the prefetch goes to L2 (`prefetcht1`).
                let (pf, l2) = match pf.strip_suffix("l2") {
                    Some(pf) => (pf, true),
                    None => (pf, false),
                };
                Ok(Pattern {
                    name: Box::leak(p.to_string().into_boxed_str()),
                    streams: s.parse().map_err(|_| format!("streams {s:?}"))?,
                    prefetch: pf.parse().map_err(|_| format!("prefetch {pf:?}"))?,
                    l2,
                    slice: kib << 10,
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let bytes: usize = match args.next() {
        Some(b) => b.parse().map_err(|_| format!("bytes {b:?}"))?,
        None => 1 << 30,
    };
    let pool = kt_kernels::cpu::ThreadPool::new(threads).map_err(|e| e.to_string())?;
    for b in membw::measure_patterns(&pool, bytes, 5, &patterns) {
        println!(
            "{{\"threads\":{threads},\"bytes\":{},\"pattern\":\"{}\",\"gbps\":{:.2}}}",
            b.bytes, b.pattern, b.gbps
        );
    }
    Ok(())
}
