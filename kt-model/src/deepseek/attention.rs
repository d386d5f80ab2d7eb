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
//! The projections go through [`Linear::apply`] in the model's [`MatmulMode`]. Scores,
//! softmax and latent sums: in the reference mode plain loops with f64 accumulation (the
//! model's exact function); in the quantized mode, on every backend, ggml's f32 order
//! ([`ggml_f32`]: `K q` as `ggml_vec_dot_f32` over `[c | k_pe]`, its softmax and vectorized
//! `expf`, `V p` as its `MUL_MAT` sums it), since their outputs feed activation quantizers
//! whose codes flip on one-ulp differences (docs/parity.md).
//!
//! Steps 3 and 4 run one head per pool work item. Buffers are per-thread scratch that grows
//! to the largest call and is reused, so a decode step allocates nothing here; each head
//! writes its output into its own range of the caller's buffer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use kt_kernels::cpu;
use kt_kernels::ops::RopeYarn;

use super::cache::LayerCache;
use super::ggml_f32::{self, SumOrder};
use super::linear::{dequantize_vector, Linear, MatmulMode};
use super::norm::rms_norm_inplace;
use crate::config::{DeepSeekConfig, YarnScaling};
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
    /// The softmax scale, YaRN's `mscale_all_dim` correction included (the reference mode's,
    /// from f64).
    pub scale: f32,
    /// The same scale as llama.cpp computes it in f32 (the quantized mode's): one ulp off
    /// `scale` on both tiny fixtures, which moves most attention probabilities by an ulp.
    pub ggml_scale: f32,
    /// The quantized mode's rope, as llama.cpp computes it in f32.
    pub ggml_rope: ggml_f32::Rope,
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
            ggml_scale: ggml_kq_scale(c.rope_scaling, c.qk_head_dim()),
            ggml_rope: ggml_rope(c),
        }
    }

    fn qk(&self) -> usize {
        self.nope + self.rope
    }
}

/// `f = 1 / (1 / factor)` and `m_all = yarn_log_multiplier / 0.1` (1 and 0 without YaRN),
/// rounded to f32 as llama.cpp's hyper-parameters are: the GGUF stores `0.1 * m_all` as f32
/// and llama.cpp divides it by `0.1f`.
fn ggml_yarn_factors(yarn: Option<YarnScaling>) -> (f32, f32) {
    match yarn {
        Some(y) => (
            1.0f32 / (1.0f32 / y.factor),
            ((0.1 * f64::from(y.mscale_all_dim)) as f32) / 0.1f32,
        ),
        None => (1.0, 0.0),
    }
}

/// llama.cpp's `yarn_attn_factor` (llama-context), in its f32 steps: with YaRN,
/// `get_mscale(f, m) / get_mscale(f, m_all)` (1 for DeepSeek2, which takes `m = m_all`) or
/// `get_mscale(f, 1)` without `m_all`, times `1 / (1 + 0.1 ln f)`; else 1. `f32::ln` is libm's
/// `logf`, as in llama.cpp.
fn ggml_attn_factor(yarn: Option<YarnScaling>) -> f32 {
    let (factor, m_all) = ggml_yarn_factors(yarn);
    if yarn.is_none() {
        return 1.0;
    }
    let mut attn_factor = 1.0f32;
    if m_all == 0.0 && factor > 1.0 {
        attn_factor = 0.1f32 * factor.ln() + 1.0;
    }
    attn_factor * (1.0f32 / (1.0f32 + 0.1f32 * factor.ln()))
}

/// llama.cpp's `kq_scale` for DeepSeek2 (the graph's): `mscale = attn_factor (1 + 0.1 ln f)
/// (1 + 0.1 m_all ln f)`, `kq_scale = mscale * mscale / sqrt(qk_head_dim)`, in f32.
fn ggml_kq_scale(yarn: Option<YarnScaling>, qk_head_dim: usize) -> f32 {
    let (factor, m_all) = ggml_yarn_factors(yarn);
    let log_f = factor.ln();
    let attn_factor_org = ggml_attn_factor(yarn) * (1.0f32 + 0.1f32 * log_f);
    let mscale = attn_factor_org * (1.0f32 + 0.1f32 * m_all * log_f);
    1.0f32 * mscale * mscale / (qk_head_dim as f32).sqrt()
}

