//! A GPU prefill's routed experts split between the GPU and the CPU.
//!
//! With the routed experts on the GPU a long chunk's MoE layer costs the copy of its int4
//! weights over PCIe (a DeepSeek-V3 layer: 5.8 GB, about 0.11 s on the device), while the
//! CPU waits. Split, the first experts of a layer are copied and run on the GPU and the
//! last [`PrefillSplit::CpuShare`] of them on the CPU's operator at the same time (weights as
//! stored, nothing copied). The CPU computes its pairs exactly as the CPU-only prefill does
//! (the GGUF's weights), so a split prefill's error lies between the CPU's and the all-GPU
//! int4 one.
//!
//! Off by default. On the device (DeepSeek-V3 shape, 1024 tokens) a share of 0.1 made a
//! layer about 7% faster and larger shares slower (session 27), until session 28 found
//! why: the CPU share's sum (and the layer's routing indices) crossed to the GPU on a copy
//! engine, queued behind the next layer's 5.8 GB weight copy, so every split layer waited
//! one copy. Read by kernels from page-locked memory instead (`kt_kernels::cuda::mapped`),
//! shares of 0.1 and 0.15 with 43 resident experts take a V3 layer from 92 to 79 and 66 ms;
//! 0.2 is slower again (the CPU's part, ~70 ms, outlasts the copies it saves). Off unless
//! the rules name a `prefill_cpu_share` (the V3 GPU-prefill rules do: 0.15, and 0.25 with
//! int4 CPU experts) or the caller sets one.
//!
//! [`CpuShare`] runs the CPU's pairs: flattened to rows of one choice each, sorted by
//! expert (so the operator, which takes rows in pieces of its batch, reads each expert's
//! weights about once), then summed back per token in choice order (deterministic).

use std::time::Instant;

use super::super::error::{HybridError, HybridResult};
use crate::deepseek::fused_moe::FusedMoe;

/// How a GPU prefill splits each MoE layer's routed experts with the CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrefillSplit {
    /// Every expert on the GPU (the default).
    Off,
    /// The CPU takes this fraction of the experts (0 to 1; the last ones).
    CpuShare(f64),
}

impl PrefillSplit {
    /// The experts on the GPU (`0..g`) of a layer of `experts`.
    pub fn gpu_experts(self, experts: usize) -> usize {
        match self {
            PrefillSplit::Off => experts,
            PrefillSplit::CpuShare(f) => {
                let cpu = (f.clamp(0.0, 1.0) * experts as f64).round() as usize;
                experts - cpu.min(experts)
            }
        }
    }
}

/// Where one split layer's CPU share spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuShareTimes {
    /// The (token, expert) pairs it ran and the experts they chose.
    pub pairs: usize,
    pub experts: usize,
    /// Gathering its pairs' input rows, the operator's calls, summing per token.
    pub gather_s: f64,
    pub operator_s: f64,
    pub sum_s: f64,
}

/// The CPU's part of a split layer, with its buffers (grown to the largest call).
#[derive(Default)]
pub(crate) struct CpuShare {
    /// The CPU's pairs (`t * top_k + s`) in expert order, ties in pair order.
    pairs: Vec<usize>,
    /// Index into `pairs` of each pair of the call, `usize::MAX` for the GPU's.
    index: Vec<usize>,
    x: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
    out: Vec<f32>,
}

