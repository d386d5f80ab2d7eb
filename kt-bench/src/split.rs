//! The time split of a decode/prefill run, from the model's stage timers
//! (`kt_model::deepseek::StageTimes`): per stage totals, per-token times, and the routed
//! experts' effective bandwidth (weight bytes of the experts the routing chose / time in
//! the routed experts) against the DRAM read bandwidth measured in the same run.

use kt_model::deepseek::{Split, Stage, StageTimes};
use serde_json::{json, Map, Value};

/// One phase's (prefill or decode) stage times and what follows from them.
pub struct PhaseSplit<'a> {
    pub name: &'static str,
    pub times: &'a StageTimes,
    /// Wall time of the phase (the timed stages plus what no stage covers: sampling).
    pub wall_s: f64,
}

impl PhaseSplit<'_> {
    /// Routed-expert weight bytes read per second in the routed-experts stage.
    pub fn routed_gbps(&self) -> Option<f64> {
        let s = self.times.total().get(Stage::RoutedExperts);
        (s > 0.0).then(|| self.times.total_routed_bytes() as f64 / s / 1e9)
    }

    /// Per-token routed-expert bytes (the experts each call touched, once per call).
    pub fn routed_bytes_per_token(&self) -> f64 {
        self.times.total_routed_bytes() as f64 / self.times.tokens.max(1) as f64
    }

    /// The JSON object of this phase: seconds per stage (all layers), per layer, the head,
    /// and the routed experts' bandwidth as a fraction of `dram_gbps`.
    pub fn to_json(&self, dram_gbps: f64) -> Value {
        let total = self.times.total();
        let gbps = self.routed_gbps();
        json!({
            "wall_s": self.wall_s,
            "calls": self.times.calls,
            "tokens": self.times.tokens,
            "stages_s": split_json(&total),
            "timed_s": total.total(),
            "untimed_s": (self.wall_s - total.total()).max(0.0),
            "per_layer_s": self.times.layers.iter().map(split_json).collect::<Vec<_>>(),
            "head_s": split_json(&self.times.head),
            "routed_bytes_per_token": self.routed_bytes_per_token(),
            "routed_gbps": gbps,
            "routed_bandwidth_fraction": gbps.map(|g| g / dram_gbps),
        })
    }

    /// A few lines for the terminal: one per stage with its share and time per token.
    pub fn print(&self, dram_gbps: f64) {
        let total = self.times.total();
        let tokens = self.times.tokens.max(1) as f64;
        let t = total.total();
        println!(
            "{} split ({} layers, {} calls, {} tokens; ms per token):",
            self.name,
            self.times.layers.len(),
            self.times.calls,
            self.times.tokens
        );
        for s in Stage::ALL {
            let v = total.get(s);
            println!(
                "  {:<20} {:>9.3} ms  {:>5.1}%",
                s.name(),
                1e3 * v / tokens,
                100.0 * v / t.max(f64::MIN_POSITIVE)
            );
        }
        let untimed = (self.wall_s - t).max(0.0);
        println!(
            "  {:<20} {:>9.3} ms  (sampling, outside the model)",
            "untimed",
            1e3 * untimed / tokens
        );
        if let Some(g) = self.routed_gbps() {
            println!(
                "  routed experts: {:.1} MB of weights per token at {g:.1} GB/s = {:.0}% of the {dram_gbps:.1} GB/s DRAM read bandwidth",
                self.routed_bytes_per_token() / 1e6,
                100.0 * g / dram_gbps
            );
        }
    }
}

/// `{stage name: seconds}` of one split.
pub fn split_json(s: &Split) -> Value {
    let mut m = Map::new();
    for st in Stage::ALL {
        m.insert(st.name().into(), json!(s.get(st)));
    }
    Value::Object(m)
}
