//! How well can layer `L + 1`'s routed experts be predicted before layer `L + 1` runs?
//! (issue 6: prefetching the next layer's experts during the GPU stretch.)
//!
//! Runs the CPU engine (quantized mode, the fused MoE operator) on a synthetic preset or a
//! GGUF, feeds a prompt, then `steps` single-token decode calls with the trace on, and
//! counts per MoE layer `L + 1` how many of its actual top-k experts each predictor names:
//! - `post`: layer `L + 1`'s router on its own FFN norm of the residual after layer `L`
//!   (what the GPU has right after combining layer `L`'s MoE output: "pre-gated" MoE);
//! - `early`: the same router on the residual before layer `L`'s FFN (available when
//!   layer `L`'s own routing is, i.e. before layer `L`'s experts start);
//! - `prev`: layer `L + 1`'s routing of the previous token.
//!
//! `cargo run --release -p kt-model --example route_predict -- [preset|gguf] [layers|all] [steps] [greedy]`
//! (`deepseek-v2-lite` all 200 by default; tokens are pseudo-random ids unless `greedy`,
//! which feeds back the argmax).

use kt_kernels::ops::{route, RouterConfig};
use kt_kernels::util::SplitMix64;
use kt_model::config::{DeepSeekConfig, TopkMethod};
use kt_model::deepseek::linear::dequantize_vector;
use kt_model::deepseek::{
    argmax, router_config, DeepSeekModel, ForwardTrace, Linear, LogitRows, MatmulMode,
};
use kt_model::gguf::Gguf;
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};
use kt_model::tensors::{Ffn, ModelTensors};

struct Router {
    norm: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
}

fn predict(r: &Router, c: &DeepSeekConfig, rc: &RouterConfig, x: &[f32]) -> Vec<u32> {
    let h = x.len();
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
    let inv = 1.0 / (ms + c.rms_norm_eps as f64).sqrt();
    let xn: Vec<f32> = x
        .iter()
        .zip(&r.norm)
        .map(|(&v, &g)| (v as f64 * inv) as f32 * g)
        .collect();
    let logits: Vec<f32> =
        r.w.chunks_exact(h)
            .map(|row| {
                row.iter()
                    .zip(&xn)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32
            })
            .collect();
    let mut ids = vec![0u32; rc.top_k];
    let mut ws = vec![0f32; rc.top_k];
    route(rc, &logits, r.bias.as_deref(), &mut ids, &mut ws).expect("route");
    ids
}

