//! Helpers of the hybrid executor's tests: the all-bf16 test placement, the shortened
//! synthetic V2-Lite and V3 they run on, shipped rules files (found on the device too) and the
//! relative L2 distance.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kt_model::config::DeepSeekConfig;
use kt_model::gguf::Gguf;
use kt_model::placement::{Placement, RuleSet};
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

/// Every GPU module in bf16, the router in f32, the routed experts on the CPU as stored.
pub const ALL_BF16: &str = r#"
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

/// A synthetic DeepSeek-V2-Lite cut to `layers` layers (the first dense, the rest MoE) with
/// weights of `seed`, and its GGUF.
pub fn v2_lite(layers: usize, seed: u64) -> (SyntheticModel, Gguf) {
    let opts = SyntheticOptions {
        layers: Some(layers),
        seed,
        ..SyntheticOptions::default()
    };
    let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts).unwrap();
    let g = m.to_gguf(&mut |_| {}).unwrap();
    assert!(
        m.config().n_layers == layers && m.config().first_k_dense_replace == 1,
        "{:?}",
        m.config()
    );
    (m, g)
}

/// [`v2_lite`] of 2 layers (one dense, one MoE), built once per test binary.
pub fn v2_lite_two_layers() -> &'static (SyntheticModel, Gguf) {
    static MODEL: OnceLock<(SyntheticModel, Gguf)> = OnceLock::new();
    MODEL.get_or_init(|| v2_lite(2, 11))
}

/// A rules file by its path under `rules/`: beside this crate when built here, else under
/// the working directory (a test binary carried to the device runs in a copy of the
/// repository root).
pub fn rules_file(name: &str) -> PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rules")
        .join(name);
    if here.exists() {
        here
    } else {
        std::path::Path::new("rules").join(name)
    }
}

/// The shipped `rules/deepseek-v2-lite-hybrid.yaml` placed for `c`.
pub fn v2_lite_hybrid_placement(c: &DeepSeekConfig) -> Placement {
    RuleSet::from_file(rules_file("deepseek-v2-lite-hybrid.yaml"))
        .unwrap()
        .place(c)
        .unwrap()
}

/// `||got - want|| / ||want||`.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w as f64).powi(2);
        n += (w as f64).powi(2);
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

/// Whether `test` may build a model needing `gib` GiB of memory here; prints why not (the V3-shape
/// tests keep a synthetic GGUF of 10-16 GB in memory and skip where there is less room instead
/// of being killed for memory). Without /proc/meminfo the test runs.
pub fn memory_for(test: &str, gib: f64) -> bool {
    match available_gib().filter(|&free| free < gib) {
        Some(free) => {
            eprintln!("{test}: skipped, {free:.1} GiB of memory available, the test needs {gib}");
            false
        }
        None => true,
    }
}

/// `MemAvailable` of /proc/meminfo in GiB, where the system has one.
fn available_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// A synthetic DeepSeek-V3 cut to `layers` layers (the first three dense) with weights of
/// `seed`, and its GGUF (about 10 GB at 4 layers, 16 GB at 5: built in memory).
pub fn v3(layers: usize, seed: u64) -> (SyntheticModel, Gguf) {
    let opts = SyntheticOptions {
        layers: Some(layers),
        seed,
        ..SyntheticOptions::default()
    };
    let m = SyntheticModel::new(Preset::DeepSeekV3, &opts).unwrap();
    let g = m.to_gguf(&mut |_| {}).unwrap();
    assert!(
        m.config().n_layers == layers && m.config().first_k_dense_replace == 3,
        "{:?}",
        m.config()
    );
    (m, g)
}
