//! `kt-bench moe`: one DeepSeek MoE layer's routed experts through kt's fused operator.
//!
//! Weights are random (never zero): a few distinct rows per projection quantized with the
//! reference quantizer and repeated to fill every expert (quantizing 256 experts x 44M
//! weights would take minutes; repeated rows read the same from DRAM). The stacks of the
//! layer copies are built in parallel ([`par_build`]), each from its own seed, so the bytes
//! are those of a serial build. Routing is
//! uniform, k distinct experts per token, drawn fresh for every call before timing, so
//! the experts a call reads vary from call to call. To measure DRAM rather than the
//! cache, calls also cycle through enough copies of the layer to exceed 1 GiB and 16
//! times the last-level cache (at most half the free memory; one copy when the layer
//! alone is that big).
//!
//! `--format int4|int8|bf16` (with `--group G` for the integer formats) runs the repacked
//! layer kind instead (`kt_kernels::cpu::moe::repack`): one random expert per projection is
//! packed and its bytes repeated for every expert, run by `RepackedMoe` (AMX for busy
//! experts where the ISA is AMX, AVX512-VNNI otherwise).
//!
//! Reported: time per call (median after warm-up), tokens/s, effective bandwidth of the
//! weights the call touched (bytes of the distinct experts it used), its fraction of the
//! read bandwidth measured in the same run, and TFLOP/s (2 per multiply-add, meaningful
//! for prefill) against the arithmetic peak measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use kt_kernels::cpu::moe::repack::{
    Prefetch, RepackFormat, RepackedLayer, RepackedMoe, RepackedStack,
};
use kt_kernels::cpu::moe::{ExpertStack, MoeContext, MoeLayer, PoolRef};
use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

use crate::machine;
use crate::moe_routing::{recent_calls, Drawer, Routing};
use crate::probe_rounds::ProbeRounds;
use crate::read_ceiling;

#[derive(clap::Args)]
pub struct Args {
    /// Layer shape: deepseek-v3 (H=7168, I=2048, E=256, k=8) or deepseek-v2-lite (H=2048, I=1408, E=64, k=6).
    #[arg(long, default_value = "deepseek-v2-lite")]
    pub shape: String,
    /// Weight format: q4_k (llama.cpp's Q4_K_M mix), q3_k (Q3_K_M), q2_k, q5_k (GGUF-native);
    /// int4, int8, bf16 (repacked at load for AMX / AVX512-VNNI, group-scaled with --group).
    #[arg(long, default_value = "q4_k")]
    pub format: String,
    /// Scale group of the repacked int4/int8 formats: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    pub group: usize,
    /// Weight prefetch of the repacked AMX kernel: none, or GROUPS:l1 / GROUPS:l2 (scale
    /// groups ahead, into L1 or L2); default 2:l1. Repacked formats only. A list (`2:l1,4:l1`)
    /// runs the settings in turn, one call each, and reports each: an A/B within one
    /// process, on the same memory and at the same time.
    #[arg(long, value_delimiter = ',')]
    pub prefetch: Vec<String>,
    /// Override the down projection's format (ggml name, e.g. q6_k, q8_0).
    #[arg(long)]
    pub down_format: Option<String>,
    /// Tokens per call.
    #[arg(long, default_value_t = 1)]
    pub tokens: usize,
    /// Threads (default: all cores, or KT_THREADS). A list (`1,2,4,8,16`) measures each
    /// count in turn over the same layer copies (built once), each on a pool of its own
    /// (workers pinned to cores 1..n as in the global pool), with its own bandwidth and
    /// peak probes: a thread-scaling sweep in one process.
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Minimum seconds of timed calls.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Minimum timed calls (per setting of --prefetch).
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// How each call's experts are drawn: `fresh` (none that a recent call of the same
    /// layer copy read, so none can still be cached: what a decode step meets) or `uniform`.
    /// A list (`uniform,fresh`) takes turns call by call and reports each.
    #[arg(long, value_delimiter = ',', default_value = "fresh")]
    pub routing: Vec<Routing>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also time the read ceiling (GGUF formats, one token): each call's expert bytes read
    /// again in one job, with each of the read probe's patterns at one and at four items a
    /// thread and nothing else done, taking turns with the operator call by call
    /// (`read_ceiling`). Reports each, and the operator against the fastest. A timed
    /// operator call that would follow a read form follows an untimed operator call
    /// instead (`read_ceiling::needs_lead_in`).
    #[arg(long)]
    pub ceiling: bool,
    /// Also report the CPU time per call of all the process's threads (Linux
    /// `/proc/self/task/*/schedstat`): on a machine shared with other work, wall time
    /// grows with the time slices lost to it, CPU time much less.
    #[arg(long)]
    pub cpu_time: bool,
}

