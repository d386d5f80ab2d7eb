//! The hybrid executor's GPU prefill experts (`prefill_device: cuda:0` on the routed
//! experts' rule) against the same executor with the routed experts on the CPU, on one
//! model (a synthetic DeepSeek-V2-Lite at its real shapes cut to 2 layers, one dense and
//! one MoE), so that only the routed experts differ: a 37-token prefill (no multiple of any
//! GEMM tile; with 64 experts and 6 choices per token some experts get no token, some one
//! run of at most 16 rows, some more) and 2 decode steps on each cache (decode keeps the CPU
//! experts, and the caches must agree). Needs a GPU: skips with a message without one, unless KT_REQUIRE_GPU is set.
//!
//! Tolerance. The GPU experts multiply with the GGUF's weights requantized to int4 with one
//! scale per 128 (the load reports their relative RMS error e, about 0.107 for Gaussian-like
//! weights: max|w| / 7 steps, uniform rounding). An expert is two products in series
//! (gate/up, then down), each adding about e of relative error to its output, so the routed
//! sum is about sqrt(2) e from the CPU's (whose own Q8_K activations add 0.64% per product,
//! negligible beside it). The routed sum is one of the updates of the residual stream, so
//! the final hidden state and the logits (norm and a linear head) move by at most about as
//! much relative to them when the routed update is no larger than the residual: the bound
//! per logits row is 2 sqrt(2) e (twice that estimate: the per-row spread of a 2048-wide
//! estimate and rows where the routed update is a larger share). Routing is the same in
//! both runs (the router sees the same hidden state: the experts come after it).
#![cfg(feature = "cuda")]

#[path = "../../kt-kernels/tests/cuda_common/mod.rs"]
mod cuda_common;
mod hybrid_common;

use kt_kernels::cpu;
use kt_kernels::util::SplitMix64;
use kt_model::deepseek::{ForwardTrace, LogitRows};
use kt_model::hybrid::{HybridModel, PrefillSplit};
use kt_model::placement::{Device, ModuleKind, Placement, RuleSet};
use kt_model::synthetic::{Preset, SyntheticModel};

use hybrid_common::{rel_l2, rules_file, v2_lite_two_layers, ALL_BF16};

/// [`ALL_BF16`] with the routed experts on the GPU, in int4, for calls of more than 16 tokens.
fn gpu_prefill() -> String {
    let old = "    replace: {device: cpu, format: gguf}\n";
    assert!(
        ALL_BF16.contains(old),
        "ALL_BF16 places the routed experts first"
    );
    ALL_BF16.replacen(
        old,
        "    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 16}\n",
        1,
    )
}

const PROMPT: usize = 37;
const DECODE: usize = 2;

fn placement(yaml: &str, m: &SyntheticModel) -> Placement {
    RuleSet::from_yaml_str(yaml, "test")
        .unwrap()
        .place(m.config())
        .unwrap()
}

/// Prefill (all logits rows, routing traced) then one decode step per token of `next`
/// (the same tokens for every run); returns the prefill logits, the routing ids and the
/// decode logits.
fn run(h: &mut HybridModel, ids: &[u32], next: &[u32]) -> (Vec<f32>, Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = h.new_cache(PROMPT + next.len()).unwrap();
    let mut tr = ForwardTrace::default();
    let logits = h
        .forward_timed(ids, &mut cache, LogitRows::All, Some(&mut tr), None)
        .unwrap();
    let (_, routing) = tr.routing.last().expect("a MoE layer");
    let steps = next
        .iter()
        .map(|&t| h.forward(&[t], &mut cache, LogitRows::Last).unwrap())
        .collect();
    (logits, routing.ids.clone(), steps)
}

