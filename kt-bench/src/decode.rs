//! `kt-bench decode` and `kt-bench prefill`: end-to-end generation speed of a DeepSeek
//! model on the CPU: a synthetic preset built in memory (`kt_model::synthetic`) or a
//! GGUF file.
//!
//! One run: a prompt of `--prompt-len` pseudo-random ids (BOS first) in one forward
//! call (prefill), then `--gen-len` single-token forward calls, each on the token
//! sampled from the previous logits (decode). `decode` reports decode tokens/s as its
//! headline, `prefill` the prompt's. The model exposes no per-stage timers, so the time
//! is split only into weights, prefill and decode; the JSON keeps fields for an
//! attention / routed experts / other split, null until the engine measures them.

use std::time::Instant;

use kt_kernels::cpu;
use kt_kernels::util::SplitMix64;
use kt_model::config::DeepSeekConfig;
use kt_model::deepseek::{DeepSeekModel, LogitRows, MatmulMode, Sampler};
use kt_model::gguf::Gguf;
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

use crate::gen_gguf::bytes_bar;

/// Which rate a run reports as its headline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Decode,
    Prefill,
}

impl Mode {
    fn name(self) -> &'static str {
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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
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
            json: false,
        }
    }
}

/// Where the weights came from and what getting them cost.
struct Weights {
    gguf: Gguf,
    config: DeepSeekConfig,
    label: String,
    seconds: f64,
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
    Ok(Weights {
        label: format!("{} ({} layers)", a.model, config.n_layers),
        gguf,
        config,
        seconds: start.elapsed().as_secs_f64(),
    })
}

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
    let model = DeepSeekModel::new(&w.gguf, w.config.clone(), matmul)?;
    let weight_bytes: usize = w.gguf.files().iter().map(|f| f.len()).sum();
    let prompt = prompt_ids(&w.config, prompt_len, a.seed);
    let mut cache = model.new_cache(prompt_len + gen_len)?;

    let t = Instant::now();
    let mut logits = model.forward(&prompt, &mut cache, LogitRows::Last, None)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut tokens = Vec::with_capacity(gen_len);
    let t = Instant::now();
    for _ in 0..gen_len {
        let next = sampler.sample(&logits)?;
        tokens.push(next);
        logits = model.forward(&[next], &mut cache, LogitRows::Last, None)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    if logits.iter().any(|v| !v.is_finite()) {
        return Err("the model produced non-finite logits".into());
    }

    let prefill_tps = prompt_len as f64 / prefill_s;
    let decode_tps = (gen_len > 0).then(|| gen_len as f64 / decode_s);
    let headline = match mode {
        Mode::Decode => decode_tps.unwrap_or(0.0),
        Mode::Prefill => prefill_tps,
    };
    let matmul_name = if a.reference {
        "reference"
    } else {
        "quantized"
    };
    if a.json {
        let j = serde_json::json!({
            "mode": mode.name(),
            "model": w.label,
            "layers": w.config.n_layers,
            "tokens_per_s": headline,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "prompt_len": prompt_len,
            "gen_len": gen_len,
            "threads": pool.threads(),
            "rules": "cpu",
            "isa": isa.to_string(),
            "matmul": matmul_name,
            "weights_bytes": weight_bytes,
            "weights_s": w.seconds,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "split": {
                "attention_s": null,
                "routed_experts_s": null,
                "other_s": null,
                "total_s": prefill_s + decode_s,
                "measured": false,
            },
            "tokens": tokens,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "kt-bench {} | {} | cpu, isa {isa}, {} threads, {matmul_name} matmul",
        mode.name(),
        w.label,
        pool.threads()
    );
    println!(
        "weights: {:.2} GB ready in {:.1} s",
        weight_bytes as f64 / 1e9,
        w.seconds
    );
    println!("prefill: {prompt_len} tokens in {prefill_s:.3} s = {prefill_tps:.1} tokens/s");
    if let Some(tps) = decode_tps {
        println!(
            "decode:  {gen_len} tokens in {decode_s:.3} s = {tps:.2} tokens/s ({:.1} ms/token)",
            1e3 * decode_s / gen_len as f64
        );
    }
    println!(
        "time split: prefill {prefill_s:.3} s + decode {decode_s:.3} s \
         (attention / routed experts / other: not measured, the model has no stage timers)"
    );
    Ok(())
}

/// BOS (when the model has one), then pseudo-random ids of the vocabulary.
fn prompt_ids(c: &DeepSeekConfig, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed ^ 0x7072_6f6d_7074);
    let mut ids: Vec<u32> = (0..len).map(|_| rng.below(c.vocab_size) as u32).collect();
    if let Some(bos) = c.bos_token_id {
        ids[0] = bos;
    }
    ids
}
