//! The feed-forward blocks: SwiGLU MLPs (the dense layers and the shared experts) and the
//! routed mixture of experts.
//!
//! The routed experts run one of two ways. The plain loop (the `Reference` mode's, what
//! the rest is checked against): for each expert that any token chose (ascending id) run
//! its MLP on the gathered rows of those tokens and add `weight * output` into an f64
//! accumulator per token, so the sum does not depend on how the work is split; the shared
//! experts are added in f64 too. The fused operator ([`FusedMoe`], the `Quantized` mode's):
//! each token's experts summed in f32 in rank order, then the shared experts added in f32,
//! as llama.cpp's graph does.

use std::cell::RefCell;

use kt_kernels::ops::{route, silu_mul_inplace, RouterConfig};

use super::fused_moe::FusedMoe;
use super::ggml_f32;
use super::linear::{dequantize_vector, Linear, MatmulMode};
use super::timing::{Place, Stage, StageClock};
use crate::config::{DeepSeekConfig, TopkMethod};
use crate::error::Result;
use crate::tensors::{DenseFfn, MoeFfn};

thread_local! {
    /// The gate and up activations of an MLP call (grown to the largest call, then reused).
    static MLP_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// `down(silu(gate x) * up x)`; SiLU and the product in f64 in the reference mode, as ggml's
/// SwiGLU in the quantized mode.
pub(crate) struct Mlp<'a> {
    gate: Linear<'a>,
    up: Linear<'a>,
    down: Linear<'a>,
}

impl<'a> Mlp<'a> {
    pub fn new(t: &DenseFfn<'a>) -> Result<Self> {
        Ok(Mlp {
            gate: Linear::from_2d(&t.gate)?,
            up: Linear::from_2d(&t.up)?,
            down: Linear::from_2d(&t.down)?,
        })
    }

    /// Expert `e` of stacked `ffn_{gate,up,down}_exps`.
    fn expert(t: &MoeFfn<'a>, e: usize) -> Result<Self> {
        Ok(Mlp {
            gate: Linear::from_stacked(&t.gate_exps, e)?,
            up: Linear::from_stacked(&t.up_exps, e)?,
            down: Linear::from_stacked(&t.down_exps, e)?,
        })
    }

    /// `out` `[T, hidden]` for `x` `[T, hidden]`.
    pub fn forward(
        &self,
        mode: MatmulMode,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let width = self.gate.rows;
        MLP_SCRATCH.with(|scratch| {
            let (g, u) = &mut *scratch.borrow_mut();
            let n = tokens * width;
            if g.len() < n {
                g.resize(n, 0.0);
                u.resize(n, 0.0);
            }
            let (g, u) = (&mut g[..n], &mut u[..n]);
            self.gate.apply(mode, x, tokens, g)?;
            self.up.apply(mode, x, tokens, u)?;
            match mode {
                MatmulMode::Reference => silu_mul_inplace(g, u)?,
                // ggml's fused SwiGLU, row by row (its output feeds `down`'s quantizer)
                MatmulMode::Quantized(_) => ggml_f32::with_fma(
                    #[inline(always)]
                    || {
                        for (gr, ur) in g.chunks_exact_mut(width).zip(u.chunks_exact(width)) {
                            ggml_f32::swiglu(gr, ur);
                        }
                    },
                ),
            }
            self.down.apply(mode, g, tokens, out)
        })
    }
}

/// What the router decided for a batch: per token, `top_k` experts in rank order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// Router logits `[T, n_experts]`.
    pub logits: Vec<f32>,
    /// Chosen expert ids `[T, top_k]`, best first.
    pub ids: Vec<u32>,
    /// Their weights `[T, top_k]` (normalized and scaled as the config says).
    pub weights: Vec<f32>,
}

pub(crate) struct Moe<'a> {
    tensors: MoeFfn<'a>,
    router: Linear<'a>,
    bias: Option<Vec<f32>>,
    config: RouterConfig,
    shared: Option<Mlp<'a>>,
    /// Bytes of one routed expert's gate, up and down matrices.
    expert_bytes: u64,
}

impl<'a> Moe<'a> {
    pub fn new(t: &MoeFfn<'a>, c: &DeepSeekConfig) -> Result<Self> {
        let config = router_config(c);
        config.validate()?;
        Ok(Moe {
            tensors: t.clone(),
            router: Linear::from_2d(&t.gate_inp)?,
            // The bias only steers noaux_tc's selection; other methods have none to use.
            bias: match (&t.exp_probs_b, c.topk_method) {
                (Some(b), TopkMethod::NoauxTc) => Some(dequantize_vector(b)?),
                _ => None,
            },
            expert_bytes: [&t.gate_exps, &t.up_exps, &t.down_exps]
                .iter()
                .map(|s| (s.data.len() / config.n_experts) as u64)
                .sum(),
            config,
            shared: t.shared.as_ref().map(Mlp::new).transpose()?,
        })
    }

