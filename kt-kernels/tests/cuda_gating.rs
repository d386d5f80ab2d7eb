//! Fused MoE gating on the GPU against a plain scalar router (DeepSeek V2 greedy and
//! group-limited, V3 noaux_tc), on random logits and on logits full of exact ties.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::gpu_or_skip;
use kt_kernels::cuda::gating::{GatingConfig, GroupScore, Scoring};
use kt_kernels::cuda::GpuStream;
use kt_kernels::util::SplitMix64;

/// One token's route: ids (best first) and weights, plus the choice scores it ranked by.
struct Route {
    ids: Vec<u32>,
    weights: Vec<f32>,
    choice: Vec<f32>,
}

/// `a` ranks before `b`: higher score, ties to the lower index.
fn before(a: (f32, usize), b: (f32, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Plain scalar router, in f32 like the kernel.
fn route_ref(cfg: &GatingConfig, logits: &[f32], bias: Option<&[f32]>) -> Route {
    let e = cfg.n_experts;
    let scores: Vec<f32> = match cfg.scoring {
        Scoring::Softmax => {
            let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = logits.iter().map(|&v| (v - mx).exp()).collect();
            let sum: f32 = ex.iter().sum();
            ex.iter().map(|v| v / sum).collect()
        }
        Scoring::Sigmoid => logits.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
    };
    let choice: Vec<f32> = (0..e).map(|i| scores[i] + bias.map_or(0.0, |b| b[i])).collect();
    let gsize = e / cfg.n_group;
    let mut allowed = vec![true; cfg.n_group];
    if cfg.n_group > 1 && cfg.topk_group < cfg.n_group {
        let gscore: Vec<f32> = (0..cfg.n_group)
            .map(|g| {
                let mut v: Vec<f32> = choice[g * gsize..(g + 1) * gsize].to_vec();
                v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                match cfg.group_score {
                    GroupScore::Max => v[0],
                    GroupScore::Top2Sum => v[0] + v[1],
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..cfg.n_group).collect();
        order.sort_by(|&a, &b| if before((gscore[a], a), (gscore[b], b)) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        allowed = vec![false; cfg.n_group];
        for &g in &order[..cfg.topk_group] {
            allowed[g] = true;
        }
    }
    let mut cands: Vec<usize> = (0..e).filter(|&i| allowed[i / gsize]).collect();
    cands.sort_by(|&a, &b| if before((choice[a], a), (choice[b], b)) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
    let ids: Vec<u32> = cands[..cfg.top_k].iter().map(|&i| i as u32).collect();
    let raw: Vec<f32> = ids.iter().map(|&i| scores[i as usize]).collect();
    let sum: f32 = raw.iter().sum();
    let weights = raw.iter().map(|&w| if cfg.normalize { w / (sum + 1e-20) } else { w } * cfg.scale).collect();
    Route { ids, weights, choice }
}

/// Runs the kernel and compares every token. Ids must match exactly, except that two experts
/// whose choice scores are within f32 rounding of each other (1e-6 relative: the kernel's
/// expf and the host's differ by a few ulp) may trade places; those are counted and must
/// stay rare. Weights of matching routes agree within 1e-5 relative.
fn check(s: &GpuStream, name: &str, cfg: &GatingConfig, logits: &[f32], bias: Option<&[f32]>, tokens: usize) -> usize {
    let e = cfg.n_experts;
    let ld = s.upload(logits).unwrap();
    let bd = bias.map(|b| s.upload(b).unwrap());
    let mut ids = s.upload(&vec![u32::MAX; tokens * cfg.top_k]).unwrap();
    let mut w = s.upload(&vec![f32::NAN; tokens * cfg.top_k]).unwrap();
    s.moe_gating(cfg, &ld, bd.as_ref(), tokens, &mut ids, &mut w).unwrap();
    let (gids, gw) = (s.download(&ids).unwrap(), s.download(&w).unwrap());
    let mut near_ties = 0;
    for t in 0..tokens {
        let r = route_ref(cfg, &logits[t * e..(t + 1) * e], bias);
        let k = cfg.top_k;
        let (got_ids, got_w) = (&gids[t * k..(t + 1) * k], &gw[t * k..(t + 1) * k]);
        if got_ids != &r.ids[..] {
            for (p, (&g, &want)) in got_ids.iter().zip(&r.ids).enumerate() {
                assert!((g as usize) < e, "{name}: token {t} pick {p}: id {g} out of range");
                let (cg, cw) = (r.choice[g as usize], r.choice[want as usize]);
                assert!(
                    (cg - cw).abs() <= 1e-6 * cw.abs().max(cg.abs()),
                    "{name}: token {t} pick {p}: got expert {g} (score {cg}), want {want} (score {cw}); ids {got_ids:?} vs {:?}",
                    r.ids
                );
            }
            near_ties += 1;
            continue;
        }
        for (p, (&g, &want)) in got_w.iter().zip(&r.weights).enumerate() {
            assert!((g - want).abs() <= 1e-5 * want.abs() + 1e-9, "{name}: token {t} weight {p}: {g} vs {want}");
        }
    }
    assert!(near_ties * 100 <= tokens, "{name}: {near_ties} of {tokens} tokens differ by near-ties");
    near_ties
}

fn configs() -> Vec<(&'static str, GatingConfig, bool)> {
    vec![
        ("v3 256e top8 g8/4 norm", GatingConfig::deepseek_v3(256, 8, 8, 4, true, 2.5), true),
        ("v3 256e top8 g8/4 no-norm", GatingConfig::deepseek_v3(256, 8, 8, 4, false, 2.5), true),
        ("v3 64e top6 no groups", GatingConfig::deepseek_v3(64, 6, 1, 1, true, 1.0), true),
        ("v2 160e top6 g8/3", GatingConfig::deepseek_v2_group_limited(160, 6, 8, 3, false, 16.0), false),
        ("v2-lite 64e top6 greedy", GatingConfig::deepseek_v2_greedy(64, 6, false, 1.0), false),
        ("v2 64e top6 greedy norm", GatingConfig::deepseek_v2_greedy(64, 6, true, 1.0), false),
    ]
}

#[test]
fn gating_matches_reference_on_random_logits() {
    let Some(gpu) = gpu_or_skip("gating_matches_reference_on_random_logits") else { return };
    let s = gpu.stream();
    for (ci, (name, cfg, with_bias)) in configs().into_iter().enumerate() {
        for tokens in [1usize, 3, 17, 129] {
            let mut rng = SplitMix64::new(77 + ci as u64 * 1000 + tokens as u64);
            let logits: Vec<f32> = (0..tokens * cfg.n_experts).map(|_| rng.normal() * 2.0).collect();
            let bias: Vec<f32> = (0..cfg.n_experts).map(|_| rng.normal() * 0.1).collect();
            let ties = check(s, name, &cfg, &logits, with_bias.then_some(&bias[..]), tokens);
            eprintln!("{name}, {tokens} tokens: ok ({ties} near-tie swaps)");
        }
    }
}

#[test]
fn gating_breaks_exact_ties_by_lowest_index() {
    let Some(gpu) = gpu_or_skip("gating_breaks_exact_ties_by_lowest_index") else { return };
    let s = gpu.stream();
    for (name, cfg, with_bias) in configs() {
        let tokens = 33;
        let mut rng = SplitMix64::new(5);
        // Four distinct logit values: ties everywhere, among experts and among groups.
        let levels = [-1.0f32, 0.0, 0.5, 2.0];
        let logits: Vec<f32> = (0..tokens * cfg.n_experts).map(|_| levels[rng.below(4)]).collect();
        let bias: Vec<f32> = (0..cfg.n_experts).map(|i| if i % 3 == 0 { 0.25 } else { 0.0 }).collect();
        let ties = check(s, name, &cfg, &logits, with_bias.then_some(&bias[..]), tokens);
        assert_eq!(ties, 0, "{name}: exact ties must resolve exactly like the reference");
    }
}

#[test]
fn gating_rejects_bad_configs() {
    let Some(gpu) = gpu_or_skip("gating_rejects_bad_configs") else { return };
    let s = gpu.stream();
    let logits = s.upload(&[0.0f32; 64]).unwrap();
    let mut ids = s.upload(&[0u32; 8]).unwrap();
    let mut w = s.upload(&[0.0f32; 8]).unwrap();
    let bad = [
        GatingConfig::deepseek_v3(64, 8, 7, 2, true, 1.0),  // 7 groups do not divide 64
        GatingConfig::deepseek_v3(64, 8, 8, 9, true, 1.0),  // topk_group > n_group
        GatingConfig::deepseek_v3(64, 40, 8, 8, true, 1.0), // top_k > 32
        GatingConfig::deepseek_v3(64, 24, 8, 2, true, 1.0), // only 16 experts reachable
    ];
    for cfg in bad {
        assert!(s.moe_gating(&cfg, &logits, None, 1, &mut ids, &mut w).is_err(), "{cfg:?}");
    }
    let cfg = GatingConfig::deepseek_v3(64, 8, 8, 4, true, 1.0);
    let mut short = s.upload(&[0u32; 7]).unwrap();
    assert!(s.moe_gating(&cfg, &logits, None, 1, &mut short, &mut w).is_err());
}
