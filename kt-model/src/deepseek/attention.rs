//! Multi-head latent attention of one layer over the latent KV cache, in the absorbed
//! form (llama.cpp's MLA path and what the fast kernels do):
//!
//! 1. queries: `q = W_q x` (V2-Lite) or `q = W_qb rmsnorm(W_qa x)` (query LoRA), per head
//!    `[nope | rope]`, rope rotated to the token's position;
//! 2. `[c | k_pe] = W_kva x`; `rmsnorm(c)` and the rotated `k_pe` go into the cache;
//! 3. per head, the no-rope query is folded into the latent space,
//!    `q_lat = W_uk^T q_nope` (`attn_k_b` holds `W_uk^T` per head, so this is a plain
//!    product with it); scores are `(q_lat . c_s + q_pe . k_pe_s) * scale` over the
//!    visible positions `s <= pos`, softmax, `o_lat = sum_s p_s c_s`;
//! 4. `o = W_uv o_lat` per head (`attn_v_b`), heads concatenated, `W_o o`.
//!
//! Older GGUFs keep the fused `attn_kv_b` (per head, `nope` key rows then `v` value rows,
//! each of `kv_lora_rank`): `W_uv` is then a run of its rows, and `W_uk^T q_nope` is a
//! transposed product, done here on the dequantized rows in f64 (no kernel has the
//! transposed form).
//!
//! The projections go through [`Linear::apply`] in the model's [`MatmulMode`]; the
//! scores, softmax and latent sums are plain loops with f64 accumulation.

use kt_kernels::ops::{rmsnorm_inplace, RopeYarn};

use super::cache::LayerCache;
use super::linear::{dequantize_vector, Linear, MatmulMode};
use crate::config::DeepSeekConfig;
use crate::error::Result;
use crate::gguf::Tensor;
use crate::tensors::{Attention, KvUp, QueryProj};

/// The head geometry and constants of the attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlaShape {
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub rank: usize,
    pub v: usize,
    pub eps: f32,
    /// The softmax scale, YaRN's `mscale_all_dim` correction included.
    pub scale: f32,
}

impl MlaShape {
    pub fn new(c: &DeepSeekConfig, rope: &RopeYarn) -> Self {
        MlaShape {
            heads: c.n_heads,
            nope: c.qk_nope_head_dim,
            rope: c.qk_rope_head_dim,
            rank: c.kv_lora_rank,
            v: c.v_head_dim,
            eps: c.rms_norm_eps,
            scale: rope.softmax_scale(c.qk_head_dim()),
        }
    }

    fn qk(&self) -> usize {
        self.nope + self.rope
    }
}

enum QueryWeights<'a> {
    Direct(Linear<'a>),
    LoRA {
        a: Linear<'a>,
        a_norm: Vec<f32>,
        b: Linear<'a>,
    },
}

enum KvUpWeights<'a> {
    /// `attn_k_b` `[nope, rank, H]` and `attn_v_b` `[rank, v, H]`.
    Split { k_b: Tensor<'a>, v_b: Tensor<'a> },
    /// `attn_kv_b` `[rank, H * (nope + v)]`.
    Fused(Linear<'a>),
}

/// One layer's attention weights, ready to run.
pub(crate) struct AttentionWeights<'a> {
    q: QueryWeights<'a>,
    kv_a: Linear<'a>,
    kv_a_norm: Vec<f32>,
    kv_up: KvUpWeights<'a>,
    output: Linear<'a>,
}

impl<'a> AttentionWeights<'a> {
    /// From the tensor handles (shapes already checked against the config).
    pub fn new(t: &Attention<'a>) -> Result<Self> {
        let q = match &t.q {
            QueryProj::Direct { q } => QueryWeights::Direct(Linear::from_2d(q)?),
            QueryProj::LoRA { a, a_norm, b } => QueryWeights::LoRA {
                a: Linear::from_2d(a)?,
                a_norm: dequantize_vector(a_norm)?,
                b: Linear::from_2d(b)?,
            },
        };
        let kv_up = match &t.kv_b {
            KvUp::Split { k_b, v_b } => KvUpWeights::Split { k_b: *k_b, v_b: *v_b },
            KvUp::Fused { kv_b } => KvUpWeights::Fused(Linear::from_2d(kv_b)?),
        };
        Ok(AttentionWeights {
            q,
            kv_a: Linear::from_2d(&t.kv_a_mqa)?,
            kv_a_norm: dequantize_vector(&t.kv_a_norm)?,
            kv_up,
            output: Linear::from_2d(&t.output)?,
        })
    }

