//! `kt-bench gemv-probe`: where the time of a small GEMV at 1 token goes on many threads
//! (issue 2: the 1408x2048 V2-Lite expert matrices, ~100 KB of weights a thread on 16
//! threads, whose calls are mostly fixed costs).
//!
//! The probe runs the GEMV the way the driver does (activations quantized, one item of
//! rows per thread, the format's GEMV kernel from the dispatch table) in several
//! variants, interleaved call by call in one process, each call on the next of enough
//! copies of the matrix to stream it from DRAM:
//! - `driver`: `cpu::matmul_with`, what this binary ships;
//! - `in_order`: the caller quantizes, then one shared counter hands out the items
//!   (`for_each_in_order`, the hand-out before session 11);
//! - `in_order2x`: as `in_order` with two items a thread (half the rows each: a thread
//!   that starts late or streams slowly hands more of its work to the others);
//! - `static`: the caller quantizes, item `i` on thread `i` (`for_each_static`);
//! - `static_rf`: the job is posted at once; the caller (item 0) quantizes into the shared
//!   buffer and raises a flag, the other threads prefetch the first 1 KB of their item's
//!   first four rows and wait for the flag (the wake-up overlaps the quantize);
//! - `quant_priv`: `static`, the caller quantizing into a buffer no other thread reads
//!   (the job reads the shared one, as the last call left it): the quantize's own cost,
//!   without taking its lines back from the threads that read them last call;
//! - `static_wq`: the job is posted at once and every thread quantizes the activations
//!   into a buffer of its own before its item (no thread waits for another);
//! - `static_wq_pf`: as `static_wq`, each thread first prefetching the first 1 KB of its
//!   item's first four rows (the kernel's first register tile) so that the quantize
//!   overlaps the first DRAM misses;
//! - `read`: `static`'s hand-out with the kernel replaced by a plain read of the item's
//!   bytes (sum of 64-bit words): the floor a kernel could reach with these fixed costs;
//! - `read_pf1k` / `read_pf4k` / `read_pf16k`: `read` with a software prefetch (to L1)
//!   of the line that far ahead of each line read: how far ahead a streaming kernel
//!   should ask, with 16 threads streaming (the AVX512 GEMV kernels prefetch one
//!   register tile of rows ahead: 4.6 KB for Q4_K 2048 columns);
//! - `empty`: the round trip of a `for_each_static` job with no work.
//!
//! For the timed variants every thread stamps the TSC when it enters the job, when its
//! item starts and ends, and the caller before quantizing, before posting and after the
//! join. The report gives medians over the calls of each phase, in microseconds from the
//! post (TSC rate calibrated against the OS clock; the TSC is assumed synchronised across
//! cores, as on the machines measured).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kt_kernels::cpu::dispatch::{self, GemmTile};
use kt_kernels::cpu::{self, Isa};
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;

use crate::machine;
use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Weight formats (ggml names).
    #[arg(long, value_delimiter = ',', default_value = "q4_k,q6_k,q2_k")]
    pub formats: Vec<String>,
    /// Shapes as ROWSxCOLS.
    #[arg(long, value_delimiter = ',', default_value = "1408x2048")]
    pub shapes: Vec<String>,
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed calls per variant.
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
    /// Print one JSON object per case and variant.
    #[arg(long)]
    pub json: bool,
}

const VARIANTS: [&str; 13] = [
    "driver",
    "in_order",
    "in_order2x",
    "static",
    "static_rf",
    "quant_priv",
    "static_wq",
    "static_wq_pf",
    "read",
    "read_pf1k",
    "read_pf4k",
    "read_pf16k",
    "empty",
];

/// Stamps of one thread in one call: entered the job, item start, item end.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Stamp {
    enter: u64,
    start: u64,
    end: u64,
    /// The item this thread ran last in the call (u64::MAX: none).
    item: u64,
}

/// Per-thread stamps of every call, each thread's on lines of its own.
struct Stamps {
    calls: usize,
    buf: Vec<Stamp>,
}

