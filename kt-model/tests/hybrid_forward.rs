//! The hybrid executor (GPU + CPU routed experts) against the CPU quantized forward pass on
//! the same GGUF bytes: a synthetic DeepSeek-V2-Lite at its real shapes cut to 2 layers
//! (one dense, one MoE), a 17-token prefill and 3 decode steps fed the CPU's greedy tokens.
//! Needs a GPU: skips with a message without one, unless KT_REQUIRE_GPU is set.
//!
//! Tolerance of the all-bf16 placement, from the arithmetic: the CPU path rounds each
//! product's activations to Q8_K (one int8 code per element of a 256-block scaled by its
//! largest value: about 0.7% relative RMS per element for Gaussian-like rows), the GPU rounds
//! activations and weights to bf16 (2^-9 each, 0.3% together); uncorrelated per-term errors
//! give a dot product the same relative error, about 0.75% per product. The longest chain of
//! products from the embedding to the logits that does not pass through a residual bypass
//! is about six (query, absorption, attention, value, output, head, with the MLP's three in
//! parallel), so the logits differ by about 0.75% x sqrt(6) = 1.8% relative L2: the bound
//! is 2% per row.
//!
//! A token whose routed experts differ between the two (the router's k-th and (k+1)-th
//! scores closer than the hidden states' difference) computes other experts in the last
//! layer; its logits row is not compared, the tie is checked to be a near-tie, and at most a
//! quarter of the rows may be such.
#![cfg(feature = "cuda")]

#[path = "../../kt-kernels/tests/cuda_common/mod.rs"]
mod cuda_common;

use std::sync::OnceLock;

use kt_kernels::cpu;
use kt_kernels::util::SplitMix64;
use kt_model::deepseek::{argmax, DeepSeekModel, ForwardTrace, LogitRows, MatmulMode};
use kt_model::gguf::Gguf;
use kt_model::hybrid::{HybridModel, HybridTimes};
use kt_model::placement::{Placement, RuleSet};
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

/// Every GPU module in bf16 (the tolerance above), the router in f32.
const ALL_BF16: &str = r#"
description: test placement, every GPU module in bf16
models: [deepseek-v2-lite]
devices: [cpu, "cuda:0"]
rules:
  - match: {kind: routed_experts}
    replace: {device: cpu, format: gguf}
  - match: {kind: embedding}
    replace: {device: "cuda:0", format: bf16}
  - match: {kind: norm}
    replace: {device: "cuda:0", format: f32}
  - match: {kind: gate}
    replace: {device: "cuda:0", format: f32}
  - match: {kind: attention}
    replace: {device: "cuda:0", format: bf16}
  - match: {kind: shared_experts}
    replace: {device: "cuda:0", format: bf16}
  - match: {kind: dense_mlp}
    replace: {device: "cuda:0", format: bf16}
  - match: {kind: lm_head}
    replace: {device: "cuda:0", format: bf16}
"#;

const BF16_TOL: f64 = 0.02;
const PROMPT: usize = 17;
const DECODE: usize = 3;

fn model() -> &'static (SyntheticModel, Gguf) {
    static MODEL: OnceLock<(SyntheticModel, Gguf)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let opts = SyntheticOptions {
            layers: Some(2),
            seed: 11,
            ..SyntheticOptions::default()
        };
        let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts).unwrap();
        let g = m.to_gguf(&mut |_| {}).unwrap();
        (m, g)
    })
}

/// A shipped rules file: beside this crate when built here, else under the working
/// directory (a test binary carried to the device runs in a copy of the repository root).
fn rules_file(name: &str) -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rules")
        .join(name);
    if here.exists() {
        here
    } else {
        std::path::Path::new("rules").join(name)
    }
}

fn shipped_rules() -> RuleSet {
    RuleSet::from_file(rules_file("deepseek-v2-lite-hybrid.yaml")).unwrap()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w as f64).powi(2);
        n += (w as f64).powi(2);
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

fn prompt(vocab: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(0x6879_6272_6964);
    (0..PROMPT).map(|_| rng.below(vocab) as u32).collect()
}

