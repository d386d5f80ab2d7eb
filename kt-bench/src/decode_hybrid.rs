//! `kt-bench decode` / `prefill` with a hybrid rules file (feature `cuda`): the same run as
//! the CPU engine's (a prompt in one forward call, then `--gen-len` single-token calls on
//! sampled tokens) on `kt_model::hybrid::HybridModel`, GPU 0 plus the CPU's routed experts.
//! The report keeps the CPU run's fields and replaces the stage split by the hybrid one:
//! per layer and phase, GPU compute, CPU experts, transfers and each side's idle time.
//! The split's events (seven per MoE layer, read back after each call) cost host time and
//! keep the layers sequential, so the decode rate (`decode_tokens_per_s`) comes from
//! decodes without them over the same tokens, each after the prompt on the run's cache
//! cleared, each step one CUDA graph launch: a warm-up of a few steps captures the decode
//! graph for that cache (`decode_graph_error` says why not, if the device refused), then
//! `--repetitions` runs replay it from their first step (`decode_graph_launches` replays,
//! `decode_graph_captures` recaptures among them, 0 unless a call grew the workspaces), and the
//! rate is their mean (`decode_repetitions` keeps each, `reps.rs`); `decode_pipelined_tokens_per_s`
//! is the same with eager steps, layers pipelined (null with `--eager`, where every call runs
//! layer after layer, the headline rate too), `decode_sequential_tokens_per_s` without the
//! pipeline either, and `decode_timed_tokens_per_s` the timed run's. `dram_gbps` is the
//! best of three DRAM read probes of the run (`dram_gbps_readings`), and
//! `decode_bound_fraction` the decode rate over the rate at which the routed experts'
//! weight bytes per token stream at that bandwidth.

use std::time::Instant;

use kt_kernels::cpu::{membw, Isa, ThreadPool};
use kt_kernels::cuda::Gpu;
use kt_model::deepseek::{LogitRows, Sampler};
use kt_model::hybrid::{
    GraphTimeline, HybridCache, HybridModel, HybridTimes, LayerSplit, PrefillLayerTimes,
    PrefillSplit,
};
use kt_model::placement::Placement;
use serde_json::{json, Value};

use crate::decode::{
    prompt_ids, prompt_then_decode, Args, Mode, Weights, MAX_MOE_BATCH, MEMBW_PASSES,
};
use crate::dram_readings::{bound_fraction, paired_bound_fraction, DramReadings};
use crate::prefetch_env;
use crate::reps::Rates;

/// Tokens of the warm-up call (a short prompt on a throwaway cache): loads every kernel
/// and sizes the GEMM and attention workspaces before anything is timed.
const WARMUP_TOKENS: usize = 8;

/// Decode steps of the graph path's warm-up before the repetitions (the first captures).
const GRAPH_WARMUP_STEPS: usize = 4;

pub(crate) struct HybridRun<'a> {
    pub args: &'a Args,
    pub mode: Mode,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub isa: Isa,
    pub pool: &'a ThreadPool,
    /// The DRAM read probe taken before the weights went to the GPU (the first of
    /// [`DramReadings`]).
    pub dram_gbps: f64,
}

/// The series of `--svg` for hybrid runs: what a layer's timed run spends, one side after
/// the other (the timed run does not pipeline layers); the shared experts' GPU time that
/// overlaps the CPU experts is inside "gpu compute".
const SVG_SERIES: [&str; 3] = ["gpu compute", "cpu routed experts", "transfers"];

fn svg_values(s: &LayerSplit) -> Vec<f64> {
    vec![s.gpu_s, s.cpu_experts_s, s.transfer_s]
}

/// `--svg`: the per-layer split of `times` (the decode's when there is one, else the
/// prefill's) as stacked bars in ms per token.
fn write_svg(
    path: &std::path::Path,
    title: &str,
    times: &HybridTimes,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut bars: Vec<_> = times
        .layers
        .iter()
        .enumerate()
        .map(|(l, s)| (format!("L{l}"), svg_values(s)))
        .collect();
    bars.push(("head".into(), svg_values(&times.head)));
    let scale = 1e3 / times.tokens.max(1) as f64;
    let chart = crate::svg::stacked_bars(title, "ms per token", &SVG_SERIES, &bars, scale);
    std::fs::write(path, chart).map_err(|e| format!("--svg {}: {e}", path.display()).into())
}

fn split_json(s: &LayerSplit) -> Value {
    json!({
        "gpu_s": s.gpu_s,
        "cpu_experts_s": s.cpu_experts_s,
        "transfer_s": s.transfer_s,
        "gpu_idle_s": s.gpu_idle_s,
        "cpu_idle_s": s.cpu_idle_s,
    })
}

/// The CPU routed experts' weight bytes per token, their GB/s and its fraction of the DRAM
/// read bandwidth measured in the same run (the timed run's experts, as `kt-bench decode`
/// reports for the CPU engine).
fn routed_json(times: &HybridTimes, dram_gbps: f64) -> Value {
    let t = times.total();
    let gbps = t.routed_gbps();
    json!({
        "routed_bytes_per_token": t.routed_bytes as f64 / times.tokens.max(1) as f64,
        "routed_gbps": gbps,
        "routed_bandwidth_fraction": gbps.map(|g| g / dram_gbps),
    })
}

