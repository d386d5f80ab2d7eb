//! How `kt-bench moe` draws each timed call's experts.
//!
//! In a decode step a MoE layer's experts are read once per token, and between two reads of
//! the same layer the step streams every other layer's experts (gigabytes), so none of a
//! layer's weights are still in the last-level cache when its next token comes. The bench
//! runs one layer (copies of it where memory allows): with experts drawn uniformly, a call
//! may pick an expert that a call just before it read, whose bytes may still be in the cache
//! (on the device's 300 MiB L3, a V3 call's 8 experts are ~200 MB, one layer copy), and the
//! call then reads faster than a decode could. `Fresh` routing leaves out every expert of the
//! same copy read by a call recent enough for its bytes to be cached; `Uniform` is the plain
//! draw, kept to measure the difference.

use std::collections::VecDeque;

use kt_kernels::util::SplitMix64;

/// How a timed call's experts are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// `k` distinct experts per token, uniformly.
    Uniform,
    /// As `uniform`, but none of the experts that the same layer copy's recent calls read
    /// (see [`recent_calls`]): what a decode step meets. Where a call needs more experts
    /// than that leaves, its draw is uniform (prefill-sized calls).
    Fresh,
}

impl Routing {
    /// The name `--routing` takes.
    pub fn name(self) -> &'static str {
        match self {
            Routing::Uniform => "uniform",
            Routing::Fresh => "fresh",
        }
    }
}

/// How many calls before this one, of the same layer copy, may have left experts in a cache
/// of `cache_bytes`, when calls read `copies` copies in turn and each reads about
/// `call_bytes`: the `j`-th one back had `j * copies * call_bytes` streamed after it, and
/// counts as evicted once that is twice the cache (a margin for a cache that does not evict
/// in strict order).
pub fn recent_calls(cache_bytes: usize, copies: usize, call_bytes: usize) -> usize {
    let since_each = copies.max(1).saturating_mul(call_bytes.max(1));
    (2 * cache_bytes).div_ceil(since_each).saturating_sub(1)
}

/// The draws of one run: per layer copy, the experts of its last calls.
pub struct Drawer {
    tokens: usize,
    k: usize,
    experts: usize,
    keep: usize,
    recent: Vec<VecDeque<Vec<u32>>>,
}

/// One call's routing: `tokens * k` expert ids, their weights, the distinct experts.
pub struct Draw {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    pub distinct: usize,
    /// Asked for [`Routing::Fresh`] but drawn uniformly (too few experts left).
    pub fell_back: bool,
}

impl Drawer {
    /// Draws for calls of `tokens` tokens choosing `k` of `experts` each, over `copies` layer
    /// copies, avoiding the experts of each copy's last `keep` calls for [`Routing::Fresh`].
    pub fn new(tokens: usize, k: usize, experts: usize, copies: usize, keep: usize) -> Drawer {
        // past `experts` calls every expert is avoided anyway
        let keep = keep.min(experts);
        Drawer {
            tokens,
            k,
            experts,
            keep,
            recent: vec![VecDeque::with_capacity(keep + 1); copies.max(1)],
        }
    }