    /// Attention of `tokens` rows of normalized hidden states `x` `[T, hidden]` at
    /// positions `start..start + T`: writes their cache rows, attends causally over
    /// `0..=pos`, and writes `out` `[T, hidden]`. The caller has checked the cache's room.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        rope: &RopeYarn,
        x: &[f32],
        tokens: usize,
        start: usize,
        cache: &mut LayerCache,
        out: &mut [f32],
    ) -> Result<()> {
        let (h_n, qk) = (s.heads, s.qk());
        let positions: Vec<usize> = (start..start + tokens).collect();

        // 1. queries [T, H, nope + rope], rope part rotated
        let mut q = vec![0.0f32; tokens * h_n * qk];
        match &self.q {
            QueryWeights::Direct(w) => w.apply(mode, x, tokens, &mut q)?,
            QueryWeights::LoRA { a, a_norm, b } => {
                let mut qa = vec![0.0f32; tokens * a.rows];
                a.apply(mode, x, tokens, &mut qa)?;
                rmsnorm_inplace(&mut qa, a_norm, s.eps)?;
                b.apply(mode, &qa, tokens, &mut q)?;
            }
        }
        rope.apply_tokens(&mut q, &positions, qk, s.nope)?;

        // 2. the new cache rows
        let kv_w = s.rank + s.rope;
        let mut kv = vec![0.0f32; tokens * kv_w];
        self.kv_a.apply(mode, x, tokens, &mut kv)?;
        for (t, row) in kv.chunks_exact_mut(kv_w).enumerate() {
            let (c, k_pe) = row.split_at_mut(s.rank);
            rmsnorm_inplace(c, &self.kv_a_norm, s.eps)?;
            rope.apply(k_pe, start + t)?;
            let p = start + t;
            cache.latent[p * s.rank..(p + 1) * s.rank].copy_from_slice(c);
            cache.k_pe[p * s.rope..(p + 1) * s.rope].copy_from_slice(k_pe);
        }
        let used = start + tokens;
        let latent = &cache.latent[..used * s.rank];
        let k_pe = &cache.k_pe[..used * s.rope];

        // 3. + 4. per head: absorb, attend in the latent space, expand
        let mut q_nope = vec![0.0f32; tokens * s.nope];
        let mut q_lat = vec![0.0f32; tokens * s.rank];
        let mut o_lat = vec![0.0f32; tokens * s.rank];
        let mut o_head = vec![0.0f32; tokens * s.v];
        let mut heads_out = vec![0.0f32; tokens * h_n * s.v];
        let mut scratch = LatentScratch::new(used, s.rank);
        for h in 0..h_n {
            for (t, dst) in q_nope.chunks_exact_mut(s.nope).enumerate() {
                let at = (t * h_n + h) * qk;
                dst.copy_from_slice(&q[at..at + s.nope]);
            }
            self.absorb(s, mode, h, &q_nope, tokens, &mut q_lat)?;
            for t in 0..tokens {
                let at = (t * h_n + h) * qk + s.nope;
                let query = LatentQuery {
                    q_lat: &q_lat[t * s.rank..(t + 1) * s.rank],
                    q_pe: &q[at..at + s.rope],
                };
                let visible = start + t + 1;
                let o = &mut o_lat[t * s.rank..(t + 1) * s.rank];
                attend_latent(s, &query, latent, k_pe, visible, &mut scratch, o);
            }
            self.expand(s, mode, h, &o_lat, tokens, &mut o_head)?;
            for (t, src) in o_head.chunks_exact(s.v).enumerate() {
                let at = (t * h_n + h) * s.v;
                heads_out[at..at + s.v].copy_from_slice(src);
            }
        }
        self.output.apply(mode, &heads_out, tokens, out)
    }

    /// `q_lat[t] = W_uk(h)^T q_nope[t]` for `tokens` rows.
    fn absorb(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        h: usize,
        q_nope: &[f32],
        tokens: usize,
        q_lat: &mut [f32],
    ) -> Result<()> {
        match &self.kv_up {
            // attn_k_b's head h is [rank rows of nope]: W_uk^T itself
            KvUpWeights::Split { k_b, .. } => {
                Linear::from_stacked(k_b, h)?.apply(mode, q_nope, tokens, q_lat)
            }
            KvUpWeights::Fused(kv_b) => {
                let w_uk = kv_b.row_range(h * (s.nope + s.v), s.nope)?;
                let mut w = vec![0.0f32; s.nope * s.rank];
                for (i, row) in w.chunks_exact_mut(s.rank).enumerate() {
                    w_uk.dequantize_row(i, row)?;
                }
                transposed_product(&w, s.nope, s.rank, q_nope, tokens, q_lat);
                Ok(())
            }
        }
    }

    /// `o[t] = W_uv(h) o_lat[t]` for `tokens` rows.
    fn expand(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        h: usize,
        o_lat: &[f32],
        tokens: usize,
        o: &mut [f32],
    ) -> Result<()> {
        let w_uv = match &self.kv_up {
            KvUpWeights::Split { v_b, .. } => Linear::from_stacked(v_b, h)?,
            KvUpWeights::Fused(kv_b) => kv_b.row_range(h * (s.nope + s.v) + s.nope, s.v)?,
        };
        w_uv.apply(mode, o_lat, tokens, o)
    }
}