fn phase_json(times: &HybridTimes, wall_s: f64, dram_gbps: f64) -> Value {
    let mut j = json!({
        "wall_s": wall_s,
        "calls": times.calls,
        "tokens": times.tokens,
        "total": split_json(&times.total()),
        "per_layer": times.layers.iter().map(split_json).collect::<Vec<_>>(),
        "head": split_json(&times.head),
    });
    if let (Value::Object(m), Value::Object(r)) = (&mut j, routed_json(times, dram_gbps)) {
        m.extend(r);
    }
    j
}

fn print_phase(name: &str, times: &HybridTimes, wall_s: f64, dram_gbps: f64) {
    let t = times.total();
    let per = 1e3 / times.tokens.max(1) as f64;
    println!(
        "{name} split ({} layers, {} calls, {} tokens; ms per token): wall {:.3}, gpu {:.3}, cpu experts {:.3}, transfers {:.3}, gpu idle {:.3}, cpu idle {:.3}",
        times.layers.len(),
        times.calls,
        times.tokens,
        wall_s * per,
        t.gpu_s * per,
        t.cpu_experts_s * per,
        t.transfer_s * per,
        t.gpu_idle_s * per,
        t.cpu_idle_s * per
    );
    if let Some(g) = t.routed_gbps() {
        println!(
            "  cpu routed experts: {:.1} MB of weights per token at {g:.1} GB/s = {:.0}% of the {dram_gbps:.1} GB/s DRAM read bandwidth",
            t.routed_bytes as f64 / times.tokens.max(1) as f64 / 1e6,
            100.0 * g / dram_gbps
        );
    }
}

/// Routed bytes per token of each MoE layer of `timed` (layers with none left out: the
/// graph timeline's MoE layers, in order).
fn moe_layer_bytes_per_token(timed: &HybridTimes) -> Vec<f64> {
    let tokens = timed.tokens.max(1) as f64;
    timed
        .layers
        .iter()
        .filter(|l| l.routed_bytes > 0)
        .map(|l| l.routed_bytes as f64 / tokens)
        .collect()
}

/// The quantiles of the single experts' stretches the timeline reports.
const EXPERTS_QUANTILES: [f64; 4] = [0.1, 0.5, 0.9, 0.99];

/// The graph replays' host-side timeline per token (`GraphTimeline`), with the routed
/// experts' bandwidth from the timed run's bytes per token (the same tokens).
struct TimelineSummary {
    launches: u64,
    ms_per_token: f64,
    setup_ms: f64,
    /// The GPU stretch before the first MoE layer's experts, and the mean before each later one.
    first_gpu_ms: f64,
    gpu_between_ms: f64,
    experts_ms: f64,
    /// The choices a MoE layer deferred (`--defer-experts`), run after it released the GPU
    /// (inside the next stretch, which `gpu_between_ms` counts from their end), ms.
    deferred_ms: f64,
    /// The first MoE layer's experts per token, ms: the one layer with no prefetch before it.
    first_experts_ms: f64,
    /// Per MoE layer, in order: its experts per token (ms) and the bytes of its routed
    /// experts per token (the timed run's, the same tokens) over that time plus the layer's
    /// deferred time (GB/s). Layers
    /// differ in bytes: llama.cpp's Q4_K_M gives some layers' `ffn_down` more bits (V2-Lite's
    /// first MoE layer among them), so compare a layer's GB/s, not its time.
    experts_per_layer_ms: Vec<f64>,
    experts_per_layer_gbps: Vec<Option<f64>>,
    /// Quantiles (10%, 50%, 90%, 99%) of the single experts' stretches (one MoE layer of
    /// one replay), ms: a mean well above the median comes from a few long calls.
    experts_quantiles_ms: [Option<f64>; 4],
    tail_ms: f64,
    moe_layers: usize,
    routed_gbps: Option<f64>,
    dram_gbps: f64,
    /// The next MoE layer's predicted-expert prefetch: per prefetching layer, the host time
    /// (us) and the bytes (MB) issued; the share of the actual top-k the prediction named.
    prefetches_per_token: f64,
    prefetch_us: f64,
    prefetch_mb: f64,
    predicted_hit_rate: Option<f64>,
    /// The share of the choices that fell on resident experts the GPU ran
    /// (`decode_resident`; 0 without).
    resident_share: Option<f64>,
    /// The mean of the probes taken around the repetitions the timeline covers.
    dram_gbps_around: Option<f64>,
}

impl TimelineSummary {
    fn with_around(mut self, gbps: Option<f64>) -> Self {
        self.dram_gbps_around = gbps;
        self
    }

