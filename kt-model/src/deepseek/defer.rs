//! Expert deferral (the routed experts' rule option `defer_experts`; KTransformers calls it
//! Expert Deferral): in a single-token step, every MoE layer but the last hands its `n`
//! lowest-weighted CPU choices to the next MoE layer. The CPU computes the other choices
//! first (the immediate ones) and releases the GPU, then computes the deferred ones while the
//! GPU runs the next layer's attention and gating, and adds their weighted sum to that next
//! layer's routed output. So the CPU keeps streaming weights through the GPU stretch between
//! two layers' experts instead of idling in it.
//!
//! The model changes: the next layer's attention and router read the residual without the
//! deferred experts' output, which reaches the residual one layer late. That is an
//! approximation (KTransformers reports benchmark accuracy within about half a point for its
//! setting), so it is off (`n = 0`) unless the rules ask for it; with `n = 0` the calls are
//! exactly those without deferral.
//!
//! Measured on the device (BENCHMARKS session 34), it hides the GPU stretch (~120 us a V3 MoE
//! layer down to ~6) but does not speed the decode up there: without it the CPU already streams
//! in that stretch, prefetching the next layer's predicted experts (`hybrid/predict.rs`, 10-16
//! MB a stretch), which the deferred experts displace.

use super::fused_moe::FusedMoe;
use crate::error::{ModelError, Result};

/// The most choices a token makes here (the GPU gating's limit, `MAX_TOP_K` of
/// `kt_kernels::cuda::gating`, which the hybrid executor's packs follow).
pub const MAX_TOP_K: usize = 32;
#[cfg(feature = "cuda")]
const _: () = assert!(MAX_TOP_K == kt_kernels::cuda::gating::MAX_TOP_K);

/// One token's choices (ids and routing weights), at most [`MAX_TOP_K`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choices {
    ids: [u32; MAX_TOP_K],
    weights: [f32; MAX_TOP_K],
    n: usize,
}

impl Choices {
    const NONE: Choices = Choices {
        ids: [0; MAX_TOP_K],
        weights: [0.0; MAX_TOP_K],
        n: 0,
    };

    /// The choices of `ids` (with their `weights`) that `keep` takes by id, in order.
    pub fn filtered(ids: &[u32], weights: &[f32], keep: impl Fn(u32) -> bool) -> Result<Choices> {
        check_choices(ids, weights)?;
        let mut c = Choices::NONE;
        for (&e, &w) in ids.iter().zip(weights) {
            if keep(e) {
                c.push(e, w);
            }
        }
        Ok(c)
    }

    fn push(&mut self, id: u32, weight: f32) {
        self.ids[self.n] = id;
        self.weights[self.n] = weight;
        self.n += 1;
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.n]
    }

    pub fn weights(&self) -> &[f32] {
        &self.weights[..self.n]
    }
}

/// Splits one token's choices into the immediate ones and the `n` deferred ones: those with
/// the smallest weights, of equal weights the later choice first (all of them when there are
/// at most `n`). Both keep the choices' order.
pub fn split_deferred(ids: &[u32], weights: &[f32], n: usize) -> Result<(Choices, Choices)> {
    check_choices(ids, weights)?;
    let mut order = [0usize; MAX_TOP_K];
    let order = &mut order[..ids.len()];
    order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
    order.sort_by(|&a, &b| weights[a].total_cmp(&weights[b]).then(b.cmp(&a)));
    let mut deferred = [false; MAX_TOP_K];
    for &i in order.iter().take(n) {
        deferred[i] = true;
    }
    let (mut now, mut later) = (Choices::NONE, Choices::NONE);
    for (i, (&e, &w)) in ids.iter().zip(weights).enumerate() {
        match deferred[i] {
            true => later.push(e, w),
            false => now.push(e, w),
        }
    }
    Ok((now, later))
}

/// One single-token step's deferral state: the choices a MoE layer set aside, its input,
/// and the sum that waits for the next MoE layer. Buffers are sized once (no allocation per
/// step).
pub struct Deferral {
    /// Choices deferred per layer in this step (0: none).
    n: usize,
    /// The step's last MoE layer: it defers nothing (no layer follows to take its sum).
    last_moe: Option<usize>,
    /// The layer whose deferred choices are set aside, its input and the choices.
    pending: Option<usize>,
    x: Vec<f32>,
    choices: Choices,
    /// The deferred sum of the previous MoE layer, when `held`.
    sum: Vec<f32>,
    held: bool,
}

impl Deferral {
    /// An idle deferral for rows of `hidden`.
    pub fn new(hidden: usize) -> Self {
        Deferral {
            n: 0,
            last_moe: None,
            pending: None,
            x: vec![0.0; hidden],
            choices: Choices::NONE,
            sum: vec![0.0; hidden],
            held: false,
        }
    }

