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
//! scores, softmax and latent sums are plain loops with f64 accumulation in the reference
//! mode and on the scalar backend, and f32 SIMD matmuls plus f32 sums in the quantized mode
//! on the SIMD backends (as ggml does them).
//! Steps 3 and 4 run one head per pool work item.

use std::sync::Mutex;

use kt_kernels::cpu;
use kt_kernels::ops::RopeYarn;
use kt_kernels::quant::QType;

use super::cache::LayerCache;
use super::linear::{dequantize_vector, Linear, MatmulMode};
use super::norm::rms_norm_inplace;
use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};
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
            KvUp::Split { k_b, v_b } => KvUpWeights::Split {
                k_b: *k_b,
                v_b: *v_b,
            },
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
                rms_norm_inplace(mode, &mut qa, a_norm, s.eps)?;
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
            rms_norm_inplace(mode, c, &self.kv_a_norm, s.eps)?;
            rope.apply(k_pe, start + t)?;
            let p = start + t;
            cache.latent[p * s.rank..(p + 1) * s.rank].copy_from_slice(c);
            cache.k_pe[p * s.rope..(p + 1) * s.rope].copy_from_slice(k_pe);
        }
        let used = start + tokens;
        let latent = &cache.latent[..used * s.rank];
        let k_pe = &cache.k_pe[..used * s.rope];

        // 3. + 4. per head: absorb, attend in the latent space, expand. Heads are
        // independent, so they are the pool's work items; the projections inside run inline
        // on the worker and every sum keeps its order, so the result does not depend on the
        // number of threads.
        let per_head: Vec<Mutex<Option<Result<Vec<f32>>>>> =
            (0..h_n).map(|_| Mutex::new(None)).collect();
        let view = HeadInputs {
            q: &q,
            tokens,
            start,
            latent,
            k_pe,
        };
        cpu::pool::global().for_each(h_n, &|h, _thread| {
            let r = self.head(s, mode, &view, h);
            *per_head[h].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        let mut heads_out = vec![0.0f32; tokens * h_n * s.v];
        for (h, slot) in per_head.into_iter().enumerate() {
            let o_head = slot
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("the pool runs every head")?;
            for (t, src) in o_head.chunks_exact(s.v).enumerate() {
                let at = (t * h_n + h) * s.v;
                heads_out[at..at + s.v].copy_from_slice(src);
            }
        }
        self.output.apply(mode, &heads_out, tokens, out)
    }

    /// Head `h` of every token: absorb its no-rope query, attend over the visible cache
    /// rows, expand; returns its output `[T, v]`.
    fn head(&self, s: &MlaShape, mode: MatmulMode, v: &HeadInputs, h: usize) -> Result<Vec<f32>> {
        let (h_n, qk, tokens) = (s.heads, s.qk(), v.tokens);
        let mut q_nope = vec![0.0f32; tokens * s.nope];
        for (t, dst) in q_nope.chunks_exact_mut(s.nope).enumerate() {
            let at = (t * h_n + h) * qk;
            dst.copy_from_slice(&v.q[at..at + s.nope]);
        }
        let mut q_lat = vec![0.0f32; tokens * s.rank];
        self.absorb(s, mode, h, &q_nope, tokens, &mut q_lat)?;
        let mut o_lat = vec![0.0f32; tokens * s.rank];
        // The scalar backend keeps the plain f64 loops (it is the never-optimized one).
        if let MatmulMode::Quantized(isa @ (cpu::Isa::Avx2 | cpu::Isa::Avx512 | cpu::Isa::Amx)) =
            mode
        {
            attend_latent_f32(s, isa, v, h, &q_lat, &mut o_lat)?;
            let mut o_head = vec![0.0f32; tokens * s.v];
            self.expand(s, mode, h, &o_lat, tokens, &mut o_head)?;
            return Ok(o_head);
        }
        let mut scratch = LatentScratch::new(v.start + tokens, s.rank);
        for t in 0..tokens {
            let at = (t * h_n + h) * qk + s.nope;
            let query = LatentQuery {
                q_lat: &q_lat[t * s.rank..(t + 1) * s.rank],
                q_pe: &v.q[at..at + s.rope],
            };
            let visible = v.start + t + 1;
            let o = &mut o_lat[t * s.rank..(t + 1) * s.rank];
            attend_latent(s, &query, v.latent, v.k_pe, visible, &mut scratch, o);
        }
        let mut o_head = vec![0.0f32; tokens * s.v];
        self.expand(s, mode, h, &o_lat, tokens, &mut o_head)?;
        Ok(o_head)
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

/// What every head of one call reads: the rotated queries `[T, H, nope + rope]` and the
/// cache rows visible to the last token.
struct HeadInputs<'v> {
    q: &'v [f32],
    tokens: usize,
    start: usize,
    latent: &'v [f32],
    k_pe: &'v [f32],
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

/// The fast mode's latent attention of head `h` for every token, in f32 as ggml computes it:
/// the scores of all tokens against all cache rows are two f32 matmuls (`q_lat . c_s` and
/// `q_pe . k_pe_s`, kt-kernels' SIMD kernels), then per token a causal softmax and
/// `o = sum_s p_s c_s` with f32 accumulation.
fn attend_latent_f32(
    s: &MlaShape,
    isa: cpu::Isa,
    v: &HeadInputs,
    h: usize,
    q_lat: &[f32],
    o_lat: &mut [f32],
) -> Result<()> {
    let (tokens, used, qk) = (v.tokens, v.start + v.tokens, s.qk());
    let mut q_pe = vec![0.0f32; tokens * s.rope];
    for (t, dst) in q_pe.chunks_exact_mut(s.rope).enumerate() {
        let at = (t * s.heads + h) * qk + s.nope;
        dst.copy_from_slice(&v.q[at..at + s.rope]);
    }
    let pool = cpu::pool::global();
    let mut scores = vec![0.0f32; tokens * used];
    let mut pe = vec![0.0f32; tokens * used];
    let latent: &[u8] = bytemuck::cast_slice(v.latent);
    let k_pe: &[u8] = bytemuck::cast_slice(v.k_pe);
    cpu::matmul_with(
        isa,
        pool,
        QType::F32,
        latent,
        used,
        s.rank,
        q_lat,
        tokens,
        &mut scores,
    )
    .map_err(ModelError::Kernel)?;
    cpu::matmul_with(
        isa,
        pool,
        QType::F32,
        k_pe,
        used,
        s.rope,
        &q_pe,
        tokens,
        &mut pe,
    )
    .map_err(ModelError::Kernel)?;
    let mut acc = vec![0.0f32; s.rank];
    for t in 0..tokens {
        let visible = v.start + t + 1;
        let row = &mut scores[t * used..t * used + visible];
        for (sc, &p) in row.iter_mut().zip(&pe[t * used..]) {
            *sc = (*sc + p) * s.scale;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for sc in row.iter_mut() {
            *sc = (*sc - max).exp();
            sum += f64::from(*sc);
        }
        acc.fill(0.0);
        for (p, &w) in row.iter().enumerate() {
            let c = &v.latent[p * s.rank..(p + 1) * s.rank];
            for (a, &cv) in acc.iter_mut().zip(c) {
                *a += w * cv;
            }
        }
        let inv = (1.0 / sum) as f32;
        for (o, &a) in o_lat[t * s.rank..(t + 1) * s.rank].iter_mut().zip(&acc) {
            *o = a * inv;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    //! The absorbed attention of a layer against `kt_kernels::ops::mla_naive` (keys and
    //! values expanded per head) on random f32 weights, for prefills continuing a cache.

    use super::*;
    use kt_kernels::ops::{mla_naive, rmsnorm_inplace, KvB, LatentCache, MlaDims};
    use kt_kernels::quant::QType;
    use kt_kernels::util::SplitMix64;

    fn randn(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * rng.normal() + 1e-3).collect()
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn tensor<'a>(name: &'a str, dims: &'a [usize], data: &'a [u8]) -> Tensor<'a> {
        Tensor {
            name,
            qtype: QType::F32,
            dims,
            data,
        }
    }

    /// `out[t, r] = sum_c w[r, c] x[t, c]`, plainly.
    fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        x.chunks_exact(cols)
            .flat_map(|xt| {
                (0..rows).map(move |r| {
                    let row = &w[r * cols..(r + 1) * cols];
                    row.iter()
                        .zip(xt)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    #[test]
    fn absorbed_layer_matches_naive_expansion() {
        let (hidden, heads, nope, rope_d, rank, v) =
            (48usize, 3usize, 16usize, 8usize, 32usize, 12usize);
        let qk = nope + rope_d;
        let mut rng = SplitMix64::new(7);
        let wq = randn(&mut rng, heads * qk * hidden, 0.2);
        let wkva = randn(&mut rng, (rank + rope_d) * hidden, 0.2);
        let norm: Vec<f32> = (0..rank).map(|_| 1.0 + 0.1 * rng.normal()).collect();
        // per head: W_uk [nope, rank] and W_uv [v, rank]
        let w_uk = randn(&mut rng, heads * nope * rank, 0.2);
        let w_uv = randn(&mut rng, heads * v * rank, 0.2);
        let wo = randn(&mut rng, hidden * heads * v, 0.1);
        // attn_k_b stores each head's W_uk transposed: [rank rows of nope]
        let mut k_b = vec![0.0f32; heads * rank * nope];
        for h in 0..heads {
            for i in 0..nope {
                for r in 0..rank {
                    k_b[(h * rank + r) * nope + i] = w_uk[(h * nope + i) * rank + r];
                }
            }
        }
        let (bq, bkva, bnorm, bkb, bvb, bo) = (
            bytes(&wq),
            bytes(&wkva),
            bytes(&norm),
            bytes(&k_b),
            bytes(&w_uv),
            bytes(&wo),
        );
        let dims = [
            [hidden, heads * qk, 0],
            [hidden, rank + rope_d, 0],
            [nope, rank, heads],
            [rank, v, heads],
            [heads * v, hidden, 0],
        ];
        let attn = Attention {
            q: QueryProj::Direct {
                q: tensor("q", &dims[0][..2], &bq),
            },
            kv_a_mqa: tensor("kva", &dims[1][..2], &bkva),
            kv_a_norm: tensor("norm", std::slice::from_ref(&rank), &bnorm),
            kv_b: KvUp::Split {
                k_b: tensor("k_b", &dims[2], &bkb),
                v_b: tensor("v_b", &dims[3], &bvb),
            },
            output: tensor("o", &dims[4][..2], &bo),
        };
        let w = AttentionWeights::new(&attn).unwrap();
        let rope = RopeYarn::plain(rope_d, 10000.0).unwrap();
        let shape = MlaShape {
            heads,
            nope,
            rope: rope_d,
            rank,
            v,
            eps: 1e-6,
            scale: rope.softmax_scale(qk),
        };
        let capacity = 11;
        let mut cache = LayerCache {
            latent: vec![f32::NAN; capacity * rank],
            k_pe: vec![f32::NAN; capacity * rope_d],
        };
        let x = randn(&mut rng, capacity * hidden, 1.0);
        // the sequence in three batches: 4 tokens, 1, then 6
        let mut ours = vec![f32::NAN; capacity * hidden];
        let mut start = 0;
        for n in [4, 1, 6] {
            let (xs, os) = (
                &x[start * hidden..(start + n) * hidden],
                &mut ours[start * hidden..(start + n) * hidden],
            );
            w.forward(
                &shape,
                MatmulMode::Reference,
                &rope,
                xs,
                n,
                start,
                &mut cache,
                os,
            )
            .unwrap();
            start += n;
        }

        // naive: project, rope, normalize, expand per head, project out
        let mut q = matvec(&wq, heads * qk, hidden, &x);
        let positions: Vec<usize> = (0..capacity).collect();
        rope.apply_tokens(&mut q, &positions, qk, nope).unwrap();
        let kv = matvec(&wkva, rank + rope_d, hidden, &x);
        let mut latent = Vec::new();
        let mut k_pe = Vec::new();
        for (p, row) in kv.chunks_exact(rank + rope_d).enumerate() {
            let mut c = row[..rank].to_vec();
            rmsnorm_inplace(&mut c, &norm, 1e-6).unwrap();
            latent.extend(c);
            let mut kp = row[rank..].to_vec();
            rope.apply(&mut kp, p).unwrap();
            k_pe.extend(kp);
        }
        let dims = MlaDims {
            n_heads: heads,
            nope_dim: nope,
            rope_dim: rope_d,
            kv_lora_rank: rank,
            v_dim: v,
        };
        let mut heads_out = vec![f32::NAN; capacity * heads * v];
        let lc = LatentCache {
            latent: &latent,
            k_pe: &k_pe,
        };
        let kvb = KvB {
            w_uk: &w_uk,
            w_uv: &w_uv,
        };
        mla_naive(&dims, &q, 0, &lc, &kvb, shape.scale, &mut heads_out).unwrap();
        let expected = matvec(&wo, hidden, heads * v, &heads_out);

        assert_eq!(cache.latent, latent, "cached latents");
        for (i, (&a, &b)) in ours.iter().zip(&expected).enumerate() {
            // f32 intermediates (q, q_lat, o_lat) rounded in different places: a few ulps
            // of the largest terms, relative to outputs of size ~1
            assert!(
                (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                "out[{i}]: {a} vs {b}"
            );
        }
    }
}