#[test]
fn gpu_prefill_experts_match_cpu_experts_within_int4_error() {
    let Some(gpu) = cuda_common::gpu_or_skip("hybrid gpu prefill") else {
        return;
    };
    let (m, g) = v2_lite_two_layers();
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let p = placement(&gpu_prefill(), m);
    let mut h = HybridModel::new(gpu, g, c.clone(), &p, isa).unwrap();
    assert_eq!(h.gpu_prefill_threshold(), Some(16));
    let load = h.gpu_prefill_load().expect("GPU prefill experts loaded");
    eprintln!("gpu prefill experts: {load:?}");
    assert!(
        (0.05..0.2).contains(&load.relative_rms),
        "int4 g128 error {} of Gaussian-like weights",
        load.relative_rms
    );
    let mut rng = SplitMix64::new(0x7072_6566);
    let ids: Vec<u32> = (0..PROMPT)
        .map(|_| rng.below(c.vocab_size) as u32)
        .collect();
    let next: Vec<u32> = (0..DECODE)
        .map(|_| rng.below(c.vocab_size) as u32)
        .collect();
    let vocab = c.vocab_size;

    h.set_gpu_prefill_threshold(usize::MAX).unwrap();
    let (cpu_logits, cpu_routes, cpu_steps) = run(&mut h, &ids, &next);
    h.set_gpu_prefill_threshold(16).unwrap();
    assert_eq!(h.gpu_prefill_split(), Some(PrefillSplit::Off));
    let (gpu_logits, gpu_routes, gpu_steps) = run(&mut h, &ids, &next);
    let (again, _, _) = run(&mut h, &ids, &next);
    assert!(
        again == gpu_logits,
        "the GPU experts' prefill differs between two runs"
    );
    assert_eq!(gpu_routes, cpu_routes, "routing comes before the experts");
    let used: std::collections::BTreeSet<u32> = gpu_routes.iter().copied().collect();
    eprintln!("experts chosen: {} of {}", used.len(), c.n_routed_experts);
    assert!(used.len() < c.n_routed_experts, "some expert gets no token");

    let bound = 2.0 * 2f64.sqrt() * load.relative_rms;
    let (mut worst, mut least) = (0.0f64, f64::MAX);
    for (i, (gr, cr)) in gpu_logits
        .chunks_exact(vocab)
        .zip(cpu_logits.chunks_exact(vocab))
        .enumerate()
    {
        assert!(gr.iter().all(|v| v.is_finite()), "row {i} not finite");
        let d = rel_l2(gr, cr);
        assert!(
            d <= bound,
            "prefill row {i}: relative L2 {d:.4} > {bound:.4}"
        );
        worst = worst.max(d);
        least = least.min(d);
    }
    // the int4 weights differ from the GGUF's: every row moves (the GPU path ran)
    assert!(
        least > 1e-4,
        "prefill rows equal to the CPU experts' ({least:e})"
    );
    // Decode runs the CPU experts after either prefill, and the MoE layer's cache rows
    // come from the dense layer's output (the same in both runs): the caches and so the
    // decode logits agree to f32 rounding.
    for (step, (gs, cs)) in gpu_steps.iter().zip(&cpu_steps).enumerate() {
        let d = rel_l2(gs, cs);
        eprintln!("decode step {step} after each prefill: relative L2 {d:e}");
        assert!(
            d <= 1e-5,
            "decode step {step}: relative L2 {d:e} after the GPU experts' prefill"
        );
    }
    eprintln!(
        "prefill rows: relative L2 to the CPU experts {least:.4}..{worst:.4}, bound {bound:.4}"
    );
    let half = check_splits(&mut h, &ids, &next, &cpu_logits, &gpu_logits, bound);
    check_resident(&mut h, &ids, &next, &gpu_logits, &half);
}