    fn new(t: &GraphTimeline, timed: &HybridTimes, dram_gbps: f64) -> Self {
        let per = 1e3 / t.launches.max(1) as f64;
        let n = t.experts_s.len();
        let experts_s: f64 = t.experts_s.iter().sum();
        let deferred_s: f64 = t.deferred_s.iter().sum();
        let between: f64 = t.gpu_before_s.iter().skip(1).sum();
        let bytes_per_token = timed.total().routed_bytes as f64 / timed.tokens.max(1) as f64;
        // the CPU's time on the layers' choices, the deferred ones included
        let experts_per_token_s = (experts_s + deferred_s) / t.launches.max(1) as f64;
        TimelineSummary {
            launches: t.launches,
            ms_per_token: t.per_launch_s() * 1e3,
            setup_ms: t.setup_s * per,
            first_gpu_ms: t.gpu_before_s.first().copied().unwrap_or(0.0) * per,
            gpu_between_ms: between * per / n.saturating_sub(1).max(1) as f64,
            experts_ms: experts_s * per / n.max(1) as f64,
            deferred_ms: deferred_s * per / n.max(1) as f64,
            first_experts_ms: t.experts_s.first().copied().unwrap_or(0.0) * per,
            experts_per_layer_ms: t.experts_s.iter().map(|s| s * per).collect(),
            experts_per_layer_gbps: t
                .experts_s
                .iter()
                .zip(&t.deferred_s)
                .zip(moe_layer_bytes_per_token(timed))
                .map(|((&s, &d), b)| {
                    let secs = (s + d) / t.launches.max(1) as f64;
                    (b > 0.0 && secs > 0.0).then(|| b / secs / 1e9)
                })
                .collect(),
            experts_quantiles_ms: EXPERTS_QUANTILES
                .map(|q| t.experts_quantile_s(q).map(|s| s * 1e3)),
            tail_ms: t.tail_s * per,
            moe_layers: n,
            routed_gbps: (bytes_per_token > 0.0 && experts_per_token_s > 0.0)
                .then(|| bytes_per_token / experts_per_token_s / 1e9),
            dram_gbps,
            prefetches_per_token: t.prefetches as f64 / t.launches.max(1) as f64,
            prefetch_us: t.prefetch_s * 1e6 / t.prefetches.max(1) as f64,
            prefetch_mb: t.prefetch_bytes as f64 / 1e6 / t.prefetches.max(1) as f64,
            predicted_hit_rate: (t.predicted_slots > 0)
                .then(|| t.predicted_hits as f64 / t.predicted_slots as f64),
            resident_share: (t.choice_slots > 0)
                .then(|| t.resident_hits as f64 / t.choice_slots as f64),
            dram_gbps_around: None,
        }
    }

    fn json(&self) -> Value {
        json!({
            "launches": self.launches,
            "ms_per_token": self.ms_per_token,
            "setup_ms": self.setup_ms,
            "first_gpu_ms": self.first_gpu_ms,
            "gpu_between_moe_ms": self.gpu_between_ms,
            "experts_per_moe_layer_ms": self.experts_ms,
            "deferred_per_moe_layer_ms": self.deferred_ms,
            "first_moe_layer_experts_ms": self.first_experts_ms,
            "experts_per_layer_ms": self.experts_per_layer_ms,
            "experts_per_layer_gbps": self.experts_per_layer_gbps,
            "experts_quantiles": EXPERTS_QUANTILES,
            "experts_quantiles_ms": self.experts_quantiles_ms,
            "tail_ms": self.tail_ms,
            "moe_layers": self.moe_layers,
            "routed_gbps": self.routed_gbps,
            "routed_bandwidth_fraction": self.routed_gbps.map(|g| g / self.dram_gbps),
            "dram_gbps_around": self.dram_gbps_around,
            "routed_bandwidth_fraction_around": self
                .routed_gbps
                .zip(self.dram_gbps_around)
                .map(|(g, d)| g / d),
            "moe_layer_bound_fraction_around": self.moe_layer_bound_fraction_around(),
            "prefetches_per_token": self.prefetches_per_token,
            "prefetch_us": self.prefetch_us,
            "prefetch_mb": self.prefetch_mb,
            "predicted_hit_rate": self.predicted_hit_rate,
            "resident_choice_share": self.resident_share,
        })
    }

    /// One MoE layer's share of its bound: the time its routed experts' bytes take at the
    /// probes around the repetitions, over the layer's experts plus the GPU stretch before
    /// the next layer's (what a decode of many MoE layers tends to; the dense layers and
    /// the head come on top). `None` without a graph run or probes around it.
    fn moe_layer_bound_fraction_around(&self) -> Option<f64> {
        let f = self
            .routed_gbps
            .zip(self.dram_gbps_around)
            .map(|(g, d)| g / d)?;
        // a layer: its experts, the choices it deferred, then the rest of the stretch
        moe_layer_bound_fraction(f, self.experts_ms + self.deferred_ms, self.gpu_between_ms)
    }

    fn print(&self) {
        println!(
            "decode graph, host timeline ({} launches, {:.3} ms per token): setup {:.3} ms, GPU to the first experts {:.3} ms, then per MoE layer ({}): GPU between experts {:.1} us, routed experts {:.1} us{}; tail {:.3} ms",
            self.launches,
            self.ms_per_token,
            self.setup_ms,
            self.first_gpu_ms,
            self.moe_layers,
            self.gpu_between_ms * 1e3,
            self.experts_ms * 1e3,
            match self.deferred_ms > 0.0 {
                true => format!(" (+ {:.1} us deferred, beside the GPU)", self.deferred_ms * 1e3),
                false => String::new(),
            },
            self.tail_ms
        );
        if let [Some(p10), Some(p50), Some(p90), Some(p99)] = self.experts_quantiles_ms {
            println!(
                "  one MoE layer's routed experts: 10% {:.0} us, median {:.0} us, 90% {:.0} us, 99% {:.0} us",
                p10 * 1e3,
                p50 * 1e3,
                p90 * 1e3,
                p99 * 1e3
            );
        }
        if let Some(g) = self.routed_gbps {
            println!(
                "  routed experts in the graph run: {g:.1} GB/s = {:.0}% of the {:.1} GB/s DRAM read bandwidth",
                100.0 * g / self.dram_gbps,
                self.dram_gbps
            );
        }
        if let Some(f) = self.moe_layer_bound_fraction_around() {
            println!(
                "  one MoE layer (experts + GPU stretch) at {:.0}% of its experts' bound (the probes around the repetitions)",
                100.0 * f
            );
        }
        if let Some(h) = self.predicted_hit_rate {
            println!(
                "  predicted experts: {:.1}% of the actual top-k named; prefetch on {:.1} layers per token, {:.1} us and {:.2} MB each",
                100.0 * h,
                self.prefetches_per_token,
                self.prefetch_us,
                self.prefetch_mb
            );
        }
    }
}

