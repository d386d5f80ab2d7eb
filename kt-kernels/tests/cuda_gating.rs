//! Fused MoE gating on the GPU against the scalar reference `kt_kernels::ops::route`
//! (DeepSeek V2 greedy and group-limited, V3 noaux_tc), on random logits and on logits full
//! of exact ties.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::gpu_or_skip;
use kt_kernels::cuda::gating::packed_len;
use kt_kernels::cuda::GpuStream;
use kt_kernels::ops::{route, sigmoid, softmax_rows, RouterConfig, Scoring, TopkMethod};
use kt_kernels::util::SplitMix64;

/// The choice scores the reference ranks by: the scores plus the bias, if any.
fn choice_scores(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut scores = vec![0.0f32; logits.len()];
    match cfg.scoring {
        Scoring::Softmax => softmax_rows(logits, logits.len(), &mut scores).unwrap(),
        Scoring::Sigmoid => scores
            .iter_mut()
            .zip(logits)
            .for_each(|(s, &l)| *s = sigmoid(l)),
    }
    if let Some(b) = bias {
        scores.iter_mut().zip(b).for_each(|(s, &c)| *s += c);
    }
    scores
}

/// Runs the kernel and compares every token with `kt_kernels::ops::route`. Ids must match
/// exactly, except that two experts whose choice scores are within f32 rounding of each
/// other (1e-6 relative: the kernel's expf and the reference's f64 exp differ by a few ulp)
/// may trade places; those are counted and must stay rare. Weights of matching routes agree
/// within 1e-5 relative.
fn check(
    s: &GpuStream,
    name: &str,
    cfg: &RouterConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    tokens: usize,
) -> usize {
    let e = cfg.n_experts;
    let ld = s.upload(logits).unwrap();
    let bd = bias.map(|b| s.upload(b).unwrap());
    let mut ids = s.upload(&vec![u32::MAX; tokens * cfg.top_k]).unwrap();
    let mut w = s.upload(&vec![f32::NAN; tokens * cfg.top_k]).unwrap();
    s.moe_gating(cfg, &ld, bd.as_ref(), tokens, &mut ids, &mut w)
        .unwrap();
    let (gids, gw) = (s.download(&ids).unwrap(), s.download(&w).unwrap());
    let (mut want_ids, mut want_w) = (
        vec![0u32; tokens * cfg.top_k],
        vec![0.0f32; tokens * cfg.top_k],
    );
    route(cfg, logits, bias, &mut want_ids, &mut want_w).unwrap();
    let mut near_ties = 0;
    for t in 0..tokens {
        let k = cfg.top_k;
        let (got_ids, got_w) = (&gids[t * k..(t + 1) * k], &gw[t * k..(t + 1) * k]);
        let (r_ids, r_w) = (&want_ids[t * k..(t + 1) * k], &want_w[t * k..(t + 1) * k]);
        if got_ids != r_ids {
            let choice = choice_scores(cfg, &logits[t * e..(t + 1) * e], bias);
            for (p, (&g, &want)) in got_ids.iter().zip(r_ids).enumerate() {
                assert!(
                    (g as usize) < e,
                    "{name}: token {t} pick {p}: id {g} out of range"
                );
                let (cg, cw) = (choice[g as usize], choice[want as usize]);
                assert!(
                    (cg - cw).abs() <= 1e-6 * cw.abs().max(cg.abs()),
                    "{name}: token {t} pick {p}: got expert {g} (score {cg}), want {want} (score {cw}); ids {got_ids:?} vs {r_ids:?}"
                );
            }
            near_ties += 1;
            continue;
        }
        for (p, (&g, &want)) in got_w.iter().zip(r_w).enumerate() {
            assert!(
                (g - want).abs() <= 1e-5 * want.abs() + 1e-9,
                "{name}: token {t} weight {p}: {g} vs {want}"
            );
        }
    }
    assert!(
        near_ties <= 1 + tokens / 100,
        "{name}: {near_ties} of {tokens} tokens differ by near-ties"
    );
    near_ties
}

fn router(
    n_experts: usize,
    top_k: usize,
    groups: (usize, usize),
    scoring: Scoring,
    method: TopkMethod,
    norm: bool,
    scale: f32,
) -> RouterConfig {
    RouterConfig {
        n_experts,
        top_k,
        n_group: groups.0,
        topk_group: groups.1,
        scoring,
        method,
        norm_topk_prob: norm,
        routed_scaling_factor: scale,
    }
}

