//! Timing of the W4A16 GEMM on DeepSeek-V3 shapes, run on a GPU machine:
//! `cargo run --release -p kt-kernels --features cuda --example cuda_w4a16_timing`.
//! (A benchmark, so not a test.) `cuda/bench_torch_matmul.py` times torch's fp16 matmul
//! the same three ways:
//! - `hot`: one shape, 5 warm-ups, then CUDA events around 100 back-to-back calls (the
//!   figure torch's script reports; weights of up to ~40 MB may stay in the 50 MB L2);
//! - `cold`: all seven shapes called in turn, like one layer of a decode step, an event
//!   between consecutive calls, 20 rounds: each GEMM finds the others' ~240 MB of weights
//!   in L2 instead of its own, so this is the HBM-bound time;
//! - `plan` (m = 1 and 16, hot): the small-m kernel with its k-ways and k slices forced, to
//!   check the automatic choice (printed as `auto`).
//!
//! And what a programmatic dependent launch ([`LaunchOrder::Programmatic`]) gains (kt only):
//! - `hot_pdl`: `hot` with every call a programmatic launch (each call's start and first
//!   weight loads overlap the previous call's tail);
//! - `pair` / `pair_pdl`: two chained GEMMs (the shared expert's and the dense MLP's in and
//!   out projections, the second reading the first's output), 100 pairs back to back;
//! - `seq` / `seq_pdl`: the seven GEMMs in turn with no event between them (20 rounds);
//! - `graph` / `graph_pdl`: `hot`'s 100 calls captured in a graph and replayed (no host launch
//!   cost), also for `floor`, a 64 x 128 weight: the fixed cost of a launch.
//!
//! GB/s counts the packed weights and scales once (n k / 2 + n k / 64 bytes).
//! `KT_W4A16_TOKENS=1,16` limits the token counts (for a profiler run); `KT_W4A16_SLICES=4,7,8`
//! sets the `plan` sweep's k-slice counts.

#[path = "../tests/cuda_common/mod.rs"]
mod cuda_common;

use cuda_common::{gpu_or_skip, random};
use half::f16;
use kt_kernels::cuda::w4a16::{GemmWorkspace, GemvPlan, Int4Weights, W4A16Weights, GROUP};
use kt_kernels::cuda::{DeviceBuf, GpuStream, LaunchOrder};
use kt_kernels::util::SplitMix64;

/// DeepSeek-V3 projections as (name, n = out, k = in).
const SHAPES: [(&str, usize, usize); 7] = [
    ("q_b_proj", 24576, 1536),
    ("kv_b_proj", 32768, 512),
    ("o_proj", 7168, 16384),
    ("shared_gate", 2048, 7168),
    ("shared_down", 7168, 2048),
    ("dense_gate", 18432, 7168),
    ("dense_down", 7168, 18432),
];
const TOKENS: [usize; 7] = [1, 2, 4, 8, 16, 64, 128];
/// The chained pairs (in projection, out projection) as indices into SHAPES.
const PAIRS: [(&str, usize, usize); 2] = [("shared", 3, 4), ("dense", 5, 6)];
const ORDERS: [(&str, LaunchOrder); 2] = [
    ("", LaunchOrder::Serial),
    ("_pdl", LaunchOrder::Programmatic),
];

struct Case {
    name: &'static str,
    n: usize,
    k: usize,
    w: W4A16Weights<f16>,
}

fn weight_bytes(n: usize, k: usize) -> f64 {
    (n * k / 2 + (k / GROUP) * n * 2) as f64
}

fn line(kind: &str, c: &Case, m: usize, extra: &str, us: f64) {
    println!(
        "KT_W4A16 {kind} {} m={m} n={} k={}{extra} us={us:.2} weight_GB/s={:.0} TFLOP/s={:.2}",
        c.name,
        c.n,
        c.k,
        weight_bytes(c.n, c.k) / (us * 1e3),
        2.0 * (m * c.n * c.k) as f64 / (us * 1e6)
    );
}

/// Mean microseconds per call of `call` (which queues `calls` kernels' worth of work) captured
/// 20 times into a graph on `cap` and replayed 5 times after one warm-up replay (`call` ran
/// once outside the capture before, so that the workspace has grown).
fn graphed(cap: &GpuStream, calls: usize, mut call: impl FnMut(&GpuStream)) -> f64 {
    call(cap);
    cap.synchronize().unwrap();
    cap.begin_capture().unwrap();
    for _ in 0..20 {
        call(cap);
    }
    let graph = cap.end_capture().unwrap();
    graph.launch(cap).unwrap();
    let start = cap.record_event().unwrap();
    for _ in 0..5 {
        graph.launch(cap).unwrap();
    }
    let end = cap.record_event().unwrap();
    start.elapsed_ms(&end).unwrap() as f64 * 1000.0 / (100 * calls) as f64
}