struct Shape {
    name: &'static str,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
}

fn shape(name: &str) -> Result<Shape, String> {
    match name {
        "deepseek-v3" => Ok(Shape {
            name: "deepseek-v3",
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        }),
        "deepseek-v2-lite" => Ok(Shape {
            name: "deepseek-v2-lite",
            hidden: 2048,
            inter: 1408,
            experts: 64,
            top_k: 6,
        }),
        other => Err(format!(
            "unknown shape {other:?}: deepseek-v3 or deepseek-v2-lite"
        )),
    }
}

/// (gate, up, down) formats of a llama.cpp quantization mix. Down rows have I elements;
/// when I is not a multiple of 256 (V2-Lite: 1408) llama.cpp falls back from a K-quant
/// to a 32-block format: Q4_K -> Q5_0, Q5_K -> Q5_1; for Q2_K its fallback (IQ4_NL) is
/// not a kt format, so Q4_0 (same 4.5 bits) stands in.
fn formats(format: &str, inter: usize) -> Result<(QType, QType, QType), String> {
    let k_ok = inter.is_multiple_of(256);
    let (gu, down) = match format {
        // Q4_K_M: Q4_K gate/up; down Q4_K (Q6_K in the "more bits" layers, see --down-format).
        "q4_k" => (QType::Q4_K, if k_ok { QType::Q4_K } else { QType::Q5_0 }),
        "q2_k" => (QType::Q2_K, if k_ok { QType::Q2_K } else { QType::Q4_0 }),
        // Q3_K_M: Q3_K gate/up, down Q4_K (Q5_K in the "more bits" layers).
        "q3_k" => (QType::Q3_K, if k_ok { QType::Q4_K } else { QType::Q5_0 }),
        "q5_k" => (QType::Q5_K, if k_ok { QType::Q5_K } else { QType::Q5_1 }),
        other => {
            return Err(format!(
                "unknown format {other:?}: q4_k, q3_k, q2_k, q5_k, int4, int8, bf16"
            ))
        }
    };
    Ok((gu, gu, down))
}

/// `experts x rows x cols` weights in `q`: 64 distinct random rows, repeated.
fn stack(q: QType, experts: usize, rows: usize, cols: usize, seed: u64) -> Built<ExpertStack> {
    let err = |e: kt_kernels::KtError| e.to_string();
    let row_bytes = q.row_bytes(cols).map_err(err)?;
    let distinct = 64;
    let mut f = vec![0f32; distinct * cols];
    SplitMix64::new(seed).fill_normal(&mut f, 0.05);
    let mut base = vec![0u8; distinct * row_bytes];
    quant::quantize(q, &f, &mut base).map_err(err)?;
    // Zeroed lazily by the allocator: the pages are first touched by the parallel copy.
    let mut w = vec![0u8; experts * rows * row_bytes];
    // Chunks of `distinct` rows: row r of a chunk is distinct row r.
    w.par_chunks_mut(distinct * row_bytes)
        .for_each(|chunk| chunk.copy_from_slice(&base[..chunk.len()]));
    ExpertStack::from_vec(q, w, experts, rows, cols).map_err(err)
}

/// A stack built on a worker thread, or why it could not be.
type Built<T> = Result<T, String>;

/// `build(0..n)` on rayon's threads, in order, with a progress bar on stderr when `show`
/// (not with `--json`, as in `kt-bench decode`). Each stack depends on its seed alone, so
/// the result is that of a serial build; serially, building the V3 layers took ~25-30 s
/// of each kt-bench process on the device (one core filling and quantizing gigabytes),
/// and the parallel build still takes tens of seconds on two cores.
fn par_build<T: Send>(
    show: bool,
    n: usize,
    build: impl Fn(usize) -> Built<T> + Sync + Send,
) -> Result<Vec<T>, Box<dyn std::error::Error>> {
    let bar = crate::decode::phase_bar(
        show,
        Some(n as u64),
        "stacks",
        "building expert stacks".into(),
    );
    let built = (0..n)
        .into_par_iter()
        .map(|j| {
            let stack = build(j);
            bar.inc(1);
            stack
        })
        .collect::<Built<Vec<T>>>();
    bar.finish_and_clear();
    Ok(built?)
}

