//! Multi-head latent attention (DeepSeek V2/V3 MLA) over a latent KV cache, one sequence,
//! f32, in two independent forms that must agree:
//!
//! - [`mla_naive`]: expand each head's keys `k = [W_uk c ; k_pe]` and values `v = W_uv c` from
//!   the cached latents `c`, then `softmax(q . k * scale) v`, as HF's eager attention does.
//! - [`mla_absorbed`]: fold `W_uk` into the query (`q_lat = W_uk^T q_nope`), score against the
//!   latents directly (`q_lat . c + q_pe . k_pe`), take the softmax-weighted sum of latents and
//!   only then apply `W_uv`, as llama.cpp's MLA path and the fast kernels do.
//!
//! Shapes (row-major):
//! - `q`: `[T, n_heads, nope + rope]`, the new tokens' queries after q_proj / q_b_proj and
//!   with rope already applied to each head's last `rope` elements;
//! - cache `latent`: `[L, kv_lora_rank]` (compressed kv after kv_a_norm) and `k_pe`:
//!   `[L, rope]` (rope applied, shared by all heads), `L >= start + T`;
//! - `w_uk`: `[n_heads, nope, kv_lora_rank]` and `w_uv`: `[n_heads, v_dim, kv_lora_rank]`, the
//!   two halves of each head's rows of HF's `kv_b_proj.weight`. (GGUF's `attn_v_b` has this
//!   `w_uv` layout; its `attn_k_b` stores each head transposed, `[kv_lora_rank, nope]`.)
//! - `out`: `[T, n_heads, v_dim]`.
//!
//! The new tokens sit at positions `start..start + T` and their own cache entries are already
//! written; token `t` attends to cache positions `0..=start + t` (causal prefill, or decode
//! with `T = 1`). Cache entries past `start + T` are never read.
//!
//! Dot products and softmax sums accumulate in f64; intermediates the algorithms store
//! (expanded k and v, or q_lat and the latent sum) are f32, as in any real kernel.

use super::{expect_len, rows_of, shape_err};
use crate::Result;

const OP: &str = "mla";

/// The head geometry of an MLA layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    pub n_heads: usize,
    /// `qk_nope_head_dim`
    pub nope_dim: usize,
    /// `qk_rope_head_dim`
    pub rope_dim: usize,
    pub kv_lora_rank: usize,
    /// `v_head_dim`
    pub v_dim: usize,
}

impl MlaDims {
    /// `nope + rope`, the query/key head size that sets the softmax scale.
    pub fn qk_head_dim(&self) -> usize {
        self.nope_dim + self.rope_dim
    }
}

/// The latent KV cache of one sequence: `latent` `[L, kv_lora_rank]`, `k_pe` `[L, rope]`.
#[derive(Debug, Clone, Copy)]
pub struct LatentCache<'a> {
    pub latent: &'a [f32],
    pub k_pe: &'a [f32],
}

/// `kv_b_proj` split per head: `w_uk` `[n_heads, nope, rank]`, `w_uv` `[n_heads, v_dim, rank]`.
#[derive(Debug, Clone, Copy)]
pub struct KvB<'a> {
    pub w_uk: &'a [f32],
    pub w_uv: &'a [f32],
}

