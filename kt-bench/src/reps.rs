//! `--repetitions`: the decode rate measured the way llama-bench reports its `tg` rate (and
//! `llamacpp-bench` measures llama.cpp's): after a warm-up, the same generation repeated on
//! a fresh cache each time, the rate of each repetition, and their mean and sample standard
//! deviation. One long run is at the mercy of whatever the machine did just before it (a
//! DRAM probe, a graph capture, a host hiccup on a VM); the peer's figure is a mean, so ours is
//! too, and every sample stays in the report.

use serde_json::{json, Value};

/// Tokens/s of each repetition, in order.
#[derive(Debug, Clone)]
pub(crate) struct Rates {
    samples: Vec<f64>,
}

impl Rates {
    /// Runs `run` `reps` times (at least once); each call does `tokens` tokens of work and
    /// returns its seconds.
    pub(crate) fn measure<E>(
        reps: usize,
        tokens: usize,
        mut run: impl FnMut() -> Result<f64, E>,
    ) -> Result<Rates, E> {
        let mut samples = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            samples.push(tokens as f64 / run()?);
        }
        Ok(Rates { samples })
    }

    /// Each repetition's rate, in order.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn samples(&self) -> &[f64] {
        &self.samples
    }

    /// The mean rate over the repetitions (llama-bench's `avg_ts`).
    pub(crate) fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }

    /// The sample standard deviation (llama-bench's `stddev_ts`); None for one sample.
    pub(crate) fn sd(&self) -> Option<f64> {
        let n = self.samples.len();
        (n > 1).then(|| {
            let m = self.mean();
            let ss: f64 = self.samples.iter().map(|r| (r - m) * (r - m)).sum();
            (ss / (n - 1) as f64).sqrt()
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "mean": self.mean(), "sd": self.sd(), "samples": self.samples })
    }

    /// "97.12 tokens/s (mean of 5: 95.3 .. 98.4, sd 1.1)", or the one rate.
    pub(crate) fn describe(&self) -> String {
        let m = self.mean();
        match self.sd() {
            None => format!("{m:.2} tokens/s"),
            Some(sd) => {
                let lo = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = self
                    .samples
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max);
                format!(
                    "{m:.2} tokens/s (mean of {}: {lo:.2} .. {hi:.2}, sd {sd:.2})",
                    self.samples.len()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sd_of_the_rates_not_of_the_times() {
        let times = [2.0, 4.0, 1.0];
        let mut i = 0;
        let r = Rates::measure::<()>(3, 8, || {
            i += 1;
            Ok(times[i - 1])
        })
        .unwrap();
        assert_eq!(r.samples, vec![4.0, 2.0, 8.0]);
        assert!((r.mean() - 14.0 / 3.0).abs() < 1e-12);
        // squared deviations from 14/3: 4/9 + 64/9 + 100/9 = 56/3, over n - 1 = 2
        assert!((r.sd().unwrap() - (28.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(r.describe().contains("mean of 3"));
    }

    #[test]
    fn one_repetition_has_no_sd_and_zero_asks_for_one() {
        let r = Rates::measure::<()>(0, 10, || Ok(0.5)).unwrap();
        assert_eq!(r.samples, vec![20.0]);
        assert_eq!(r.sd(), None);
        assert_eq!(r.describe(), "20.00 tokens/s");
    }

    #[test]
    fn an_error_stops_the_repetitions() {
        let mut calls = 0;
        let r = Rates::measure(4, 1, || {
            calls += 1;
            if calls == 2 {
                Err("boom")
            } else {
                Ok(1.0)
            }
        });
        assert_eq!(r.unwrap_err(), "boom");
        assert_eq!(calls, 2);
    }
}