/// The seed of projection `p` (0 gate, 1 up, 2 down) of layer copy `c` (copy 0 is the
/// base layer).
fn seed(c: usize, p: usize) -> u64 {
    if c == 0 {
        1 + p as u64
    } else {
        10 * c as u64 + p as u64
    }
}

#[derive(serde::Serialize)]
struct Report {
    shape: &'static str,
    gate: String,
    up: String,
    down: String,
    tokens: usize,
    top_k: usize,
    isa: String,
    threads: usize,
    /// The repacked AMX kernel's weight prefetch, when --prefetch set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    prefetch: Option<String>,
    /// With --ceiling: the read form (probe pattern, items a thread) this line's calls read
    /// the experts' bytes with (no operator ran); absent on the operator's line.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_ceiling: Option<String>,
    /// With --ceiling, on the operator's line: its `weight_gbps` over the fastest read
    /// form's, both medians of calls taking turns in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    of_read_ceiling: Option<f64>,
    routing: Routing,
    /// Calls of `fresh` routing that had to draw uniformly (too few experts left).
    fresh_fallback_calls: usize,
    layer_copies: usize,
    ms_per_call: f64,
    tokens_per_s: f64,
    distinct_experts_per_call: f64,
    weight_gbps: f64,
    dram_gbps: f64,
    /// The start probe's fastest pass (`dram_gbps` is its best pattern's median pass).
    dram_gbps_best_pass: f64,
    bandwidth_fraction: f64,
    /// `weight_gbps` against probes taken between the calls (`probe_rounds`).
    bandwidth_fraction_paired: Option<f64>,
    dram_gbps_around: Vec<f64>,
    tflops: f64,
    peak_tops: f64,
    peak_kind: &'static str,
    peak_fraction: f64,
    /// CPU time per call, all threads (with --cpu-time).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ms_per_call: Option<f64>,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let sh = shape(&a.shape)?;
    if matches!(a.format.as_str(), "int4" | "int8" | "bf16") {
        return run_repacked(a, sh);
    }
    if !a.prefetch.is_empty() {
        return Err("--prefetch applies to the repacked formats (int4, int8, bf16) only".into());
    }
    if a.ceiling && a.tokens > 1 {
        return Err("--ceiling times the one-token read ceiling: use it with --tokens 1".into());
    }
    let (gate_q, up_q, mut down_q) = formats(&a.format, sh.inter)?;
    if let Some(d) = &a.down_format {
        down_q = QType::from_name(d).ok_or_else(|| format!("unknown --down-format {d:?}"))?;
    }
    if a.tokens == 0 {
        return Err("--tokens must be at least 1".into());
    }
    let isa: Isa = cpu::isa::selected()?;
    let runs = Runs::new(&a.threads, isa)?;