/// DeepSeek V3 (and a V3-style router without groups), V2 group-limited, V2-Lite greedy.
fn configs() -> Vec<(&'static str, RouterConfig, bool)> {
    use Scoring::*;
    use TopkMethod::*;
    vec![
        (
            "v3 256e top8 g8/4 norm",
            router(256, 8, (8, 4), Sigmoid, NoauxTc, true, 2.5),
            true,
        ),
        (
            "v3 256e top8 g8/4 no-norm",
            router(256, 8, (8, 4), Sigmoid, NoauxTc, false, 2.5),
            true,
        ),
        (
            "v3 64e top6 one group",
            router(64, 6, (1, 1), Sigmoid, NoauxTc, true, 1.0),
            true,
        ),
        (
            "v2 160e top6 g8/3",
            router(160, 6, (8, 3), Softmax, GroupLimitedGreedy, false, 16.0),
            false,
        ),
        (
            "v2-lite 64e top6 greedy",
            router(64, 6, (1, 1), Softmax, Greedy, false, 1.0),
            false,
        ),
        (
            "v2 64e top6 greedy norm",
            router(64, 6, (1, 1), Softmax, Greedy, true, 1.0),
            false,
        ),
    ]
}

#[test]
fn gating_matches_reference_on_random_logits() {
    let Some(gpu) = gpu_or_skip("gating_matches_reference_on_random_logits") else {
        return;
    };
    let s = gpu.stream();
    for (ci, (name, cfg, with_bias)) in configs().into_iter().enumerate() {
        for tokens in [1usize, 3, 17, 129] {
            let mut rng = SplitMix64::new(77 + ci as u64 * 1000 + tokens as u64);
            let logits: Vec<f32> = (0..tokens * cfg.n_experts)
                .map(|_| rng.normal() * 2.0)
                .collect();
            let bias: Vec<f32> = (0..cfg.n_experts).map(|_| rng.normal() * 0.1).collect();
            let ties = check(
                s,
                name,
                &cfg,
                &logits,
                with_bias.then_some(&bias[..]),
                tokens,
            );
            eprintln!("{name}, {tokens} tokens: ok ({ties} near-tie swaps)");
        }
    }
}

#[test]
fn gating_breaks_exact_ties_by_lowest_index() {
    let Some(gpu) = gpu_or_skip("gating_breaks_exact_ties_by_lowest_index") else {
        return;
    };
    let s = gpu.stream();
    for (name, cfg, with_bias) in configs() {
        let tokens = 33;
        let mut rng = SplitMix64::new(5);
        // Four distinct logit values: ties everywhere, among experts and among groups.
        let levels = [-1.0f32, 0.0, 0.5, 2.0];
        let logits: Vec<f32> = (0..tokens * cfg.n_experts)
            .map(|_| levels[rng.below(4)])
            .collect();
        let bias: Vec<f32> = (0..cfg.n_experts)
            .map(|i| if i % 3 == 0 { 0.25 } else { 0.0 })
            .collect();
        let ties = check(
            s,
            name,
            &cfg,
            &logits,
            with_bias.then_some(&bias[..]),
            tokens,
        );
        assert_eq!(
            ties, 0,
            "{name}: exact ties must resolve exactly like the reference"
        );
    }
}

#[test]
fn gating_rejects_bad_configs() {
    let Some(gpu) = gpu_or_skip("gating_rejects_bad_configs") else {
        return;
    };
    let s = gpu.stream();
    let logits = s.upload(&[0.0f32; 64]).unwrap();
    let mut ids = s.upload(&[0u32; 8]).unwrap();
    let mut w = s.upload(&[0.0f32; 8]).unwrap();
    use Scoring::Sigmoid;
    use TopkMethod::NoauxTc;
    let bias = s.upload(&[0.0f32; 64]).unwrap();
    let bad = [
        router(64, 8, (7, 2), Sigmoid, NoauxTc, true, 1.0), // 7 groups do not divide 64
        router(64, 8, (8, 9), Sigmoid, NoauxTc, true, 1.0), // topk_group > n_group
        router(64, 40, (8, 8), Sigmoid, NoauxTc, true, 1.0), // top_k > 32, the kernel's limit
        router(64, 24, (8, 2), Sigmoid, NoauxTc, true, 1.0), // only 16 experts reachable
    ];
    for cfg in bad {
        assert!(
            s.moe_gating(&cfg, &logits, Some(&bias), 1, &mut ids, &mut w)
                .is_err(),
            "{cfg:?}"
        );
    }
    let cfg = router(64, 8, (8, 4), Sigmoid, NoauxTc, true, 1.0);
    assert!(
        s.moe_gating(&cfg, &logits, None, 1, &mut ids, &mut w)
            .is_err(),
        "noaux_tc without its bias"
    );
    let greedy = router(
        64,
        8,
        (1, 1),
        Scoring::Softmax,
        TopkMethod::Greedy,
        false,
        1.0,
    );
    assert!(
        s.moe_gating(&greedy, &logits, Some(&bias), 1, &mut ids, &mut w)
            .is_err(),
        "a bias for greedy"
    );
    let mut short = s.upload(&[0u32; 7]).unwrap();
    assert!(s
        .moe_gating(&cfg, &logits, Some(&bias), 1, &mut short, &mut w)
        .is_err());
    // past the kernel's 256 experts (8 scores per lane), with every length right
    let wide = router(
        320,
        8,
        (1, 1),
        Scoring::Softmax,
        TopkMethod::Greedy,
        false,
        1.0,
    );
    let wide_logits = s.upload(&[0.5f32; 320]).unwrap();
    let err = s
        .moe_gating(&wide, &wide_logits, None, 1, &mut ids, &mut w)
        .expect_err("320 experts exceed the kernel's limit");
    assert!(err.to_string().contains("256"), "{err}");
}

