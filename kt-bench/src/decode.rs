//! `kt-bench decode` and `kt-bench prefill`: end-to-end generation speed of a DeepSeek
//! model on the CPU: a synthetic preset built in memory (`kt_model::synthetic`) or a
//! GGUF file, or, with a hybrid rules file (`rules/*-hybrid.yaml`) and the `cuda` feature,
//! on one GPU with the routed experts on the CPU (`kt_model::hybrid`, run by
//! `decode_hybrid.rs`).
//!
//! One run: a prompt of `--prompt-len` pseudo-random ids (BOS first) in one forward
//! call (prefill), then `--gen-len` single-token forward calls, each on the token
//! sampled from the previous logits (decode). `decode` reports decode tokens/s as its
//! headline: the mean over `--repetitions` decodes of the same tokens without timers, each
//! on a fresh cache after the prompt (`reps.rs`); `prefill` the prompt's. The first run's
//! phases run with the model's stage timers on
//! (a few clock reads per layer): the report splits each phase's time by stage and layer
//! (`split.rs`, `--svg` draws it with `svg.rs`) and compares the routed experts' weight
//! traffic with the DRAM read bandwidth measured in the same run.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kt_kernels::cpu::moe::repack::RepackFormat;
use kt_kernels::cpu::{self, membw};
use kt_kernels::util::SplitMix64;
use kt_model::config::DeepSeekConfig;
use kt_model::deepseek::{DeepSeekModel, LogitRows, MatmulMode, Sampler, StageTimes};
use kt_model::gguf::Gguf;
use kt_model::placement::{ModuleKind, Placement, RuleSet, WeightFormat};
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

use crate::gen_gguf::bytes_bar;
use crate::reps::Rates;
use crate::split::PhaseSplit;
use crate::svg;

/// The largest batch the fused MoE operator's scratch is sized for: a longer prompt runs
/// its routed experts in pieces of this many tokens (bounds the scratch at a few hundred MB).
pub(crate) const MAX_MOE_BATCH: usize = 4096;

/// Passes of each pattern of the DRAM bandwidth probe (buffers of `machine::probe_bytes`).
pub(crate) const MEMBW_PASSES: usize = 3;

/// Which rate a run reports as its headline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Decode,
    Prefill,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Decode => "decode",
            Mode::Prefill => "prefill",
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// deepseek-v2-lite or deepseek-v3 (synthetic weights built in memory), or a path
    /// to a GGUF file.
    #[arg(long, default_value = "deepseek-v2-lite")]
    pub model: String,
    /// Run only the first N layers (the leading dense layers first).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Prompt tokens (default: 32 for decode, 256 for prefill).
    #[arg(long)]
    pub prompt_len: Option<usize>,
    /// Decode steps after the prompt (default: 16 for decode, 0 for prefill).
    #[arg(long)]
    pub gen_len: Option<usize>,
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Dequantized weights and f32 activations (the slow exact path).
    #[arg(long)]
    pub reference: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-p of temperature sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the synthetic weights, the prompt and the sampler.
    #[arg(long, default_value_t = SyntheticOptions::default().seed)]
    pub seed: u64,
    /// Where modules run: `cpu` (everything on the CPU, weights as stored), a rules file
    /// that keeps everything on the CPU as stored, or (built with `--features cuda`) a
    /// hybrid rules file: routed experts on the CPU, the rest on GPU 0.
    #[arg(long, default_value = "cpu")]
    pub rules: String,
    /// Write the time split per layer as a stacked bar chart (SVG) to this file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Decode repetitions behind the decode rate: after the run whose time split is reported
    /// (and, for hybrid rules, a warm-up of the graph path), the same tokens are decoded this
    /// many more times, each on a fresh cache after the prompt, without timers; the rate is
    /// their mean, as llama-bench reports (`reps.rs`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,
    /// With hybrid rules that prefill the routed experts on the GPU: after the run, prefill
    /// 32, 64, 128, 256, 512, 1024 and 2048 tokens with the GPU experts forced on and off (the
    /// crossover) and measure the pinned host-to-device bandwidth.
    #[arg(long)]
    pub crossover: bool,
    /// With hybrid rules that prefill the routed experts on the GPU: `off` (each layer of a
    /// long chunk has all its experts on the GPU) or the share of them the CPU runs
    /// meanwhile, from 0 to 1 (the last ones; `kt_model::hybrid`'s `gpu_experts/split.rs`),
    /// in place of the rules' `prefill_cpu_share`.
    #[arg(long)]
    pub prefill_split: Option<String>,
    /// With hybrid rules that prefill the routed experts on the GPU: keep this many of
    /// each MoE layer's experts (the first ones) on the GPU for good, so a long chunk copies
    /// only the others, in place of the rules' `prefill_resident` (`kt-bench plan` prints
    /// how many fit beside the rest of the model).
    #[arg(long)]
    pub prefill_resident: Option<usize>,
    /// With resident experts: run a decode step's choices among them on the GPU (`on`) or
    /// every choice on the CPU (`off`), in place of the rules' `decode_resident`.
    #[arg(long, value_parser = ["on", "off"])]
    pub decode_resident: Option<String>,
    /// With hybrid rules: a decode step's MoE layers (all but the last) hand this many of
    /// their lowest-weighted CPU choices to the next MoE layer, whose output adds them, so
    /// the CPU computes them while the GPU runs that layer's attention (KTransformers' expert
    /// deferral: an approximation of the model), in place of the rules' `defer_experts`; 0
    /// turns it off.
    #[arg(long)]
    pub defer_experts: Option<usize>,
    /// With hybrid rules: run every call eagerly, one layer after the other (no pipelined
    /// layers, no decode graph), so the decode rate is the eager path's; for profilers
    /// that time kernels one by one (a kernel queued behind a host flag would wait on them
    /// forever) and for an A/B against the default graph path.
    #[arg(long)]
    pub eager: bool,
}