    let (h, i, e, k) = (sh.hidden, sh.inter, sh.experts, sh.top_k);
    // Stack `j` of the copies from `first`: projection j % 3 of copy first + j / 3.
    let stacks = |first: usize, n: usize| {
        par_build(!a.json, 3 * n, |j| {
            let (c, p) = (first + j / 3, j % 3);
            let s = seed(c, p);
            match p {
                0 => stack(gate_q, e, i, h, s),
                1 => stack(up_q, e, i, h, s),
                _ => stack(down_q, e, h, i, s),
            }
        })
    };
    let layer =
        |mut s: std::vec::Drain<'_, ExpertStack>| -> Result<MoeLayer, Box<dyn std::error::Error>> {
            let (g, u, d) = (s.next(), s.next(), s.next());
            match (g, u, d) {
                (Some(g), Some(u), Some(d)) => Ok(MoeLayer::new(g, u, d)?),
                _ => Err("a layer copy lacks a projection".into()),
            }
        };
    let base = layer(stacks(0, 1)?.drain(..))?;
    let layer_bytes = e * base.expert_bytes();
    let copies = layer_copies(layer_bytes, 2)?;
    let mut layers = vec![base];
    let mut rest = stacks(1, copies - 1)?;
    while !rest.is_empty() {
        layers.push(layer(rest.drain(..3))?);
    }
    let names = [
        gate_q.name().to_string(),
        up_q.name().to_string(),
        down_q.name().to_string(),
    ];
    let label = format!("{}/{}/{}", names[0], names[1], names[2]);
    let all: Vec<&MoeLayer> = layers.iter().collect();
    runs.each(isa, copies, |pool, m, warmup| {
        let threads = pool.threads();
        let probe_pool = pool.clone();
        let mut probes = ProbeRounds::new(&probe_pool);
        let ctx = MoeContext::new(pool, isa, a.tokens, k, &all)?;
        let expert_bytes = layers[0].expert_bytes();
        let forms = if a.ceiling {
            read_ceiling::forms()
        } else {
            Vec::new()
        };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 * k);
        let timed = time_calls(
            &a,
            &sh,
            warmup,
            copies,
            expert_bytes,
            1 + forms.len(),
            !forms.is_empty(),
            &mut probes,
            |copy, v, ids, w, x, out| {
                let layer = &layers[copy];
                match v.checked_sub(1).map(|f| &forms[f]) {
                    None => ctx.forward(layer, x, ids, w, out)?,
                    Some(form) => {
                        // the distinct experts' bytes, as the operator reads them
                        parts.clear();
                        for (j, &e) in ids.iter().enumerate() {
                            if ids[..j].contains(&e) {
                                continue;
                            }
                            let e = e as usize;
                            parts.push(layer.gate().expert(e));
                            parts.push(layer.up().expert(e));
                            parts.push(layer.down().expert(e));
                        }
                        let total = parts.iter().map(|p| p.len()).sum();
                        let item = form.item_bytes(total, threads);
                        read_ceiling::read_parts(&probe_pool, &parts, item, form.pattern);
                    }
                }
                Ok(layer.expert_bytes())
            },
        )?;
        let run = Run {
            m,
            isa,
            threads,
            copies,
            layer_bytes,
        };
        // the fastest read form, per routing
        let settings = 1 + forms.len();
        let best = |r: usize| {
            timed[r * settings + 1..(r + 1) * settings]
                .iter()
                .map(|t| t.weight_gbps)
                .reduce(f64::max)
        };
        for (v, t) in timed.iter().enumerate() {
            let (r, f) = (v / settings, v % settings);
            let ceiling = Ceiling {
                form: f.checked_sub(1).map(|f| forms[f].label()),
                of_best: (f == 0)
                    .then(|| best(r))
                    .flatten()
                    .map(|b| t.weight_gbps / b),
            };
            report(
                &a,
                &sh,
                &run,
                names.clone(),
                label.clone(),
                None,
                ceiling,
                t,
            )?;
        }
        Ok(())
    })
}

/// Where the timed calls run: the global pool for one thread count (measured before the
/// layers are built, as a single run always was), or for a `--threads` list a pool of
/// its own per count, made and measured when its turn comes.
struct Runs {
    list: Vec<usize>,
    single: Option<(PoolRef, machine::Machine)>,
}

impl Runs {
    fn new(threads: &[usize], isa: Isa) -> Result<Runs, Box<dyn std::error::Error>> {
        if threads.len() > 1 {
            return Ok(Runs {
                list: threads.to_vec(),
                single: None,
            });
        }
        let pool = machine::pool(threads.first().copied())?;
        let m = machine::measure(pool, isa)?;
        Ok(Runs {
            list: Vec::new(),
            single: Some((PoolRef::Static(pool), m)),
        })
    }

    /// `f(pool, machine, warm-up calls)` for each count: `max(copies, 3)` warm-up calls
    /// the first time (pages faulted in, caches and pool warm), `copies` later (one pass
    /// over the copies at the new count).
    fn each(
        self,
        isa: Isa,
        copies: usize,
        mut f: impl FnMut(PoolRef, &machine::Machine, usize) -> Result<(), Box<dyn std::error::Error>>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if let Some((pool, m)) = self.single {
            return f(pool, &m, copies.max(3));
        }
        for (j, &n) in self.list.iter().enumerate() {
            let pool = Arc::new(ThreadPool::new(n)?);
            let m = machine::measure(&pool, isa)?;
            let warmup = if j == 0 { copies.max(3) } else { copies };
            f(PoolRef::Shared(pool), &m, warmup)?;
        }
        Ok(())
    }
}

/// The facts of one measured configuration that every report line carries.
struct Run<'a> {
    m: &'a machine::Machine,
    isa: Isa,
    threads: usize,
    copies: usize,
    layer_bytes: usize,
}

