//! Where a hybrid forward call's time goes, per layer: GPU compute, the routed experts on
//! the CPU, the transfers between them, and each side's idle time. GPU intervals come from
//! CUDA events recorded on the stream, host intervals from the host clock.
//!
//! Per MoE layer the stream holds: attention, norm and router (GPU), the one copy of the normalized
//! hidden state, ids and weights (packed) to pinned memory (transfer), the shared experts (GPU),
//! then, queued by the host once the CPU experts are done, the copy of their sum back (transfer)
//! and the residual adds (GPU). The GPU is idle from the end of the shared experts until that copy
//! starts (zero when the CPU finished first); the host is idle while it waits for the first copy
//! (it needs the router's choice) and at the end of the call.
//! GPU time spent waiting on the host's kernel launches inside a stretch counts as compute.
//! A timed call always runs its layers one after the other: the pipelined order of untimed
//! calls (`pipeline.rs`) queues a layer's work before the host is done with the previous
//! one, where these events would time the queue rather than the work; its rate is measured
//! by an untimed run over the same tokens (`kt-bench decode`).

use kt_kernels::cuda::{GpuEvent, GpuStream};

use super::error::HybridResult;

/// Seconds of one layer (or of the head: the final norm, the output head and the logits'
/// download; the embedding rows' upload before the first layer is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerSplit {
    pub gpu_s: f64,
    pub cpu_experts_s: f64,
    pub transfer_s: f64,
    pub gpu_idle_s: f64,
    pub cpu_idle_s: f64,
    /// Weight bytes the CPU's routed experts read (the distinct experts of each call).
    pub routed_bytes: u64,
}

impl LayerSplit {
    fn add(&mut self, o: &LayerSplit) {
        self.gpu_s += o.gpu_s;
        self.cpu_experts_s += o.cpu_experts_s;
        self.transfer_s += o.transfer_s;
        self.gpu_idle_s += o.gpu_idle_s;
        self.cpu_idle_s += o.cpu_idle_s;
        self.routed_bytes += o.routed_bytes;
    }

    /// The CPU routed experts' effective weight bandwidth, GB/s (None without CPU experts).
    pub fn routed_gbps(&self) -> Option<f64> {
        (self.cpu_experts_s > 0.0 && self.routed_bytes > 0)
            .then(|| self.routed_bytes as f64 / self.cpu_experts_s / 1e9)
    }
}

/// Time of hybrid forward calls, summed over calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HybridTimes {
    pub layers: Vec<LayerSplit>,
    pub head: LayerSplit,
    /// Tokens and calls the times cover.
    pub tokens: usize,
    pub calls: usize,
}

impl HybridTimes {
    pub fn new(n_layers: usize) -> Self {
        HybridTimes {
            layers: vec![LayerSplit::default(); n_layers],
            ..Default::default()
        }
    }

    /// Every layer and the head summed.
    pub fn total(&self) -> LayerSplit {
        let mut t = self.head;
        self.layers.iter().for_each(|l| t.add(l));
        t
    }
}

/// The events and host times of one layer in one call, read once the stream is done.
#[derive(Default)]
pub(crate) struct LayerMarks {
    /// Layer start, router done, copies out done, shared experts done, copy back queued,
    /// copy back done, layer end (a dense layer has only the first and the last).
    pub start: Option<GpuEvent>,
    pub routed: Option<GpuEvent>,
    pub copied_out: Option<GpuEvent>,
    pub shared_done: Option<GpuEvent>,
    pub back_queued: Option<GpuEvent>,
    pub back_done: Option<GpuEvent>,
    pub end: Option<GpuEvent>,
    pub cpu_experts_s: f64,
    pub cpu_wait_s: f64,
    pub routed_bytes: u64,
}

fn span(a: &Option<GpuEvent>, b: &Option<GpuEvent>) -> HybridResult<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(f64::from(a.elapsed_ms(b)?) / 1e3),
        _ => Ok(0.0),
    }
}

