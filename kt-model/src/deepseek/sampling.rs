//! Picking the next token from a row of logits: greedy (argmax, the lowest id on a tie)
//! or temperature + top-p (nucleus) sampling driven by a seeded [`SplitMix64`], so a run
//! is reproducible from its seed.
//!
//! Top-p keeps the smallest set of most likely tokens whose probabilities (softmax of
//! `logits / temperature`) add up to at least `top_p`, ranked by probability and then by
//! id, and draws from it in proportion to those probabilities. At least one token is
//! always kept, so a tiny `top_p` is greedy decoding.

use kt_kernels::util::SplitMix64;

use super::cache::KvCache;
use super::model::{argmax, DeepSeekModel, LogitRows};
use crate::error::{ModelError, Result};

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// The most likely token (the lowest id on a tie).
    Greedy,
    /// Temperature + top-p with its own random stream.
    TopP {
        temperature: f32,
        top_p: f32,
        rng: SplitMix64,
    },
}

/// Candidates ranked in one round of the top-p search before widening (most nuclei of
/// a trained model's logits fit in the first round; all of them always fit eventually).
const FIRST_ROUND: usize = 64;

impl Sampler {
    pub fn greedy() -> Sampler {
        Sampler::Greedy
    }

    /// Temperature + top-p sampling. `temperature` must be a positive finite number and
    /// `top_p` in `(0, 1]`.
    pub fn top_p(temperature: f32, top_p: f32, seed: u64) -> Result<Sampler> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(bad_setting(format!(
                "temperature {temperature} is not a positive number"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad_setting(format!("top_p {top_p} is not in (0, 1]")));
        }
        Ok(Sampler::TopP {
            temperature,
            top_p,
            rng: SplitMix64::new(seed),
        })
    }

    /// The next token for one row of logits. Errors on an empty row or a NaN or +inf
    /// logit (a broken forward pass must not silently decode some token); -inf is a
    /// masked token.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(bad_setting("no logits to sample from".into()));
        }
        if let Some(i) = logits
            .iter()
            .position(|&v| v.is_nan() || v == f32::INFINITY)
        {
            return Err(ModelError::Forward {
                reason: format!("logit {i} is {}; cannot pick a token", logits[i]),
            });
        }
        if logits.iter().all(|&v| v == f32::NEG_INFINITY) {
            return Err(bad_setting("every logit is -inf".into()));
        }
        match self {
            Sampler::Greedy => Ok(argmax(logits)),
            Sampler::TopP {
                temperature,
                top_p,
                rng,
            } => {
                let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                Ok(top_p_pick(logits, *temperature, *top_p, u))
            }
        }
    }
}

/// Softmax of `logits / temperature` restricted to the nucleus, then the draw that the
/// uniform `u` in [0, 1) picks. The same choice as kt-kernels' plain reference
/// (`ops::sampling::top_p_sample`, which sorts the whole row), found in O(n).
fn top_p_pick(logits: &[f32], temperature: f32, top_p: f32, u: f64) -> u32 {
    let inv_t = 1.0 / f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Unnormalized probabilities, in f64 so that the sums below are exact enough for
    // vocabularies of 10^5 entries.
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - f64::from(max)) * inv_t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let target = f64::from(top_p) * total;

    // Rank candidates by (weight descending, id ascending), widening the ranked prefix
    // until it holds the nucleus: selecting the top k is O(n), sorting only k of them.
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let before = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    let mut k = FIRST_ROUND.min(ids.len());
    let nucleus = loop {
        if k < ids.len() {
            ids.select_nth_unstable_by(k - 1, before);
        }
        ids[..k].sort_unstable_by(before);
        let mut cum = 0.0;
        let found = ids[..k].iter().position(|&i| {
            cum += weights[i as usize];
            cum >= target
        });
        match found {
            Some(last) => break &ids[..=last],
            // Rounding can leave the full sum a hair short of `target` for top_p = 1.
            None if k == ids.len() => break &ids[..],
            None => k = (k * 16).min(ids.len()),
        }
    };

    let mass: f64 = nucleus.iter().map(|&i| weights[i as usize]).sum();
    let u = u * mass;
    let mut cum = 0.0;
    for &i in nucleus {
        cum += weights[i as usize];
        if u < cum {
            return i;
        }
    }
    // u < mass up to rounding: the last candidate takes what rounding left over.
    nucleus[nucleus.len() - 1]
}