    /// The routing of the next call on layer copy `copy`, drawn as `routing` says; every
    /// draw (of either kind) counts as that copy's latest call.
    pub fn draw(&mut self, rng: &mut SplitMix64, copy: usize, routing: Routing) -> Draw {
        let recent = &mut self.recent[copy];
        let avoided = |e: u32| recent.iter().any(|call| call.contains(&e));
        let left = (0..self.experts as u32).filter(|&e| !avoided(e)).count();
        // each token needs k distinct experts out of what is left
        let fresh = routing == Routing::Fresh && left >= self.k;
        let mut ids = Vec::with_capacity(self.tokens * self.k);
        let mut used: Vec<u32> = Vec::new();
        for _ in 0..self.tokens {
            let start = ids.len();
            while ids.len() < start + self.k {
                let e = rng.below(self.experts) as u32;
                if ids[start..].contains(&e) || (fresh && avoided(e)) {
                    continue;
                }
                ids.push(e);
                if !used.contains(&e) {
                    used.push(e);
                }
            }
        }
        let weights = (0..self.tokens * self.k)
            .map(|_| rng.uniform(0.05, 1.0) / self.k as f32)
            .collect();
        let distinct = used.len();
        if self.keep > 0 {
            if recent.len() == self.keep {
                recent.pop_front();
            }
            recent.push_back(used);
        }
        Draw {
            ids,
            weights,
            distinct,
            fell_back: routing == Routing::Fresh && !fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_calls_counts_those_whose_bytes_may_be_cached() {
        // the device: a 300 MiB L3; a V3 one-token call reads 8 experts of ~24.8 MB
        let l3 = 300 << 20;
        assert_eq!(recent_calls(l3, 1, 8 * 24_800_000), 3);
        // V2-Lite, 16 copies of ~31 MB calls: only the call one pass back
        assert_eq!(recent_calls(l3, 16, 31_000_000), 1);
        // calls larger than twice the cache leave nothing behind
        assert_eq!(recent_calls(l3, 1, 800 << 20), 0);
    }

    #[test]
    fn fresh_draws_avoid_the_copys_recent_experts() {
        let mut rng = SplitMix64::new(3);
        let (k, experts, keep) = (8, 256, 3);
        let mut d = Drawer::new(1, k, experts, 2, keep);
        let mut history: Vec<Vec<Vec<u32>>> = vec![Vec::new(); 2];
        for n in 0..400 {
            let copy = n % 2;
            let draw = d.draw(&mut rng, copy, Routing::Fresh);
            assert_eq!(draw.ids.len(), k);
            assert_eq!(draw.distinct, k, "one token's experts are distinct");
            assert!(!draw.fell_back);
            let h = &history[copy];
            for past in h.iter().rev().take(keep) {
                assert!(
                    draw.ids.iter().all(|e| !past.contains(e)),
                    "call {n} reuses an expert of its copy's last {keep} calls"
                );
            }
            history[copy].push(draw.ids);
        }
        // the other copy's experts are not avoided: over 400 calls some are shared
        let shared = history[0]
            .iter()
            .zip(&history[1])
            .filter(|(a, b)| a.iter().any(|e| b.contains(e)))
            .count();
        assert!(shared > 0);
    }

    #[test]
    fn uniform_draws_do_reuse_recent_experts() {
        let mut rng = SplitMix64::new(5);
        let mut d = Drawer::new(1, 8, 256, 1, 3);
        let mut last: Vec<Vec<u32>> = Vec::new();
        let mut reused = 0;
        for _ in 0..400 {
            let draw = d.draw(&mut rng, 0, Routing::Uniform);
            if last
                .iter()
                .rev()
                .take(3)
                .any(|p| draw.ids.iter().any(|e| p.contains(e)))
            {
                reused += 1;
            }
            last.push(draw.ids);
        }
        // P(some overlap with the last 24 experts) ~ 1 - (232/256)^8 ~ 0.55
        assert!(reused > 100, "{reused}");
    }

    #[test]
    fn fresh_falls_back_where_too_few_experts_are_left() {
        let mut rng = SplitMix64::new(9);
        // 6 of 8 experts a call, the last call's 6 avoided: 2 left
        let mut d = Drawer::new(1, 6, 8, 1, 1);
        for n in 0..5 {
            let draw = d.draw(&mut rng, 0, Routing::Fresh);
            assert_eq!(draw.ids.len(), 6);
            assert_eq!(draw.fell_back, n > 0, "every call after the first");
        }
        // many tokens: the distinct experts cover what the tokens chose
        let mut d = Drawer::new(64, 6, 64, 1, 0);
        let draw = d.draw(&mut rng, 0, Routing::Fresh);
        assert_eq!(draw.ids.len(), 64 * 6);
        let mut seen = draw.ids.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(draw.distinct, seen.len());
        assert!(draw.weights.iter().all(|&w| w > 0.0));
    }
}