impl Args {
    /// What a bare `kt-bench` runs: a short decode on a few synthetic V2-Lite layers.
    pub fn default_quick() -> Args {
        Args {
            model: Preset::DeepSeekV2Lite.name().into(),
            layers: Some(8),
            prompt_len: Some(32),
            gen_len: Some(16),
            threads: None,
            reference: false,
            temperature: 0.0,
            top_p: 1.0,
            seed: SyntheticOptions::default().seed,
            rules: "cpu".into(),
            svg: None,
            json: false,
            repetitions: 1,
            crossover: false,
            prefill_split: None,
            prefill_resident: None,
            decode_resident: None,
            defer_experts: None,
            eager: false,
        }
    }
}

/// Where the weights came from, what getting them cost, and the `--rules` placement.
pub(crate) struct Weights {
    pub gguf: Gguf,
    pub config: DeepSeekConfig,
    pub label: String,
    pub seconds: f64,
    pub rules: String,
    /// The placement of a rules file with GPU modules (the hybrid executor runs it).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub hybrid: Option<Placement>,
    /// The layout all-CPU rules repack the routed experts to (`None`: as stored).
    pub cpu_repack: Option<RepackFormat>,
}

fn load(a: &Args, show_progress: bool) -> Result<Weights, Box<dyn std::error::Error>> {
    let start = Instant::now();
    if let Some(preset) = Preset::from_name(&a.model) {
        let opts = SyntheticOptions {
            layers: a.layers,
            seed: a.seed,
            ..SyntheticOptions::default()
        };
        let synth = SyntheticModel::new(preset, &opts)?;
        // Placed before the weights are built, so a bad rules file fails at once.
        let (rules, hybrid, cpu_repack) = placement(&a.rules, synth.config())?;
        let bar = bytes_bar(synth.data_bytes(), "building weights");
        if !show_progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let gguf = synth.to_gguf(&mut |done| bar.set_position(done))?;
        bar.finish_and_clear();
        return Ok(Weights {
            gguf,
            config: synth.config().clone(),
            label: format!("{preset} (synthetic, {} layers)", synth.config().n_layers),
            seconds: start.elapsed().as_secs_f64(),
            rules,
            hybrid,
            cpu_repack,
        });
    }
    if !a.model.ends_with(".gguf") && !std::path::Path::new(&a.model).exists() {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        return Err(format!(
            "--model {:?} is neither a preset ({}) nor a GGUF file",
            a.model,
            names.join(", ")
        )
        .into());
    }
    let gguf = Gguf::open(&a.model)?;
    let mut config = DeepSeekConfig::from_gguf(&gguf)?;
    if let Some(n) = a.layers {
        if n == 0 || n > config.n_layers {
            return Err(format!("--layers {n} is not in 1..={}", config.n_layers).into());
        }
        config.n_layers = n;
        config.first_k_dense_replace = config.first_k_dense_replace.min(n);
    }
    let (rules, hybrid, cpu_repack) = placement(&a.rules, &config)?;
    Ok(Weights {
        label: format!("{} ({} layers)", a.model, config.n_layers),
        gguf,
        config,
        seconds: start.elapsed().as_secs_f64(),
        rules,
        hybrid,
        cpu_repack,
    })
}

