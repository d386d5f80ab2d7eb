//! MoE routing of a batch of tokens from router logits `[T, E]` to `top_k` experts each.
//!
//! - DeepSeek V2: softmax scores; `greedy` takes the top-k scores; `group_limited_greedy`
//!   scores each of `n_group` equal groups by its best expert, keeps the `topk_group` best
//!   groups and takes the top-k inside them.
//! - DeepSeek V3 `noaux_tc`: sigmoid scores; experts are *selected* by
//!   `score + e_score_correction_bias`, a group's score is the sum of its two best biased
//!   scores, the `topk_group` best groups are kept, the top-k biased scores inside them win;
//!   the *weights* are the unbiased sigmoid scores of the winners.
//! - Then, if `norm_topk_prob`, weights are divided by `sum + 1e-20` (HF's epsilon), and all
//!   are multiplied by `routed_scaling_factor`. HF transformers 5.x applies no normalization
//!   in V2 whatever the flag says; every V2 checkpoint has it false, and the original V2 code
//!   normalizes when it is true, which is what this does.
//!
//! Experts of dropped groups are excluded outright (llama.cpp and DeepSeek's own code mask
//! them with -inf; HF V2 writes 0.0, which is the same for softmax scores, all > 0).
//!
//! # Ties
//! Groups and experts are ranked by score, descending, and equal scores by index, ascending:
//! the lowest index wins a tie. torch.topk on the CPU does not promise this: measured with
//! torch 2.11, exact ties among 16 or 256 candidates come out in an order set by its
//! selection algorithm (nth_element), not by index, while its partial-sort path (k * 64 <= n)
//! does keep the lowest indices. Exact ties do not happen with real logits; the rule is here
//! so that the result is deterministic and the same on every kernel (a NaN score ranks below
//! every number).
//!
//! The ids of a token come out in rank order (best first); [`sort_topk_by_expert`] reorders
//! them ascending by expert id, weights alongside.

use super::activation::sigmoid;
use super::{expect_len, rows_of, shape_err};
use crate::Result;

const OP: &str = "route";

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Softmax over the experts of a token (V2, GGUF `expert_gating_func` 1).
    Softmax,
    /// Elementwise sigmoid (V3, GGUF `expert_gating_func` 2).
    Sigmoid,
}

/// How experts are chosen from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// Top-k of all scores; groups are ignored.
    Greedy,
    /// V2: groups ranked by their best score.
    GroupLimitedGreedy,
    /// V3: selection by biased score, groups ranked by the sum of their two best.
    NoauxTc,
}

impl Scoring {
    /// The HF `scoring_func` name.
    pub fn name(self) -> &'static str {
        match self {
            Scoring::Softmax => "softmax",
            Scoring::Sigmoid => "sigmoid",
        }
    }
}

