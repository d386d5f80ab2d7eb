//! The hybrid decode's DRAM read probes and the bound fractions taken from them.

use serde_json::{json, Value};

/// The DRAM read probe (`membw::ReadProbe`: 1 GiB buffers read in turn, `MEMBW_PASSES`
/// passes of each of `membw::PATTERNS`, the best pattern's median pass) at three points of
/// one run: before
/// the model goes to the GPU, right before the graph decode whose rate is the headline,
/// and after it. A VM's bandwidth drifts within a run (session 9's runs read 87-130 GB/s
/// on one instance), so one reading can land far from what the experts saw; the bound
/// takes the best of the three, the conservative choice (a higher bandwidth is a shorter
/// bound), and the report keeps each reading so a reader sees the drift.
///
/// `around` are more readings of the same probe, one right before the first repetition of
/// the graph decode and one after each: the bandwidth of the minutes each repetition ran in.
/// On the device the probe moves by up to a third within one process (session 31: 139, 151
/// and 188 GB/s in one run whose three repetitions read 166-170 tokens/s), so the best of
/// the run's readings can be a quiet moment none of the repetitions had; the paired
/// fraction sets each repetition against the mean of the two readings beside it.
pub(crate) struct DramReadings {
    pub start: f64,
    pub before_graph: f64,
    pub after: f64,
    pub around: Vec<f64>,
}

impl DramReadings {
    pub fn best(&self) -> f64 {
        self.start.max(self.before_graph).max(self.after)
    }

    pub fn json(&self) -> Value {
        json!({
            "start": self.start,
            "before_graph": self.before_graph,
            "after": self.after,
            "around_repetitions": self.around,
        })
    }
}

/// The median over the repetitions of each one's bound fraction against the readings beside
/// it (`crate::probe_rounds::beside`): the repetitions as the rounds of
/// [`crate::probe_rounds::paired_fraction`], each at the rate its routed bytes streamed. None
/// without repetitions, readings or routed bytes.
pub(crate) fn paired_bound_fraction(
    rates: &[f64],
    routed_bytes_per_token: f64,
    dram: &DramReadings,
) -> Option<f64> {
    if routed_bytes_per_token <= 0.0 {
        return None;
    }
    let gbps: Vec<f64> = rates
        .iter()
        .map(|&tps| tps * routed_bytes_per_token / 1e9)
        .collect();
    let rounds: Vec<usize> = (0..rates.len()).collect();
    crate::probe_rounds::paired_fraction(&gbps, &rounds, &dram.around)
}

/// The decode's fraction of the DRAM bound: the rate at which the routed experts' weight
/// bytes per token could stream at `dram_gbps`, over the measured rate (tokens/s over
/// bound tokens/s).
pub(crate) fn bound_fraction(
    tokens_per_s: f64,
    routed_bytes_per_token: f64,
    dram_gbps: f64,
) -> Option<f64> {
    (routed_bytes_per_token > 0.0 && dram_gbps > 0.0)
        .then(|| tokens_per_s * routed_bytes_per_token / (dram_gbps * 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(around: Vec<f64>) -> DramReadings {
        DramReadings {
            start: 150.0,
            before_graph: 170.0,
            after: 160.0,
            around,
        }
    }

    /// The bound is the rate at which the bytes per token stream at the bandwidth: 893 MB per
    /// token at 100 GB/s bounds the decode at 111.96 tokens/s, so 100 tokens/s is 89.3% of it.
    #[test]
    fn bound_fraction_is_the_rate_over_the_bandwidth_bound() {
        let f = bound_fraction(100.0, 893e6, 100.0).expect("bytes and bandwidth given");
        assert!((f - 0.893).abs() < 1e-12, "{f}");
        assert_eq!(bound_fraction(100.0, 0.0, 100.0), None);
        assert_eq!(bound_fraction(100.0, 893e6, 0.0), None);
    }

    /// The bound takes the highest of the run's three readings wherever it came; the readings
    /// around the repetitions (here higher still) only enter the paired fraction.
    #[test]
    fn the_best_dram_reading_sets_the_bound() {
        let r = |start, before_graph, after| {
            DramReadings {
                start,
                before_graph,
                after,
                around: vec![200.0],
            }
            .best()
        };
        assert_eq!(r(120.0, 100.0, 90.0), 120.0);
        assert_eq!(r(90.0, 125.5, 100.0), 125.5);
        assert_eq!(r(90.0, 100.0, 114.9), 114.9);
    }

    #[test]
    fn each_repetition_meets_the_probes_beside_it() {
        let d = readings(vec![100.0, 200.0, 150.0]);
        let beside = |i| crate::probe_rounds::beside(&d.around, i);
        assert_eq!(beside(0), Some(150.0));
        assert_eq!(beside(1), Some(175.0));
        assert_eq!(beside(2), None);
        // 200 MB a token: repetition 0 at 300 tokens/s against 150 GB/s is 0.4, repetition
        // 1 at 350 against 175 is 0.4 too; a third repetition has no reading after it
        let f = paired_bound_fraction(&[300.0, 350.0, 999.0], 200e6, &d).unwrap();
        assert!((f - 0.4).abs() < 1e-12, "{f}");
        // the median, not the mean: one odd repetition does not move it
        let d = readings(vec![100.0, 100.0, 100.0, 100.0]);
        let f = paired_bound_fraction(&[250.0, 250.0, 450.0], 200e6, &d).unwrap();
        assert!((f - 0.5).abs() < 1e-12, "{f}");
        assert_eq!(
            paired_bound_fraction(&[250.0], 200e6, &readings(vec![100.0])),
            None
        );
        assert_eq!(paired_bound_fraction(&[], 200e6, &d), None);
    }
}