/// `experts x rows x cols` in a repacked format: one random expert packed, its bytes
/// and scales repeated for every expert (packing 256 V3 experts would take minutes;
/// repeated experts read the same from DRAM).
fn repacked_stack(
    f: RepackFormat,
    experts: usize,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Built<RepackedStack> {
    let err = |e: kt_kernels::KtError| e.to_string();
    let mut w = vec![0f32; rows * cols];
    SplitMix64::new(seed).fill_normal(&mut w, 0.05);
    let one = RepackedStack::from_f32(f, &w, 1, rows, cols).map_err(err)?;
    // As in `stack`: the copies fill freshly allocated pages in parallel.
    let mut data = vec![0u8; experts * one.data().len()];
    data.par_chunks_mut(one.data().len())
        .for_each(|e| e.copy_from_slice(one.data()));
    let scales = one.scales().repeat(experts);
    RepackedStack::from_parts(f, experts, rows, cols, &data, scales).map_err(err)
}

/// `kt-bench moe --format int4|int8|bf16`: the same measurement over a repacked layer.
fn run_repacked(a: Args, sh: Shape) -> Result<(), Box<dyn std::error::Error>> {
    let f = RepackFormat::parse(&a.format, a.group)?;
    if a.ceiling {
        return Err("--ceiling applies to the GGUF formats (q4_k, q3_k, q2_k, q5_k) only".into());
    }
    if a.tokens == 0 {
        return Err("--tokens must be at least 1".into());
    }
    let isa: Isa = cpu::isa::selected()?;
    let prefetch = a
        .prefetch
        .iter()
        .map(|p| Prefetch::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = Runs::new(&a.threads, isa)?;
    let (h, i, e, k) = (sh.hidden, sh.inter, sh.experts, sh.top_k);
    // As in `run`: stack j of the copies from `first`.
    let stacks = |first: usize, n: usize| {
        par_build(!a.json, 3 * n, |j| {
            let (c, p) = (first + j / 3, j % 3);
            let (rows, cols) = if p < 2 { (i, h) } else { (h, i) };
            repacked_stack(f, e, rows, cols, seed(c, p))
        })
    };
    let layer = |mut s: std::vec::Drain<'_, RepackedStack>| -> Result<RepackedLayer, Box<dyn std::error::Error>> {
        match (s.next(), s.next(), s.next()) {
            (Some(g), Some(u), Some(d)) => Ok(RepackedLayer::new(g, u, d)?),
            _ => Err("a layer copy lacks a projection".into()),
        }
    };
    let base = layer(stacks(0, 1)?.drain(..))?;
    let layer_bytes = e * base.expert_bytes();
    // Building a stack holds its bytes twice for a moment, on each of rayon's threads:
    // leave room for it.
    let copies = layer_copies(layer_bytes, 3)?;
    let mut layers = vec![base];
    let mut rest = stacks(1, copies - 1)?;
    while !rest.is_empty() {
        layers.push(layer(rest.drain(..3))?);
    }
    let name = f.name();
    let label = format!("{name} ({:.2} bits/weight, repacked)", f.bits_per_weight());
    let all: Vec<&RepackedLayer> = layers.iter().collect();
    runs.each(isa, copies, |pool, m, warmup| {
        let threads = pool.threads();
        let probe_pool = pool.clone();
        let mut probes = ProbeRounds::new(&probe_pool);
        let runner = RepackedMoe::new(pool, isa, a.tokens, k, &all)?;
        let settings = prefetch.len().max(1);
        let timed = time_calls(
            &a,
            &sh,
            warmup,
            copies,
            layers[0].expert_bytes(),
            settings,
            false,
            &mut probes,
            |copy, v, ids, w, x, out| {
                if let Some(&p) = prefetch.get(v) {
                    runner.set_prefetch(p)?;
                }
                let layer = &layers[copy];
                runner.forward(layer, x, ids, w, out)?;
                Ok(layer.expert_bytes())
            },
        )?;
        let run = Run {
            m,
            isa,
            threads,
            copies,
            layer_bytes,
        };
        for (v, t) in timed.iter().enumerate() {
            let names = [name.clone(), name.clone(), name.clone()];
            report(
                &a,
                &sh,
                &run,
                names,
                label.clone(),
                a.prefetch.get(v % settings).cloned(),
                Ceiling::default(),
                t,
            )?;
        }
        Ok(())
    })
}

/// How many copies of a `layer_bytes` layer the timed calls cycle through: 16 x LLC of
/// copies read in turn put that many bytes between two calls of one copy. Where one copy is
/// all that fits (V3), `fresh` routing ([`crate::moe_routing`]) leaves out the experts a
/// recent call of the copy read, which the last-level cache may still hold. At most
/// `1 / mem_share` of the available memory is used.
fn layer_copies(layer_bytes: usize, mem_share: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let avail = machine::available_memory_bytes();
    let mut target = machine::cycle_bytes();
    if let Some(avail) = avail {
        target = target.min(avail / mem_share);
    }
    let copies = target.div_ceil(layer_bytes).max(1);
    if let Some(avail) = avail {
        if copies * layer_bytes > avail / 10 * 8 {
            return Err(format!(
                "the layer needs {:.1} GB ({copies} copies of {:.1} GB) but only {:.1} GB of memory is available",
                (copies * layer_bytes) as f64 / 1e9,
                layer_bytes as f64 / 1e9,
                avail as f64 / 1e9
            )
            .into());
        }
    }
    Ok(copies)
}

/// Medians of the timed calls.
struct Timed {
    secs: f64,
    weight_gbps: f64,
    distinct_per_call: f64,
    /// The median over the probe rounds of the round's median GB/s over the mean of the two
    /// probes beside it.
    paired_fraction: Option<f64>,
    dram_gbps_around: Vec<f64>,
    routing: Routing,
    fresh_fallback_calls: usize,
    /// Mean CPU seconds per timed call, all threads (with --cpu-time).
    cpu_secs: Option<f64>,
}

/// CPU seconds the process's threads have run so far: the sum of the first field (run
/// time in ns) of every `/proc/self/task/*/schedstat`.
fn process_cpu_secs() -> Result<f64, Box<dyn std::error::Error>> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read: it no longer runs.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let first = text.split_whitespace().next().unwrap_or("");
        ns += first
            .parse::<u64>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(ns as f64 / 1e9)
}