/// Feeds `prompt`, then generates `n_new` tokens with `sampler`, feeding each but the
/// last back in; returns the new tokens. The cache needs room for
/// `prompt.len() + n_new - 1` more positions.
pub fn generate(
    model: &DeepSeekModel<'_>,
    prompt: &[u32],
    n_new: usize,
    cache: &mut KvCache,
    sampler: &mut Sampler,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n_new);
    if n_new == 0 {
        return Ok(out);
    }
    let mut logits = model.forward(prompt, cache, LogitRows::Last, None)?;
    loop {
        let next = sampler.sample(&logits)?;
        out.push(next);
        if out.len() == n_new {
            return Ok(out);
        }
        logits = model.forward(&[next], cache, LogitRows::Last, None)?;
    }
}

fn bad_setting(reason: String) -> ModelError {
    ModelError::Forward {
        reason: format!("sampling: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Non-trivial logits: distinct values, a tie at the top (ids 3 and 7), negatives.
    fn logits() -> Vec<f32> {
        vec![0.5, -1.0, 2.0, 3.0, 1.5, -0.25, 0.0, 3.0, 2.5, -2.0]
    }

    fn softmax(l: &[f32], t: f64) -> Vec<f64> {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = l.iter().map(|&x| ((x as f64 - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// The O(n) selection picks what kt-kernels' plain reference picks (it sorts the
    /// whole row) for the same uniform, on rows with ties and spread values.
    #[test]
    fn top_p_pick_matches_the_kernels_reference() {
        let mut rng = SplitMix64::new(7);
        for &(n, t, p) in &[
            (10, 1.0f32, 0.9f32),
            (1000, 0.7, 0.95),
            (4099, 1.3, 0.5),
            (4099, 0.05, 1.0),
            (513, 1.0, 1e-6),
        ] {
            let mut row: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
            row[n / 2] = row[0]; // a tie
            for _ in 0..50 {
                let u = rng.uniform(0.0, 1.0);
                let reference = kt_kernels::ops::sampling::top_p_sample(&row, t, p, u).unwrap();
                assert_eq!(
                    top_p_pick(&row, t, p, u as f64) as usize,
                    reference,
                    "n {n} t {t} p {p} u {u}"
                );
            }
        }
    }

    #[test]
    fn greedy_is_argmax_lowest_id_on_tie() {
        assert_eq!(Sampler::greedy().sample(&logits()).unwrap(), 3);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut rng = SplitMix64::new(5);
        for seed in 0..200 {
            let mut l = vec![0f32; 1000];
            rng.fill_normal(&mut l, 3.0);
            let mut s = Sampler::top_p(0.8, 1e-9, seed).unwrap();
            assert_eq!(s.sample(&l).unwrap(), argmax(&l), "seed {seed}");
        }
        let mut s = Sampler::top_p(1.0, 1e-9, 1).unwrap();
        assert_eq!(s.sample(&logits()).unwrap(), 3, "tie goes to the lowest id");
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let l = logits();
        let draw = |seed| {
            let mut s = Sampler::top_p(1.3, 0.95, seed).unwrap();
            (0..64).map(|_| s.sample(&l).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    /// Frequencies over many draws agree with the softmax within 5 standard deviations
    /// of a binomial count (a false alarm has probability ~1e-6 per id).
    fn check_frequencies(l: &[f32], t: f32, top_p: f32, expected: &[f64]) {
        let n = 200_000;
        let mut counts = vec![0usize; l.len()];
        let mut s = Sampler::top_p(t, top_p, 7).unwrap();
        for _ in 0..n {
            counts[s.sample(l).unwrap() as usize] += 1;
        }
        for (i, (&c, &p)) in counts.iter().zip(expected).enumerate() {
            let mean = p * n as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            if p == 0.0 {
                assert_eq!(c, 0, "id {i} is outside the nucleus but was drawn");
            } else {
                assert!(
                    (c as f64 - mean).abs() <= 5.0 * sd,
                    "id {i}: {c} draws, expected {mean:.0} +- {sd:.0}"
                );
            }
        }
    }

    #[test]
    fn full_nucleus_follows_the_softmax() {
        let l = logits();
        check_frequencies(&l, 1.0, 1.0, &softmax(&l, 1.0));
        check_frequencies(&l, 0.5, 1.0, &softmax(&l, 0.5));
        check_frequencies(&l, 2.0, 1.0, &softmax(&l, 2.0));
    }

    #[test]
    fn nucleus_is_cut_and_renormalized() {
        let l = logits();
        let p = softmax(&l, 1.0);
        // Ranked: 3, 7 (tie, by id), 8, 2, 4, 0, ...
        let order = [3usize, 7, 8, 2, 4, 0, 6, 5, 1, 9];
        let top_p = (p[3] + p[7] + p[8] + 0.5 * p[2]) as f32; // needs 3, 7, 8 and 2
        let mass = p[3] + p[7] + p[8] + p[2];
        let mut expected = vec![0.0; l.len()];
        for &i in &order[..4] {
            expected[i] = p[i] / mass;
        }
        check_frequencies(&l, 1.0, top_p, &expected);
    }

    /// A vocabulary larger than the first ranking round, with a flat distribution, so
    /// the nucleus search must widen several times.
    #[test]
    fn wide_nucleus_on_a_large_vocabulary() {
        let mut rng = SplitMix64::new(9);
        let mut l = vec![0f32; 2000];
        rng.fill_normal(&mut l, 0.01);
        let p = softmax(&l, 1.0);
        let mut ranked: Vec<usize> = (0..l.len()).collect();
        ranked.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut cum = 0.0;
        let cut = ranked
            .iter()
            .position(|&i| {
                cum += p[i];
                cum >= 0.9
            })
            .unwrap();
        let mut s = Sampler::top_p(1.0, 0.9, 3).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8000 {
            seen.insert(s.sample(&l).unwrap());
        }
        // 8000 draws over ~1800 nearly equal eligible tokens miss ~1.2% of them
        assert!(
            seen.len() * 100 > (cut + 1) * 95,
            "only {} of {} eligible tokens drawn",
            seen.len(),
            cut + 1
        );
        for &i in &ranked[cut + 1..] {
            assert!(!seen.contains(&(i as u32)), "id {i} is outside the nucleus");
        }
    }

    #[test]
    fn bad_settings_and_inputs_are_errors() {
        assert!(Sampler::top_p(0.0, 0.9, 1).is_err());
        assert!(Sampler::top_p(f32::NAN, 0.9, 1).is_err());
        assert!(Sampler::top_p(1.0, 0.0, 1).is_err());
        assert!(Sampler::top_p(1.0, 1.5, 1).is_err());
        assert!(Sampler::greedy().sample(&[]).is_err());
        let mut l = logits();
        l[4] = f32::NAN;
        assert!(Sampler::greedy().sample(&l).is_err());
        assert!(Sampler::top_p(1.0, 0.9, 1).unwrap().sample(&l).is_err());
        l[4] = f32::INFINITY;
        assert!(Sampler::top_p(1.0, 0.9, 1).unwrap().sample(&l).is_err());
        let masked = [f32::NEG_INFINITY; 4];
        assert!(Sampler::top_p(1.0, 0.9, 1)
            .unwrap()
            .sample(&masked)
            .is_err());
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let mut l = logits();
        l[3] = f32::NEG_INFINITY;
        l[7] = f32::NEG_INFINITY;
        let mut s = Sampler::top_p(2.0, 1.0, 11).unwrap();
        for _ in 0..5000 {
            let t = s.sample(&l).unwrap();
            assert!(t != 3 && t != 7, "drew masked token {t}");
        }
        assert_eq!(Sampler::greedy().sample(&l).unwrap(), 8);
    }
}