/// `out[t, r] = sum_i x[t, i] * w[i, r]` for `w` `[n, rank]`, f64 sums.
fn transposed_product(w: &[f32], n: usize, rank: usize, x: &[f32], tokens: usize, out: &mut [f32]) {
    let mut acc = vec![0.0f64; rank];
    for t in 0..tokens {
        acc.fill(0.0);
        for (i, &xi) in x[t * n..(t + 1) * n].iter().enumerate() {
            for (a, &wv) in acc.iter_mut().zip(&w[i * rank..(i + 1) * rank]) {
                *a += xi as f64 * wv as f64;
            }
        }
        for (o, &a) in out[t * rank..(t + 1) * rank].iter_mut().zip(&acc) {
            *o = a as f32;
        }
    }
}

/// One head's query of one token, in the latent space.
struct LatentQuery<'q> {
    q_lat: &'q [f32],
    q_pe: &'q [f32],
}

/// Scores and the latent accumulator, reused across heads and tokens.
struct LatentScratch {
    scores: Vec<f64>,
    acc: Vec<f64>,
}

impl LatentScratch {
    fn new(positions: usize, rank: usize) -> Self {
        LatentScratch {
            scores: vec![0.0; positions],
            acc: vec![0.0; rank],
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `o = sum_s softmax_s((q_lat . c_s + q_pe . k_pe_s) * scale) c_s` over `s < visible`.
fn attend_latent(
    s: &MlaShape,
    q: &LatentQuery,
    latent: &[f32],
    k_pe: &[f32],
    visible: usize,
    scratch: &mut LatentScratch,
    o: &mut [f32],
) {
    let scores = &mut scratch.scores[..visible];
    for (p, sc) in scores.iter_mut().enumerate() {
        let c = &latent[p * s.rank..(p + 1) * s.rank];
        let kp = &k_pe[p * s.rope..(p + 1) * s.rope];
        *sc = (dot(q.q_lat, c) + dot(q.q_pe, kp)) * s.scale as f64;
    }
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    let acc = &mut scratch.acc;
    acc.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let c = &latent[p * s.rank..(p + 1) * s.rank];
        for (a, &cv) in acc.iter_mut().zip(c) {
            *a += w * cv as f64;
        }
    }
    for (ov, &a) in o.iter_mut().zip(acc.iter()) {
        *ov = (a / sum) as f32;
    }
}