/// The same prefill with each layer's experts split between the GPU and the CPU
/// (`PrefillSplit`). All on the CPU through the split path: the CPU experts' logits up to
/// f32 summation order (the CPU's pairs summed per token after its operator, not in it:
/// 1e-5 relative). Half on the CPU: deterministic, within the int4 bound of the CPU's, and
/// closer to them than the all-GPU run (half the pairs carry no int4 error: the squared
/// error about halves, so the relative L2 falls to about 0.7 of the all-GPU one; asserted
/// below 0.9).
fn check_splits(
    h: &mut HybridModel,
    ids: &[u32],
    next: &[u32],
    cpu_logits: &[f32],
    gpu_logits: &[f32],
    bound: f64,
) -> Vec<f32> {
    assert!(h
        .set_gpu_prefill_split(PrefillSplit::CpuShare(1.5))
        .is_err());
    h.set_gpu_prefill_split(PrefillSplit::CpuShare(1.0))
        .unwrap();
    let (all_cpu, _, steps) = run(h, ids, next);
    let d = rel_l2(&all_cpu, cpu_logits);
    eprintln!("split, all experts on the CPU: relative L2 to the CPU experts {d:e}");
    assert!(d <= 1e-5, "all-CPU split: relative L2 {d:e}");
    let shares = h.gpu_prefill_cpu_times();
    assert_eq!(shares.len(), 1, "one MoE layer, split");
    assert_eq!(shares[0].pairs, ids.len() * 6, "every pair on the CPU");
    assert!(steps.iter().all(|s| s.iter().all(|v| v.is_finite())));

    h.set_gpu_prefill_split(PrefillSplit::CpuShare(0.5))
        .unwrap();
    let (half, _, _) = run(h, ids, next);
    let (again, _, _) = run(h, ids, next);
    assert!(again == half, "the split prefill differs between two runs");
    let (d_half, d_gpu) = (rel_l2(&half, cpu_logits), rel_l2(gpu_logits, cpu_logits));
    eprintln!("split, half on the CPU: relative L2 {d_half:.4} against all-GPU {d_gpu:.4}");
    assert!(
        d_half > 1e-4,
        "half the experts on the GPU moved nothing ({d_half:e})"
    );
    assert!(
        d_half < 0.9 * d_gpu,
        "{d_half:.4} not below 0.9 x {d_gpu:.4}"
    );
    assert!(d_half <= bound);
    h.set_gpu_prefill_split(PrefillSplit::Off).unwrap();
    half
}

/// Resident experts (the first ones of the layer kept on the GPU, the others copied per
/// call) run the same kernels on the same weights: the logits equal the all-copied run's
/// bit for bit, with some, all, and some beside a split (equal to the split alone); the
/// call's timeline shows only the others' bytes copied.
fn check_resident(
    h: &mut HybridModel,
    ids: &[u32],
    next: &[u32],
    gpu_logits: &[f32],
    half_split: &[f32],
) {
    let experts = h.config().n_routed_experts;
    let layer_bytes = h.gpu_prefill_load().unwrap().layer_bytes;
    assert_eq!(h.gpu_prefill_resident(), Some(0));
    assert!(h.set_gpu_prefill_resident(experts + 1).is_err());
    let (logits, _, _) = run(h, ids, next);
    assert!(logits == gpu_logits);
    let times = h.gpu_prefill_layer_times().unwrap();
    assert_eq!(times.len(), 1, "one MoE layer: {times:?}");
    assert_eq!(times[0].copy_bytes, layer_bytes, "nothing resident");
    assert!(times[0].copy_gbps > 0.0 && times[0].compute_ms.is_some_and(|c| c > 0.0));

    for resident in [20, experts] {
        h.set_gpu_prefill_resident(resident).unwrap();
        assert_eq!(h.gpu_prefill_resident(), Some(resident));
        assert_eq!(
            h.gpu_prefill_resident_bytes(),
            layer_bytes / experts * resident
        );
        let (logits, _, steps) = run(h, ids, next);
        assert!(
            logits == gpu_logits,
            "{resident} resident experts change the prefill"
        );
        assert!(steps.iter().all(|s| s.iter().all(|v| v.is_finite())));
        let times = h.gpu_prefill_layer_times().unwrap();
        eprintln!("{resident} resident experts: {times:?}");
        assert_eq!(
            times[0].copy_bytes,
            layer_bytes / experts * (experts - resident)
        );
    }
    h.set_gpu_prefill_resident(20).unwrap();
    h.set_gpu_prefill_split(PrefillSplit::CpuShare(0.5))
        .unwrap();
    let (split, _, _) = run(h, ids, next);
    assert!(
        split == half_split,
        "resident experts change the split prefill"
    );
    h.set_gpu_prefill_split(PrefillSplit::Off).unwrap();
    h.set_gpu_prefill_resident(0).unwrap();
    assert_eq!(h.gpu_prefill_resident_bytes(), 0);
}