    /// `out = sum_k w_k expert_k(x) + shared(x)` for `x` `[T, hidden]`; returns the routing.
    /// The routed experts run on `fused` when given (layer `layer` of it), else on the
    /// plain loop. Laps of `clock` mark the router, routed experts and shared experts.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        mode: MatmulMode,
        fused: Option<&FusedMoe>,
        layer: usize,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        clock: &mut StageClock<'_>,
    ) -> Result<Routing> {
        let (e_n, k) = (self.config.n_experts, self.config.top_k);
        let mut r = Routing {
            logits: vec![0.0; tokens * e_n],
            ids: vec![0; tokens * k],
            weights: vec![0.0; tokens * k],
        };
        self.router.apply(mode, x, tokens, &mut r.logits)?;
        route(
            &self.config,
            &r.logits,
            self.bias.as_deref(),
            &mut r.ids,
            &mut r.weights,
        )?;
        let here = Place::Layer(layer);
        clock.lap(here, Stage::Router);
        if clock.is_on() {
            // The bytes the experts are read in: the fused operator's own (a repacked
            // layout's), else the GGUF's.
            let bytes = match fused {
                Some(f) => f.routed_bytes(layer, &r.ids),
                None => distinct_experts(&r.ids, e_n) * self.expert_bytes,
            };
            clock.add_routed_bytes(layer, bytes);
        }

        match fused {
            Some(f) => {
                let mut routed = vec![0.0f32; out.len()];
                f.forward(layer, x, &r.ids, &r.weights, &mut routed)?;
                clock.lap(here, Stage::RoutedExperts);
                match &self.shared {
                    Some(mlp) => {
                        mlp.forward(mode, x, tokens, out)?;
                        out.iter_mut().zip(&routed).for_each(|(o, &v)| *o += v);
                    }
                    None => out.copy_from_slice(&routed),
                }
            }
            None => {
                let acc = self.routed_loop(mode, x, tokens, &r)?;
                clock.lap(here, Stage::RoutedExperts);
                match &self.shared {
                    Some(mlp) => {
                        mlp.forward(mode, x, tokens, out)?;
                        for (o, &a) in out.iter_mut().zip(&acc) {
                            *o = (a + *o as f64) as f32;
                        }
                    }
                    None => out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f32),
                }
            }
        }
        clock.lap(here, Stage::Mlp);
        Ok(r)
    }

    /// The plain routed-expert loop: `sum_k w_k expert_k(x)` per token, in f64.
    fn routed_loop(
        &self,
        mode: MatmulMode,
        x: &[f32],
        tokens: usize,
        r: &Routing,
    ) -> Result<Vec<f64>> {
        let (e_n, k) = (self.config.n_experts, self.config.top_k);
        let hidden = self.router.cols;
        // tokens (and their weights) per expert, in token order
        let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e_n];
        for (t, (ids, ws)) in r
            .ids
            .chunks_exact(k)
            .zip(r.weights.chunks_exact(k))
            .enumerate()
        {
            for (&e, &w) in ids.iter().zip(ws) {
                chosen[e as usize].push((t, w));
            }
        }
        let mut acc = vec![0.0f64; tokens * hidden];
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for (e, rows) in chosen.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            xs.clear();
            for &(t, _) in rows {
                xs.extend_from_slice(&x[t * hidden..(t + 1) * hidden]);
            }
            ys.clear();
            ys.resize(rows.len() * hidden, 0.0f32);
            Mlp::expert(&self.tensors, e)?.forward(mode, &xs, rows.len(), &mut ys)?;
            for (&(t, w), y) in rows.iter().zip(ys.chunks_exact(hidden)) {
                for (a, &v) in acc[t * hidden..(t + 1) * hidden].iter_mut().zip(y) {
                    *a += w as f64 * v as f64;
                }
            }
        }
        Ok(acc)
    }
}

/// The router settings of the hyper-parameters.
pub fn router_config(c: &DeepSeekConfig) -> RouterConfig {
    RouterConfig {
        n_experts: c.n_routed_experts,
        top_k: c.experts_per_tok,
        n_group: c.n_group,
        topk_group: c.topk_group,
        scoring: c.scoring,
        method: c.topk_method,
        norm_topk_prob: c.norm_topk_prob,
        routed_scaling_factor: c.routed_scaling_factor,
    }
}

/// How many distinct experts (ids below `experts`) `ids` names: each is read once per call.
pub(crate) fn distinct_experts(ids: &[u32], experts: usize) -> u64 {
    let mut touched = vec![false; experts];
    for &e in ids {
        if let Some(t) = touched.get_mut(e as usize) {
            *t = true;
        }
    }
    touched.iter().filter(|&&t| t).count() as u64
}

#[cfg(test)]
mod tests {
    use super::distinct_experts;

    #[test]
    fn distinct_experts_counts_each_expert_once() {
        assert_eq!(distinct_experts(&[3, 1, 3, 0, 1, 3], 8), 3);
        assert_eq!(distinct_experts(&[], 8), 0);
        assert_eq!(distinct_experts(&[7, 6, 5, 4, 3, 2, 1, 0], 8), 8);
        // an id past the expert count is not an expert (the router never emits one)
        assert_eq!(distinct_experts(&[2, 9], 8), 1);
    }
}