/// A MoE layer's bound fraction from its experts' share of the bandwidth (`experts_fraction`:
/// their GB/s over the probe's) and its times: the experts' bound time (`experts_fraction`
/// of their time) over the experts' time plus the GPU stretch. `None` for an empty layer.
fn moe_layer_bound_fraction(
    experts_fraction: f64,
    experts_ms: f64,
    between_ms: f64,
) -> Option<f64> {
    let layer_ms = experts_ms + between_ms;
    (layer_ms > 0.0).then(|| experts_fraction * experts_ms / layer_ms)
}

/// One round of an in-process A/B (`KT_PREFETCH_AB`, `KT_DEFER_AB`): `steps` decoded again
/// after `prompt` (graph and pipelined layers as `chained` says) on a fresh graph timeline;
/// the decode rate (tokens/s) and the timeline's summary (`timed`: the timed run's bytes).
fn ab_round(
    model: &mut HybridModel,
    cache: &mut HybridCache,
    (prompt, steps, chained): (&[u32], &[u32], bool),
    timed: &HybridTimes,
    dram_gbps: f64,
) -> Result<(f64, Option<TimelineSummary>), Box<dyn std::error::Error>> {
    model.reset_graph_timeline();
    let secs = untimed(model, cache, chained, chained, prompt, steps)?;
    let summary = model
        .graph_timeline()
        .map(|t| TimelineSummary::new(t, timed, dram_gbps));
    Ok((steps.len() as f64 / secs, summary))
}