impl CpuShare {
    /// `out[t] = sum_s weights[t, s] * expert_{ids[t, s]}(x[t])` over the choices of token
    /// `t` whose expert is `first` or later (choice order; zero where there is none), for
    /// layer `li` on `fused`; `x`, `out` `[T, hidden]`, `ids`, `weights` `[T, top_k]`.
    /// Returns where its time went.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        fused: &FusedMoe,
        li: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        (hidden, top_k): (usize, usize),
        first: usize,
        out: &mut [f32],
    ) -> HybridResult<CpuShareTimes> {
        let start = Instant::now();
        let tokens = ids.len() / top_k.max(1);
        if top_k == 0
            || hidden == 0
            || ids.len() != tokens * top_k
            || weights.len() != ids.len()
            || x.len() != tokens * hidden
            || out.len() != x.len()
        {
            return Err(HybridError::Input(format!(
                "CPU share: x {} and out {} elements, {} ids and {} weights for top {top_k}",
                x.len(),
                out.len(),
                ids.len(),
                weights.len()
            )));
        }
        self.pairs.clear();
        self.pairs
            .extend((0..ids.len()).filter(|&p| ids[p] as usize >= first));
        // stable: ties keep pair order
        self.pairs.sort_by_key(|&p| ids[p]);
        let n = self.pairs.len();
        self.index.clear();
        self.index.resize(ids.len(), usize::MAX);
        for (i, &p) in self.pairs.iter().enumerate() {
            self.index[p] = i;
        }
        out.fill(0.0);
        let mut times = CpuShareTimes::default();
        if n == 0 {
            times.gather_s = start.elapsed().as_secs_f64();
            return Ok(times);
        }
        self.ids.clear();
        self.ids.extend(self.pairs.iter().map(|&p| ids[p]));
        self.weights.clear();
        self.weights.extend(self.pairs.iter().map(|&p| weights[p]));
        self.x.resize(n * hidden, 0.0);
        self.out.resize(n * hidden, 0.0);
        let pairs = &self.pairs;
        split_rows(&mut self.x, hidden, &|i, row| {
            let t = pairs[i] / top_k;
            row.copy_from_slice(&x[t * hidden..(t + 1) * hidden]);
        });
        times.pairs = n;
        times.experts = 1 + self.ids.windows(2).filter(|w| w[0] != w[1]).count();
        times.gather_s = start.elapsed().as_secs_f64();
        let operator = Instant::now();
        fused.forward_rows(li, &self.x, &self.ids, &self.weights, &mut self.out)?;
        times.operator_s = operator.elapsed().as_secs_f64();
        let sum = Instant::now();
        let (index, rows) = (&self.index, &self.out);
        split_rows(out, hidden, &|t, row| {
            for &i in &index[t * top_k..(t + 1) * top_k] {
                if i != usize::MAX {
                    let src = &rows[i * hidden..(i + 1) * hidden];
                    row.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                }
            }
        });
        times.sum_s = sum.elapsed().as_secs_f64();
        Ok(times)
    }
}