/// Mean microseconds of 100 back-to-back calls of `call` after 5 warm-ups.
fn hot(s: &GpuStream, mut call: impl FnMut()) -> f64 {
    let iters = 100;
    for _ in 0..5 {
        call();
    }
    let start = s.record_event().unwrap();
    for _ in 0..iters {
        call();
    }
    let end = s.record_event().unwrap();
    start.elapsed_ms(&end).unwrap() as f64 * 1000.0 / iters as f64
}

fn main() {
    let Some(gpu) = gpu_or_skip("w4a16_timing") else {
        return;
    };
    let s = gpu.stream();
    eprintln!("device: {:?}", gpu.info());
    let mut rng = SplitMix64::new(7);
    let cases: Vec<Case> = SHAPES
        .iter()
        .map(|&(name, n, k)| {
            // Random int4 values and scales: the kernel's speed does not depend on them, and
            // this skips quantizing 130M weights on the host.
            let q = Int4Weights::<f16> {
                n,
                k,
                q: (0..n * k).map(|_| rng.below(16) as i8 - 8).collect(),
                scales: (0..(k / GROUP) * n)
                    .map(|_| f16::from_f32(rng.uniform(0.001, 0.01)))
                    .collect(),
            };
            let w = s.upload_w4a16(&q).unwrap();
            Case { name, n, k, w }
        })
        .collect();
    let mut ws = GemmWorkspace::default();

    let tokens: Vec<usize> = match std::env::var("KT_W4A16_TOKENS") {
        Ok(list) => list
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .expect("KT_W4A16_TOKENS: comma-separated counts")
            })
            .collect(),
        Err(_) => TOKENS.to_vec(),
    };
    for &m in &tokens {
        let xs: Vec<DeviceBuf<f16>> = cases
            .iter()
            .map(|c| s.upload(&random::<f16>(&mut rng, m * c.k, 1.0)).unwrap())
            .collect();
        let mut outs: Vec<DeviceBuf<f16>> = cases
            .iter()
            .map(|c| s.alloc_zeroed::<f16>(m * c.n).unwrap())
            .collect();
        for (i, c) in cases.iter().enumerate() {
            let (x, out) = (&xs[i], &mut outs[i]);
            let plan = if m <= GemvPlan::MAX_ROWS {
                let p = s.w4a16_gemv_plan(m, c.n, c.k, None).unwrap();
                format!(" auto k_ways={} slices={}", p.k_ways, p.slices)
            } else {
                String::new()
            };
            for (suffix, order) in ORDERS {
                let us = hot(s, || {
                    s.w4a16_gemm_ordered(&c.w, x, m, out, &mut ws, order)
                        .unwrap()
                });
                line(&format!("hot{suffix}"), c, m, &plan, us);
            }
        }
        // Chained pairs: out projection reading the in projection's output.
        for (name, a, b) in PAIRS {
            let (ca, cb) = (&cases[a], &cases[b]);
            let mut mid = s.alloc_zeroed::<f16>(m * ca.n).unwrap();
            let mut out = s.alloc_zeroed::<f16>(m * cb.n).unwrap();
            for (suffix, order) in ORDERS {
                let us = hot(s, || {
                    s.w4a16_gemm_ordered(&ca.w, &xs[a], m, &mut mid, &mut ws, order)
                        .unwrap();
                    s.w4a16_gemm_ordered(&cb.w, &mid, m, &mut out, &mut ws, order)
                        .unwrap();
                });
                println!("KT_W4A16 pair{suffix} {name} m={m} us={us:.2}");
            }
        }
        // The seven GEMMs in turn, timed as a whole (no event between two launches).
        for (suffix, order) in ORDERS {
            let us = hot(s, || {
                for (i, c) in cases.iter().enumerate() {
                    s.w4a16_gemm_ordered(&c.w, &xs[i], m, &mut outs[i], &mut ws, order)
                        .unwrap();
                }
            });
            println!("KT_W4A16 seq{suffix} layer m={m} us={us:.2}");
        }
        // Cold: the seven GEMMs in turn, an event before each and one after the last.
        let rounds = 20;
        let mut total = vec![0.0f64; cases.len()];
        for round in 0..=rounds {
            let mut events = Vec::with_capacity(cases.len() + 1);
            for (i, c) in cases.iter().enumerate() {
                events.push(s.record_event().unwrap());
                s.w4a16_gemm(&c.w, &xs[i], m, &mut outs[i], &mut ws)
                    .unwrap();
            }
            events.push(s.record_event().unwrap());
            if round == 0 {
                continue; // warm-up round
            }
            for (i, t) in total.iter_mut().enumerate() {
                *t += events[i].elapsed_ms(&events[i + 1]).unwrap() as f64 * 1000.0;
            }
        }
        for (c, t) in cases.iter().zip(&total) {
            line("cold", c, m, "", t / rounds as f64);
        }
        println!(
            "KT_W4A16 cold layer m={m} us={:.2}",
            total.iter().sum::<f64>() / rounds as f64
        );
        if m == 1 || m == GemvPlan::MAX_ROWS {
            let plan_slices = slice_counts();
            for (i, c) in cases.iter().enumerate() {
                let (x, out) = (&xs[i], &mut outs[i]);
                for k_ways in GemvPlan::K_WAYS {
                    for &slices in &plan_slices {
                        if slices > c.k / GROUP {
                            break;
                        }
                        let plan = GemvPlan::with(m, c.n, c.k, k_ways, slices).unwrap();
                        let us = hot(s, || {
                            s.w4a16_gemv_planned(
                                &c.w,
                                x,
                                m,
                                out,
                                &mut ws,
                                &plan,
                                LaunchOrder::Serial,
                            )
                            .unwrap()
                        });
                        let extra = format!(" k_ways={k_ways} slices={}", plan.slices);
                        line("plan", c, m, &extra, us);
                    }
                }
            }
        }
    }
    graphs(&gpu, &cases, &tokens, &mut rng);
}