/// `steps` decoded one token a call after `prompt` on `cache`, cleared first (as llama-bench
/// clears its memory between runs; a decode graph captured for the cache stays), without
/// events (each call pipelined or not, replaying the decode graph or not); the steps' seconds.
fn untimed(
    model: &mut HybridModel,
    cache: &mut HybridCache,
    pipelined: bool,
    graphed: bool,
    prompt: &[u32],
    steps: &[u32],
) -> Result<f64, Box<dyn std::error::Error>> {
    model.set_pipelined(pipelined);
    model.set_graphed(graphed);
    cache.clear();
    model.forward(prompt, cache, LogitRows::Last)?;
    let t = Instant::now();
    for &tok in steps {
        model.forward(&[tok], cache, LogitRows::Last)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

impl HybridRun<'_> {
    pub fn run(
        &self,
        w: &Weights,
        placement: &Placement,
        mut sampler: Sampler,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (a, prompt_len, gen_len) = (self.args, self.prompt_len, self.gen_len);
        let gpu = Gpu::new(0).map_err(|e| format!("--rules {}: {e}", w.rules))?;
        let device = gpu.info().name.clone();
        let t = Instant::now();
        // A spinner while the model loads; where the routed experts are repacked (for the
        // CPU as `int4_amx` / `int8_amx`, or for the GPU prefill: the load's longest steps),
        // a bar over the expert matrices while that runs.
        let bar = crate::decode::phase_bar(!a.json, None, "", "loading the model".into());
        let repacked = crate::decode::repack_progress(&bar, "repacking the routed experts");
        let model = HybridModel::new_reporting(
            gpu,
            &w.gguf,
            w.config.clone(),
            placement,
            self.isa,
            &repacked,
        );
        bar.finish_and_clear();
        let mut model = model?;
        // KT_PREFETCH=0: graph replays without the next MoE layer's predicted prefetch (the
        // A/B of the same binary)
        let prefetch = std::env::var("KT_PREFETCH").map_or(true, |v| v.trim() != "0");
        model.set_prefetch(prefetch);
        // KT_PREFETCH_ROUNDS=R: gate+up items per CPU thread the prefetch warms
        if let Some(r) = prefetch_env::env_usize("KT_PREFETCH_ROUNDS")? {
            model.set_prefetch_rounds(r)?;
        }
        let prefetch_rounds = model.prefetch_rounds();
        model.set_max_batch(prompt_len.clamp(WARMUP_TOKENS, MAX_MOE_BATCH))?;
        let gpu_load_s = t.elapsed().as_secs_f64();
        let prompt = prompt_ids(&w.config, prompt_len, a.seed);
        // --eager: every call below runs one layer after the other (no host flags, no graph);
        // otherwise untimed calls pipeline the layers and single tokens replay the graph
        let chained = !a.eager;
        model.set_pipelined(chained);
        model.set_graphed(chained);

        let split = a.prefill_split.as_deref().map(parse_split).transpose()?;
        if model.gpu_prefill_threshold().is_some() {
            if let Some(split) = split {
                model.set_gpu_prefill_split(split)?;
            }
            if let Some(r) = a.prefill_resident {
                model.set_gpu_prefill_resident(r)?;
            }
            if let Some(on) = &a.decode_resident {
                model.set_decode_resident(on == "on")?;
                if on == "on" && model.decode_resident() != Some(true) {
                    return Err("--decode-resident on needs resident experts (the rules' prefill_resident or --prefill-resident of at least 1)".into());
                }
            }
        } else if split.is_some_and(|s| s != PrefillSplit::Off)
            || a.prefill_resident.is_some()
            || a.decode_resident.is_some()
        {
            return Err(
                "--prefill-split, --prefill-resident and --decode-resident need rules whose routed experts prefill on the GPU".into(),
            );
        }

        if let Some(n) = a.defer_experts {
            model.set_defer_experts(n)?;
        }

        let warm = &prompt[..prompt_len.min(WARMUP_TOKENS)];
        let mut scratch_cache = model.new_cache(warm.len() + 1)?;
        let logits = model.forward(warm, &mut scratch_cache, LogitRows::Last)?;
        let next = kt_model::deepseek::argmax(&logits);
        model.forward(&[next], &mut scratch_cache, LogitRows::Last)?;
        drop(scratch_cache);
        // A prompt the GPU prefill experts take gets one untimed run first, as llama-bench
        // warms up its prompt test (the GPU path's first call allocates and faults in).
        let gpu_prefill_warmup = model
            .gpu_prefill_threshold()
            .is_some_and(|t| prompt_len > t);
        if gpu_prefill_warmup {
            let mut warm_cache = model.new_cache(prompt_len)?;
            model.forward(&prompt, &mut warm_cache, LogitRows::Last)?;
        }

        let mut cache = model.new_cache(prompt_len + gen_len)?;
        let n_layers = w.config.n_layers;
        let (mut prefill_times, mut decode_times) =
            (HybridTimes::new(n_layers), HybridTimes::new(n_layers));
        // the GPU prefill's per-layer copies and computes, read right after the prompt (a few
        // event queries inside its timer): later calls replace them
        let mut prefill_layers = Vec::new();
        let run = prompt_then_decode(
            !a.json,
            " (hybrid)",
            &prompt,
            gen_len,
            &mut sampler,
            |tokens, prefill| {
                let times = if prefill {
                    &mut prefill_times
                } else {
                    &mut decode_times
                };
                let logits =
                    model.forward_timed(tokens, &mut cache, LogitRows::Last, None, Some(times))?;
                if prefill {
                    prefill_layers = model.gpu_prefill_layer_times()?;
                }
                Ok::<_, kt_model::hybrid::HybridError>(logits)
            },
        )?;
        let (tokens, prefill_s, decode_timed_s) = (run.tokens, run.prefill_s, run.decode_s);
        // the same tokens again without events, on the same cache: layers one after the
        // other, pipelined, then (after a graphed warm-up that captures the decode graph)
        // `--repetitions` runs of graph launches, the first step of each a replay too
        // every reading after the start one on one buffer, filled once (a fresh gigabyte per
        // reading costs its page faults and fill each time and reads no differently:
        // BENCHMARKS.md, session 31)
        let reader = membw::ReadProbe::new(self.pool, crate::machine::probe_bytes());
        let probe = || reader.measure(self.pool, MEMBW_PASSES).gbps;
        let mut before_graph = None;
        let mut around = Vec::new();
        let (mut launches_before, mut captures_before) = (0, 0);
        let (decode_seq_s, decode_pipe_s, rates) = if gen_len > 0 {
            let seq = untimed(&mut model, &mut cache, false, false, &prompt, &tokens)?;
            // (with --eager there is no pipelined path to time: None)
            let pipe = chained
                .then(|| untimed(&mut model, &mut cache, true, false, &prompt, &tokens))
                .transpose()?;
            before_graph = Some(probe());
            // the graph path's warm-up (llama-bench's warm-up run): the capture and a few
            // replays, so the first repetition is not the first graph work after the probe
            let warm_steps = &tokens[..tokens.len().min(GRAPH_WARMUP_STEPS)];
            untimed(
                &mut model, &mut cache, chained, chained, &prompt, warm_steps,
            )?;
            model.reset_graph_timeline();
            launches_before = model.graph_launches();
            captures_before = model.graph_captures();
            let bar = crate::decode::phase_bar(
                !a.json,
                Some(u64::from(a.repetitions)),
                "runs",
                "graph decode repetitions (hybrid)".into(),
            );
            // the readings around the repetitions
            around.push(probe());
            let rates = Rates::measure(a.repetitions as usize, gen_len, || {
                let s = untimed(&mut model, &mut cache, chained, chained, &prompt, &tokens);
                // after the repetition's clock stopped
                around.push(probe());
                bar.inc(1);
                s
            })?;
            bar.finish_and_clear();
            (seq, pipe, Some(rates))
        } else {
            (decode_timed_s, None, None)
        };
        let dram = DramReadings {
            start: self.dram_gbps,
            before_graph: before_graph.unwrap_or_else(probe),
            after: probe(),
            around,
        };
        let dram_gbps = dram.best();
        let graph_launches = model.graph_launches() - launches_before;
        let graph_captures = model.graph_captures() - captures_before;
        let graph_error = model.graph_error().map(str::to_string);
        let around_mean = (!dram.around.is_empty())
            .then(|| dram.around.iter().sum::<f64>() / dram.around.len() as f64);
        let timeline = (gen_len > 0)
            .then(|| model.graph_timeline().cloned())
            .flatten()
            .map(|t| TimelineSummary::new(&t, &decode_times, dram_gbps).with_around(around_mean));

        // KT_PREFETCH_AB=N[:A,B,...]: N more rounds of graph decodes of the same tokens, one
        // per setting (`off` or a number of prefetch rounds; by default `off` and the rounds
        // set above): the A/B of one process on one instance
        let ab = std::env::var("KT_PREFETCH_AB").ok().filter(|_| gen_len > 0);
        let (ab_rounds, settings) = match ab.as_deref() {
            Some(v) => prefetch_env::parse_prefetch_ab(v, prefetch_rounds.unwrap_or(1))?,
            None => (0, Vec::new()),
        };
        let mut prefetch_ab = Vec::new();
        for setting in (0..ab_rounds).flat_map(|_| settings.iter().copied()) {
            let on = setting.is_some();
            model.set_prefetch(on);
            if let Some(r) = setting {
                model.set_prefetch_rounds(r)?;
            }
            let round = (&prompt[..], &tokens[..], chained);
            let (tps, tl) = ab_round(&mut model, &mut cache, round, &decode_times, dram_gbps)?;
            if !a.json {
                match setting {
                    Some(r) => println!("prefetch {r} rounds: decode {tps:.2} tokens/s"),
                    None => println!("prefetch off: decode {tps:.2} tokens/s"),
                }
                if let Some(t) = &tl {
                    t.print();
                }
            }
            prefetch_ab.push(json!({
                "prefetch": on,
                "prefetch_rounds": setting,
                "decode_tokens_per_s": tps,
                "decode_graph_timeline": tl.as_ref().map(TimelineSummary::json),
            }));
        }
        model.set_prefetch(prefetch);
        if let Some(r) = prefetch_rounds {
            model.set_prefetch_rounds(r)?;
        }

        // KT_DEFER_AB=N[:A,B,...]: N more rounds of graph decodes of the same tokens, one per
        // deferral setting (choices deferred per MoE layer; by default 0 and 1), each
        // followed by a probe: the A/B of one process on one instance
        let ab = std::env::var("KT_DEFER_AB").ok().filter(|_| gen_len > 0);
        let (ab_rounds, settings) = match ab.as_deref() {
            Some(v) => prefetch_env::parse_defer_ab(v)?,
            None => (0, Vec::new()),
        };
        let defer = model.defer_experts();
        let mut defer_ab = Vec::new();
        for n in (0..ab_rounds).flat_map(|_| settings.iter().copied()) {
            model.set_defer_experts(n)?;
            let round = (&prompt[..], &tokens[..], chained);
            let (tps, tl) = ab_round(&mut model, &mut cache, round, &decode_times, dram_gbps)?;
            let after = probe();
            let tl = tl.map(|t| t.with_around(Some(after)));
            if !a.json {
                println!(
                    "defer {n} experts: decode {tps:.2} tokens/s (probe after: {after:.1} GB/s)"
                );
                if let Some(t) = &tl {
                    t.print();
                }
            }
            defer_ab.push(json!({
                "defer_experts": n,
                "decode_tokens_per_s": tps,
                "dram_gbps_after": after,
                "decode_graph_timeline": tl.as_ref().map(TimelineSummary::json),
            }));
        }
        model.set_defer_experts(defer)?;

        let crossover = if a.crossover {
            Some(crossover(&mut model, &w.config, a.seed)?)
        } else {
            None
        };
        let prefill_tps = prompt_len as f64 / prefill_s;
        let decode_tps = rates.as_ref().map(Rates::mean);
        // the seconds of `gen_len` tokens at that mean rate
        let decode_s = decode_tps.map_or(decode_timed_s, |t| gen_len as f64 / t);
        let decode_timed_tps = (gen_len > 0).then(|| gen_len as f64 / decode_timed_s);
        let decode_seq_tps = (gen_len > 0).then(|| gen_len as f64 / decode_seq_s);
        let decode_pipe_tps = decode_pipe_s
            .filter(|_| gen_len > 0)
            .map(|secs| gen_len as f64 / secs);
        let decode_bytes_per_token =
            decode_times.total().routed_bytes as f64 / decode_times.tokens.max(1) as f64;
        let decode_bound =
            decode_tps.and_then(|t| bound_fraction(t, decode_bytes_per_token, dram_gbps));
        let decode_bound_paired = rates
            .as_ref()
            .and_then(|r| paired_bound_fraction(r.samples(), decode_bytes_per_token, &dram));
        let headline = match self.mode {
            Mode::Decode => decode_tps.unwrap_or(0.0),
            Mode::Prefill => prefill_tps,
        };
        let weight_bytes: usize = w.gguf.files().iter().map(|f| f.len()).sum();
        if let Some(path) = &a.svg {
            let (phase, times) = if gen_len > 0 {
                ("decode", &decode_times)
            } else {
                ("prefill", &prefill_times)
            };
            let title = format!(
                "kt-bench {phase} (hybrid, {device}): {} | {} threads | timed run, ms per token by layer",
                w.label, self.pool.threads()
            );
            write_svg(path, &title, times)?;
        }
        if a.json {
            let mut j = json!({
                "mode": self.mode.name(),
                "model": w.label,
                "layers": n_layers,
                "tokens_per_s": headline,
                "prefill_tokens_per_s": prefill_tps,
                "decode_tokens_per_s": decode_tps,
                "decode_timed_tokens_per_s": decode_timed_tps,
                "decode_sequential_tokens_per_s": decode_seq_tps,
                "decode_pipelined_tokens_per_s": decode_pipe_tps,
                "decode_repetitions": rates.as_ref().map(Rates::json),
                "decode_graph_launches": graph_launches,
                "decode_graph_captures": graph_captures,
                "decode_graph_error": graph_error,
                "decode_graph_timeline": timeline.as_ref().map(TimelineSummary::json),
                "prompt_len": prompt_len,
                "gen_len": gen_len,
                "threads": self.pool.threads(),
                "rules": w.rules,
                "isa": self.isa.to_string(),
                "matmul": "hybrid",
                "gpu": device,
                "weights_bytes": weight_bytes,
                "weights_s": w.seconds,
                "gpu_load_s": gpu_load_s,
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "decode_timed_s": decode_timed_s,
                "dram_gbps": dram_gbps,
                "dram_gbps_readings": dram.json(),
                "decode_bound_fraction": decode_bound,
                "decode_bound_fraction_paired": decode_bound_paired,
                "split": {
                    "measured": true,
                    "kind": "hybrid",
                    "total_s": prefill_s + decode_timed_s,
                    "prefill": phase_json(&prefill_times, prefill_s, dram_gbps),
                    "decode": (gen_len > 0).then(|| phase_json(&decode_times, decode_timed_s, dram_gbps)),
                },
                "tokens": tokens,
                "gpu_prefill": gpu_prefill_json(&model, &prefill_layers),
                "gpu_prefill_warmup": gpu_prefill_warmup,
                "crossover": crossover,
                "eager": a.eager,
                "prefetch": prefetch,
                "defer_experts": model.defer_experts(),
                "prefetch_rounds": prefetch_rounds,
                "prefetch_ab": prefetch_ab,
            });
            // beside the object above (one more key there passes the macro's recursion limit)
            j["defer_ab"] = json!(defer_ab);
            println!("{j}");
            return Ok(());
        }
        println!(
            "kt-bench {} | {} | hybrid: {device} + cpu isa {}, {} threads, rules {}",
            self.mode.name(),
            w.label,
            self.isa,
            self.pool.threads(),
            w.rules
        );
        println!(
            "weights: {:.2} GB ready in {:.1} s, on the GPU in {gpu_load_s:.1} s; DRAM read bandwidth {dram_gbps:.1} GB/s (best of the probes at the start {:.1}, before the graph decode {:.1}, at the end {:.1})",
            weight_bytes as f64 / 1e9,
            w.seconds,
            dram.start,
            dram.before_graph,
            dram.after
        );
        println!("prefill: {prompt_len} tokens in {prefill_s:.3} s = {prefill_tps:.1} tokens/s");
        if let Some(rates) = &rates {
            println!(
                "decode:  {gen_len} tokens a run: {} ({:.1} ms/token, {graph_launches} graph launches{}); eager pipelined {}, layers one after the other {:.2} tokens/s, with the split's events {:.2} tokens/s",
                rates.describe(),
                1e3 * decode_s / gen_len as f64,
                if a.eager { ", --eager: every call layer after layer" } else { "" },
                decode_pipe_tps.map_or("not run (--eager)".to_string(), |t| format!("{t:.2} tokens/s")),
                gen_len as f64 / decode_seq_s,
                gen_len as f64 / decode_timed_s
            );
            if let Some(f) = decode_bound {
                println!(
                    "  {:.1}% of the DRAM bound ({:.1} MB of routed expert weights per token at {dram_gbps:.1} GB/s)",
                    100.0 * f,
                    decode_bytes_per_token / 1e6
                );
            }
            if let Some(f) = decode_bound_paired {
                let around: Vec<String> = dram.around.iter().map(|g| format!("{g:.1}")).collect();
                println!(
                    "  {:.1}% of the DRAM bound with each repetition against the probes beside it (median; probes {} GB/s)",
                    100.0 * f,
                    around.join(", ")
                );
            }
            if let Some(e) = &graph_error {
                println!("decode graph not captured: {e}");
            }
            if let Some(t) = &timeline {
                t.print();
            }
        }
        if let Some(l) = model.gpu_prefill_load() {
            println!(
                "gpu prefill experts: calls of more than {} tokens; {:.2} GB pinned, repacked in {:.1} s ({:.1} s of it pinning), int4 relative RMS error {:.4} (worst matrix {:.4})",
                model.gpu_prefill_threshold().unwrap_or(0),
                l.pinned_bytes as f64 / 1e9,
                l.seconds,
                l.pin_seconds,
                l.relative_rms,
                l.worst_relative_rms
            );
            if let Some(r) = model.gpu_prefill_resident().filter(|&r| r > 0) {
                println!(
                    "  {r} experts of each MoE layer resident on the GPU ({:.2} GB){}",
                    model.gpu_prefill_resident_bytes() as f64 / 1e9,
                    match model.decode_resident() {
                        Some(true) => "; decode runs its choices among them there",
                        _ => "",
                    }
                );
            }
            for t in &prefill_layers {
                println!(
                    "  layer {}: copy {:.2} GB from {:.1} ms for {:.1} ms ({:.1} GB/s); experts from {} for {} ms",
                    t.layer,
                    t.copy_bytes as f64 / 1e9,
                    t.copy_start_ms,
                    t.copy_ms,
                    t.copy_gbps,
                    t.compute_start_ms.map_or("-".into(), |v| format!("{v:.1}")),
                    t.compute_ms.map_or("-".into(), |v| format!("{v:.1}")),
                );
            }
        }
        if let Some(c) = &crossover {
            println!("crossover: {c}");
        }
        print_phase("prefill", &prefill_times, prefill_s, dram_gbps);
        if gen_len > 0 {
            print_phase(
                "decode (timed run)",
                &decode_times,
                decode_timed_s,
                dram_gbps,
            );
        }
        if let Some(path) = &a.svg {
            println!("split per layer written to {}", path.display());
        }
        Ok(())
    }
}

/// Prompt lengths of `--crossover`.
const CROSSOVER_LENS: [usize; 7] = [32, 64, 128, 256, 512, 1024, 2048];
/// Copies of one layer's expert slabs in the bandwidth measurement.
const H2D_REPS: usize = 8;

/// `--prefill-split`: `off` or a CPU share in 0..=1.
fn parse_split(v: &str) -> Result<PrefillSplit, Box<dyn std::error::Error>> {
    match v {
        "off" => Ok(PrefillSplit::Off),
        _ => match v.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(PrefillSplit::CpuShare(f)),
            _ => Err(
                format!("--prefill-split {v:?}: expected off or a CPU share from 0 to 1").into(),
            ),
        },
    }
}

