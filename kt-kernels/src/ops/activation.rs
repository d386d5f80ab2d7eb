//! Elementwise activations and the row softmax.
//!
//! Each value is computed in f64 and rounded once to f32, so these are within half an f32
//! ulp of the exact function (up to f64's own error): fast paths are compared against them
//! with a tolerance of a few f32 ulps.

use super::{expect_len, rows_of};
use crate::Result;

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_f64(x as f64) as f32
}

fn sigmoid_f64(x: f64) -> f64 {
    // both branches avoid exp overflow producing inf/inf
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU (swish): `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x * sigmoid_f64(x)) as f32
}

/// [`sigmoid`] on every element.
pub fn sigmoid_inplace(x: &mut [f32]) {
    for v in x {
        *v = sigmoid(*v);
    }
}

/// [`silu`] on every element.
pub fn silu_inplace(x: &mut [f32]) {
    for v in x {
        *v = silu(*v);
    }
}

/// `out[i] = silu(gate[i]) * up[i]`, the gated FFN's activation (any shape, same length).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    expect_len("silu_mul", "up", up.len(), gate.len())?;
    expect_len("silu_mul", "out", out.len(), gate.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let g = g as f64;
        *o = (g * sigmoid_f64(g) * u as f64) as f32;
    }
    Ok(())
}

/// [`silu_mul`] writing over `gate`.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) -> Result<()> {
    expect_len("silu_mul", "up", up.len(), gate.len())?;
    for (g, &u) in gate.iter_mut().zip(up) {
        let gv = *g as f64;
        *g = (gv * sigmoid_f64(gv) * u as f64) as f32;
    }
    Ok(())
}

/// Softmax of one row into `out`, max-subtracted so that large logits do not overflow; the
/// exponentials are summed in f64 and each output is rounded once. `-inf` entries get
/// probability 0; a row that is all `-inf` (or holds a NaN) gives NaNs, as torch does.
fn softmax_row(x: &[f32], out: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v as f64 - m).exp() / sum) as f32;
    }
}

/// Row softmax of `x` `[rows, n]` into `out` (same shape).
pub fn softmax_rows(x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    rows_of("softmax", "x", x.len(), n)?;
    expect_len("softmax", "out", out.len(), x.len())?;
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        softmax_row(xr, or);
    }
    Ok(())
}

/// Row softmax of `x` `[rows, n]` in place.
pub fn softmax_inplace(x: &mut [f32], n: usize) -> Result<()> {
    rows_of("softmax", "x", x.len(), n)?;
    for row in x.chunks_exact_mut(n) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for v in row.iter_mut() {
            *v = ((*v as f64 - m).exp() / sum) as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, randn};
    use crate::util::SplitMix64;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(silu(0.0), 0.0);
        // sigmoid(ln 3) = 3/4, silu(ln 3) = 0.75 ln 3
        let l3 = 3.0f32.ln();
        assert_close(
            &[sigmoid(l3), silu(l3)],
            &[0.75, 0.75 * l3],
            0.0,
            2e-7,
            "ln3",
        );
        // far tails: no overflow, no NaN
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(silu(-1000.0), 0.0);
        assert_eq!(silu(1000.0), 1000.0);
        // softmax of [0, ln 2, ln 5] = [1, 2, 5] / 8
        let mut out = [f32::NAN; 3];
        softmax_rows(&[0.0, 2.0f32.ln(), 5.0f32.ln()], 3, &mut out).unwrap();
        assert_close(&out, &[0.125, 0.25, 0.625], 0.0, 3e-7, "softmax");
    }

    #[test]
    fn softmax_edge_rows() {
        // huge logits do not overflow; -inf entries get 0
        let x = [1000.0f32, 999.0, f32::NEG_INFINITY, 1000.0];
        let mut out = [f32::NAN; 4];
        softmax_rows(&x, 4, &mut out).unwrap();
        let e = (-1.0f64).exp();
        let s = 2.0 + e;
        assert_close(
            &out,
            &[(1.0 / s) as f32, (e / s) as f32, 0.0, (1.0 / s) as f32],
            0.0,
            3e-7,
            "big",
        );
        assert!(softmax_rows(&x, 3, &mut out).is_err());
        assert!(softmax_rows(&x, 4, &mut out[..2]).is_err());
        assert!(softmax_inplace(&mut [1.0; 4], 0).is_err());
        assert!(silu_mul(&[1.0; 3], &[1.0; 2], &mut [0.0; 3]).is_err());
        assert!(silu_mul(&[1.0; 3], &[1.0; 3], &mut [0.0; 2]).is_err());
        assert!(silu_mul_inplace(&mut [1.0; 3], &[1.0; 4]).is_err());
    }

    proptest! {
        #[test]
        fn softmax_rows_sum_to_one_and_keep_order(seed in any::<u64>(), rows in 1usize..5, n in 1usize..200, scale in 0.1f32..50.0) {
            let mut rng = SplitMix64::new(seed);
            let x = randn(&mut rng, rows * n, scale);
            let mut out = vec![f32::NAN; rows * n];
            softmax_rows(&x, n, &mut out).unwrap();
            for r in 0..rows {
                let (xr, or) = (&x[r * n..(r + 1) * n], &out[r * n..(r + 1) * n]);
                let s: f64 = or.iter().map(|&v| v as f64).sum();
                // n roundings of half an ulp each
                prop_assert!((s - 1.0).abs() <= n as f64 * 6e-8 + 1e-12, "row sum {}", s);
                // a shift of every logit changes nothing; ratios are exp of differences
                let i = rng.below(n);
                let j = rng.below(n);
                // monotone (not strict: far-below-max logits all underflow to 0)
                if xr[i] >= xr[j] {
                    prop_assert!(or[i] >= or[j]);
                }
                if or[j] > 1e-30 && or[i] > 1e-30 {
                    let ratio = (or[i] as f64 / or[j] as f64).ln();
                    prop_assert!((ratio - (xr[i] as f64 - xr[j] as f64)).abs() <= 1e-6 * (1.0 + ratio.abs()));
                }
            }
            let mut inplace = x.clone();
            softmax_inplace(&mut inplace, n).unwrap();
            prop_assert_eq!(inplace, out);
        }

        #[test]
        fn silu_family_agrees(seed in any::<u64>(), n in 1usize..500, scale in 0.1f32..30.0) {
            let mut rng = SplitMix64::new(seed);
            let gate = randn(&mut rng, n, scale);
            let up = randn(&mut rng, n, 1.0);
            let mut out = vec![f32::NAN; n];
            silu_mul(&gate, &up, &mut out).unwrap();
            let mut s = gate.clone();
            silu_inplace(&mut s);
            let mut sg = gate.clone();
            sigmoid_inplace(&mut sg);
            for i in 0..n {
                // silu = x * sigmoid(x), sigmoid in (0, 1) and symmetric: s(-x) = 1 - s(x)
                prop_assert!(sg[i] > 0.0 || gate[i] < -80.0);
                prop_assert!(sg[i] <= 1.0);
                prop_assert!((sigmoid(-gate[i]) as f64 - (1.0 - sg[i] as f64)).abs() <= 1.2e-7);
                let want = gate[i] as f64 * sg[i] as f64;
                prop_assert!((s[i] as f64 - want).abs() <= 1.2e-7 * want.abs() + 1e-30);
                let want_mul = s[i] as f64 * up[i] as f64;
                prop_assert!((out[i] as f64 - want_mul).abs() <= 1.8e-7 * want_mul.abs() + 1e-30);
            }
            let mut g2 = gate.clone();
            silu_mul_inplace(&mut g2, &up).unwrap();
            prop_assert_eq!(g2, out);
        }
    }
}