impl TopkMethod {
    /// The HF `topk_method` name.
    pub fn name(self) -> &'static str {
        match self {
            TopkMethod::Greedy => "greedy",
            TopkMethod::GroupLimitedGreedy => "group_limited_greedy",
            TopkMethod::NoauxTc => "noaux_tc",
        }
    }

    pub fn from_name(name: &str) -> Option<TopkMethod> {
        [
            TopkMethod::Greedy,
            TopkMethod::GroupLimitedGreedy,
            TopkMethod::NoauxTc,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Scoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for TopkMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The router's configuration (HF config names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    pub n_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub scoring: Scoring,
    pub method: TopkMethod,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

impl RouterConfig {
    /// Checks the numbers fit together; `route` calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(shape_err(OP, detail));
        if self.n_experts == 0 || self.top_k == 0 || self.top_k > self.n_experts {
            return bad(format!(
                "top_k {} of {} experts",
                self.top_k, self.n_experts
            ));
        }
        if !self.routed_scaling_factor.is_finite() {
            return bad(format!(
                "routed_scaling_factor {}",
                self.routed_scaling_factor
            ));
        }
        if self.method == TopkMethod::Greedy {
            return Ok(());
        }
        if self.n_group == 0 || !self.n_experts.is_multiple_of(self.n_group) {
            return bad(format!(
                "{} experts do not split into {} groups",
                self.n_experts, self.n_group
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return bad(format!(
                "topk_group {} of {} groups",
                self.topk_group, self.n_group
            ));
        }
        let per_group = self.n_experts / self.n_group;
        if self.topk_group * per_group < self.top_k {
            return bad(format!(
                "{} kept groups of {per_group} experts hold fewer than top_k {}",
                self.topk_group, self.top_k
            ));
        }
        if self.method == TopkMethod::NoauxTc && self.n_group > 1 && per_group < 2 {
            return bad(format!(
                "noaux_tc scores groups by their top 2, but groups have {per_group} expert"
            ));
        }
        Ok(())
    }
}

/// `a` ranks before `b` (scores `va`, `vb`, indices `a < b` or not): higher score first,
/// NaN last, lower index on ties.
fn ranks_before(va: f32, a: usize, vb: f32, b: usize) -> bool {
    match (va.is_nan(), vb.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a < b,
        (false, false) => va > vb || (va == vb && a < b),
    }
}

/// Marks in `taken` the `k` best of `values` among `eligible`, calling `pick(index)` in rank
/// order. `taken` must start all false for the eligible entries.
fn select_top(
    values: &[f32],
    eligible: impl Fn(usize) -> bool,
    taken: &mut [bool],
    k: usize,
    mut pick: impl FnMut(usize),
) {
    for _ in 0..k {
        let mut best: Option<usize> = None;
        for i in 0..values.len() {
            if taken[i] || !eligible(i) {
                continue;
            }
            if best.is_none_or(|b| ranks_before(values[i], i, values[b], b)) {
                best = Some(i);
            }
        }
        // validate() guarantees at least k eligible entries
        if let Some(b) = best {
            taken[b] = true;
            pick(b);
        }
    }
}

/// Routes every token: `logits` `[T, E]`, `bias` `[E]` (noaux_tc only), `ids` and `weights`
/// `[T, top_k]` written in rank order.
pub fn route(
    cfg: &RouterConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    ids: &mut [u32],
    weights: &mut [f32],
) -> Result<()> {
    cfg.validate()?;
    let e = cfg.n_experts;
    let k = cfg.top_k;
    let t = rows_of(OP, "logits", logits.len(), e)?;
    expect_len(OP, "ids", ids.len(), t * k)?;
    expect_len(OP, "weights", weights.len(), t * k)?;
    match (cfg.method, bias) {
        (TopkMethod::NoauxTc, Some(b)) => expect_len(OP, "e_score_correction_bias", b.len(), e)?,
        (TopkMethod::NoauxTc, None) => {
            return Err(shape_err(OP, "noaux_tc needs e_score_correction_bias"))
        }
        (m, Some(_)) => {
            return Err(shape_err(
                OP,
                format!("a correction bias was given but {m:?} does not use one"),
            ))
        }
        (_, None) => {}
    }
    if u32::try_from(e).is_err() {
        return Err(shape_err(OP, format!("{e} experts do not fit u32 ids")));
    }

    let grouped = cfg.method != TopkMethod::Greedy && cfg.n_group > 1;
    let per_group = if grouped { e / cfg.n_group } else { e };
    // scratch for the whole batch, reused by every token
    let mut scores = vec![0.0f32; e];
    let mut select = vec![0.0f32; e];
    let mut group_score = vec![0.0f32; if grouped { cfg.n_group } else { 0 }];
    let mut group_kept = vec![false; group_score.len()];
    let mut taken = vec![false; e];

    for ((row, ids), weights) in logits
        .chunks_exact(e)
        .zip(ids.chunks_exact_mut(k))
        .zip(weights.chunks_exact_mut(k))
    {
        match cfg.scoring {
            Scoring::Softmax => super::activation::softmax_rows(row, e, &mut scores)?,
            Scoring::Sigmoid => scores
                .iter_mut()
                .zip(row)
                .for_each(|(s, &l)| *s = sigmoid(l)),
        }
        match bias {
            // f32 sum, as HF and llama.cpp form it: the selection sees the same values
            Some(b) => select
                .iter_mut()
                .zip(&scores)
                .zip(b)
                .for_each(|((s, &p), &c)| *s = p + c),
            None => select.copy_from_slice(&scores),
        }

        if grouped {
            for (g, gs) in group_score.iter_mut().enumerate() {
                let members = &select[g * per_group..(g + 1) * per_group];
                *gs = match cfg.method {
                    TopkMethod::GroupLimitedGreedy => best_two(members).0,
                    _ => {
                        let (a, b) = best_two(members);
                        a + b
                    }
                };
            }
            group_kept.fill(false);
            select_top(
                &group_score,
                |_| true,
                &mut group_kept,
                cfg.topk_group,
                |_| {},
            );
        }

        taken.fill(false);
        let mut n = 0;
        select_top(
            &select,
            |i| !grouped || group_kept[i / per_group],
            &mut taken,
            k,
            |i| {
                ids[n] = i as u32;
                weights[n] = scores[i];
                n += 1;
            },
        );

        if cfg.norm_topk_prob {
            let sum: f64 = weights.iter().map(|&w| w as f64).sum();
            let denom = sum + 1e-20;
            for w in weights.iter_mut() {
                *w = (*w as f64 / denom * cfg.routed_scaling_factor as f64) as f32;
            }
        } else {
            for w in weights.iter_mut() {
                *w = (*w as f64 * cfg.routed_scaling_factor as f64) as f32;
            }
        }
    }
    Ok(())
}

/// The largest and second largest of `v` (the second is `-inf` for one element); NaN ranks
/// below every number.
fn best_two(v: &[f32]) -> (f32, f32) {
    let mut first = (f32::NAN, usize::MAX);
    let mut second = (f32::NAN, usize::MAX);
    for (i, &x) in v.iter().enumerate() {
        if first.1 == usize::MAX || ranks_before(x, i, first.0, first.1) {
            second = first;
            first = (x, i);
        } else if second.1 == usize::MAX || ranks_before(x, i, second.0, second.1) {
            second = (x, i);
        }
    }
    let second = if second.1 == usize::MAX {
        f32::NEG_INFINITY
    } else {
        second.0
    };
    (first.0, second)
}

/// Sorts each token's `k` (id, weight) pairs by ascending expert id.
pub fn sort_topk_by_expert(ids: &mut [u32], weights: &mut [f32], k: usize) -> Result<()> {
    rows_of("sort_topk_by_expert", "ids", ids.len(), k)?;
    expect_len("sort_topk_by_expert", "weights", weights.len(), ids.len())?;
    for (ir, wr) in ids.chunks_exact_mut(k).zip(weights.chunks_exact_mut(k)) {
        // insertion sort: k is small and this keeps the pairs together without allocating
        for j in 1..k {
            let mut p = j;
            while p > 0 && ir[p - 1] > ir[p] {
                ir.swap(p - 1, p);
                wr.swap(p - 1, p);
                p -= 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::randn;
    use crate::util::SplitMix64;
    use proptest::prelude::*;

    fn v3(
        e: usize,
        k: usize,
        n_group: usize,
        topk_group: usize,
        norm: bool,
        rsf: f32,
    ) -> RouterConfig {
        RouterConfig {
            n_experts: e,
            top_k: k,
            n_group,
            topk_group,
            scoring: Scoring::Sigmoid,
            method: TopkMethod::NoauxTc,
            norm_topk_prob: norm,
            routed_scaling_factor: rsf,
        }
    }

    fn v2(
        e: usize,
        k: usize,
        n_group: usize,
        topk_group: usize,
        method: TopkMethod,
        rsf: f32,
    ) -> RouterConfig {
        RouterConfig {
            n_experts: e,
            top_k: k,
            n_group,
            topk_group,
            scoring: Scoring::Softmax,
            method,
            norm_topk_prob: false,
            routed_scaling_factor: rsf,
        }
    }

    fn run(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
        let t = logits.len() / cfg.n_experts;
        let mut ids = vec![u32::MAX; t * cfg.top_k];
        let mut w = vec![f32::NAN; t * cfg.top_k];
        route(cfg, logits, bias, &mut ids, &mut w).unwrap();
        (ids, w)
    }

    /// The brute-force reference: full sorts instead of selection, straight from the
    /// definitions. Returns each token's ids and weights sorted by expert id.
    fn brute_force(
        cfg: &RouterConfig,
        logits: &[f32],
        bias: Option<&[f32]>,
    ) -> (Vec<u32>, Vec<f64>) {
        let e = cfg.n_experts;
        let mut all_ids = Vec::new();
        let mut all_w = Vec::new();
        // rank key: score descending, NaN last, index ascending
        let order = |v: &[f32]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| {
                let ka = if v[a].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    v[a]
                };
                let kb = if v[b].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    v[b]
                };
                kb.partial_cmp(&ka)
                    .unwrap()
                    .then(v[a].is_nan().cmp(&v[b].is_nan()))
                    .then(a.cmp(&b))
            });
            idx
        };
        for row in logits.chunks_exact(e) {
            let scores: Vec<f32> = match cfg.scoring {
                Scoring::Sigmoid => row
                    .iter()
                    .map(|&l| (1.0 / (1.0 + (-(l as f64)).exp())) as f32)
                    .collect(),
                Scoring::Softmax => {
                    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let s: f64 = row.iter().map(|&l| (l as f64 - m).exp()).sum();
                    row.iter()
                        .map(|&l| ((l as f64 - m).exp() / s) as f32)
                        .collect()
                }
            };
            let sel: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(&s, &c)| s + c).collect(),
                None => scores.clone(),
            };
            let mut allowed = vec![true; e];
            if cfg.method != TopkMethod::Greedy && cfg.n_group > 1 {
                let pg = e / cfg.n_group;
                let gs: Vec<f32> = (0..cfg.n_group)
                    .map(|g| {
                        let mut m: Vec<f32> = sel[g * pg..(g + 1) * pg].to_vec();
                        m.sort_by(|a, b| b.partial_cmp(a).unwrap());
                        if cfg.method == TopkMethod::NoauxTc {
                            m[0] + m[1]
                        } else {
                            m[0]
                        }
                    })
                    .collect();
                let kept: Vec<usize> = order(&gs)[..cfg.topk_group].to_vec();
                for (i, a) in allowed.iter_mut().enumerate() {
                    *a = kept.contains(&(i / pg));
                }
            }
            let masked: Vec<f32> = sel
                .iter()
                .zip(&allowed)
                .map(|(&s, &a)| if a { s } else { f32::NEG_INFINITY })
                .collect();
            let mut chosen: Vec<usize> = order(&masked)[..cfg.top_k].to_vec();
            chosen.sort();
            let raw: Vec<f64> = chosen.iter().map(|&i| scores[i] as f64).collect();
            let denom = if cfg.norm_topk_prob {
                raw.iter().sum::<f64>() + 1e-20
            } else {
                1.0
            };
            all_ids.extend(chosen.iter().map(|&i| i as u32));
            all_w.extend(
                raw.iter()
                    .map(|w| w / denom * cfg.routed_scaling_factor as f64),
            );
        }
        (all_ids, all_w)
    }

    fn check_against_brute_force(
        cfg: &RouterConfig,
        logits: &[f32],
        bias: Option<&[f32]>,
    ) -> std::result::Result<(), TestCaseError> {
        let (mut ids, mut w) = run(cfg, logits, bias);
        sort_topk_by_expert(&mut ids, &mut w, cfg.top_k).unwrap();
        let (bids, bw) = brute_force(cfg, logits, bias);
        prop_assert_eq!(&ids, &bids);
        for (i, (&a, &b)) in w.iter().zip(&bw).enumerate() {
            // one f32 rounding of the score and one of the product
            prop_assert!(
                (a as f64 - b).abs() <= 2.5e-7 * b.abs() + 1e-30,
                "weight {}: {} vs {}",
                i,
                a,
                b
            );
        }
        Ok(())
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        // every logit equal: experts 0..k in order, and the first groups
        let cfg = v3(16, 4, 4, 2, true, 1.0);
        let (ids, w) = run(&cfg, &[0.3; 32], Some(&[0.0; 16]));
        assert_eq!(ids, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert!(w.iter().all(|&x| (x - 0.25).abs() < 1e-7));
        // a tie at the boundary: experts 2 and 5 tie for the last slot, 2 wins
        let logits = [0.0, 5.0, 1.0, 0.0, 0.0, 1.0, 3.0, 0.0];
        let (ids, _) = run(&v2(8, 3, 1, 1, TopkMethod::Greedy, 1.0), &logits, None);
        assert_eq!(ids, [1, 6, 2]);
        // group-limited: groups {0,1}, {2,3}, {4,5}, {6,7} rank by their best logit 5, 1, 1, 3;
        // topk_group 3 keeps groups 0 and 3, then 1 over 2 (lower index); inside them the
        // last slot is a tie of experts 0, 3 and 7 at logit 0, which 0 wins
        let (ids, _) = run(
            &v2(8, 4, 4, 3, TopkMethod::GroupLimitedGreedy, 1.0),
            &logits,
            None,
        );
        assert_eq!(ids, [1, 6, 2, 0]);
    }

    #[test]
    fn v3_groups_use_top_two_sum_and_weights_ignore_bias() {
        // 2 groups of 4; group 0 has the single best biased score but group 1 the best pair
        let logits = [0.0f32; 8];
        let bias = [0.9, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0];
        let cfg = v3(8, 2, 2, 1, false, 2.0);
        let (ids, w) = run(&cfg, &logits, Some(&bias));
        assert_eq!(ids, [4, 5]);
        // weights are sigmoid(0) = 0.5, unbiased, times 2
        assert_eq!(w, [1.0, 1.0]);
    }

    #[test]
    fn norm_and_scaling() {
        let logits = [1.0f32, -1.0, 2.0, 0.5];
        let cfg = v3(4, 2, 1, 1, true, 2.5);
        let (ids, w) = run(&cfg, &logits, Some(&[0.0; 4]));
        assert_eq!(ids, [2, 0]);
        let (s2, s0) = (sigmoid(2.0) as f64, sigmoid(1.0) as f64);
        assert!((w[0] as f64 - s2 / (s2 + s0) * 2.5).abs() < 3e-7);
        assert!((w[1] as f64 - s0 / (s2 + s0) * 2.5).abs() < 3e-7);
    }

    #[test]
    fn config_and_shape_errors() {
        let mut ids = [0u32; 4];
        let mut w = [0.0f32; 4];
        let ok = v3(8, 2, 2, 1, true, 1.0);
        let l = [0.1f32; 16];
        let b = [0.0f32; 8];
        assert!(route(&ok, &l, Some(&b), &mut ids, &mut w).is_ok());
        assert!(
            route(&ok, &l, None, &mut ids, &mut w).is_err(),
            "noaux_tc without bias"
        );
        assert!(
            route(&ok, &l, Some(&b[..7]), &mut ids, &mut w).is_err(),
            "bias length"
        );
        assert!(
            route(&ok, &l[..15], Some(&b), &mut ids, &mut w).is_err(),
            "logits not rows of E"
        );
        assert!(route(&ok, &l, Some(&b), &mut ids[..3], &mut w).is_err());
        assert!(route(&ok, &l, Some(&b), &mut ids, &mut w[..3]).is_err());
        let greedy = v2(8, 2, 1, 1, TopkMethod::Greedy, 1.0);
        assert!(
            route(&greedy, &l, Some(&b), &mut ids, &mut w).is_err(),
            "bias for greedy"
        );
        for bad in [
            v3(8, 9, 1, 1, true, 1.0),
            v3(8, 0, 1, 1, true, 1.0),
            v3(8, 2, 3, 1, true, 1.0),
            v3(8, 2, 2, 3, true, 1.0),
            v3(8, 5, 2, 1, true, 1.0),
            v3(8, 2, 8, 2, true, 1.0),
            v3(8, 2, 2, 1, true, f32::NAN),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(sort_topk_by_expert(&mut [1, 2, 3], &mut [0.0; 3], 2).is_err());
        assert!(sort_topk_by_expert(&mut [1, 2], &mut [0.0; 3], 2).is_err());
    }

    #[test]
    fn sort_keeps_pairs() {
        let mut ids = [5u32, 1, 3, 9, 0, 4];
        let mut w = [0.5f32, 0.1, 0.3, 0.9, 0.0, 0.4];
        sort_topk_by_expert(&mut ids, &mut w, 3).unwrap();
        assert_eq!(ids, [1, 3, 5, 0, 4, 9]);
        assert_eq!(w, [0.1, 0.3, 0.5, 0.0, 0.4, 0.9]);
    }

    /// (n_experts, n_group, topk_group, top_k) shapes of real and toy routers.
    fn shapes() -> impl Strategy<Value = (usize, usize, usize, usize)> {
        prop_oneof![
            Just((256, 8, 4, 8)),
            Just((160, 8, 3, 6)),
            Just((64, 1, 1, 6)),
            Just((16, 4, 2, 3)),
            (1usize..6, 2usize..7).prop_flat_map(|(g, pg)| (1..=g)
                .prop_flat_map(move |tg| (1..=tg * pg).prop_map(move |k| (g * pg, g, tg, k)))),
        ]
    }

    proptest! {
        #[test]
        fn noaux_tc_matches_brute_force(seed in any::<u64>(), (e, g, tg, k) in shapes(), norm in any::<bool>(), ties in any::<bool>(), tokens in 1usize..6) {
            let mut rng = SplitMix64::new(seed);
            let mut logits = randn(&mut rng, tokens * e, 2.0);
            let mut bias = randn(&mut rng, e, 0.5);
            if ties {
                // few distinct values: many exact ties in scores, biased scores and group sums
                logits.iter_mut().for_each(|v| *v = (*v * 0.5).round());
                bias.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0);
            }
            let cfg = v3(e, k, g, tg, norm, rng.uniform(0.5, 3.0));
            check_against_brute_force(&cfg, &logits, Some(&bias))?;
        }

        #[test]
        fn v2_methods_match_brute_force(seed in any::<u64>(), (e, g, tg, k) in shapes(), grouped in any::<bool>(), ties in any::<bool>(), tokens in 1usize..6) {
            let mut rng = SplitMix64::new(seed);
            let mut logits = randn(&mut rng, tokens * e, 2.0);
            if ties {
                logits.iter_mut().for_each(|v| *v = (*v * 0.5).round());
            }
            let method = if grouped { TopkMethod::GroupLimitedGreedy } else { TopkMethod::Greedy };
            let cfg = v2(e, k, g, tg, method, rng.uniform(0.5, 16.0));
            check_against_brute_force(&cfg, &logits, None)?;
        }

        /// Structural facts, independent of any reference: chosen experts are distinct, lie in
        /// the kept groups, and no unchosen allowed expert beats a chosen one.
        #[test]
        fn selection_is_a_top_k(seed in any::<u64>(), (e, g, tg, k) in shapes()) {
            let mut rng = SplitMix64::new(seed);
            let logits = randn(&mut rng, e, 2.0);
            let bias = randn(&mut rng, e, 0.5);
            let cfg = v3(e, k, g, tg, true, 1.0);
            let (ids, w) = run(&cfg, &logits, Some(&bias));
            let sel: Vec<f32> = logits.iter().zip(&bias).map(|(&l, &b)| sigmoid(l) + b).collect();
            let mut seen = vec![false; e];
            for &i in &ids {
                prop_assert!(!seen[i as usize]);
                seen[i as usize] = true;
            }
            let pg = e / g;
            let groups: std::collections::BTreeSet<usize> = ids.iter().map(|&i| i as usize / pg).collect();
            prop_assert!(groups.len() <= tg);
            let worst = ids.iter().map(|&i| sel[i as usize]).fold(f32::INFINITY, f32::min);
            for (j, &s) in sel.iter().enumerate() {
                if !seen[j] && groups.contains(&(j / pg)) {
                    prop_assert!(s <= worst);
                }
            }
            let total: f64 = w.iter().map(|&x| x as f64).sum();
            prop_assert!((total - 1.0).abs() < 1e-6);
            // rank order: the selection scores do not increase along a token's list
            prop_assert!(ids.windows(2).all(|p| sel[p[0] as usize] >= sel[p[1] as usize]));
        }
    }
}