/// GPU prefill rules the executor takes (the test's and `rules/gpu-prefill/`'s) and those
/// it refuses, without a GPU.
#[test]
fn check_refuses_other_prefill_formats_and_mixed_layers() {
    let c = Preset::DeepSeekV2Lite.config();
    let place = |yaml: &str| {
        RuleSet::from_yaml_str(yaml, "test")
            .unwrap()
            .place(&c)
            .unwrap()
    };
    let gpu_prefill = gpu_prefill();
    HybridModel::check(&c, &place(&gpu_prefill)).unwrap();
    for (preset, name) in [
        (
            Preset::DeepSeekV2Lite,
            "gpu-prefill/deepseek-v2-lite-hybrid.yaml",
        ),
        (Preset::DeepSeekV3, "gpu-prefill/deepseek-v3-hybrid.yaml"),
        (
            Preset::DeepSeekV3,
            "gpu-prefill/deepseek-v3-int4-hybrid.yaml",
        ),
    ] {
        let config = preset.config();
        let shipped = RuleSet::from_file(rules_file(name))
            .unwrap()
            .place(&config)
            .unwrap();
        HybridModel::check(&config, &shipped).unwrap();
        let experts = shipped
            .modules()
            .iter()
            .filter(|m| m.kind == ModuleKind::RoutedExperts);
        let mut n = 0;
        for m in experts {
            n += 1;
            assert_eq!(m.device, Device::Cpu, "{name}: {}", m.name);
            assert_eq!(
                m.options.prefill_device,
                Some(Device::Cuda(0)),
                "{name}: {}",
                m.name
            );
            // the V3 files keep 43 experts a layer on the GPU and decode on them too
            let v3 = preset == Preset::DeepSeekV3;
            assert_eq!(m.options.prefill_resident, v3.then_some(43), "{name}");
            assert_eq!(m.options.decode_resident, v3.then_some(true), "{name}");
        }
        assert!(n > 0, "{name}: no routed experts matched");
    }

    let bf16 = gpu_prefill.replace("prefill_format: int4_g128", "prefill_format: bf16");
    let err = HybridModel::check(&c, &place(&bf16))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("in bf16") && err.contains("int4_g128"),
        "{err}"
    );

    let mixed = gpu_prefill.replace(
        "  - match: {kind: routed_experts}\n",
        "  - match: {name: 'blk\\.1\\.ffn_exps', kind: routed_experts}\n    replace: {device: cpu, format: gguf}\n  - match: {kind: routed_experts}\n",
    );
    let err = HybridModel::check(&c, &place(&mixed))
        .unwrap_err()
        .to_string();
    assert!(err.contains("the same rule for all layers"), "{err}");

    // resident experts from the rules, the same number in every layer
    let resident = with_resident(8);
    HybridModel::check(&c, &place(&resident)).unwrap();
    HybridModel::check(&c, &place(&with_options("prefill_cpu_share: 0.3"))).unwrap();
    let mixed = resident.replace(
        "  - match: {kind: routed_experts}\n",
        "  - match: {name: 'blk\\.1\\.ffn_exps', kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 16}\n  - match: {kind: routed_experts}\n",
    );
    let err = HybridModel::check(&c, &place(&mixed))
        .unwrap_err()
        .to_string();
    assert!(err.contains("resident experts 0 and 8"), "{err}");
}

/// [`gpu_prefill`] keeping `n` experts of each layer resident (`prefill_resident`).
fn with_resident(n: usize) -> String {
    with_options(&format!("prefill_resident: {n}"))
}

/// [`gpu_prefill`] with more options of the routed experts' rule.
fn with_options(options: &str) -> String {
    let rules = gpu_prefill();
    let old = "prefill_threshold: 16}";
    assert!(rules.contains(old));
    rules.replace(old, &format!("prefill_threshold: 16, {options}}}"))
}