/// The tokens whose routed-expert sets differ in the last MoE record of each trace (one
/// MoE layer here), after checking each is a near-tie of the CPU router's scores.
fn flipped_rows(cpu: &ForwardTrace, gpu: &ForwardTrace, k: usize, tol: f64) -> Vec<usize> {
    let (_, rc) = cpu.routing.last().expect("a MoE layer");
    let (_, rg) = gpu.routing.last().expect("a MoE layer");
    let n_e = rc.logits.len() / (rc.ids.len() / k);
    let mut flipped = Vec::new();
    for t in 0..rc.ids.len() / k {
        let mut a = rc.ids[t * k..(t + 1) * k].to_vec();
        let mut b = rg.ids[t * k..(t + 1) * k].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            continue;
        }
        // the CPU's scores of the experts only one side chose lie within the difference the
        // tolerance allows of each other
        let row = &rc.logits[t * n_e..(t + 1) * n_e];
        let only: Vec<f32> = a
            .iter()
            .filter(|e| !b.contains(e))
            .chain(b.iter().filter(|e| !a.contains(e)))
            .map(|&e| row[e as usize])
            .collect();
        let spread = only.iter().cloned().fold(f32::MIN, f32::max)
            - only.iter().cloned().fold(f32::MAX, f32::min);
        let allowed = 4.0 * tol * rms(row);
        assert!(
            (spread as f64) <= allowed,
            "token {t}: experts {a:?} (cpu) vs {b:?} (gpu) differ by router logits {spread} > {allowed}: not a near-tie"
        );
        flipped.push(t);
    }
    flipped
}

/// Compares the logits rows that are not `skip`, each within `tol` relative L2; where the
/// CPU's top-two margin exceeds twice an element bound (4 x tol x the row's RMS), the GPU
/// must pick the same greedy token. Returns the worst row's distance.
fn compare_rows(
    what: &str,
    gpu: &[f32],
    cpu: &[f32],
    vocab: usize,
    skip: &[usize],
    tol: f64,
) -> f64 {
    let mut worst = 0.0f64;
    for (r, (g, c)) in gpu
        .chunks_exact(vocab)
        .zip(cpu.chunks_exact(vocab))
        .enumerate()
    {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: row {r} not finite"
        );
        if skip.contains(&r) {
            continue;
        }
        let d = rel_l2(g, c);
        worst = worst.max(d);
        assert!(d <= tol, "{what}: row {r}: relative L2 {d:.4} > {tol}");
        let best = argmax(c) as usize;
        let second = c
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != best)
            .map(|(_, &v)| v)
            .fold(f32::MIN, f32::max);
        let bound = 4.0 * tol * rms(c);
        if ((c[best] - second) as f64) > 2.0 * bound {
            assert_eq!(argmax(g) as usize, best, "{what}: row {r}: greedy token");
        }
    }
    worst
}