/// Calls `f(i, row)` for every `width`-long row of `rows`, on a few scoped threads (the
/// rows are tens of MB: one thread would take milliseconds a layer).
fn split_rows(rows: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let n = rows.len() / width.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, 16);
    let per = n.div_ceil(threads).max(64);
    std::thread::scope(|scope| {
        for (c, chunk) in rows.chunks_mut(per * width).enumerate() {
            scope.spawn(move || {
                for (j, row) in chunk.chunks_exact_mut(width).enumerate() {
                    f(c * per + j, row);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share rounds to whole experts, from the last ones.
    #[test]
    fn shares_round_to_experts() {
        assert_eq!(PrefillSplit::Off.gpu_experts(256), 256);
        assert_eq!(PrefillSplit::CpuShare(0.0).gpu_experts(256), 256);
        assert_eq!(PrefillSplit::CpuShare(1.0).gpu_experts(256), 0);
        assert_eq!(PrefillSplit::CpuShare(0.5).gpu_experts(64), 32);
        assert_eq!(PrefillSplit::CpuShare(0.1).gpu_experts(256), 230);
    }

    /// The CPU share of a split layer is the operator's sum over the pairs of its experts:
    /// all of them (`first` 0) give the operator's whole call, none give zeros, and a split
    /// at 32 plus the operator's call with the CPU's pairs weighted 0 gives it too, up to
    /// f32 summation order (1e-5 relative per row). 37 tokens with a 64-row operator batch,
    /// so the expert-sorted rows run in pieces and some expert straddles two.
    #[test]
    fn cpu_share_is_the_operators_sum_over_its_experts() {
        use crate::synthetic::{Preset, SyntheticModel, SyntheticOptions};
        use crate::tensors::ModelTensors;
        use kt_kernels::util::SplitMix64;

        let opts = SyntheticOptions {
            layers: Some(2),
            seed: 5,
            ..SyntheticOptions::default()
        };
        let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts).unwrap();
        let g = m.to_gguf(&mut |_| {}).unwrap();
        let c = m.config();
        let tensors = ModelTensors::from_gguf(&g, c).unwrap();
        let isa = kt_kernels::cpu::isa::selected().unwrap();
        let (k, h, e) = (c.experts_per_tok, c.hidden_size, c.n_routed_experts);
        let fused = FusedMoe::new(&g, &tensors, isa, k, 64, None)
            .unwrap()
            .unwrap();
        let t_n = 37;
        let mut rng = SplitMix64::new(0x5911);
        let x: Vec<f32> = (0..t_n * h).map(|_| rng.normal()).collect();
        let mut ids = Vec::with_capacity(t_n * k);
        for _ in 0..t_n {
            let mut row: Vec<u32> = Vec::new();
            while row.len() < k {
                let id = rng.below(e) as u32;
                if !row.contains(&id) {
                    row.push(id);
                }
            }
            ids.extend(row);
        }
        let w: Vec<f32> = (0..t_n * k).map(|_| 0.05 + rng.uniform(0.0, 0.3)).collect();
        let mut full = vec![f32::NAN; t_n * h];
        fused.forward(1, &x, &ids, &w, &mut full).unwrap();
        let close = |got: &[f32], want: &[f32], what: &str| {
            for (t, (gr, wr)) in got.chunks_exact(h).zip(want.chunks_exact(h)).enumerate() {
                let d: f64 = gr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| (a - b) as f64 * (a - b) as f64)
                    .sum();
                let n: f64 = wr.iter().map(|&v| v as f64 * v as f64).sum();
                assert!(n > 0.0, "{what}: token {t} has a zero row");
                let rel = (d / n).sqrt();
                assert!(rel <= 1e-5, "{what}: token {t} relative L2 {rel:e}");
            }
        };
        let mut share = CpuShare::default();
        let mut out = vec![f32::NAN; t_n * h];
        let times = share
            .run(&fused, 1, &x, &ids, &w, (h, k), 0, &mut out)
            .unwrap();
        assert_eq!(times.pairs, t_n * k);
        assert!(times.experts <= e && times.operator_s > 0.0);
        close(&out, &full, "all pairs");

        out.fill(f32::NAN);
        let times = share
            .run(&fused, 1, &x, &ids, &w, (h, k), e, &mut out)
            .unwrap();
        assert_eq!((times.pairs, times.experts), (0, 0));
        assert!(out.iter().all(|&v| v == 0.0));

        let first = 32;
        out.fill(f32::NAN);
        let times = share
            .run(&fused, 1, &x, &ids, &w, (h, k), first, &mut out)
            .unwrap();
        let mine = ids.iter().filter(|&&i| i as usize >= first);
        assert_eq!(times.pairs, mine.clone().count());
        let experts: std::collections::BTreeSet<_> = mine.collect();
        assert_eq!(times.experts, experts.len());
        let w_gpu: Vec<f32> = w
            .iter()
            .zip(&ids)
            .map(|(&wt, &i)| if (i as usize) < first { wt } else { 0.0 })
            .collect();
        let mut rest = vec![f32::NAN; t_n * h];
        fused.forward(1, &x, &ids, &w_gpu, &mut rest).unwrap();
        let sum: Vec<f32> = out.iter().zip(&rest).map(|(a, b)| a + b).collect();
        close(&sum, &full, "split at 32");

        // shapes that do not fit are errors, not panics
        assert!(share
            .run(&fused, 1, &x[..h], &ids, &w, (h, k), 0, &mut out)
            .is_err());
        assert!(share
            .run(&fused, 0, &x, &ids, &w, (h, k), 0, &mut out)
            .is_err());
    }

    /// Every row is visited once, with its index.
    #[test]
    fn split_rows_visits_each_row() {
        for n in [0usize, 1, 63, 64, 65, 1000] {
            let mut rows = vec![f32::NAN; n * 3];
            split_rows(&mut rows, 3, &|i, row| row.fill(i as f32));
            for (i, row) in rows.chunks_exact(3).enumerate() {
                assert!(row.iter().all(|&v| v == i as f32), "n {n}, row {i}");
            }
        }
    }
}