/// Resident experts and a CPU share named by the rules are loaded with the model: of 64
/// experts, 20 resident and a share of 0.25 (the last 16 on the CPU), a prefill copies 28,
/// runs a CPU share, and its logits are finite (their equality with the all-copied run and
/// the split's bounds are `check_resident`'s and `check_splits`', on the same setters).
#[test]
fn rules_keep_resident_experts_on_the_gpu() {
    let Some(gpu) = cuda_common::gpu_or_skip("hybrid gpu prefill, resident rules") else {
        return;
    };
    let (m, g) = v2_lite_two_layers();
    let c = m.config().clone();
    let p = placement(
        &with_options("prefill_resident: 20, prefill_cpu_share: 0.25"),
        m,
    );
    let mut h = HybridModel::new(gpu, g, c.clone(), &p, cpu::isa::selected().unwrap()).unwrap();
    assert_eq!(h.gpu_prefill_resident(), Some(20));
    assert_eq!(h.gpu_prefill_split(), Some(PrefillSplit::CpuShare(0.25)));
    let layer_bytes = h.gpu_prefill_load().unwrap().layer_bytes;
    let experts = c.n_routed_experts;
    assert_eq!(h.gpu_prefill_resident_bytes(), layer_bytes / experts * 20);
    let mut rng = SplitMix64::new(0x7265_7369);
    let ids: Vec<u32> = (0..PROMPT)
        .map(|_| rng.below(c.vocab_size) as u32)
        .collect();
    let (logits, _, steps) = run(&mut h, &ids, &[ids[0]]);
    assert!(logits.iter().chain(&steps[0]).all(|v| v.is_finite()));
    let times = h.gpu_prefill_layer_times().unwrap();
    assert_eq!(
        times[0].copy_bytes,
        layer_bytes / experts * (experts - 16 - 20)
    );
    assert_eq!(h.gpu_prefill_cpu_times().len(), 1, "one split layer");
}

/// A split prefill over CPU experts repacked to int4 (`format: int4_amx`, as
/// `rules/gpu-prefill/deepseek-v3-int4-hybrid.yaml` has them): all experts on the CPU
/// through the split equal the repacked CPU experts' own prefill (f32 summation order,
/// 1e-5 relative), and a share of 0.3 runs, deterministic and finite.
#[test]
fn split_over_repacked_cpu_experts() {
    let Some(gpu) = cuda_common::gpu_or_skip("hybrid gpu prefill, repacked CPU experts") else {
        return;
    };
    let (m, g) = v2_lite_two_layers();
    let c = m.config().clone();
    let rules = gpu_prefill();
    let old = "      format: gguf\n      options:";
    assert!(rules.contains(old));
    let p = placement(
        &rules.replace(old, "      format: int4_amx\n      options:"),
        m,
    );
    let mut h = HybridModel::new(gpu, g, c.clone(), &p, cpu::isa::selected().unwrap()).unwrap();
    let mut rng = SplitMix64::new(0x696e_7434);
    let ids: Vec<u32> = (0..PROMPT)
        .map(|_| rng.below(c.vocab_size) as u32)
        .collect();
    h.set_gpu_prefill_threshold(usize::MAX).unwrap();
    let (cpu_logits, _, _) = run(&mut h, &ids, &[]);
    h.set_gpu_prefill_threshold(16).unwrap();
    h.set_gpu_prefill_split(PrefillSplit::CpuShare(1.0))
        .unwrap();
    let (all_cpu, _, _) = run(&mut h, &ids, &[]);
    let d = rel_l2(&all_cpu, &cpu_logits);
    eprintln!("repacked CPU experts, all through the split: relative L2 {d:e}");
    assert!(d <= 1e-5, "relative L2 {d:e}");
    h.set_gpu_prefill_split(PrefillSplit::CpuShare(0.3))
        .unwrap();
    let (part, _, _) = run(&mut h, &ids, &[]);
    let (again, _, _) = run(&mut h, &ids, &[]);
    assert!(part == again, "the split prefill differs between two runs");
    assert!(part.iter().all(|v| v.is_finite()));
    assert!(rel_l2(&part, &cpu_logits) > 1e-4, "the GPU's share ran");
}