/// The placement `--rules` asks for: the rules' name, and the placement itself when it
/// puts modules on a GPU (the hybrid executor's job).
///
/// `--rules`: `cpu` (the built-in rule set: everything on the CPU, weights as stored) or a
/// rules file (`rules/*.yaml`), placed against the model's config. The CPU engine runs every
/// module with the weights as stored, but for the routed experts, which an all-CPU file may
/// put in a repacked layout (`int4_amx`, `int8_amx`: one format for every layer; returned
/// third); any other format is refused, naming the first such module, rather than being
/// silently ignored, and so is `defer_experts` (a hybrid executor's option). A file with GPU modules needs the `cuda` build and a placement the
/// hybrid executor can run (`kt_model::hybrid::HybridModel::check`); otherwise it is
/// refused, naming why.
fn placement(rules: &str, config: &DeepSeekConfig) -> Result<Placed, Box<dyn std::error::Error>> {
    if rules == "cpu" {
        return Ok((rules.to_owned(), None, None));
    }
    let placed = RuleSet::from_file(rules)?.place(config)?;
    if let Some(m) = placed.modules().iter().find(|m| m.device.is_gpu()) {
        #[cfg(feature = "cuda")]
        {
            kt_model::hybrid::HybridModel::check(config, &placed).map_err(|e| {
                format!(
                    "--rules {rules}: module {} goes to {}: {e}",
                    m.name, m.device
                )
            })?;
            return Ok((rules.to_owned(), Some(placed), None));
        }
        #[cfg(not(feature = "cuda"))]
        return Err(format!(
            "--rules {rules}: module {} goes to {}, but this build has no GPU support \
             (build kt-bench with `--features cuda`, or use a `-cpu` rules file; `kt-bench plan` \
             shows the placement)",
            m.name, m.device
        )
        .into());
    }
    let mut repack: Option<(&str, WeightFormat)> = None;
    for m in placed.modules() {
        if m.options.defer_experts.is_some_and(|n| n > 0) {
            return Err(format!(
                "--rules {rules}: module {} asks for defer_experts, which only the hybrid \
                 executor runs (the CPU engine has no GPU work to overlap)",
                m.name
            )
            .into());
        }
        if m.format == WeightFormat::Gguf {
            continue;
        }
        let routed = m.kind == ModuleKind::RoutedExperts && m.format.repack().is_some();
        if !routed {
            return Err(format!(
                "--rules {rules}: module {} asks for format {}, but the CPU engine runs weights \
                 as stored (format gguf), the routed experts also as int4_amx or int8_amx",
                m.name, m.format
            )
            .into());
        }
        match repack {
            Some((first, f)) if f != m.format => {
                return Err(format!(
                    "--rules {rules}: modules {first} and {} put the routed experts in {f} and \
                     {}; the CPU engine takes one format for all layers",
                    m.name, m.format
                )
                .into())
            }
            Some(_) => {}
            None => repack = Some((&m.name, m.format)),
        }
    }
    let repack = repack.and_then(|(_, f)| f.repack());
    Ok((rules.to_owned(), None, repack))
}

/// What [`placement`] returns: the rules' name, the hybrid placement (GPU modules), and the
/// repacked layout of an all-CPU file's routed experts.
type Placed = (String, Option<Placement>, Option<RepackFormat>);