/// llama.cpp's rope of the config ([`ggml_f32::Rope`]).
fn ggml_rope(c: &DeepSeekConfig) -> ggml_f32::Rope {
    let yarn = c.rope_scaling.map(|y| ggml_f32::Yarn {
        factor: y.factor,
        n_ctx_orig: y.original_max_position_embeddings,
        beta_fast: y.beta_fast,
        beta_slow: y.beta_slow,
    });
    ggml_f32::Rope::new(
        c.qk_rope_head_dim,
        c.rope_theta,
        yarn,
        ggml_attn_factor(c.rope_scaling),
    )
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

/// `v[..n]`, grown (zero-filled) when shorter: scratch that allocates only on a larger call.
fn sized<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// The calling thread's buffers for one [`AttentionWeights::forward`].
#[derive(Default)]
struct CallScratch {
    /// Queries `[T, H, nope + rope]`.
    q: Vec<f32>,
    /// The query LoRA's low-rank activations `[T, q_lora_rank]`.
    qa: Vec<f32>,
    /// `[c | k_pe]` of the new tokens `[T, rank + rope]`.
    kv: Vec<f32>,
    /// The quantized mode's cos/sin of one position.
    rope_cache: Vec<f32>,
    /// Head outputs as the heads write them, `[H, T, v]` f32 bits.
    heads: Vec<AtomicU32>,
    /// Head outputs as `W_o` reads them, `[T, H, v]`.
    heads_out: Vec<f32>,
}

/// A pool thread's buffers for one head of one call.
#[derive(Default)]
struct HeadScratch {
    q_nope: Vec<f32>,
    q_lat: Vec<f32>,
    o_lat: Vec<f32>,
    o_head: Vec<f32>,
    /// `W_uk` of a fused `attn_kv_b`, dequantized `[nope, rank]`.
    w_uk: Vec<f32>,
    /// A block's scores over the visible positions (quantized mode).
    scores: Vec<f32>,
    /// The latent sum's accumulator lanes.
    lanes: Vec<f32>,
    /// The reference mode's f64 scores and latent accumulator.
    scores64: Vec<f64>,
    acc64: Vec<f64>,
}

thread_local! {
    static CALL_SCRATCH: RefCell<CallScratch> = RefCell::default();
    static HEAD_SCRATCH: RefCell<HeadScratch> = RefCell::default();
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
        CALL_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            self.forward_in(s, mode, rope, x, tokens, start, cache, out, &mut scratch)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_in(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        rope: &RopeYarn,
        x: &[f32],
        tokens: usize,
        start: usize,
        cache: &mut LayerCache,
        out: &mut [f32],
        scratch: &mut CallScratch,
    ) -> Result<()> {
        let (h_n, qk) = (s.heads, s.qk());
        let CallScratch {
            q,
            qa,
            kv,
            rope_cache,
            heads,
            heads_out,
        } = scratch;

        // 1. queries [T, H, nope + rope], rope part rotated
        let q = sized(q, tokens * h_n * qk);
        match &self.q {
            QueryWeights::Direct(w) => w.apply(mode, x, tokens, q)?,
            QueryWeights::LoRA { a, a_norm, b } => {
                let qa = sized(qa, tokens * a.rows);
                a.apply(mode, x, tokens, qa)?;
                rms_norm_inplace(mode, qa, a_norm, s.eps)?;
                b.apply(mode, qa, tokens, q)?;
            }
        }
        let rope_cache = sized(rope_cache, s.ggml_rope.cache_len());
        for (t, row) in q.chunks_exact_mut(h_n * qk).enumerate() {
            match mode {
                MatmulMode::Reference => rope.apply_heads(row, qk, s.nope, start + t)?,
                MatmulMode::Quantized(_) => {
                    s.ggml_rope.cache(start + t, rope_cache);
                    for head in row.chunks_exact_mut(qk) {
                        ggml_f32::Rope::rotate(rope_cache, &mut head[s.nope..]);
                    }
                }
            }
        }

        // 2. the new cache rows
        let kv_w = s.rank + s.rope;
        let kv = sized(kv, tokens * kv_w);
        self.kv_a.apply(mode, x, tokens, kv)?;
        for (t, row) in kv.chunks_exact_mut(kv_w).enumerate() {
            let (c, k_pe) = row.split_at_mut(s.rank);
            rms_norm_inplace(mode, c, &self.kv_a_norm, s.eps)?;
            match mode {
                MatmulMode::Reference => rope.apply(k_pe, start + t)?,
                MatmulMode::Quantized(_) => {
                    s.ggml_rope.cache(start + t, rope_cache);
                    ggml_f32::Rope::rotate(rope_cache, k_pe);
                }
            }
            let p = start + t;
            cache.latent[p * s.rank..(p + 1) * s.rank].copy_from_slice(c);
            cache.k_pe[p * s.rope..(p + 1) * s.rope].copy_from_slice(k_pe);
        }
        let used = start + tokens;
        let view = HeadInputs {
            q,
            tokens,
            start,
            capacity: cache.latent.len() / s.rank.max(1),
            latent: &cache.latent[..used * s.rank],
            k_pe: &cache.k_pe[..used * s.rope],
        };

        // 3. + 4. per head: absorb, attend in the latent space, expand. Heads are
        // independent, so they are the pool's work items; the projections inside run inline
        // on the worker and every sum keeps its order, so the result does not depend on the
        // number of threads. Head h writes only its range h of `heads` (relaxed stores; the
        // pool's join orders them before the reads below).
        let head_len = tokens * s.v;
        if heads.len() < h_n * head_len {
            heads.resize_with(h_n * head_len, AtomicU32::default);
        }
        let heads = &heads[..h_n * head_len];
        let failure = OnceLock::new();
        cpu::pool::global().for_each(h_n, &|h, _thread| {
            HEAD_SCRATCH.with(|hs| {
                let mut hs = hs.borrow_mut();
                match self.head(s, mode, &view, h, &mut hs) {
                    Ok(o_head) => {
                        let dst = &heads[h * head_len..(h + 1) * head_len];
                        for (d, &v) in dst.iter().zip(o_head) {
                            d.store(v.to_bits(), Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        let _ = failure.set(e);
                    }
                }
            })
        });
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let heads_out = sized(heads_out, tokens * h_n * s.v);
        for (h, head) in heads.chunks_exact(head_len).enumerate() {
            for (t, src) in head.chunks_exact(s.v).enumerate() {
                let at = (t * h_n + h) * s.v;
                for (d, v) in heads_out[at..at + s.v].iter_mut().zip(src) {
                    *d = f32::from_bits(v.load(Ordering::Relaxed));
                }
            }
        }
        self.output.apply(mode, heads_out, tokens, out)
    }

    /// Head `h` of every token: absorb its no-rope query, attend over the visible cache
    /// rows, expand; returns its output `[T, v]` (in `hs`).
    fn head<'s>(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        v: &HeadInputs,
        h: usize,
        hs: &'s mut HeadScratch,
    ) -> Result<&'s [f32]> {
        let (h_n, qk, tokens) = (s.heads, s.qk(), v.tokens);
        let q_nope = sized(&mut hs.q_nope, tokens * s.nope);
        for (t, dst) in q_nope.chunks_exact_mut(s.nope).enumerate() {
            let at = (t * h_n + h) * qk;
            dst.copy_from_slice(&v.q[at..at + s.nope]);
        }
        let q_lat = sized(&mut hs.q_lat, tokens * s.rank);
        self.absorb(s, mode, h, q_nope, tokens, q_lat, &mut hs.w_uk)?;
        let o_lat = sized(&mut hs.o_lat, tokens * s.rank);
        match mode {
            MatmulMode::Quantized(_) => {
                // a decode step sums `V p` as ggml_vec_dot_f32, a batch as llamafile's kernel
                let order = SumOrder::of_mul_mat(s.rank, tokens);
                let block = tokens.min(GGML_BLOCK);
                let buffers = GgmlBuffers {
                    scores: sized(&mut hs.scores, block * v.capacity),
                    lanes: sized(&mut hs.lanes, block * order.scratch_len(s.rank)),
                };
                ggml_f32::with_fma(
                    #[inline(always)]
                    || attend_latent_ggml(s, v, h, q_lat, order, buffers, o_lat),
                );
            }
            MatmulMode::Reference => {
                for t in 0..tokens {
                    let at = (t * h_n + h) * qk + s.nope;
                    let query = LatentQuery {
                        q_lat: &q_lat[t * s.rank..(t + 1) * s.rank],
                        q_pe: &v.q[at..at + s.rope],
                    };
                    let visible = v.start + t + 1;
                    let o = &mut o_lat[t * s.rank..(t + 1) * s.rank];
                    let scores = &mut sized(&mut hs.scores64, v.capacity)[..visible];
                    let acc = sized(&mut hs.acc64, s.rank);
                    attend_latent(s, &query, v.latent, v.k_pe, scores, acc, o);
                }
            }
        }
        let o_head = sized(&mut hs.o_head, tokens * s.v);
        self.expand(s, mode, h, o_lat, tokens, o_head)?;
        Ok(o_head)
    }

    /// `q_lat[t] = W_uk(h)^T q_nope[t]` for `tokens` rows.
    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &self,
        s: &MlaShape,
        mode: MatmulMode,
        h: usize,
        q_nope: &[f32],
        tokens: usize,
        q_lat: &mut [f32],
        w_scratch: &mut Vec<f32>,
    ) -> Result<()> {
        match &self.kv_up {
            // attn_k_b's head h is [rank rows of nope]: W_uk^T itself
            KvUpWeights::Split { k_b, .. } => {
                Linear::from_stacked(k_b, h)?.apply(mode, q_nope, tokens, q_lat)
            }
            KvUpWeights::Fused(kv_b) => {
                let w_uk = kv_b.row_range(h * (s.nope + s.v), s.nope)?;
                let w = sized(w_scratch, s.nope * s.rank);
                for (i, row) in w.chunks_exact_mut(s.rank).enumerate() {
                    w_uk.dequantize_row(i, row)?;
                }
                transposed_product(w, s.nope, s.rank, q_nope, tokens, q_lat);
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

/// `out[t, r] = sum_i x[t, i] * w[i, r]` for `w` `[n, rank]`, f64 sums (`out` holds the
/// accumulator of a row until it is rounded in place).
fn transposed_product(w: &[f32], n: usize, rank: usize, x: &[f32], tokens: usize, out: &mut [f32]) {
    for t in 0..tokens {
        let o = &mut out[t * rank..(t + 1) * rank];
        for (r, ov) in o.iter_mut().enumerate() {
            let acc: f64 = x[t * n..(t + 1) * n]
                .iter()
                .enumerate()
                .map(|(i, &xi)| xi as f64 * w[i * rank + r] as f64)
                .sum();
            *ov = acc as f32;
        }
    }
}

/// What every head of one call reads: the rotated queries `[T, H, nope + rope]` and the
/// cache rows visible to the last token.
struct HeadInputs<'v> {
    q: &'v [f32],
    tokens: usize,
    start: usize,
    /// Positions the cache holds: score buffers are sized for it once, not per step.
    capacity: usize,
    latent: &'v [f32],
    k_pe: &'v [f32],
}

/// One head's query of one token, in the latent space.
struct LatentQuery<'q> {
    q_lat: &'q [f32],
    q_pe: &'q [f32],
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Tokens whose scores and latent sums are computed together, so that each cache row is read
/// once per block rather than once per token.
const GGML_BLOCK: usize = 8;

/// The quantized mode's buffers: a block's scores over the visible positions
/// (`[GGML_BLOCK, start + T]`) and the latent sums' lanes (`[GGML_BLOCK, scratch_len]`).
struct GgmlBuffers<'b> {
    scores: &'b mut [f32],
    lanes: &'b mut [f32],
}

/// `o_lat[t] = sum_s softmax_s(scale * [q_lat | q_pe] . [c_s | k_pe_s]) c_s` over the positions
/// `s <= start + t` visible to token `t`, for head `h` of every token, in ggml's f32 order
/// ([`ggml_f32`]): llama.cpp's MLA keeps `[c | k_pe]` as one cache row and the query as
/// `[q_lat | q_pe]`, so each score is one `ggml_vec_dot_f32` over the concatenations; `scale`
/// is applied inside its softmax; the sum is `V^T p` in `order`. Tokens go in blocks of
/// [`GGML_BLOCK`]; a block's rows of probabilities are padded with zeros to its last token's
/// positions, which adds exact zeros (as ggml's masked entries do).
#[inline(always)]
fn attend_latent_ggml(
    s: &MlaShape,
    v: &HeadInputs,
    h: usize,
    q_lat: &[f32],
    order: SumOrder,
    b: GgmlBuffers,
    o_lat: &mut [f32],
) {
    let (qk, stride) = (s.qk(), v.start + v.tokens);
    let lanes_len = order.scratch_len(s.rank);
    for first in (0..v.tokens).step_by(GGML_BLOCK) {
        let n = GGML_BLOCK.min(v.tokens - first);
        let seen = v.start + first + n;
        let scores = &mut b.scores[..n * stride];
        for p in 0..seen {
            let c = &v.latent[p * s.rank..(p + 1) * s.rank];
            let k_pe = &v.k_pe[p * s.rope..(p + 1) * s.rope];
            for i in 0..n {
                let t = first + i;
                if p <= v.start + t {
                    let at = (t * s.heads + h) * qk + s.nope;
                    let q_pe = &v.q[at..at + s.rope];
                    let q = &q_lat[t * s.rank..(t + 1) * s.rank];
                    scores[i * stride + p] = ggml_f32::vec_dot_f32_concat(c, k_pe, q, q_pe);
                }
            }
        }
        for (i, row) in scores.chunks_exact_mut(stride).enumerate() {
            let visible = v.start + first + i + 1;
            ggml_f32::softmax_row(&mut row[..visible], s.ggml_scale);
            row[visible..seen].fill(0.0);
        }
        let rows = &v.latent[..seen * s.rank];
        let o = &mut o_lat[first * s.rank..(first + n) * s.rank];
        ggml_f32::weighted_rows(
            order,
            rows,
            scores,
            stride,
            &mut b.lanes[..n * lanes_len],
            o,
        );
    }
}

/// `o = sum_s softmax_s((q_lat . c_s + q_pe . k_pe_s) * scale) c_s` over `s < scores.len()`,
/// in f64 (`scores` `[visible]` and `acc` `[rank]` are scratch).
fn attend_latent(
    s: &MlaShape,
    q: &LatentQuery,
    latent: &[f32],
    k_pe: &[f32],
    scores: &mut [f64],
    acc: &mut [f64],
    o: &mut [f32],
) {
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
            ggml_scale: rope.softmax_scale(qk),
            ggml_rope: ggml_f32::Rope::new(rope_d, 10000.0, None, 1.0),
        };
        let capacity = 11;
        let x = randn(&mut rng, capacity * hidden, 1.0);
        // the sequence in three batches (4 tokens, 1, then 6) in each mode; the quantized mode
        // of f32 weights has no quantizer, only ggml's f32 order
        let run = |mode: MatmulMode| {
            let mut cache = LayerCache {
                latent: vec![f32::NAN; capacity * rank],
                k_pe: vec![f32::NAN; capacity * rope_d],
            };
            let mut out = vec![f32::NAN; capacity * hidden];
            let mut start = 0;
            for n in [4, 1, 6] {
                let (xs, os) = (
                    &x[start * hidden..(start + n) * hidden],
                    &mut out[start * hidden..(start + n) * hidden],
                );
                w.forward(&shape, mode, &rope, xs, n, start, &mut cache, os)
                    .unwrap();
                start += n;
            }
            (cache, out)
        };
        let (cache, ours) = run(MatmulMode::Reference);
        let (_, ggml_order) = run(MatmulMode::Quantized(kt_kernels::cpu::Isa::Scalar));

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
        for (i, ((&a, &g), &b)) in ours.iter().zip(&ggml_order).zip(&expected).enumerate() {
            // f32 intermediates (q, q_lat, o_lat) rounded in different places: a few ulps
            // of the largest terms, relative to outputs of size ~1
            assert!(
                (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                "out[{i}]: {a} vs {b}"
            );
            assert!(
                (g - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                "quantized mode out[{i}]: {g} vs {b}"
            );
        }
    }

    /// The YaRN settings of the two fixture runs as `config::from_gguf` reads them: factor and
    /// `yarn_log_multiplier` (`0.1 * mscale_all_dim`) as the GGUFs store them.
    fn fixture_yarn(model: &str) -> YarnScaling {
        let (factor, log_mul) = match model {
            "tiny_dsv2_q4_k_m" => (40.0f32, 0.0707f32),
            _ => (4.0, 0.1),
        };
        let mscale_all_dim = (f64::from(log_mul) / 0.1) as f32;
        YarnScaling {
            factor,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: mscale_all_dim,
            mscale_all_dim,
        }
    }

    #[test]
    fn kq_scale_and_softmax_are_llama_cpps() {
        use crate::deepseek::ggml_f32::llama_cpp;
        for model in llama_cpp::MODELS {
            let scale = ggml_kq_scale(Some(fixture_yarn(model)), 96);
            for call in ["prompt", "decode"] {
                let (shape, kq) = llama_cpp::tensor(model, &format!("{call}_kq"));
                let (_, want) = llama_cpp::tensor(model, &format!("{call}_kq_soft_max"));
                let (tokens, visible) = (shape[1], shape[2]);
                for (r, (x, w)) in kq
                    .chunks_exact(visible)
                    .zip(want.chunks_exact(visible))
                    .enumerate()
                {
                    let seen = if tokens == 1 { visible } else { r % tokens + 1 };
                    let mut p = x[..seen].to_vec();
                    ggml_f32::softmax_row(&mut p, scale);
                    let same = p.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{model} {call} row {r}: scale {scale:e}");
                }
            }
        }
        // kt's f64-derived scale is one f32 ulp off llama.cpp's on both
        let rope = RopeYarn::new(
            32,
            10000.0,
            Some(kt_kernels::ops::YarnScaling {
                factor: 40.0,
                original_max_pos: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: 0.707,
                mscale_all_dim: 0.707,
            }),
        )
        .unwrap();
        assert_ne!(
            rope.softmax_scale(96),
            ggml_kq_scale(Some(fixture_yarn("tiny_dsv2_q4_k_m")), 96)
        );
    }

    #[test]
    fn rope_is_llama_cpps() {
        use crate::deepseek::ggml_f32::llama_cpp;
        for model in llama_cpp::MODELS {
            let y = fixture_yarn(model);
            let yarn = ggml_f32::Yarn {
                factor: y.factor,
                n_ctx_orig: y.original_max_position_embeddings,
                beta_fast: y.beta_fast,
                beta_slow: y.beta_slow,
            };
            let rope = ggml_f32::Rope::new(32, 10000.0, Some(yarn), ggml_attn_factor(Some(y)));
            let mut cache = vec![f32::NAN; rope.cache_len()];
            for (call, first_pos) in [("prompt", 0), ("decode", 16)] {
                let (shape, mut q) = llama_cpp::tensor(model, &format!("{call}_q_pe_in"));
                let (_, want) = llama_cpp::tensor(model, &format!("{call}_q_pe"));
                let per_token = shape[1] * shape[2];
                for (t, row) in q.chunks_exact_mut(per_token).enumerate() {
                    rope.cache(first_pos + t, &mut cache);
                    for head in row.chunks_exact_mut(shape[2]) {
                        ggml_f32::Rope::rotate(&cache, head);
                    }
                }
                let same = q.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{model} {call}");
            }
        }
    }
}
