//! Rotary position embedding of MLA's rope part (`q_pe` per head, `k_pe` shared by all
//! heads) with DeepSeek's YaRN scaling, as HF transformers' DeepSeek V2/V3 and llama.cpp's
//! `deepseek2` graph compute it.
//!
//! # Pair convention
//! Element pairs `(x[2i], x[2i + 1])` rotate together by the angle `pos * inv_freq[i]`:
//! ```text
//! x[2i]     <- (x[2i] cos - x[2i+1] sin) * m
//! x[2i + 1] <- (x[2i] sin + x[2i+1] cos) * m        (m = magnitude(), 1 for real DeepSeeks)
//! ```
//! This is llama.cpp's NORM rope (mode 0) on GGUF weights, which the converter leaves in the
//! checkpoint's order, and HF DeepSeek V2's complex form (`view_as_complex` over adjacent
//! pairs). HF DeepSeek V3 with `rope_interleave` computes the same rotation but writes its
//! result de-interleaved: the pair `i` lands at `(i, rope_dim/2 + i)`. Attention scores are
//! dot products over the whole rope slice, and q and k go through the same permutation, so
//! the scores (and everything after them) are identical in either layout; kt keeps the
//! interleaved GGUF layout.
//!
//! # YaRN
//! With `f = factor`, `d = rope_dim`, `b = theta`, `L = original_max_pos`:
//! - base frequencies `e_i = b^(-2i/d)` (extrapolation) and `e_i / f` (interpolation);
//! - the correction dims `c(r) = d ln(L / (2 pi r)) / (2 ln b)`,
//!   `low = max(floor(c(beta_fast)), 0)`,
//!   `high = min(ceil(c(beta_slow)), d - 1)`, `ramp_i = clamp((i - low) / (high - low), 0, 1)`
//!   (`high += 0.001` when equal);
//! - `inv_freq_i = e_i / f * ramp_i + e_i * (1 - ramp_i)`: fast pairs keep their frequency, slow
//!   pairs are interpolated;
//! - `get_mscale(f, s) = 1 + 0.1 s ln f` (1 when `f <= 1`); the cos/sin magnitude is
//!   `get_mscale(f, mscale) / get_mscale(f, mscale_all_dim)` when both are non-zero, else
//!   `get_mscale(f, 1)`;
//! - the attention softmax scale is `qk_head_dim^-0.5 * get_mscale(f, mscale_all_dim)^2` when
//!   `mscale_all_dim` is non-zero.
//!
//! A GGUF stores `rope.scaling.yarn_log_multiplier = 0.1 * mscale_all_dim` and no `mscale`;
//! llama.cpp then takes `mscale = mscale_all_dim` for deepseek2 (magnitude 1), which is also
//! what the V2 (0.707, 0.707) and V3 (1.0, 1.0) configs give.
//!
//! Frequencies are computed in f64 and stored as f32 (HF keeps an f32 `inv_freq` buffer);
//! the angle `pos * inv_freq[i]` is formed exactly in f64 (an f32 times an integer below
//! 2^29 fits in 53 bits) and rotated in f64, so the only rounding is the final one.

use super::{expect_len, rows_of, shape_err};
use crate::Result;

const OP: &str = "rope";

/// DeepSeek's YaRN parameters (HF `rope_parameters` with `rope_type: yarn`, GGUF
/// `<arch>.rope.scaling.*`). A zero `mscale` / `mscale_all_dim` means "absent".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_pos: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

/// `1 + 0.1 s ln f`, or 1 when there is no scaling (`f <= 1`).
pub fn yarn_get_mscale(factor: f64, s: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * s * factor.ln() + 1.0
    }
}

/// Precomputed rotary frequencies and magnitude for one rope dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeYarn {
    rope_dim: usize,
    inv_freq: Vec<f32>,
    magnitude: f64,
    /// `get_mscale(factor, mscale_all_dim)^2`, folded into the softmax scale.
    score_mscale2: f64,
}