impl Stamps {
    fn new(threads: usize, calls: usize) -> Stamps {
        Stamps {
            calls,
            buf: vec![Stamp::default(); threads * (calls + 2)],
        }
    }
    /// The raw slot of (thread, call): thread-major, so a thread writes only its own run.
    fn slot(&self, thread: usize, call: usize) -> usize {
        self.buf.as_ptr() as usize + (thread * (self.calls + 2) + call) * size_of::<Stamp>()
    }
    fn get(&self, thread: usize, call: usize) -> Stamp {
        self.buf[thread * (self.calls + 2) + call]
    }
}

/// A value on a cache-line pair of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// Quantizes `x` into `dst` with the format's activation quantizer.
fn quantize_into(kernels: &dispatch::FormatKernels, x: &[f32], dst: &mut [u8]) {
    // SAFETY: the table only holds quantizers this CPU runs; x is whole blocks and dst
    // is its activation row.
    unsafe { (kernels.quantize_act)(x, dst) };
}

fn tsc() -> u64 {
    // SAFETY: rdtsc exists on every x86-64 CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// TSC ticks per microsecond, against the OS clock over ~20 ms.
fn tsc_per_us() -> f64 {
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, c1) = (Instant::now(), tsc());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e6
}

/// Prefetches the lines of `b` into L1 (a prefetch never faults).
fn prefetch_t0(b: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..b.len()).step_by(64) {
        // SAFETY: a prefetch is a hint: no access, no fault.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                b.as_ptr().wrapping_add(off).cast(),
            )
        };
    }
}