/// Checks every length; returns the number of new tokens `T`.
fn check(
    d: &MlaDims,
    q: &[f32],
    start: usize,
    cache: &LatentCache,
    kv_b: &KvB,
    out: &[f32],
) -> Result<usize> {
    if d.n_heads == 0 || d.kv_lora_rank == 0 || d.v_dim == 0 || d.qk_head_dim() == 0 {
        return Err(shape_err(OP, format!("empty dimension in {d:?}")));
    }
    let t = rows_of(OP, "q", q.len(), d.n_heads * d.qk_head_dim())?;
    let l = rows_of(OP, "cache latent", cache.latent.len(), d.kv_lora_rank)?;
    expect_len(OP, "cache k_pe", cache.k_pe.len(), l * d.rope_dim)?;
    if start + t > l {
        return Err(shape_err(
            OP,
            format!(
                "{t} tokens from position {start} need {} cache rows, the cache has {l}",
                start + t
            ),
        ));
    }
    expect_len(
        OP,
        "w_uk",
        kv_b.w_uk.len(),
        d.n_heads * d.nope_dim * d.kv_lora_rank,
    )?;
    expect_len(
        OP,
        "w_uv",
        kv_b.w_uv.len(),
        d.n_heads * d.v_dim * d.kv_lora_rank,
    )?;
    expect_len(OP, "out", out.len(), t * d.n_heads * d.v_dim)?;
    Ok(t)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Turns `scores[..n]` (already scaled) into softmax probabilities, in place.
fn softmax_f64(scores: &mut [f64]) {
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// Attention by expanding per-head keys and values from the latent cache.
pub fn mla_naive(
    d: &MlaDims,
    q: &[f32],
    start: usize,
    cache: &LatentCache,
    kv_b: &KvB,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let t = check(d, q, start, cache, kv_b, out)?;
    let (h_n, nope, rope, rank, vd, qk) = (
        d.n_heads,
        d.nope_dim,
        d.rope_dim,
        d.kv_lora_rank,
        d.v_dim,
        d.qk_head_dim(),
    );
    let used = start + t;
    // one head's expanded keys (nope part) and values over the used cache, plus scores
    let mut k_nope = vec![0.0f32; used * nope];
    let mut v = vec![0.0f32; used * vd];
    let mut scores = vec![0.0f64; used];

    for h in 0..h_n {
        let w_uk = &kv_b.w_uk[h * nope * rank..(h + 1) * nope * rank];
        let w_uv = &kv_b.w_uv[h * vd * rank..(h + 1) * vd * rank];
        for s in 0..used {
            let c = &cache.latent[s * rank..(s + 1) * rank];
            for (i, w) in w_uk.chunks_exact(rank).enumerate() {
                k_nope[s * nope + i] = dot(w, c) as f32;
            }
            for (j, w) in w_uv.chunks_exact(rank).enumerate() {
                v[s * vd + j] = dot(w, c) as f32;
            }
        }
        for tok in 0..t {
            let qh = &q[(tok * h_n + h) * qk..(tok * h_n + h + 1) * qk];
            let (q_nope, q_pe) = qh.split_at(nope);
            let visible = start + tok + 1;
            for (s, sc) in scores[..visible].iter_mut().enumerate() {
                let kp = &cache.k_pe[s * rope..(s + 1) * rope];
                *sc =
                    (dot(q_nope, &k_nope[s * nope..(s + 1) * nope]) + dot(q_pe, kp)) * scale as f64;
            }
            softmax_f64(&mut scores[..visible]);
            let o = &mut out[(tok * h_n + h) * vd..(tok * h_n + h + 1) * vd];
            for (j, oj) in o.iter_mut().enumerate() {
                let acc: f64 = scores[..visible]
                    .iter()
                    .enumerate()
                    .map(|(s, &p)| p * v[s * vd + j] as f64)
                    .sum();
                *oj = acc as f32;
            }
        }
    }
    Ok(())
}

/// Attention in the latent space with `W_uk` absorbed into the query and `W_uv` applied last.
pub fn mla_absorbed(
    d: &MlaDims,
    q: &[f32],
    start: usize,
    cache: &LatentCache,
    kv_b: &KvB,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let t = check(d, q, start, cache, kv_b, out)?;
    let (h_n, nope, rope, rank, vd, qk) = (
        d.n_heads,
        d.nope_dim,
        d.rope_dim,
        d.kv_lora_rank,
        d.v_dim,
        d.qk_head_dim(),
    );
    let mut q_lat = vec![0.0f32; rank];
    let mut o_lat = vec![0.0f32; rank];
    let mut scores = vec![0.0f64; start + t];

    for tok in 0..t {
        let visible = start + tok + 1;
        for h in 0..h_n {
            let qh = &q[(tok * h_n + h) * qk..(tok * h_n + h + 1) * qk];
            let (q_nope, q_pe) = qh.split_at(nope);
            let w_uk = &kv_b.w_uk[h * nope * rank..(h + 1) * nope * rank];
            let w_uv = &kv_b.w_uv[h * vd * rank..(h + 1) * vd * rank];
            // q_lat[r] = sum_i q_nope[i] * W_uk[i, r]
            for (r, ql) in q_lat.iter_mut().enumerate() {
                *ql = q_nope
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| x as f64 * w_uk[i * rank + r] as f64)
                    .sum::<f64>() as f32;
            }
            for (s, sc) in scores[..visible].iter_mut().enumerate() {
                let c = &cache.latent[s * rank..(s + 1) * rank];
                let kp = &cache.k_pe[s * rope..(s + 1) * rope];
                *sc = (dot(&q_lat, c) + dot(q_pe, kp)) * scale as f64;
            }
            softmax_f64(&mut scores[..visible]);
            for (r, ol) in o_lat.iter_mut().enumerate() {
                *ol = scores[..visible]
                    .iter()
                    .enumerate()
                    .map(|(s, &p)| p * cache.latent[s * rank + r] as f64)
                    .sum::<f64>() as f32;
            }
            let o = &mut out[(tok * h_n + h) * vd..(tok * h_n + h + 1) * vd];
            for (oj, w) in o.iter_mut().zip(w_uv.chunks_exact(rank)) {
                *oj = dot(w, &o_lat) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::randn;
    use crate::util::SplitMix64;
    use proptest::prelude::*;

    /// Either attention form.
    type MlaFn = fn(&MlaDims, &[f32], usize, &LatentCache, &KvB, f32, &mut [f32]) -> Result<()>;

    struct Case {
        d: MlaDims,
        q: Vec<f32>,
        latent: Vec<f32>,
        k_pe: Vec<f32>,
        w_uk: Vec<f32>,
        w_uv: Vec<f32>,
        start: usize,
        t: usize,
        scale: f32,
    }

    impl Case {
        fn random(seed: u64, d: MlaDims, start: usize, t: usize, extra_cache: usize) -> Self {
            let mut rng = SplitMix64::new(seed);
            let l = start + t + extra_cache;
            let w = 1.0 / (d.kv_lora_rank as f32).sqrt();
            Case {
                q: randn(&mut rng, t * d.n_heads * d.qk_head_dim(), 1.0),
                latent: randn(&mut rng, l * d.kv_lora_rank, 1.0),
                k_pe: randn(&mut rng, l * d.rope_dim, 1.0),
                w_uk: randn(&mut rng, d.n_heads * d.nope_dim * d.kv_lora_rank, w),
                w_uv: randn(&mut rng, d.n_heads * d.v_dim * d.kv_lora_rank, w),
                scale: 1.3 / (d.qk_head_dim() as f32).sqrt(),
                d,
                start,
                t,
            }
        }

        fn run(&self, f: MlaFn) -> Vec<f32> {
            let mut out = vec![f32::NAN; self.t * self.d.n_heads * self.d.v_dim];
            let cache = LatentCache {
                latent: &self.latent,
                k_pe: &self.k_pe,
            };
            let kv_b = KvB {
                w_uk: &self.w_uk,
                w_uv: &self.w_uv,
            };
            f(
                &self.d, &self.q, self.start, &cache, &kv_b, self.scale, &mut out,
            )
            .unwrap();
            out
        }
    }

    /// f32's unit roundoff: one rounding of a value `x` moves it by at most `U * |x|`.
    const U: f64 = 1.0 / (1u64 << 24) as f64;

    /// `sum |a_i b_i|` and `sum a_i b_i` in f64.
    fn abs_and_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
        a.iter().zip(b).fold((0.0, 0.0), |(m, d), (&x, &y)| {
            let p = x as f64 * y as f64;
            (m + p.abs(), d + p)
        })
    }

    /// Per output element, how far the two forms may be apart from the roundings they do.
    /// Both sum in f64 (error ~n 2^-53 of the terms, negligible) and round what they store to
    /// f32: the naive form `k_nope` and `v`, the absorbed form `q_lat` and `o_lat`, both their
    /// output. So, with the exact f64 values of every stored quantity:
    /// - a score moves by at most `U * scale * (sum_i |q_nope_i k_nope_si| + sum_r |q_lat_r
    ///   c_sr|)` (one rounding of each `k_nope` or `q_lat` element, either form), at most `D`
    ///   over the visible positions; softmax then moves each `p_s` by at most
    ///   `p_s (e^{2D} - 1)`, hence the output by `(e^{2D} - 1) sum_s p_s |v_sj|`;
    /// - rounding `v` moves the output by `U sum_s p_s |v_sj|`, rounding `o_lat` by
    ///   `U sum_r |W_uv,jr o_lat_r|`, and each form's final rounding by `U |out_j|`.
    ///
    /// The sum is a first-order bound in `U`; twice it covers the second-order terms.
    fn agreement_bound(c: &Case) -> Vec<f64> {
        let d = c.d;
        let (h_n, nope, rope, rank, vd, qk) = (
            d.n_heads,
            d.nope_dim,
            d.rope_dim,
            d.kv_lora_rank,
            d.v_dim,
            d.qk_head_dim(),
        );
        let mut bound = Vec::with_capacity(c.t * h_n * vd);
        for tok in 0..c.t {
            let visible = c.start + tok + 1;
            for h in 0..h_n {
                let qh = &c.q[(tok * h_n + h) * qk..(tok * h_n + h + 1) * qk];
                let (q_nope, q_pe) = qh.split_at(nope);
                let w_uk = &c.w_uk[h * nope * rank..(h + 1) * nope * rank];
                let w_uv = &c.w_uv[h * vd * rank..(h + 1) * vd * rank];
                let q_lat: Vec<f32> = (0..rank)
                    .map(|r| {
                        (0..nope)
                            .map(|i| q_nope[i] as f64 * w_uk[i * rank + r] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let mut scores = Vec::with_capacity(visible);
                let mut max_shift = 0.0f64;
                for s in 0..visible {
                    let cs = &c.latent[s * rank..(s + 1) * rank];
                    let kp = &c.k_pe[s * rope..(s + 1) * rope];
                    let k_nope: Vec<f32> = w_uk
                        .chunks_exact(rank)
                        .map(|w| abs_and_dot(w, cs).1 as f32)
                        .collect();
                    let (lat_abs, lat) = abs_and_dot(&q_lat, cs);
                    let (nope_abs, _) = abs_and_dot(q_nope, &k_nope);
                    let pe = abs_and_dot(q_pe, kp).1;
                    let shift = U * c.scale as f64 * (lat_abs + nope_abs);
                    max_shift = max_shift.max(shift);
                    scores.push((lat + pe) * c.scale as f64);
                }
                softmax_f64(&mut scores);
                let o_lat: Vec<f32> = (0..rank)
                    .map(|r| {
                        (0..visible)
                            .map(|s| scores[s] * c.latent[s * rank + r] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                for w in w_uv.chunks_exact(rank) {
                    let v_weighted: f64 = (0..visible)
                        .map(|s| {
                            scores[s] * abs_and_dot(w, &c.latent[s * rank..(s + 1) * rank]).1.abs()
                        })
                        .sum();
                    let (o_abs, out) = abs_and_dot(w, &o_lat);
                    let softmax_part = (2.0 * max_shift).exp_m1() * v_weighted;
                    let rounding_part = U * (v_weighted + o_abs + 2.0 * out.abs());
                    bound.push(2.0 * (softmax_part + rounding_part));
                }
            }
        }
        bound
    }

    /// The two forms agree within [`agreement_bound`] element by element.
    fn assert_agree(c: &Case, a: &[f32], b: &[f32]) {
        let bound = agreement_bound(c);
        for (i, ((&x, &y), &lim)) in a.iter().zip(b).zip(&bound).enumerate() {
            assert!(x.is_finite() && y.is_finite(), "[{i}] {x} {y}");
            assert!(
                ((x - y).abs() as f64) <= lim,
                "[{i}] {x} vs {y} (bound {lim:.3e})"
            );
        }
    }

    fn dims(n_heads: usize, nope: usize, rope: usize, rank: usize, v: usize) -> MlaDims {
        MlaDims {
            n_heads,
            nope_dim: nope,
            rope_dim: rope,
            kv_lora_rank: rank,
            v_dim: v,
        }
    }

    #[test]
    fn single_position_returns_its_value() {
        // one cache row: softmax is 1 whatever the scores, out = W_uv c
        let c = Case::random(3, dims(2, 4, 2, 6, 3), 0, 1, 0);
        let out = c.run(mla_naive);
        for h in 0..2 {
            for j in 0..3 {
                let w = &c.w_uv[(h * 3 + j) * 6..(h * 3 + j + 1) * 6];
                let want: f64 = w
                    .iter()
                    .zip(&c.latent)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                assert!((out[h * 3 + j] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0));
            }
        }
        assert_agree(&c, &c.run(mla_absorbed), &out);
    }

    #[test]
    fn deepseek_v2_lite_shape() {
        // 16 heads, nope 128, rope 64, rank 512, v 128; a prefill of 5 after 3 cached
        let c = Case::random(7, dims(16, 128, 64, 512, 128), 3, 5, 2);
        assert_agree(&c, &c.run(mla_absorbed), &c.run(mla_naive));
    }

    #[test]
    fn shape_errors() {
        let c = Case::random(1, dims(2, 4, 2, 6, 3), 2, 2, 0);
        let cache = LatentCache {
            latent: &c.latent,
            k_pe: &c.k_pe,
        };
        let kv_b = KvB {
            w_uk: &c.w_uk,
            w_uv: &c.w_uv,
        };
        let mut out = vec![0.0; 12];
        for f in [mla_naive as MlaFn, mla_absorbed] {
            assert!(f(&c.d, &c.q, 2, &cache, &kv_b, 0.3, &mut out).is_ok());
            assert!(
                f(&c.d, &c.q, 3, &cache, &kv_b, 0.3, &mut out).is_err(),
                "past the cache"
            );
            assert!(
                f(&c.d, &c.q[..11], 2, &cache, &kv_b, 0.3, &mut out).is_err(),
                "q not whole heads"
            );
            assert!(
                f(&c.d, &c.q, 2, &cache, &kv_b, 0.3, &mut out[..11]).is_err(),
                "out"
            );
            let short = LatentCache {
                latent: &c.latent,
                k_pe: &c.k_pe[..7],
            };
            assert!(
                f(&c.d, &c.q, 2, &short, &kv_b, 0.3, &mut out).is_err(),
                "k_pe rows"
            );
            let bad_w = KvB {
                w_uk: &c.w_uk[1..],
                w_uv: &c.w_uv,
            };
            assert!(
                f(&c.d, &c.q, 2, &cache, &bad_w, 0.3, &mut out).is_err(),
                "w_uk"
            );
            let bad_v = KvB {
                w_uk: &c.w_uk,
                w_uv: &c.w_uv[1..],
            };
            assert!(
                f(&c.d, &c.q, 2, &cache, &bad_v, 0.3, &mut out).is_err(),
                "w_uv"
            );
            assert!(
                f(&dims(0, 4, 2, 6, 3), &c.q, 2, &cache, &kv_b, 0.3, &mut out).is_err(),
                "no heads"
            );
        }
    }

    proptest! {
        #[test]
        fn naive_and_absorbed_agree(seed in any::<u64>(), heads in 1usize..5, nope in 1usize..33, rope in 0usize..17, rank in 1usize..65,
                                    v in 1usize..33, start in 0usize..12, t in 1usize..7, extra in 0usize..3) {
            let c = Case::random(seed, dims(heads, nope, rope, rank, v), start, t, extra);
            assert_agree(&c, &c.run(mla_absorbed), &c.run(mla_naive));
        }

        /// A prefill of T tokens is T decodes, bit for bit, and no token reads the cache past
        /// its own position.
        #[test]
        fn causal_prefill_equals_decode_steps(seed in any::<u64>(), start in 0usize..6, t in 1usize..5) {
            let d = dims(3, 8, 4, 16, 5);
            let c = Case::random(seed, d, start, t, 0);
            for f in [mla_naive as MlaFn, mla_absorbed] {
                let full = c.run(f);
                let row_q = d.n_heads * d.qk_head_dim();
                let row_o = d.n_heads * d.v_dim;
                for tok in 0..t {
                    let pos = start + tok;
                    // the decode sees a cache cut right after its position, with garbage after it
                    let mut latent = c.latent[..(pos + 1) * d.kv_lora_rank].to_vec();
                    let mut k_pe = c.k_pe[..(pos + 1) * d.rope_dim].to_vec();
                    latent.extend(std::iter::repeat_n(1e30f32, 2 * d.kv_lora_rank));
                    k_pe.extend(std::iter::repeat_n(-1e30f32, 2 * d.rope_dim));
                    let step = Case { q: c.q[tok * row_q..(tok + 1) * row_q].to_vec(), latent, k_pe, w_uk: c.w_uk.clone(), w_uv: c.w_uv.clone(), start: pos, t: 1, d, scale: c.scale };
                    let one = step.run(f);
                    prop_assert_eq!(&one[..], &full[tok * row_o..(tok + 1) * row_o]);
                }
            }
        }
    }
}