/// Prefill then decode on both executors (the hybrid one under `placement`), comparing as
/// the module docs say with `tol`; returns the worst relative L2.
fn run_against_cpu(what: &str, placement: &Placement, tol: f64) -> Option<f64> {
    let gpu = cuda_common::gpu_or_skip(what)?;
    let (m, g) = model();
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let cpu_model = DeepSeekModel::new(g, c.clone(), MatmulMode::Quantized(isa)).unwrap();
    let mut hybrid = HybridModel::new(gpu, g, c.clone(), placement, isa).unwrap();
    let mut cpu_cache = cpu_model.new_cache(PROMPT + DECODE).unwrap();
    let mut gpu_cache = hybrid.new_cache(PROMPT + DECODE).unwrap();
    let (vocab, k) = (c.vocab_size, c.experts_per_tok);

    let ids = prompt(vocab);
    let (mut tc, mut tg) = (ForwardTrace::default(), ForwardTrace::default());
    let want = cpu_model
        .forward(&ids, &mut cpu_cache, LogitRows::All, Some(&mut tc))
        .unwrap();
    let mut times = HybridTimes::new(c.n_layers);
    let got = hybrid
        .forward_timed(
            &ids,
            &mut gpu_cache,
            LogitRows::All,
            Some(&mut tg),
            Some(&mut times),
        )
        .unwrap();
    for (l, (a, b)) in tg.layer_outputs.iter().zip(&tc.layer_outputs).enumerate() {
        eprintln!(
            "{what}: prefill layer {l} residual relative L2 {:.5}",
            rel_l2(a, b)
        );
    }
    let flipped = flipped_rows(&tc, &tg, k, tol);
    eprintln!("{what}: prefill rows with other experts: {flipped:?}");
    let mut worst = compare_rows(
        &format!("{what} prefill"),
        &got,
        &want,
        vocab,
        &flipped,
        tol,
    );
    let mut skipped = flipped.len();

    let mut next = argmax(&want[(PROMPT - 1) * vocab..]);
    for step in 0..DECODE {
        let (mut tc, mut tg) = (ForwardTrace::default(), ForwardTrace::default());
        let want = cpu_model
            .forward(&[next], &mut cpu_cache, LogitRows::Last, Some(&mut tc))
            .unwrap();
        let got = hybrid
            .forward_timed(
                &[next],
                &mut gpu_cache,
                LogitRows::Last,
                Some(&mut tg),
                Some(&mut times),
            )
            .unwrap();
        let flipped = flipped_rows(&tc, &tg, k, tol);
        skipped += flipped.len();
        let d = compare_rows(
            &format!("{what} decode {step}"),
            &got,
            &want,
            vocab,
            &flipped,
            tol,
        );
        eprintln!("{what}: decode step {step}: relative L2 {d:.5}, other experts {flipped:?}");
        worst = worst.max(d);
        next = argmax(&want);
    }
    assert!(
        skipped * 4 <= PROMPT + DECODE,
        "{what}: {skipped} of {} rows routed differently",
        PROMPT + DECODE
    );
    let t = times.total();
    eprintln!(
        "{what}: worst relative L2 {worst:.5}; time over {} calls: gpu {:.4} s, cpu experts {:.4} s, transfers {:.4} s, gpu idle {:.4} s, cpu idle {:.4} s",
        times.calls, t.gpu_s, t.cpu_experts_s, t.transfer_s, t.gpu_idle_s, t.cpu_idle_s
    );
    assert_eq!(times.calls, 1 + DECODE);
    assert!(t.gpu_s > 0.0 && t.cpu_experts_s > 0.0, "{t:?}");
    Some(worst)
}

#[test]
fn hybrid_bf16_matches_cpu_forward() {
    let (m, _) = model();
    let placement = RuleSet::from_yaml_str(ALL_BF16, "test")
        .unwrap()
        .place(m.config())
        .unwrap();
    if let Some(worst) = run_against_cpu("hybrid bf16", &placement, BF16_TOL) {
        eprintln!("hybrid bf16: worst row {worst:.5} (bound {BF16_TOL})");
    }
}

/// The shipped rules (int4_g128 projections, shared experts and head): int4 with one scale
/// per 128 weights rounds each weight by up to half a step of max|w|/7, about 11% of the
/// weights' RMS for Gaussian-like rows, so each int4 product errs by about 11% and the
/// logits by about 11% x sqrt(6) = 27% relative L2 (bf16's error is small beside it): bound
/// 35%. Routing flips are near-ties at this tolerance.
#[test]
fn hybrid_shipped_rules_match_cpu_forward_within_int4_error() {
    let (m, _) = model();
    let placement = shipped_rules().place(m.config()).unwrap();
    if let Some(worst) = run_against_cpu("hybrid int4", &placement, 0.35) {
        eprintln!("hybrid int4: worst row {worst:.5} (bound 0.35)");
    }
}

/// Placements and shapes the executor refuses, without a GPU.
#[test]
fn check_refuses_cpu_modules_and_other_mla_shapes() {
    let c = Preset::DeepSeekV2Lite.config();
    let hybrid = shipped_rules().place(&c).unwrap();
    HybridModel::check(&c, &hybrid).unwrap();

    let cpu_rules = rules_file("deepseek-v2-lite-cpu.yaml");
    let cpu = RuleSet::from_file(cpu_rules).unwrap().place(&c).unwrap();
    let err = HybridModel::check(&c, &cpu).unwrap_err().to_string();
    assert!(err.contains("is placed on cpu"), "{err}");

    let mut small = c.clone();
    small.kv_lora_rank = 256;
    let err = HybridModel::check(&small, &hybrid).unwrap_err().to_string();
    assert!(err.contains("kv_lora_rank 256"), "{err}");
}