/// The timed calls of one setting.
#[derive(Default)]
struct Samples {
    times: Vec<f64>,
    gbps: Vec<f64>,
    /// The probe round each call ran in.
    round: Vec<usize>,
    distinct: usize,
    fell_back: usize,
    cpu_secs: f64,
}

/// The setting of call `n` when calls read `copies` layer copies in turn: call `n % variants`
/// would tie each setting to the same copies whenever `variants` divides `copies` (V2-Lite
/// on the device: 16 copies, two settings each read 8), and copies of the same data read
/// up to 5% apart there (session 23, call G). Shifting by one each pass over the copies
/// gives every (setting, copy) pair exactly once in `copies * variants` calls.
pub(crate) fn variant_of(n: usize, copies: usize, variants: usize) -> usize {
    (n % copies + n / copies) % variants
}

/// Calls `call(c, v, ids, weights, x, out)` (which runs layer copy `c` with setting `v` and
/// returns the bytes of one expert of the layer it ran) with fresh random routing each
/// time, drawn before the clock starts: `warmup` calls, then until `--seconds` have passed
/// and every setting has `--calls` timed calls. The copies are read in turn (the longest
/// gap before a copy is read again) and the `variants` settings take turns, one call each,
/// so they share the machine's state; [`variant_of`] makes every setting meet every copy.
/// One [`Timed`] per setting.
#[allow(clippy::too_many_arguments)]
fn time_calls(
    a: &Args,
    sh: &Shape,
    warmup: usize,
    copies: usize,
    expert_bytes: usize,
    settings: usize,
    lead_in: bool,
    probes: &mut ProbeRounds<'_>,
    mut call: impl FnMut(
        usize,
        usize,
        &[u32],
        &[f32],
        &[f32],
        &mut [f32],
    ) -> Result<usize, Box<dyn std::error::Error>>,
) -> Result<Vec<Timed>, Box<dyn std::error::Error>> {
    let (h, e, k) = (sh.hidden, sh.experts, sh.top_k);
    let variants = settings * a.routing.len();
    let call_bytes = (a.tokens * k).min(e) * expert_bytes;
    let keep = recent_calls(machine::last_level_cache_bytes(), copies, call_bytes);
    let mut drawer = Drawer::new(a.tokens, k, e, copies, keep);
    let mut rng = SplitMix64::new(7);
    let mut x = vec![0f32; a.tokens * h];
    rng.fill_normal(&mut x, 1.0);
    let mut out = vec![0f32; a.tokens * h];
    let mut s: Vec<Samples> = (0..variants).map(|_| Samples::default()).collect();
    let start = Instant::now();
    // One setting: CPU time over the whole timed stretch (as before settings existed);
    // several: per call, read before and after it.
    let per_call_cpu = a.cpu_time && variants > 1;
    let mut cpu_start = None;
    let mut n = 0usize;
    let mut last = None;
    let mut probe_cpu = 0.0;
    let enough = |s: &[Samples]| {
        start.elapsed().as_secs_f64() >= a.seconds && s.iter().all(|v| v.times.len() >= a.calls)
    };
    while n < warmup || (!enough(&s) && s[0].times.len() < 100_000) {
        // read-bandwidth probes between the timed calls: the calls between two are a round
        // (the CPU time of a reading is not the calls': the readings after the first, which
        // precedes the whole stretch's --cpu-time count, are taken out of it)
        let counted = a.cpu_time && n > warmup;
        let c_probe = if counted { process_cpu_secs()? } else { 0.0 };
        let round = (n >= warmup).then(|| probes.round());
        if let (true, Some((_, true))) = (counted, round) {
            probe_cpu += process_cpu_secs()? - c_probe;
        }
        let (c, v) = (n % copies, variant_of(n, copies, variants));
        if lead_in && read_ceiling::needs_lead_in(v % settings, last) {
            // on the copy half a cycle away, with a routing of its own drawn first: with one
            // copy, fresh routing then keeps its experts out of the timed call's
            let lead_copy = (c + copies / 2) % copies;
            let lead = drawer.draw(&mut rng, lead_copy, a.routing[v / settings]);
            call(lead_copy, 0, &lead.ids, &lead.weights, &x, &mut out)?;
        }
        last = Some(v % settings);
        let draw = drawer.draw(&mut rng, c, a.routing[v / settings]);
        let (ids, w, distinct) = (&draw.ids, &draw.weights, draw.distinct);
        if a.cpu_time && !per_call_cpu && n == warmup {
            cpu_start = Some(process_cpu_secs()?);
        }
        let c0 = if per_call_cpu && n >= warmup {
            process_cpu_secs()?
        } else {
            0.0
        };
        let t = Instant::now();
        let expert_bytes = call(c, v % settings, ids, w, &x, &mut out)?;
        let secs = t.elapsed().as_secs_f64();
        if n >= warmup {
            let s = &mut s[v];
            if per_call_cpu {
                s.cpu_secs += process_cpu_secs()? - c0;
            }
            s.times.push(secs);
            s.gbps.push((distinct * expert_bytes) as f64 / secs / 1e9);
            s.round.push(round.map_or(0, |(r, _)| r));
            s.distinct += distinct;
            s.fell_back += usize::from(draw.fell_back);
        }
        n += 1;
    }
    if let Some(c0) = cpu_start {
        s[0].cpu_secs = process_cpu_secs()? - c0 - probe_cpu;
    }
    probes.finish();
    if out.iter().any(|v| !v.is_finite()) {
        return Err("the MoE output has non-finite values".into());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    Ok(s.into_iter()
        .enumerate()
        .map(|(v, mut s)| {
            let calls = s.times.len() as f64;
            Timed {
                paired_fraction: probes.fraction(&s.gbps, &s.round),
                dram_gbps_around: probes.readings.clone(),
                secs: median(&mut s.times),
                weight_gbps: median(&mut s.gbps),
                distinct_per_call: s.distinct as f64 / calls,
                routing: a.routing[v / settings],
                fresh_fallback_calls: s.fell_back,
                cpu_secs: a.cpu_time.then_some(s.cpu_secs / calls),
            }
        })
        .collect())
}

/// With `--ceiling`: what a report line is (the operator, or a read form) and the
/// operator against the fastest read form.
#[derive(Default)]
struct Ceiling {
    form: Option<String>,
    of_best: Option<f64>,
}

/// Prints one run (a table line, or JSON with `--json`); `prefetch`: the setting of
/// `--prefetch` it ran with, if any.
#[allow(clippy::too_many_arguments)]
fn report(
    a: &Args,
    sh: &Shape,
    run: &Run,
    [gate, up, down]: [String; 3],
    label: String,
    prefetch: Option<String>,
    ceiling: Ceiling,
    t: &Timed,
) -> Result<(), Box<dyn std::error::Error>> {
    let Run {
        m,
        isa,
        threads,
        copies,
        layer_bytes,
    } = *run;
    let flops = 2.0 * (a.tokens * sh.top_k * 3 * sh.hidden * sh.inter) as f64;
    let r = Report {
        shape: sh.name,
        gate,
        up,
        down,
        tokens: a.tokens,
        top_k: sh.top_k,
        isa: isa.to_string(),
        threads,
        prefetch,
        read_ceiling: ceiling.form,
        of_read_ceiling: ceiling.of_best,
        routing: t.routing,
        fresh_fallback_calls: t.fresh_fallback_calls,
        layer_copies: copies,
        ms_per_call: t.secs * 1e3,
        tokens_per_s: a.tokens as f64 / t.secs,
        distinct_experts_per_call: t.distinct_per_call,
        weight_gbps: t.weight_gbps,
        dram_gbps: m.dram_gbps,
        dram_gbps_best_pass: m.dram_gbps_best_pass,
        bandwidth_fraction: t.weight_gbps / m.dram_gbps,
        bandwidth_fraction_paired: t.paired_fraction,
        dram_gbps_around: t.dram_gbps_around.clone(),
        tflops: flops / t.secs / 1e12,
        peak_tops: m.peak_gops / 1e3,
        peak_kind: m.peak_kind,
        peak_fraction: flops / t.secs / 1e9 / m.peak_gops,
        cpu_ms_per_call: t.cpu_secs.map(|c| c * 1e3),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "kt-bench moe | {} | isa {} | {} threads | read bandwidth {:.1} GB/s | peak {:.0} GOP/s ({})",
        m.cpu, r.isa, r.threads, r.dram_gbps, m.peak_gops, r.peak_kind
    );
    let fallback = match r.fresh_fallback_calls {
        0 => String::new(),
        n => format!(" ({n} calls drawn uniformly: too few experts left)"),
    };
    if let Some(form) = &r.read_ceiling {
        println!("read ceiling, {form}: the calls' expert bytes read, no operator");
    }
    println!(
        "{} {label} | {} tokens x top-{} | {copies} copies of the {:.2} GB layer | {} routing{fallback}",
        r.shape,
        r.tokens,
        r.top_k,
        layer_bytes as f64 / 1e9,
        r.routing.name()
    );
    let compute = match r.read_ceiling {
        Some(_) => String::new(),
        None => format!(
            " | {:.3} TFLOP/s = {:.1}% of peak",
            r.tflops,
            100.0 * r.peak_fraction
        ),
    };
    println!(
        "{:.3} ms/call | {:.1} tokens/s | {:.1} experts/call | weights {:.1} GB/s = {:.0}% of bw{compute}",
        r.ms_per_call,
        r.tokens_per_s,
        r.distinct_experts_per_call,
        r.weight_gbps,
        100.0 * r.bandwidth_fraction,
    );
    if let Some(f) = r.bandwidth_fraction_paired {
        let lo = r
            .dram_gbps_around
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = r.dram_gbps_around.iter().copied().fold(0.0, f64::max);
        println!(
            "weights {:.0}% of the read bandwidth measured beside the calls ({} probes, {lo:.1} .. {hi:.1} GB/s; median of the rounds)",
            100.0 * f,
            r.dram_gbps_around.len()
        );
    }
    if let Some(f) = r.of_read_ceiling {
        println!(
            "operator at {:.0}% of the fastest read of the same bytes (read ceiling)",
            100.0 * f
        );
    }
    if let Some(c) = r.cpu_ms_per_call {
        println!("cpu time {c:.2} ms per call (all threads)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::variant_of;

    /// Whether `schedule` gives each (setting, copy) pair exactly twice in two rounds of
    /// `copies * variants` calls, copy `n % copies` for call `n`.
    fn meets_every_copy(schedule: impl Fn(usize) -> usize, copies: usize, variants: usize) -> bool {
        let mut seen = vec![vec![0usize; copies]; variants];
        for n in 0..2 * copies * variants {
            seen[schedule(n)][n % copies] += 1;
        }
        seen.iter().flatten().all(|&x| x == 2)
    }

    #[test]
    fn every_setting_meets_every_copy() {
        for copies in 1..=17 {
            for variants in 1..=5 {
                let schedule = |n| variant_of(n, copies, variants);
                assert!(
                    meets_every_copy(schedule, copies, variants),
                    "{copies} copies, {variants}"
                );
            }
        }
        // The schedule it replaced, `n % variants`, ties settings to copies there.
        assert!(!meets_every_copy(|n| n % 2, 16, 2));
        assert!(!meets_every_copy(|n| n % 4, 4, 4));
    }
}