fn prefill_split_json(split: Option<PrefillSplit>) -> Value {
    match split {
        None => Value::Null,
        Some(PrefillSplit::Off) => json!("off"),
        Some(PrefillSplit::CpuShare(f)) => json!(f),
    }
}

fn gpu_prefill_json(model: &HybridModel, layers: &[PrefillLayerTimes]) -> Option<Value> {
    model.gpu_prefill_load().map(|l| {
        json!({
            "threshold": model.gpu_prefill_threshold(),
            "split": prefill_split_json(model.gpu_prefill_split()),
            "resident_experts": model.gpu_prefill_resident(),
            "resident_bytes": model.gpu_prefill_resident_bytes(),
            "decode_resident": model.decode_resident(),
            "layers": layers,
            "cpu_shares": model.gpu_prefill_cpu_times().iter().map(|t| json!({
                "pairs": t.pairs,
                "experts": t.experts,
                "gather_s": t.gather_s,
                "operator_s": t.operator_s,
                "sum_s": t.sum_s,
            })).collect::<Vec<_>>(),
            "repack_s": l.seconds,
            "pin_s": l.pin_seconds,
            "pinned_bytes": l.pinned_bytes,
            "layer_bytes": l.layer_bytes,
            "relative_rms": l.relative_rms,
            "worst_relative_rms": l.worst_relative_rms,
        })
    })
}