pub fn run(a: Args, mode: Mode) -> Result<(), Box<dyn std::error::Error>> {
    let pool = crate::machine::pool(a.threads)?;
    let (prompt_len, gen_len) = match mode {
        Mode::Decode => (a.prompt_len.unwrap_or(32), a.gen_len.unwrap_or(16)),
        Mode::Prefill => (a.prompt_len.unwrap_or(256), a.gen_len.unwrap_or(0)),
    };
    if prompt_len == 0 {
        return Err("--prompt-len must be at least 1".into());
    }
    if mode == Mode::Decode && gen_len == 0 {
        return Err("decode needs --gen-len of at least 1".into());
    }
    let mut sampler = if a.temperature == 0.0 {
        Sampler::greedy()
    } else {
        Sampler::top_p(a.temperature, a.top_p, a.seed)?
    };
    let isa = cpu::isa::selected()?;
    let matmul = if a.reference {
        MatmulMode::Reference
    } else {
        MatmulMode::Quantized(isa)
    };

    let w = load(&a, !a.json)?;
    #[cfg(feature = "cuda")]
    if let Some(placement) = &w.hybrid {
        if a.reference {
            return Err(
                "--reference runs the CPU engine only; the hybrid rules run the GPU".into(),
            );
        }
        let run = crate::decode_hybrid::HybridRun {
            args: &a,
            mode,
            prompt_len,
            gen_len,
            isa,
            pool,
            dram_gbps: membw::measure_read_bandwidth(
                pool,
                crate::machine::probe_bytes(),
                MEMBW_PASSES,
            )
            .gbps,
        };
        return run.run(&w, placement, sampler);
    }
    if a.crossover {
        return Err("--crossover needs hybrid rules whose routed experts prefill on the GPU (and a cuda build)".into());
    }
    if a.prefill_split.as_deref().is_some_and(|v| v != "off")
        || a.prefill_resident.is_some()
        || a.decode_resident.as_deref() == Some("on")
    {
        return Err("--prefill-split, --prefill-resident and --decode-resident on need hybrid rules whose routed experts prefill on the GPU (and a cuda build)".into());
    }
    if a.defer_experts.is_some_and(|n| n > 0) {
        return Err("--defer-experts needs hybrid rules (and a cuda build): the CPU path has no GPU work to overlap".into());
    }
    if a.eager {
        return Err(
            "--eager needs hybrid rules (and a cuda build): the CPU path is always eager".into(),
        );
    }
    let rules = w.rules.clone();
    let mut model = match w.cpu_repack {
        None => DeepSeekModel::new(&w.gguf, w.config.clone(), matmul)?,
        Some(format) => {
            // The repack is the load's longest step: a bar over the expert matrices.
            let bar = phase_bar(!a.json, None, "", "loading the model".into());
            let message = format!("repacking the routed experts to {}", format.name());
            let repacked = repack_progress(&bar, &message);
            let m = DeepSeekModel::with_repacked_experts(
                &w.gguf,
                w.config.clone(),
                matmul,
                format,
                &repacked,
            );
            bar.finish_and_clear();
            m?
        }
    };
    model.set_max_batch(prompt_len.min(MAX_MOE_BATCH))?;
    let weight_bytes: usize = w.gguf.files().iter().map(|f| f.len()).sum();
    let prompt = prompt_ids(&w.config, prompt_len, a.seed);
    let mut cache = model.new_cache(prompt_len + gen_len)?;
    let dram_gbps =
        membw::measure_read_bandwidth(pool, crate::machine::probe_bytes(), MEMBW_PASSES).gbps;

    let n_layers = w.config.n_layers;
    let (mut prefill_times, mut decode_times) =
        (StageTimes::new(n_layers), StageTimes::new(n_layers));
    let run = prompt_then_decode(
        !a.json,
        "",
        &prompt,
        gen_len,
        &mut sampler,
        |tokens, prefill| {
            let times = if prefill {
                &mut prefill_times
            } else {
                &mut decode_times
            };
            model.forward_timed(tokens, &mut cache, LogitRows::Last, None, Some(times))
        },
    )?;
    let (tokens, prefill_s, decode_s) = (run.tokens, run.prefill_s, run.decode_s);
    drop(cache);
    // the decode rate: the same tokens again without the stage timers, `--repetitions` times
    let rates = if gen_len > 0 {
        let bar = phase_bar(
            !a.json,
            Some(u64::from(a.repetitions)),
            "runs",
            "decode repetitions".into(),
        );
        let rates = Rates::measure(a.repetitions as usize, gen_len, || {
            let mut cache = model.new_cache(prompt_len + gen_len)?;
            model.forward(&prompt, &mut cache, LogitRows::Last, None)?;
            let t = Instant::now();
            for &tok in &tokens {
                model.forward(&[tok], &mut cache, LogitRows::Last, None)?;
            }
            bar.inc(1);
            Ok::<f64, kt_model::ModelError>(t.elapsed().as_secs_f64())
        })?;
        bar.finish_and_clear();
        Some(rates)
    } else {
        None
    };

    let prefill = PhaseSplit {
        name: "prefill",
        times: &prefill_times,
        wall_s: prefill_s,
    };
    let decode = PhaseSplit {
        name: "decode",
        times: &decode_times,
        wall_s: decode_s,
    };
    let prefill_tps = prompt_len as f64 / prefill_s;
    let decode_tps = rates.as_ref().map(Rates::mean);
    let decode_timed_tps = (gen_len > 0).then(|| gen_len as f64 / decode_s);
    let (headline, shown) = match mode {
        Mode::Decode => (decode_tps.unwrap_or(0.0), &decode),
        Mode::Prefill => (prefill_tps, &prefill),
    };
    let matmul_name = if a.reference {
        "reference"
    } else {
        "quantized"
    };
    if let Some(path) = &a.svg {
        let title = format!(
            "kt-bench {}: {} | {} threads | ms per token by layer and stage",
            mode.name(),
            w.label,
            pool.threads()
        );
        let mut bars: Vec<_> = shown
            .times
            .layers
            .iter()
            .enumerate()
            .map(|(l, s)| (format!("L{l}"), svg::stage_series(s)))
            .collect();
        bars.push(("head".into(), svg::stage_series(&shown.times.head)));
        let scale = 1e3 / shown.times.tokens.max(1) as f64;
        std::fs::write(
            path,
            svg::stacked_bars(&title, "ms per token", &svg::stage_names(), &bars, scale),
        )
        .map_err(|e| format!("--svg {}: {e}", path.display()))?;
    }
    if a.json {
        let j = serde_json::json!({
            "mode": mode.name(),
            "model": w.label,
            "layers": n_layers,
            "tokens_per_s": headline,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "decode_timed_tokens_per_s": decode_timed_tps,
            "decode_repetitions": rates.as_ref().map(Rates::json),
            "prompt_len": prompt_len,
            "gen_len": gen_len,
            "threads": pool.threads(),
            "rules": rules,
            "isa": isa.to_string(),
            "matmul": matmul_name,
            "weights_bytes": weight_bytes,
            "weights_s": w.seconds,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "dram_gbps": dram_gbps,
            "split": {
                "measured": true,
                "total_s": prefill_s + decode_s,
                "prefill": prefill.to_json(dram_gbps),
                "decode": (gen_len > 0).then(|| decode.to_json(dram_gbps)),
            },
            "tokens": tokens,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "kt-bench {} | {} | cpu, isa {isa}, {} threads, {matmul_name} matmul, rules {rules}",
        mode.name(),
        w.label,
        pool.threads()
    );
    println!(
        "weights: {:.2} GB ready in {:.1} s; DRAM read bandwidth {dram_gbps:.1} GB/s",
        weight_bytes as f64 / 1e9,
        w.seconds
    );
    println!("prefill: {prompt_len} tokens in {prefill_s:.3} s = {prefill_tps:.1} tokens/s");
    if let (Some(tps), Some(rates)) = (decode_timed_tps, &rates) {
        println!(
            "decode:  {gen_len} tokens in {decode_s:.3} s = {tps:.2} tokens/s ({:.1} ms/token) with stage timers; without: {}",
            1e3 * decode_s / gen_len as f64,
            rates.describe()
        );
    }
    shown.print(dram_gbps);
    if let Some(path) = &a.svg {
        println!("split per layer written to {}", path.display());
    }
    Ok(())
}

/// What [`prompt_then_decode`] measured.
pub(crate) struct TimedRun {
    /// The sampled tokens, in order.
    pub tokens: Vec<u32>,
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// The run both engines time: `prompt` in one `forward` call (`prefill` true), then
/// `gen_len` single-token calls on tokens `sampler` draws from the last logits, with
/// progress bars (shown when `show`, labelled with `suffix`). `forward` returns the last
/// row's logits; non-finite final logits are an error.
pub(crate) fn prompt_then_decode<E: Into<Box<dyn std::error::Error>>>(
    show: bool,
    suffix: &str,
    prompt: &[u32],
    gen_len: usize,
    sampler: &mut Sampler,
    mut forward: impl FnMut(&[u32], bool) -> Result<Vec<f32>, E>,
) -> Result<TimedRun, Box<dyn std::error::Error>> {
    let bar = phase_bar(
        show,
        None,
        "tokens",
        format!("prefill {} tokens{suffix}", prompt.len()),
    );
    let t = Instant::now();
    let mut logits = forward(prompt, true).map_err(Into::into)?;
    let prefill_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut tokens = Vec::with_capacity(gen_len);
    let bar = phase_bar(
        show,
        Some(gen_len as u64),
        "tokens",
        format!("decode{suffix}"),
    );
    let t = Instant::now();
    for _ in 0..gen_len {
        let next = sampler.sample(&logits)?;
        tokens.push(next);
        logits = forward(&[next], false).map_err(Into::into)?;
        bar.inc(1);
    }
    let decode_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if logits.iter().any(|v| !v.is_finite()) {
        return Err("the model produced non-finite logits".into());
    }
    Ok(TimedRun {
        tokens,
        prefill_s,
        decode_s,
    })
}

/// A progress bar over `len` steps of `unit` (e.g. "tokens"), or a spinner when `len` is
/// `None`; hidden unless `show` (and, as every indicatif bar, when stderr is no terminal).
pub(crate) fn phase_bar(show: bool, len: Option<u64>, unit: &str, what: String) -> ProgressBar {
    if !show {
        return ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
    }
    let bar = match len {
        Some(n) => {
            let b = ProgressBar::new(n);
            b.set_style(bar_style(unit));
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(200));
            b
        }
    };
    bar.set_message(what);
    bar
}

/// A repack's progress report (`(done, total)` expert matrices) drawn on `bar`: a spinner
/// until then, which turns into a bar over the expert matrices with `message` at the first
/// report (and again when a second repack brings another total).
pub(crate) fn repack_progress<'b>(
    bar: &'b ProgressBar,
    message: &'b str,
) -> impl Fn(usize, usize) + Sync + 'b {
    move |done, total| {
        if bar.length() != Some(total as u64) {
            bar.set_length(total as u64);
            bar.set_style(bar_style("expert matrices"));
            bar.set_message(message.to_owned());
        }
        bar.set_position(done as u64);
    }
}