    /// Starts a step that defers `n` choices per MoE layer (0: none), `last_moe` its last
    /// MoE layer; forgets whatever an earlier step left.
    pub fn begin(&mut self, n: usize, last_moe: Option<usize>) {
        self.n = n;
        self.last_moe = last_moe;
        self.pending = None;
        self.held = false;
    }

    /// Whether [`Self::immediate`] has work beyond the layer's own choices: this step
    /// defers, or holds a sum.
    pub fn active(&self) -> bool {
        self.n > 0 || self.held
    }

    /// MoE layer `layer`'s CPU choices (`ids`, `weights`, one token) on input `x`: the
    /// immediate ones' weighted sum plus the sum the previous MoE layer deferred into
    /// `out`; the deferred ones (none on the last MoE layer) are set aside, with a copy of
    /// `x`, for [`Self::deferred`]. Call that before the next layer's `immediate`.
    pub fn immediate(
        &mut self,
        fused: &FusedMoe,
        layer: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        if self.pending.is_some() {
            return Err(ModelError::Forward {
                reason: format!(
                    "layer {layer}'s routed experts: the previous layer's deferred experts did not run"
                ),
            });
        }
        let n = match Some(layer) == self.last_moe {
            true => 0,
            false => self.n,
        };
        let (now, later) = split_deferred(ids, weights, n)?;
        fused.forward_choices(layer, x, now.ids(), now.weights(), out)?;
        if self.held {
            check_len(layer, "out", out.len(), self.sum.len())?;
            out.iter_mut().zip(&self.sum).for_each(|(o, &d)| *o += d);
            self.held = false;
        }
        if later.n > 0 {
            check_len(layer, "x", x.len(), self.x.len())?;
            self.x.copy_from_slice(x);
            self.choices = later;
            self.pending = Some(layer);
        }
        Ok(())
    }

    /// Runs the choices [`Self::immediate`] set aside into the sum the next MoE layer adds;
    /// returns whether there were any.
    pub fn deferred(&mut self, fused: &FusedMoe) -> Result<bool> {
        let Some(layer) = self.pending.take() else {
            return Ok(false);
        };
        let c = &self.choices;
        fused.forward_choices(layer, &self.x, c.ids(), c.weights(), &mut self.sum)?;
        self.held = true;
        Ok(true)
    }
}

/// One token's choices: as many weights as ids, at most [`MAX_TOP_K`].
fn check_choices(ids: &[u32], weights: &[f32]) -> Result<()> {
    match ids.len() == weights.len() && ids.len() <= MAX_TOP_K {
        true => Ok(()),
        false => Err(ModelError::Forward {
            reason: format!(
                "one token's choices: {} ids and {} weights (at most {MAX_TOP_K})",
                ids.len(),
                weights.len()
            ),
        }),
    }
}