impl RopeYarn {
    /// Rope without scaling (`factor` 1 or no `rope_scaling`): `inv_freq_i = theta^(-2i/d)`.
    pub fn plain(rope_dim: usize, theta: f64) -> Result<Self> {
        Self::new(rope_dim, theta, None)
    }

    /// Rope of dimension `rope_dim` with base `theta`, YaRN-scaled when `scaling` is given.
    pub fn new(rope_dim: usize, theta: f64, scaling: Option<YarnScaling>) -> Result<Self> {
        if rope_dim == 0 || !rope_dim.is_multiple_of(2) {
            return Err(shape_err(
                OP,
                format!("rope_dim {rope_dim} must be even and non-zero"),
            ));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(shape_err(
                OP,
                format!("theta {theta} must be finite and > 1"),
            ));
        }
        let d = rope_dim as f64;
        let half = rope_dim / 2;
        let extrap: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / d))
            .collect();

        let Some(s) = scaling else {
            return Ok(Self {
                rope_dim,
                inv_freq: extrap.iter().map(|&e| e as f32).collect(),
                magnitude: 1.0,
                score_mscale2: 1.0,
            });
        };
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        let valid = finite_pos(s.factor)
            && finite_pos(s.beta_fast)
            && finite_pos(s.beta_slow)
            && s.original_max_pos > 0
            && s.mscale.is_finite()
            && s.mscale_all_dim.is_finite();
        if !valid {
            return Err(shape_err(OP, format!("bad YaRN parameters {s:?}")));
        }

        let corr_dim = |rotations: f64| {
            d * (s.original_max_pos as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * theta.ln())
        };
        let low = corr_dim(s.beta_fast).floor().max(0.0);
        let mut high = corr_dim(s.beta_slow).ceil().min(d - 1.0);
        if high == low {
            high += 0.001;
        }
        let inv_freq = extrap
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                (e / s.factor * ramp + e * (1.0 - ramp)) as f32
            })
            .collect();

        let magnitude = if s.mscale != 0.0 && s.mscale_all_dim != 0.0 {
            yarn_get_mscale(s.factor, s.mscale) / yarn_get_mscale(s.factor, s.mscale_all_dim)
        } else {
            yarn_get_mscale(s.factor, 1.0)
        };
        let score_mscale2 = if s.mscale_all_dim != 0.0 {
            yarn_get_mscale(s.factor, s.mscale_all_dim).powi(2)
        } else {
            1.0
        };
        Ok(Self {
            rope_dim,
            inv_freq,
            magnitude,
            score_mscale2,
        })
    }

    pub fn rope_dim(&self) -> usize {
        self.rope_dim
    }

    /// The per-pair inverse frequencies `[rope_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// The factor on cos and sin (HF's `attention_scaling`).
    pub fn magnitude(&self) -> f32 {
        self.magnitude as f32
    }

    /// The attention softmax scale for heads of `qk_head_dim` (nope + rope) elements,
    /// including YaRN's `mscale_all_dim` correction.
    pub fn softmax_scale(&self, qk_head_dim: usize) -> f32 {
        (self.score_mscale2 / (qk_head_dim as f64).sqrt()) as f32
    }

    /// `(cos, sin)` of pair `i` at `pos`, times the magnitude, in f64.
    fn cos_sin(&self, pos: usize, i: usize) -> (f64, f64) {
        let (s, c) = (pos as f64 * self.inv_freq[i] as f64).sin_cos();
        (c * self.magnitude, s * self.magnitude)
    }

    /// Fills the `[rope_dim / 2]` cos and sin tables of `pos` (magnitude included), for fast
    /// paths and GPU kernels that precompute them.
    pub fn cos_sin_table(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) -> Result<()> {
        expect_len(OP, "cos", cos.len(), self.rope_dim / 2)?;
        expect_len(OP, "sin", sin.len(), self.rope_dim / 2)?;
        for i in 0..self.rope_dim / 2 {
            let (c, s) = self.cos_sin(pos, i);
            cos[i] = c as f32;
            sin[i] = s as f32;
        }
        Ok(())
    }

    /// Rotates one head's rope slice `x` (`rope_dim` elements) to position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) -> Result<()> {
        expect_len(OP, "x", x.len(), self.rope_dim)?;
        self.rotate_heads(x, self.rope_dim, 0, pos);
        Ok(())
    }

    /// Rotates the rope slice `[offset, offset + rope_dim)` of every head in one token's row
    /// `x = [n_heads, head_dim]` (e.g. q with `head_dim = nope + rope`, `offset = nope`).
    pub fn apply_heads(
        &self,
        x: &mut [f32],
        head_dim: usize,
        offset: usize,
        pos: usize,
    ) -> Result<()> {
        self.check_heads(x.len(), head_dim, offset)?;
        self.rotate_heads(x, head_dim, offset, pos);
        Ok(())
    }

    /// [`apply_heads`](Self::apply_heads) for a batch: `x = [T, n_heads, head_dim]`, token `t`
    /// at `positions[t]`.
    pub fn apply_tokens(
        &self,
        x: &mut [f32],
        positions: &[usize],
        head_dim: usize,
        offset: usize,
    ) -> Result<()> {
        let row = if positions.is_empty() {
            expect_len(OP, "x (no positions)", x.len(), 0)?;
            return Ok(());
        } else {
            x.len() / positions.len()
        };
        expect_len(OP, "x", x.len(), row * positions.len())?;
        self.check_heads(row, head_dim, offset)?;
        for (xr, &pos) in x.chunks_exact_mut(row).zip(positions) {
            self.rotate_heads(xr, head_dim, offset, pos);
        }
        Ok(())
    }

    fn check_heads(&self, len: usize, head_dim: usize, offset: usize) -> Result<()> {
        if offset + self.rope_dim > head_dim {
            return Err(shape_err(
                OP,
                format!(
                    "rope slice [{offset}, {}) outside a head of {head_dim}",
                    offset + self.rope_dim
                ),
            ));
        }
        rows_of(OP, "x (heads)", len, head_dim).map(|_| ())
    }

    /// The rotation itself; lengths already checked. One cos/sin per pair, applied to every head.
    fn rotate_heads(&self, x: &mut [f32], head_dim: usize, offset: usize, pos: usize) {
        for i in 0..self.rope_dim / 2 {
            let (c, s) = self.cos_sin(pos, i);
            for head in x.chunks_exact_mut(head_dim) {
                let (a, b) = (head[offset + 2 * i] as f64, head[offset + 2 * i + 1] as f64);
                head[offset + 2 * i] = (a * c - b * s) as f32;
                head[offset + 2 * i + 1] = (a * s + b * c) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, randn};
    use crate::util::SplitMix64;
    use proptest::prelude::*;

    fn v2_scaling() -> YarnScaling {
        YarnScaling {
            factor: 40.0,
            original_max_pos: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 0.707,
            mscale_all_dim: 0.707,
        }
    }

    #[test]
    fn plain_frequencies_and_scale() {
        let r = RopeYarn::plain(8, 10000.0).unwrap();
        assert_close(
            r.inv_freq(),
            &[1.0, 0.1, 0.01, 0.001],
            0.0,
            1e-7,
            "inv_freq",
        );
        assert_eq!(r.magnitude(), 1.0);
        assert_eq!(r.softmax_scale(16), 0.25);
        // factor 1 is the plain rope
        let one = YarnScaling {
            factor: 1.0,
            ..v2_scaling()
        };
        let r1 = RopeYarn::new(8, 10000.0, Some(one)).unwrap();
        assert_eq!(r1, r);
    }

    /// The DeepSeek-V2 numbers worked by hand: d = 64, b = 1e4, L = 4096, beta 32/1:
    /// c(32) = 64 ln(4096/(64 pi)) / (2 ln 1e4) = 10.47.. -> low 10; c(1) = 22.51.. -> high 23.
    #[test]
    fn deepseek_v2_yarn_by_hand() {
        let r = RopeYarn::new(64, 10000.0, Some(v2_scaling())).unwrap();
        let e = |i: usize| 10000f64.powf(-(2.0 * i as f64) / 64.0);
        for i in 0..32 {
            let ramp = ((i as f64 - 10.0) / 13.0).clamp(0.0, 1.0);
            let want = e(i) * (1.0 - ramp) + e(i) / 40.0 * ramp;
            assert!(
                (r.inv_freq()[i] as f64 - want).abs() <= want * 6e-8,
                "pair {i}"
            );
        }
        assert_eq!(r.inv_freq()[0], 1.0);
        assert_eq!(r.magnitude(), 1.0);
        let m = 1.0 + 0.1 * 0.707 * 40f64.ln();
        assert_eq!(r.softmax_scale(192), (m * m / 192f64.sqrt()) as f32);
    }

    #[test]
    fn magnitude_when_mscales_differ() {
        let s = YarnScaling {
            mscale: 1.0,
            mscale_all_dim: 0.5,
            ..v2_scaling()
        };
        let r = RopeYarn::new(64, 10000.0, Some(s)).unwrap();
        let want = (1.0 + 0.1 * 40f64.ln()) / (1.0 + 0.05 * 40f64.ln());
        assert_eq!(r.magnitude(), want as f32);
        // mscale_all_dim absent: magnitude get_mscale(f, 1), no softmax correction
        let r0 = RopeYarn::new(
            64,
            10000.0,
            Some(YarnScaling {
                mscale: 0.707,
                mscale_all_dim: 0.0,
                ..v2_scaling()
            }),
        )
        .unwrap();
        assert_eq!(r0.magnitude(), (1.0 + 0.1 * 40f64.ln()) as f32);
        assert_eq!(r0.softmax_scale(64), 0.125);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(RopeYarn::plain(7, 10000.0).is_err());
        assert!(RopeYarn::plain(0, 10000.0).is_err());
        assert!(RopeYarn::plain(8, 1.0).is_err());
        assert!(RopeYarn::plain(8, f64::NAN).is_err());
        assert!(RopeYarn::new(
            8,
            1e4,
            Some(YarnScaling {
                factor: 0.0,
                ..v2_scaling()
            })
        )
        .is_err());
        assert!(RopeYarn::new(
            8,
            1e4,
            Some(YarnScaling {
                original_max_pos: 0,
                ..v2_scaling()
            })
        )
        .is_err());
        assert!(RopeYarn::new(
            8,
            1e4,
            Some(YarnScaling {
                beta_slow: f64::INFINITY,
                ..v2_scaling()
            })
        )
        .is_err());
        let r = RopeYarn::plain(8, 1e4).unwrap();
        assert!(r.apply(&mut [1.0; 6], 3).is_err());
        assert!(
            r.apply_heads(&mut [1.0; 24], 12, 6, 3).is_err(),
            "slice past the head"
        );
        assert!(
            r.apply_heads(&mut [1.0; 25], 12, 4, 3).is_err(),
            "not whole heads"
        );
        assert!(r.apply_tokens(&mut [1.0; 25], &[1, 2], 12, 4).is_err());
        assert!(r.cos_sin_table(1, &mut [0.0; 4], &mut [0.0; 3]).is_err());
    }

    #[test]
    fn position_zero_is_identity_and_quarter_turn_is_exact() {
        let r = RopeYarn::plain(4, 10000.0).unwrap();
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        r.apply(&mut x, 0).unwrap();
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        // pair 0 has inv_freq 1: at pos 1 it turns by 1 radian
        let mut y = [1.0f32, 0.0, 0.0, 1.0];
        r.apply(&mut y, 1).unwrap();
        let f1 = 0.01f64; // 1e4^(-2/4)
        assert_close(
            &y,
            &[
                1f64.cos() as f32,
                1f64.sin() as f32,
                -(f1.sin()) as f32,
                f1.cos() as f32,
            ],
            0.0,
            1e-7,
            "y",
        );
    }

    proptest! {
        /// Rotations keep each pair's norm (times the magnitude), compose additively in the
        /// position for q.k (relative-position property), and the per-head, per-token and
        /// single-slice forms agree bit for bit.
        #[test]
        fn rotation_properties(seed in any::<u64>(), half in 1usize..40, heads in 1usize..5, p in 0usize..100_000, dp in 0usize..5000) {
            let d = 2 * half;
            let mut rng = SplitMix64::new(seed);
            let scaling = YarnScaling { factor: rng.uniform(1.5, 50.0) as f64, mscale: 1.0, mscale_all_dim: rng.uniform(0.3, 1.0) as f64, ..v2_scaling() };
            let r = RopeYarn::new(d, 10000.0, Some(scaling)).unwrap();
            let m = r.magnitude() as f64;
            let nope = 3;
            let head_dim = nope + d;
            let x = randn(&mut rng, heads * head_dim, 1.0);

            let mut rotated = x.clone();
            r.apply_heads(&mut rotated, head_dim, nope, p).unwrap();
            for h in 0..heads {
                let base = h * head_dim;
                prop_assert_eq!(&rotated[base..base + nope], &x[base..base + nope], "nope part untouched");
                let mut one = x[base + nope..base + head_dim].to_vec();
                r.apply(&mut one, p).unwrap();
                prop_assert_eq!(&one[..], &rotated[base + nope..base + head_dim]);
                for i in 0..half {
                    let (a, b) = (x[base + nope + 2 * i] as f64, x[base + nope + 2 * i + 1] as f64);
                    let (c, s) = (rotated[base + nope + 2 * i] as f64, rotated[base + nope + 2 * i + 1] as f64);
                    let n0 = (a * a + b * b).sqrt() * m;
                    prop_assert!(((c * c + s * s).sqrt() - n0).abs() <= 2.5e-7 * n0 + 1e-30);
                }
            }
            let mut batch = [x.clone(), x.clone()].concat();
            r.apply_tokens(&mut batch, &[p, p], head_dim, nope).unwrap();
            prop_assert_eq!(&batch[..x.len()], &rotated[..]);
            prop_assert_eq!(&batch[x.len()..], &rotated[..]);

            // q at p + dp against k at p has the score of q at dp against k at 0
            let q = randn(&mut rng, d, 1.0);
            let k = randn(&mut rng, d, 1.0);
            let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            let (mut q1, mut k1, mut q2, mut k2) = (q.clone(), k.clone(), q.clone(), k.clone());
            r.apply(&mut q1, p + dp).unwrap();
            r.apply(&mut k1, p).unwrap();
            r.apply(&mut q2, dp).unwrap();
            r.apply(&mut k2, 0).unwrap();
            // Angles up to ~1e5 rad: each rotated f32 pair carries ~6e-8 of its norm as error
            // in both coordinates, and a rotation mixes a pair's coordinates, so the dot's
            // error scales with the pairs' norms, not with |q_i k_i| (which is 0 for q = (1, 0),
            // k = (0, 1) while their rotated dot is not).
            let norm = |v: &[f32], i: usize| (v[2 * i] as f64).hypot(v[2 * i + 1] as f64);
            let scale = (0..half).map(|i| norm(&q, i) * norm(&k, i)).sum::<f64>() * m * m;
            prop_assert!((dot(&q1, &k1) - dot(&q2, &k2)).abs() <= 1e-6 * scale + 1e-12);
        }
    }
}