/// The style of [`phase_bar`]'s bars over steps of `unit`.
fn bar_style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
    ))
    .expect("a valid template")
    .progress_chars("=> ")
}

/// BOS (when the model has one), then pseudo-random ids of the vocabulary.
pub(crate) fn prompt_ids(c: &DeepSeekConfig, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed ^ 0x7072_6f6d_7074);
    let mut ids: Vec<u32> = (0..len).map(|_| rng.below(c.vocab_size) as u32).collect();
    if let Some(bos) = c.bos_token_id {
        ids[0] = bos;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU-only rules file is refused when it asks for what only the hybrid executor runs
    /// (`defer_experts`) or for formats the CPU engine does not run, naming the module; the
    /// same file without the option places.
    #[test]
    fn cpu_rules_refuse_what_the_cpu_engine_ignores() {
        let config = Preset::DeepSeekV2Lite.config();
        let dir = std::env::temp_dir().join(format!("kt-bench-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, options: &str| {
            let path = dir.join(name);
            let text = format!(
                "devices: [cpu]\nrules:\n  - match: {{kind: routed_experts}}\n    replace: {{device: cpu, format: gguf{options}}}\n  - match: {{name: '.*'}}\n    replace: {{device: cpu, format: gguf}}\n"
            );
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let deferring = write("defer.yaml", ", options: {defer_experts: 2}");
        let e = placement(&deferring, &config).unwrap_err().to_string();
        assert!(
            e.contains("blk.1.ffn_exps") && e.contains("defer_experts"),
            "{e}"
        );
        let plain = write("plain.yaml", "");
        let (_, hybrid, repack) = placement(&plain, &config).unwrap();
        assert!(hybrid.is_none() && repack.is_none());
        let off = write("off.yaml", ", options: {defer_experts: 0}");
        assert!(placement(&off, &config).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