fn hits(pred: &[u32], actual: &[u32]) -> usize {
    actual.iter().filter(|a| pred.contains(a)).count()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("deepseek-v2-lite", |s| s.as_str());
    let layers: Option<usize> = args
        .get(1)
        .filter(|s| s.as_str() != "all")
        .map(|s| s.parse().expect("layers"));
    let steps: usize = args.get(2).map_or(200, |s| s.parse().expect("steps"));
    let greedy = args.get(3).is_some_and(|s| s == "greedy");
    let gguf = match model {
        "deepseek-v2-lite" | "deepseek-v3" => {
            let preset = if model == "deepseek-v3" {
                Preset::DeepSeekV3
            } else {
                Preset::DeepSeekV2Lite
            };
            let opts = SyntheticOptions {
                layers,
                ..Default::default()
            };
            SyntheticModel::new(preset, &opts)
                .expect("plan")
                .to_gguf(&mut |_| {})
                .expect("build")
        }
        path => Gguf::open(path).expect("open gguf"),
    };
    let c = DeepSeekConfig::from_gguf(&gguf).expect("config");
    let rc = router_config(&c);
    let tensors = ModelTensors::from_gguf(&gguf, &c).expect("tensors");
    let routers: Vec<Option<Router>> = tensors
        .layers
        .iter()
        .map(|l| match &l.ffn {
            Ffn::Moe(m) => Some(Router {
                norm: dequantize_vector(&l.ffn_norm).expect("norm"),
                w: {
                    let lin = Linear::from_2d(&m.gate_inp).expect("router");
                    let mut w = vec![0f32; lin.rows * lin.cols];
                    for (r, row) in w.chunks_exact_mut(lin.cols).enumerate() {
                        lin.dequantize_row(r, row).expect("router row");
                    }
                    w
                },
                bias: match (&m.exp_probs_b, c.topk_method) {
                    (Some(b), TopkMethod::NoauxTc) => Some(dequantize_vector(b).expect("bias")),
                    _ => None,
                },
            }),
            Ffn::Dense(_) => None,
        })
        .collect();
    let mode = MatmulMode::quantized_selected().expect("isa");
    let m = DeepSeekModel::new(&gguf, c.clone(), mode).expect("model");
    let prompt_len = 16;
    let mut cache = m.new_cache(prompt_len + steps + 1).expect("cache");
    let mut rng = SplitMix64::new(7);
    let tok = |rng: &mut SplitMix64| (rng.next_u64() % c.vocab_size as u64) as u32;
    let prompt: Vec<u32> = (0..prompt_len).map(|_| tok(&mut rng)).collect();
    let mut logits = m
        .forward(&prompt, &mut cache, LogitRows::Last, None)
        .expect("prefill");
    let n_l = c.n_layers;
    let k = c.experts_per_tok;
    // per layer: [post, early, prev] hit counts, and the number of predicted steps
    let mut count = vec![[0usize; 3]; n_l];
    let mut prev_ids: Vec<Option<Vec<u32>>> = vec![None; n_l];
    let mut n_steps = vec![[0usize; 3]; n_l];
    // `post`'s hits by the predicted expert's place in its top-k (the router's selection
    // order, best score first): how much surer the first places are than the last
    let mut rank_hits = vec![0usize; k];
    for _ in 0..steps {
        let next = if greedy {
            argmax(&logits)
        } else {
            tok(&mut rng)
        };
        let mut tr = ForwardTrace::default();
        logits = m
            .forward(&[next], &mut cache, LogitRows::Last, Some(&mut tr))
            .expect("decode");
        let actual: Vec<Option<Vec<u32>>> = {
            let mut a = vec![None; n_l];
            for (li, r) in &tr.routing {
                a[*li] = Some(r.ids.clone());
            }
            a
        };
        for l1 in 1..n_l {
            let (Some(r), Some(act)) = (&routers[l1], &actual[l1]) else {
                continue;
            };
            let post = predict(r, &c, &rc, &tr.layer_outputs[l1 - 1]);
            count[l1][0] += hits(&post, act);
            for (j, e) in post.iter().enumerate() {
                rank_hits[j] += usize::from(act.contains(e));
            }
            n_steps[l1][0] += 1;
            if actual[l1 - 1].is_some() {
                let early = predict(r, &c, &rc, &tr.ffn_inputs[l1 - 1]);
                count[l1][1] += hits(&early, act);
                n_steps[l1][1] += 1;
            }
            if let Some(p) = &prev_ids[l1] {
                count[l1][2] += hits(p, act);
                n_steps[l1][2] += 1;
            }
        }
        for (li, a) in actual.into_iter().enumerate() {
            if a.is_some() {
                prev_ids[li] = a;
            }
        }
    }
    println!(
        "model {model} layers {n_l} steps {steps} tokens {} top_k {k} experts {}",
        if greedy { "greedy" } else { "random" },
        c.n_routed_experts
    );
    println!(
        "layer  post%  early%  prev%   (share of layer L+1's top-k that the predicted top-k names)"
    );
    let mut tot = [[0usize; 2]; 3];
    for l1 in 0..n_l {
        if n_steps[l1][0] == 0 {
            continue;
        }
        let pct = |i: usize| {
            if n_steps[l1][i] == 0 {
                f64::NAN
            } else {
                100.0 * count[l1][i] as f64 / (n_steps[l1][i] * k) as f64
            }
        };
        for (i, t) in tot.iter_mut().enumerate() {
            t[0] += count[l1][i];
            t[1] += n_steps[l1][i] * k;
        }
        println!("{l1:5} {:6.1} {:7.1} {:6.1}", pct(0), pct(1), pct(2));
    }
    let p = |t: [usize; 2]| 100.0 * t[0] as f64 / t[1].max(1) as f64;
    println!(
        "all   {:6.1} {:7.1} {:6.1}",
        p(tot[0]),
        p(tot[1]),
        p(tot[2])
    );
    // chance: top_k of n_experts picked at random
    println!(
        "chance {:5.1}",
        100.0 * k as f64 / c.n_routed_experts as f64
    );
    let predicted = (tot[0][1] / k).max(1) as f64;
    let by_rank: Vec<String> = rank_hits
        .iter()
        .map(|&h| format!("{:.1}", 100.0 * h as f64 / predicted))
        .collect();
    println!(
        "post% by the predicted expert's place (best score first): {}",
        by_rank.join(" ")
    );
}