impl LayerMarks {
    /// Records an event on `s` when timing is on.
    pub fn mark(on: bool, s: &GpuStream) -> HybridResult<Option<GpuEvent>> {
        Ok(if on { Some(s.record_event()?) } else { None })
    }

    pub fn split(&self) -> HybridResult<LayerSplit> {
        if self.routed.is_none() {
            return Ok(LayerSplit {
                gpu_s: span(&self.start, &self.end)?,
                cpu_idle_s: self.cpu_wait_s,
                ..Default::default()
            });
        }
        Ok(LayerSplit {
            gpu_s: span(&self.start, &self.routed)?
                + span(&self.copied_out, &self.shared_done)?
                + span(&self.back_done, &self.end)?,
            transfer_s: span(&self.routed, &self.copied_out)?
                + span(&self.back_queued, &self.back_done)?,
            gpu_idle_s: span(&self.shared_done, &self.back_queued)?,
            cpu_experts_s: self.cpu_experts_s,
            cpu_idle_s: self.cpu_wait_s,
            routed_bytes: self.routed_bytes,
        })
    }
}

/// Adds the layers' and the head's splits of one call to `times`.
pub(crate) fn accumulate(
    times: &mut HybridTimes,
    layers: &[LayerMarks],
    head: &LayerMarks,
    tokens: usize,
) -> HybridResult<()> {
    for (acc, m) in times.layers.iter_mut().zip(layers) {
        acc.add(&m.split()?);
    }
    times.head.add(&head.split()?);
    times.tokens += tokens;
    times.calls += 1;
    Ok(())
}

/// Where replayed decode graphs spend their time, seen from the host (a graph carries no
/// events, so this is the only split of the headline decode rate). Per MoE layer: the GPU
/// stretch before its routed experts (from the host raising the previous MoE layer's
/// `done`, or from the launch for the first, until the host sees this layer's `ready`:
/// the return of the previous experts, the layers between, the gating and both flags'
/// trips over PCIe) and the routed experts themselves (from `ready` until the host raises
/// `done`). Summed over launches; the vectors are sized at capture, so replays allocate
/// nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphTimeline {
    /// Replays the sums cover.
    pub launches: u64,
    /// From the replay's start to the graph's launch (the step's inputs uploaded).
    pub setup_s: f64,
    /// Per MoE layer, in order: the GPU stretch before its experts.
    pub gpu_before_s: Vec<f64>,
    /// Per MoE layer, in order: its routed experts on the CPU (with `defer_experts`, the
    /// immediate ones, until the GPU is released).
    pub experts_s: Vec<f64>,
    /// Per MoE layer, in order: the choices it deferred (`defer_experts`), run on the CPU
    /// after the GPU was released; they overlap the next stretch of `gpu_before_s`, which
    /// counts from their end (0 without deferral).
    pub deferred_s: Vec<f64>,
    /// From the last MoE layer's `done` until the logits are downloaded (its return, the
    /// layers after it, the output head and the copy).
    pub tail_s: f64,
    /// Every single experts' stretch (one MoE layer of one replay) counted in buckets of
    /// [`EXPERTS_HIST_BUCKET_S`], the last one also holding the longer ones: the sums
    /// above hide whether a slow run is slow throughout or has a few very long calls (a
    /// worker descheduled mid-call), which the quantiles tell apart.
    pub experts_hist: Vec<u64>,
    /// The prefetch of the next MoE layer's predicted experts (`predict.rs`): how many ran,
    /// the host time they took (inside the GPU stretches above) and the bytes they issued.
    pub prefetches: u64,
    pub prefetch_s: f64,
    pub prefetch_bytes: u64,
    /// Of the actual top-k slots of the layers that had a prediction, how many the
    /// predicted top-k named, and how many slots there were.
    pub predicted_hits: u64,
    pub predicted_slots: u64,
    /// Of every MoE layer's top-k slots, how many fell on resident experts the GPU ran
    /// (`decode_resident`), and how many slots there were.
    pub resident_hits: u64,
    pub choice_slots: u64,
}