/// The packed gating (the hybrid decode's one copy out) writes the rows of x unchanged and
/// the same ids and weights, bit for bit, as the unpacked kernel (itself checked against the
/// reference above), into a buffer poisoned with NaN bits so unwritten words show.
#[test]
fn packed_gating_matches_unpacked_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("packed_gating_matches_unpacked_bit_for_bit") else {
        return;
    };
    let s = gpu.stream();
    let hidden = 200; // not a multiple of the warp: the row copy's tail
    for (ci, (name, cfg, with_bias)) in configs().into_iter().enumerate() {
        for tokens in [1usize, 5, 33] {
            let mut rng = SplitMix64::new(900 + ci as u64 * 100 + tokens as u64);
            let logits: Vec<f32> = (0..tokens * cfg.n_experts)
                .map(|_| rng.normal() * 2.0)
                .collect();
            let bias: Vec<f32> = (0..cfg.n_experts).map(|_| rng.normal() * 0.1).collect();
            let x: Vec<f32> = (0..tokens * hidden).map(|_| rng.normal()).collect();
            let ld = s.upload(&logits).unwrap();
            let bd = with_bias.then(|| s.upload(&bias).unwrap());
            let xd = s.upload(&x).unwrap();
            let k = cfg.top_k;
            let mut ids = s.upload(&vec![u32::MAX; tokens * k]).unwrap();
            let mut w = s.upload(&vec![f32::NAN; tokens * k]).unwrap();
            s.moe_gating(&cfg, &ld, bd.as_ref(), tokens, &mut ids, &mut w)
                .unwrap();
            let len = packed_len(tokens, hidden, k);
            let mut pack = s.upload(&vec![f32::NAN.to_bits(); len]).unwrap();
            s.moe_gating_packed(&cfg, &ld, bd.as_ref(), tokens, &xd, &mut pack)
                .unwrap();
            let got = s.download(&pack).unwrap();
            let (gx, rest) = got.split_at(tokens * hidden);
            let (gids, gw) = rest.split_at(tokens * k);
            let want_x: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gx, &want_x[..], "{name}, {tokens} tokens: rows of x");
            assert_eq!(
                gids,
                &s.download(&ids).unwrap()[..],
                "{name}, {tokens} tokens: ids"
            );
            let want_w: Vec<u32> = s
                .download(&w)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(gw, &want_w[..], "{name}, {tokens} tokens: weights");
        }
    }
}

#[test]
fn packed_gating_rejects_bad_lengths() {
    let Some(gpu) = gpu_or_skip("packed_gating_rejects_bad_lengths") else {
        return;
    };
    let s = gpu.stream();
    let cfg = router(
        64,
        6,
        (1, 1),
        Scoring::Softmax,
        TopkMethod::Greedy,
        false,
        1.0,
    );
    let logits = s.upload(&[0.5f32; 128]).unwrap();
    let x = s.upload(&[1.0f32; 2 * 16]).unwrap();
    let mut pack = s.upload(&vec![0u32; packed_len(2, 16, 6)]).unwrap();
    s.moe_gating_packed(&cfg, &logits, None, 2, &x, &mut pack)
        .unwrap();
    let mut short = s.upload(&vec![0u32; packed_len(2, 16, 6) - 1]).unwrap();
    assert!(s
        .moe_gating_packed(&cfg, &logits, None, 2, &x, &mut short)
        .is_err());
    let odd_x = s.upload(&[1.0f32; 33]).unwrap();
    assert!(s
        .moe_gating_packed(&cfg, &logits, None, 2, &odd_x, &mut pack)
        .is_err());
    assert!(s
        .moe_gating_packed(&cfg, &logits, None, 0, &x, &mut pack)
        .is_err());
}