/// The k-slice counts of the `plan` sweep: `KT_W4A16_SLICES` (comma-separated, ascending), else
/// 1, 2, 3, 4, 6, 8, 16, 32.
fn slice_counts() -> Vec<usize> {
    match std::env::var("KT_W4A16_SLICES") {
        Ok(v) => v
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .expect("KT_W4A16_SLICES: comma-separated counts")
            })
            .collect(),
        Err(_) => vec![1, 2, 3, 4, 6, 8, 16, 32],
    }
}

/// `graph` / `graph_pdl` lines: the small-m counts of `tokens` on `floor` (64 x 128) and the
/// seven shapes, on a capture stream (which turns cudarc's event tracking off, so it runs
/// last; every buffer is made and synchronized before).
fn graphs(gpu: &kt_kernels::cuda::Gpu, cases: &[Case], tokens: &[usize], rng: &mut SplitMix64) {
    let s = gpu.stream();
    let floor_q = Int4Weights::<f16> {
        n: 64,
        k: 128,
        q: (0..64 * 128).map(|i| (i % 16) as i8 - 8).collect(),
        scales: vec![f16::from_f32(0.01); 64],
    };
    let floor = Case {
        name: "floor",
        n: 64,
        k: 128,
        w: s.upload_w4a16(&floor_q).unwrap(),
    };
    let all: Vec<&Case> = std::iter::once(&floor).chain(cases).collect();
    for &m in tokens.iter().filter(|&&m| m <= GemvPlan::MAX_ROWS) {
        let xs: Vec<DeviceBuf<f16>> = all
            .iter()
            .map(|c| s.upload(&random::<f16>(rng, m * c.k, 1.0)).unwrap())
            .collect();
        let mut outs: Vec<DeviceBuf<f16>> = all
            .iter()
            .map(|c| s.alloc_zeroed::<f16>(m * c.n).unwrap())
            .collect();
        s.synchronize().unwrap();
        let cap = s.new_untracked_stream().unwrap();
        let mut ws = GemmWorkspace::default();
        for (i, c) in all.iter().enumerate() {
            for (suffix, order) in ORDERS {
                let (x, out) = (&xs[i], &mut outs[i]);
                let us = graphed(&cap, 1, |st| {
                    st.w4a16_gemm_ordered(&c.w, x, m, out, &mut ws, order)
                        .unwrap()
                });
                line(&format!("graph{suffix}"), c, m, "", us);
            }
        }
    }
}
