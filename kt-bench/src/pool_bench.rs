//! `kt-bench pool`: what a parallel kernel call costs beyond its work, kt's pinned pool
//! against rayon, at decode granularity (a GEMV of a DeepSeek expert matrix is a few to a
//! few tens of microseconds per thread).
//!
//! Each job is `threads * --items-per-thread` items (8 by default); an item sums
//! `--item-floats` floats of a buffer that stays in cache, so the time measured is
//! dispatch, hand-out and join, plus fixed work. `--items-per-thread 1 --item-floats 0`
//! is the bare round trip of a job (post, every thread joins, join back). `kt pool` is
//! `for_each` (a share per thread, then stealing), `in order` is `for_each_in_order`
//! (one shared counter, the hand-out the MoE decode job needs), `static` is
//! `for_each_static` (item `i` on thread `i`, one item a thread: only with
//! `--items-per-thread 1`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::machine;
use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Floats summed per work item (0 = measure pure dispatch overhead).
    #[arg(long, value_delimiter = ',', default_value = "0,2048,16384")]
    pub item_floats: Vec<usize>,
    /// Work items per thread in each job.
    #[arg(long, default_value_t = 8)]
    pub items_per_thread: usize,
    /// Jobs timed per case.
    #[arg(long, default_value_t = 20000)]
    pub jobs: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    threads: usize,
    items: usize,
    item_floats: usize,
    kt_pool_us: f64,
    kt_in_order_us: f64,
    kt_static_us: Option<f64>,
    rayon_us: f64,
}

fn work(buf: &[f32]) -> u64 {
    buf.iter().fold(0f32, |a, &b| a + b).to_bits() as u64
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = machine::pool(a.threads)?;
    let threads = pool.threads();
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    if a.items_per_thread == 0 {
        return Err("--items-per-thread must be at least 1".into());
    }
    let items = threads * a.items_per_thread;
    if !a.json {
        println!("kt-bench pool | {} | {threads} threads | {items} items per job | median microseconds per job", machine::cpu_model());
        println!(
            "{:>12} {:>10} {:>10} {:>10} {:>10}",
            "floats/item", "kt pool", "in order", "static", "rayon"
        );
    }
    for &n in &a.item_floats {
        let bufs: Vec<Vec<f32>> = (0..items).map(|i| vec![1.0 + i as f32; n]).collect();
        let sink = AtomicU64::new(0);
        // The two pools are timed in separate phases: interleaving them would have each
        // pool's spinning workers steal cores from the other.
        let time_jobs = |job: &dyn Fn()| {
            let mut v = Vec::with_capacity(a.jobs);
            for round in 0..a.jobs + 100 {
                let t = Instant::now();
                job();
                if round >= 100 {
                    v.push(t.elapsed().as_secs_f64());
                }
            }
            v
        };
        let mut kt = time_jobs(&|| {
            pool.for_each(items, &|i, _| {
                sink.fetch_add(work(&bufs[i]), Ordering::Relaxed);
            })
        });
        let mut ordered = time_jobs(&|| {
            pool.for_each_in_order(items, &|i, _| {
                sink.fetch_add(work(&bufs[i]), Ordering::Relaxed);
            })
        });
        let fixed = (a.items_per_thread == 1).then(|| {
            time_jobs(&|| {
                pool.for_each_static(items, &|i, _| {
                    sink.fetch_add(work(&bufs[i]), Ordering::Relaxed);
                })
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut ry = time_jobs(&|| {
            rayon_pool.install(|| {
                (0..items).into_par_iter().for_each(|i| {
                    sink.fetch_add(work(&bufs[i]), Ordering::Relaxed);
                })
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::hint::black_box(sink.load(Ordering::Relaxed));
        let row = Row {
            threads,
            items,
            item_floats: n,
            kt_pool_us: median(&mut kt) * 1e6,
            kt_in_order_us: median(&mut ordered) * 1e6,
            kt_static_us: fixed.map(|mut v| median(&mut v) * 1e6),
            rayon_us: median(&mut ry) * 1e6,
        };
        if a.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>12} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                n,
                row.kt_pool_us,
                row.kt_in_order_us,
                row.kt_static_us.unwrap_or(f64::NAN),
                row.rayon_us
            );
        }
    }
    Ok(())
}