/// Prefill tokens/s at each of [`CROSSOVER_LENS`] with the routed experts on the GPU
/// (threshold 0) and on the CPU (threshold `usize::MAX`), each on a fresh cache after one
/// untimed call of the same path and one of the same length, and the pinned host-to-device
/// bandwidth. Restores the rules' threshold.
fn crossover(
    model: &mut HybridModel,
    config: &kt_model::config::DeepSeekConfig,
    seed: u64,
) -> Result<Value, Box<dyn std::error::Error>> {
    let Some(rules_threshold) = model.gpu_prefill_threshold() else {
        return Err(
            "--crossover needs rules whose routed experts have a prefill_device option".into(),
        );
    };
    let h2d_gbps = model.measure_h2d_gbps(H2D_REPS)?;
    let mut runs = Vec::new();
    for (path, threshold) in [("gpu", 0usize), ("cpu", usize::MAX)] {
        model.set_gpu_prefill_threshold(threshold)?;
        let warm = prompt_ids(config, WARMUP_TOKENS * 4, seed ^ 1);
        let mut cache = model.new_cache(warm.len())?;
        model.forward(&warm, &mut cache, LogitRows::Last)?;
        for len in CROSSOVER_LENS {
            let prompt = prompt_ids(config, len, seed);
            // once untimed at this length: a GPU-expert call of a new length allocates its
            // pairs' page-locked buffers and grows the CPU share's (session 28's calls F and
            // J timed that, 0.03-0.08 s at 1024 tokens)
            model.forward(&prompt, &mut model.new_cache(len)?, LogitRows::Last)?;
            let mut cache = model.new_cache(len)?;
            let t = Instant::now();
            let logits = model.forward(&prompt, &mut cache, LogitRows::Last)?;
            let s = t.elapsed().as_secs_f64();
            if logits.iter().any(|v| !v.is_finite()) {
                return Err(format!("{path} experts, {len} tokens: non-finite logits").into());
            }
            runs.push(json!({"experts": path, "prompt_len": len, "prefill_s": s, "tokens_per_s": len as f64 / s}));
        }
    }
    model.set_gpu_prefill_threshold(rules_threshold)?;
    Ok(json!({"h2d_gbps": h2d_gbps, "runs": runs}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Experts at 85% of the probe for 1.386 ms and a 0.120 ms stretch: the layer's bytes
    /// take 0.85 x 1.386 ms at the probe, over 1.506 ms of layer.
    #[test]
    fn moe_layer_fraction_weighs_the_stretch() {
        let f = moe_layer_bound_fraction(0.85, 1.386, 0.120).unwrap();
        assert!((f - 0.85 * 1.386 / 1.506).abs() < 1e-12, "{f}");
        assert_eq!(moe_layer_bound_fraction(0.85, 1.0, 0.0), Some(0.85));
        assert_eq!(moe_layer_bound_fraction(0.85, 0.0, 0.0), None);
    }

    /// Each MoE layer's routed bytes per token, dense layers (no routed bytes) left out.
    #[test]
    fn per_layer_bytes_skip_the_dense_layers() {
        let mut t = HybridTimes::new(4);
        t.tokens = 4;
        t.layers[1].routed_bytes = 400;
        t.layers[2].routed_bytes = 480;
        t.layers[3].routed_bytes = 400;
        assert_eq!(moe_layer_bytes_per_token(&t), [100.0, 120.0, 100.0]);
    }
}