/// A plain read of `b`: the sum of its 64-bit words (eight independent sums); with
/// `ahead > 0`, each line read first prefetches the line `ahead` bytes further (inside `b`).
fn read_sum(b: &[u8], ahead: usize) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = b.chunks_exact(64);
    let mut off = 0usize;
    for c in &mut chunks {
        if ahead > 0 && off + ahead < b.len() {
            prefetch_t0(&b[off + ahead..off + ahead + 1]);
        }
        off += 64;
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[8 * j..8 * j + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    let tail: u64 = chunks.remainder().iter().map(|&x| x as u64).sum();
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

#[derive(serde::Serialize, Default)]
struct Row {
    format: String,
    rows: usize,
    cols: usize,
    threads: usize,
    variant: &'static str,
    dram_gbps: f64,
    /// Median microseconds per call (caller's entry to return).
    call_us: f64,
    bandwidth_fraction: f64,
    /// Medians over the calls, microseconds: the caller's quantize; from the post, the
    /// first / median / last worker entering the job; items' start (last); an item's
    /// kernel (median over all, and the call's longest); the last item's end; the return.
    quant_us: f64,
    enter_first_us: f64,
    enter_median_us: f64,
    enter_last_us: f64,
    start_last_us: f64,
    kernel_median_us: f64,
    kernel_longest_us: f64,
    end_last_us: f64,
    return_us: f64,
    /// Items run by the caller for a worker that did not join (per call, mean; for the
    /// static variants: in_order counts every item the caller took after its first).
    rescued_per_call: f64,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = machine::pool(a.threads)?;
    let threads = pool.threads();
    let isa: Isa = cpu::isa::selected()?;
    let m = machine::measure(pool, isa)?;
    let tpu = tsc_per_us();
    if !a.json {
        println!(
            "kt-bench gemv-probe | {} | isa {} | {threads} threads | read bandwidth {:.1} GB/s | TSC {:.0} MHz | medians, us from the post",
            m.cpu, m.isa, m.dram_gbps, tpu
        );
        println!(
            "{:<6} {:>10} {:<10} {:>7} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "format", "shape", "variant", "call", "of bw", "quant", "in1st", "in_md", "inlst",
            "stlst", "k_md", "k_max", "endlst", "ret", "rescd"
        );
    }
    for f in &a.formats {
        let q = QType::from_name(f).ok_or_else(|| format!("unknown format {f:?}"))?;
        let kernels = *dispatch::table(isa)?.get(q)?;
        for s in &a.shapes {
            let (rows, cols) = crate::matmul::parse_shape(s)?;
            let row_bytes = q.row_bytes(cols)?;
            let act_row = cpu::act_row_bytes(q, cols)?;
            let mat = crate::matmul::make_weights(q, rows, cols, 1)?;
            let copies = (1usize << 30).div_ceil(mat.len()).max(2);
            let all: Vec<Vec<u8>> = (0..copies).map(|_| mat.clone()).collect();
            let mut rng = SplitMix64::new(2);
            let mut x = vec![0f32; cols];
            rng.fill_normal(&mut x, 1.0);
            let mut out = vec![0f32; rows];
            let mut xq = vec![0u8; act_row];
            let mut xq_priv = vec![0u8; act_row];
            quantize_into(&kernels, &x, &mut xq);
            // Per-thread activation buffers of `static_wq`, a page apart.
            let stride = act_row.next_multiple_of(4096);
            let mut xq_own = vec![0u8; stride * threads + 4096];
            let own_base = (xq_own.as_mut_ptr() as usize).next_multiple_of(4096);
            let items = threads.min(rows / 16).max(1);
            let stamps: Vec<Stamps> = VARIANTS
                .iter()
                .map(|_| Stamps::new(threads, a.calls))
                .collect();
            let mut caller: Vec<Vec<[u64; 3]>> =
                VARIANTS.iter().map(|_| vec![[0; 3]; a.calls]).collect();
            let out_p = out.as_mut_ptr() as usize;
            let x_ref = &x;
            let run_item_of = |w: &[u8], i: usize, items: usize, xq_p: usize| {
                let (r0, r1) = (
                    cpu::gemv_bound(i, items, rows),
                    cpu::gemv_bound(i + 1, items, rows),
                );
                let tile = GemmTile {
                    qtype: q,
                    k: cols,
                    w: w[r0 * row_bytes..].as_ptr(),
                    w_stride: row_bytes,
                    rows: r1 - r0,
                    a: xq_p as *const u8,
                    a_stride: act_row,
                    tokens: 1,
                    out: (out_p as *mut f32).wrapping_add(r0),
                    ldo: rows,
                };
                // SAFETY: rows r0..r1 lie inside the matrix `w` (rows x row_bytes), the
                // activation row (act_row bytes at xq_p) is quantized and alive for the call,
                // output rows r0..r1 are this item's alone, and the table only holds kernels
                // this CPU runs.
                unsafe { (kernels.gemm)(&tile) };
            };
            let run_item = |w: &[u8], i: usize, xq_p: usize| run_item_of(w, i, items, xq_p);
            let quantize = |dst: &mut [u8]| {
                // SAFETY: the table only holds quantizers this CPU runs; x is whole blocks
                // and dst is its activation row.
                unsafe { (kernels.quantize_act)(x_ref, dst) };
            };
            let stamp = |st: &Stamps, t: usize, call: usize, which: usize, item: usize| {
                let p = st.slot(t, call) as *mut u64;
                // SAFETY: (t, call) is inside the buffer; a thread writes its own slots only
                // (the caller, thread 0, also for items it rescues), read after the job.
                unsafe {
                    *p.add(which) = tsc();
                    if which == 2 {
                        *p.add(3) = item as u64;
                    }
                }
            };
            // warm-up: every variant a few times
            let mut copy = 0usize;
            for round in 0..(a.calls + 50) {
                for (v, &name) in VARIANTS.iter().enumerate() {
                    let w = &all[copy % copies][..];
                    copy += 1;
                    let call = if round >= 50 { round - 50 } else { a.calls + 1 };
                    let st = &stamps[v];
                    // clear this call's stamps
                    if call < a.calls {
                        for t in 0..threads {
                            let p = st.slot(t, call) as *mut Stamp;
                            // SAFETY: inside the buffer; no job runs now.
                            unsafe {
                                *p = Stamp {
                                    item: u64::MAX,
                                    ..Stamp::default()
                                }
                            };
                        }
                    }
                    let c0 = tsc();
                    let c1;
                    match name {
                        "driver" => {
                            c1 = c0;
                            cpu::matmul_with(isa, pool, q, w, rows, cols, &x, 1, &mut out)?;
                        }
                        "in_order" | "in_order2x" | "static" => {
                            quantize(&mut xq);
                            c1 = tsc();
                            let xq_p = xq.as_ptr() as usize;
                            let n = if name == "in_order2x" {
                                2 * items
                            } else {
                                items
                            };
                            let job = |i: usize, t: usize| {
                                // the first item's entry and start, the last item's end
                                if i < threads {
                                    stamp(st, t, call, 0, i);
                                    stamp(st, t, call, 1, i);
                                }
                                run_item_of(w, i, n, xq_p);
                                stamp(st, t, call, 2, i);
                            };
                            if name == "static" {
                                pool.for_each_static(n, &job);
                            } else {
                                pool.for_each_in_order(n, &job);
                            }
                        }
                        "static_rf" => {
                            c1 = tsc();
                            let ready = Padded(AtomicBool::new(false));
                            let xq_p = xq.as_mut_ptr() as usize;
                            pool.for_each_static(items, &|i, t| {
                                stamp(st, t, call, 0, i);
                                if i == 0 {
                                    // SAFETY: only item 0 writes the shared buffer, and the
                                    // others read it only after the flag.
                                    let dst = unsafe {
                                        std::slice::from_raw_parts_mut(xq_p as *mut u8, act_row)
                                    };
                                    quantize(dst);
                                    ready.0.store(true, Ordering::Release);
                                } else {
                                    let r0 = cpu::gemv_bound(i, items, rows);
                                    let nr = (cpu::gemv_bound(i + 1, items, rows) - r0).min(4);
                                    for r in r0..r0 + nr {
                                        prefetch_t0(
                                            &w[r * row_bytes..(r * row_bytes + 1024).min(w.len())],
                                        );
                                    }
                                    // Item 0 runs first on the caller (also when it runs
                                    // this item for a late worker): this ends.
                                    while !ready.0.load(Ordering::Acquire) {
                                        std::hint::spin_loop();
                                    }
                                }
                                stamp(st, t, call, 1, i);
                                run_item(w, i, xq_p);
                                stamp(st, t, call, 2, i);
                            });
                        }
                        "quant_priv" => {
                            quantize(&mut xq_priv);
                            c1 = tsc();
                            let xq_p = xq.as_ptr() as usize;
                            pool.for_each_static(items, &|i, t| {
                                stamp(st, t, call, 0, i);
                                stamp(st, t, call, 1, i);
                                run_item(w, i, xq_p);
                                stamp(st, t, call, 2, i);
                            });
                        }
                        "static_wq" | "static_wq_pf" => {
                            c1 = tsc();
                            let pf = name == "static_wq_pf";
                            let job = |i: usize, t: usize| {
                                stamp(st, t, call, 0, i);
                                if pf {
                                    let r0 = cpu::gemv_bound(i, items, rows);
                                    let nr = (cpu::gemv_bound(i + 1, items, rows) - r0).min(4);
                                    for r in r0..r0 + nr {
                                        prefetch_t0(
                                            &w[r * row_bytes..(r * row_bytes + 1024).min(w.len())],
                                        );
                                    }
                                }
                                let p = own_base + t * stride;
                                // SAFETY: thread t's own buffer of act_row bytes (a page
                                // apart from the others), inside xq_own.
                                let dst = unsafe {
                                    std::slice::from_raw_parts_mut(p as *mut u8, act_row)
                                };
                                quantize(dst);
                                stamp(st, t, call, 1, i);
                                run_item(w, i, p);
                                stamp(st, t, call, 2, i);
                            };
                            pool.for_each_static(items, &job);
                        }
                        "read" | "read_pf1k" | "read_pf4k" | "read_pf16k" => {
                            quantize(&mut xq);
                            c1 = tsc();
                            let ahead = match name {
                                "read_pf1k" => 1 << 10,
                                "read_pf4k" => 4 << 10,
                                "read_pf16k" => 16 << 10,
                                _ => 0,
                            };
                            let sink = std::sync::atomic::AtomicU64::new(0);
                            pool.for_each_static(items, &|i, t| {
                                stamp(st, t, call, 0, i);
                                stamp(st, t, call, 1, i);
                                let (r0, r1) = (
                                    cpu::gemv_bound(i, items, rows),
                                    cpu::gemv_bound(i + 1, items, rows),
                                );
                                let v = read_sum(&w[r0 * row_bytes..r1 * row_bytes], ahead);
                                sink.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
                                stamp(st, t, call, 2, i);
                            });
                            std::hint::black_box(sink.into_inner());
                        }
                        _ => {
                            c1 = tsc();
                            pool.for_each_static(items, &|i, t| {
                                stamp(st, t, call, 0, i);
                                stamp(st, t, call, 1, i);
                                stamp(st, t, call, 2, i);
                            });
                        }
                    }
                    let c2 = tsc();
                    if call < a.calls {
                        caller[v][call] = [c0, c1, c2];
                    }
                }
            }
            std::hint::black_box(&out);
            for (v, &name) in VARIANTS.iter().enumerate() {
                let us = |d: i64| d as f64 / tpu;
                let mut col: [Vec<f64>; 11] = Default::default();
                let mut rescued = 0usize;
                for (call, &[c0, c1, c2]) in caller[v].iter().enumerate() {
                    col[0].push(us(c2 as i64 - c0 as i64));
                    col[1].push(us(c1 as i64 - c0 as i64));
                    col[9].push(us(c2 as i64 - c1 as i64));
                    if name == "driver" {
                        continue;
                    }
                    let mut enters = Vec::with_capacity(threads);
                    let (mut st_last, mut end_last, mut k_max) = (f64::MIN, f64::MIN, 0f64);
                    for t in 0..threads {
                        let s = stamps[v].get(t, call);
                        if s.item == u64::MAX {
                            continue;
                        }
                        if t == 0 && s.item != 0 {
                            rescued += 1;
                        }
                        if t > 0 {
                            enters.push(us(s.enter as i64 - c1 as i64));
                        }
                        st_last = st_last.max(us(s.start as i64 - c1 as i64));
                        end_last = end_last.max(us(s.end as i64 - c1 as i64));
                        let k = us(s.end as i64 - s.start as i64);
                        k_max = k_max.max(k);
                        col[6].push(k);
                    }
                    enters.sort_by(|a, b| a.total_cmp(b));
                    if let (Some(&f), Some(&l)) = (enters.first(), enters.last()) {
                        col[2].push(f);
                        col[3].push(enters[enters.len() / 2]);
                        col[4].push(l);
                    }
                    col[5].push(st_last);
                    col[7].push(k_max);
                    col[8].push(end_last);
                }
                let med: Vec<f64> = col.iter_mut().map(|c| median(c)).collect();
                let bytes = (rows * row_bytes) as f64;
                let row = Row {
                    format: q.name().into(),
                    rows,
                    cols,
                    threads,
                    variant: name,
                    dram_gbps: m.dram_gbps,
                    call_us: med[0],
                    bandwidth_fraction: if name == "empty" {
                        f64::NAN
                    } else {
                        bytes / (med[0] * 1e-6) / 1e9 / m.dram_gbps
                    },
                    quant_us: med[1],
                    enter_first_us: med[2],
                    enter_median_us: med[3],
                    enter_last_us: med[4],
                    start_last_us: med[5],
                    kernel_median_us: med[6],
                    kernel_longest_us: med[7],
                    end_last_us: med[8],
                    return_us: med[9],
                    rescued_per_call: rescued as f64 / a.calls as f64,
                };
                if a.json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!(
                        "{:<6} {:>10} {:<10} {:>7.2} {:>4.0}% {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.3}",
                        row.format,
                        format!("{rows}x{cols}"),
                        name,
                        row.call_us,
                        100.0 * row.bandwidth_fraction,
                        row.quant_us,
                        row.enter_first_us,
                        row.enter_median_us,
                        row.enter_last_us,
                        row.start_last_us,
                        row.kernel_median_us,
                        row.kernel_longest_us,
                        row.end_last_us,
                        row.return_us,
                        row.rescued_per_call
                    );
                }
            }
        }
    }
    Ok(())
}