fn check_len(layer: usize, what: &str, len: usize, hidden: usize) -> Result<()> {
    match len == hidden {
        true => Ok(()),
        false => Err(ModelError::Forward {
            reason: format!(
                "layer {layer}'s deferred experts: {what} has {len} elements for hidden {hidden}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepseek::fused_moe::DEFAULT_MAX_BATCH;
    use crate::synthetic::{Preset, SyntheticModel, SyntheticOptions};
    use crate::tensors::ModelTensors;
    use kt_kernels::cpu;
    use kt_kernels::util::SplitMix64;

    /// Deferral over two single-token MoE steps of one synthetic V2-Lite layer (1 dense + 1
    /// MoE; the MoE layer plays both the deferring layer and the next one): the first call
    /// gives the immediate choices only (their sum, bit for bit that of `forward_choices`),
    /// the second adds the first's deferred choices on the first's input (copied: the
    /// caller's buffer is overwritten in between, as the pinned pack is), and the two halves
    /// of a layer sum to the whole layer within f32 rounding. With 0 deferred choices the
    /// call is bit for bit the plain `forward`.
    #[test]
    fn deferred_choices_reach_the_next_layer_on_their_own_input() {
        let opts = SyntheticOptions {
            layers: Some(2),
            seed: 17,
            ..SyntheticOptions::default()
        };
        let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts).unwrap();
        let g = m.to_gguf(&mut |_| {}).unwrap();
        let c = m.config().clone();
        let tensors = ModelTensors::from_gguf(&g, &c).unwrap();
        let isa = cpu::isa::selected().unwrap();
        let k = c.experts_per_tok;
        let fused = FusedMoe::new(&g, &tensors, isa, k, DEFAULT_MAX_BATCH, None)
            .unwrap()
            .expect("a MoE layer");
        let (li, h) = (1, c.hidden_size);
        let mut rng = SplitMix64::new(5);
        let mut row = || {
            (0..h)
                .map(|_| rng.next_f32() * 2.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let (mut x1, x2) = (row(), row());
        let ids1: Vec<u32> = [3u32, 40, 17, 8, 63, 29][..k].to_vec();
        let w1 = [0.31f32, 0.07, 0.22, 0.05, 0.2, 0.15][..k].to_vec();
        let ids2: Vec<u32> = [12u32, 3, 50, 41, 7, 33][..k].to_vec();
        let w2 = [0.1f32, 0.4, 0.05, 0.2, 0.15, 0.1][..k].to_vec();
        let run = |ids: &[u32], w: &[f32], x: &[f32]| {
            let mut out = vec![f32::NAN; h];
            fused.forward_choices(li, x, ids, w, &mut out).unwrap();
            out
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

        let mut d = Deferral::new(h);
        d.begin(2, None);
        assert!(d.active());
        let mut out1 = vec![f32::NAN; h];
        d.immediate(&fused, li, &x1, &ids1, &w1, &mut out1).unwrap();
        // ids 40 and 8 (weights 0.07, 0.05) wait for the next layer
        let x1_kept = x1.clone();
        x1.iter_mut().for_each(|v| *v = -*v);
        assert!(d.deferred(&fused).unwrap());
        assert!(
            !d.deferred(&fused).unwrap(),
            "the deferred choices ran twice"
        );
        assert_eq!(
            bits(&out1),
            bits(&run(&[3, 17, 63, 29], &[0.31, 0.22, 0.2, 0.15], &x1_kept))
        );
        let later1 = run(&[40, 8], &[0.07, 0.05], &x1_kept);
        let whole1 = run(&ids1, &w1, &x1_kept);
        let scale = (whole1.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h as f64).sqrt();
        assert!(scale > 0.0);
        for i in 0..h {
            let err = (out1[i] as f64 + later1[i] as f64 - whole1[i] as f64).abs();
            // two partial f32 sums of at most 6 terms against one: a few ulps of the scale
            assert!(
                err <= 1e-5 * scale,
                "element {i}: {err} against a scale of {scale}"
            );
        }

        // the next layer: its own immediate choices plus the first's deferred sum
        let mut out2 = vec![f32::NAN; h];
        d.immediate(&fused, li, &x2, &ids2, &w2, &mut out2).unwrap();
        let mut want = run(&[12, 3, 41, 7], &[0.1, 0.4, 0.2, 0.15], &x2);
        want.iter_mut().zip(&later1).for_each(|(w, &l)| *w += l);
        assert_eq!(bits(&out2), bits(&want));
        // its own deferred choices (50, and 33 on the tie with 12: the later one) are set
        // aside, and an immediate call before they ran is refused
        assert!(d.immediate(&fused, li, &x2, &ids2, &w2, &mut out2).is_err());

        // a new step forgets what the last one set aside; its last MoE layer keeps all its
        // choices
        d.begin(2, Some(li));
        let mut out3 = vec![f32::NAN; h];
        d.immediate(&fused, li, &x2, &ids2, &w2, &mut out3).unwrap();
        assert!(!d.deferred(&fused).unwrap());
        assert_eq!(bits(&out3), bits(&run(&ids2, &w2, &x2)));

        // nothing deferred: the plain forward, bit for bit
        d.begin(0, None);
        assert!(!d.active());
        let mut out4 = vec![f32::NAN; h];
        d.immediate(&fused, li, &x2, &ids2, &w2, &mut out4).unwrap();
        let mut plain = vec![f32::NAN; h];
        fused.forward(li, &x2, &ids2, &w2, &mut plain).unwrap();
        assert_eq!(bits(&out4), bits(&plain));
    }

    #[test]
    fn the_lowest_weights_are_deferred_in_choice_order() {
        let ids = [7u32, 2, 43, 0, 42, 100];
        let w = [0.3f32, 0.05, 0.2, 0.1, 0.05, 0.3];
        let (now, later) = split_deferred(&ids, &w, 2).unwrap();
        assert_eq!(
            (now.ids(), now.weights()),
            (&[7, 43, 0, 100][..], &[0.3, 0.2, 0.1, 0.3][..])
        );
        assert_eq!(
            (later.ids(), later.weights()),
            (&[2, 42][..], &[0.05, 0.05][..])
        );
        // a tie at the edge: the later choice goes first
        let (now, later) = split_deferred(&ids, &w, 1).unwrap();
        assert_eq!(later.ids(), [42]);
        assert_eq!(now.ids(), [7, 2, 43, 0, 100]);
        let (now, later) = split_deferred(&ids, &w, 0).unwrap();
        assert_eq!((now.ids(), later.ids()), (&ids[..], &[][..]));
        let (now, later) = split_deferred(&ids, &w, 9).unwrap();
        assert_eq!((now.ids(), later.ids()), (&[][..], &ids[..]));
        assert!(split_deferred(&ids, &w[..5], 1).is_err());
        assert!(split_deferred(&[0; MAX_TOP_K + 1], &[0.0; MAX_TOP_K + 1], 1).is_err());
    }
}