/// Width of one bucket of [`GraphTimeline::experts_hist`].
pub const EXPERTS_HIST_BUCKET_S: f64 = 5e-6;
/// Buckets of [`GraphTimeline::experts_hist`]: 0 to 2 ms, then one for the rest.
const EXPERTS_HIST_BUCKETS: usize = 401;

impl GraphTimeline {
    /// An empty timeline for a graph with `moe_layers` MoE layers.
    pub(crate) fn new(moe_layers: usize) -> Self {
        GraphTimeline {
            gpu_before_s: vec![0.0; moe_layers],
            experts_s: vec![0.0; moe_layers],
            deferred_s: vec![0.0; moe_layers],
            experts_hist: vec![0; EXPERTS_HIST_BUCKETS],
            ..Default::default()
        }
    }

    /// Adds one experts' stretch of `seconds` to MoE layer `k`'s sum and to the histogram.
    pub(crate) fn add_experts(&mut self, k: usize, seconds: f64) {
        self.experts_s[k] += seconds;
        let bucket = (seconds / EXPERTS_HIST_BUCKET_S) as usize;
        let last = self.experts_hist.len() - 1;
        self.experts_hist[bucket.min(last)] += 1;
    }

    /// The `q`-quantile (0..=1) of the single experts' stretches, seconds, to the bucket's
    /// middle ([`EXPERTS_HIST_BUCKET_S`] wide); `None` before any replay. A quantile in
    /// the overflow bucket reads as that bucket's start.
    pub fn experts_quantile_s(&self, q: f64) -> Option<f64> {
        let n: u64 = self.experts_hist.iter().sum();
        if n == 0 {
            return None;
        }
        // the rank of the quantile's sample, 1-based
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let last = self.experts_hist.len() - 1;
        for (b, &c) in self.experts_hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = if b == last { 0.0 } else { 0.5 };
                return Some((b as f64 + mid) * EXPERTS_HIST_BUCKET_S);
            }
        }
        None
    }

    /// Seconds per launch: setup + every GPU stretch + every experts' stretch + tail.
    pub fn per_launch_s(&self) -> f64 {
        let sum = self.setup_s
            + self.gpu_before_s.iter().sum::<f64>()
            + self.experts_s.iter().sum::<f64>()
            + self.tail_s;
        sum / self.launches.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles read from the histogram land in the bucket of the sample of that rank;
    /// a stretch past the last bucket's start counts in the overflow bucket.
    #[test]
    fn experts_quantiles_from_the_histogram() {
        let mut t = GraphTimeline::new(2);
        assert_eq!(t.experts_quantile_s(0.5), None);
        // 10 samples: 101 us .. 191 us in steps of 10 us, then one of 5 ms
        for i in 0..10 {
            t.add_experts(i % 2, (101 + 10 * i) as f64 * 1e-6);
        }
        t.add_experts(1, 5e-3);
        let us = |q: f64| {
            t.experts_quantile_s(q)
                .map(|s| (s * 1e6 * 10.0).round() / 10.0)
        };
        // rank 1: 101 us in bucket [100, 105) -> its middle
        assert_eq!(us(0.0), Some(102.5));
        assert_eq!(us(0.05), Some(102.5));
        // rank ceil(0.5 * 11) = 6: 151 us in [150, 155)
        assert_eq!(us(0.5), Some(152.5));
        // rank 10: 191 us in [190, 195)
        assert_eq!(us(0.9), Some(192.5));
        // rank 11: the 5 ms sample, in the overflow bucket starting at 2 ms
        assert_eq!(us(1.0), Some(2000.0));
        let sum: f64 = t.experts_s.iter().sum();
        let expect = (0..10).map(|i| (101 + 10 * i) as f64 * 1e-6).sum::<f64>() + 5e-3;
        assert!((sum - expect).abs() < 1e-12, "{sum} vs {expect}");
        assert_eq!(t.experts_hist.iter().sum::<u64>(), 11);
    }
}
