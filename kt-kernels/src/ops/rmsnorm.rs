//! RMSNorm over rows: `y = x / sqrt(mean(x^2) + eps) * w` (DeepSeek's input, post-attention,
//! kv_a, q_a and final norms). The sum of squares is accumulated in f64: a hidden size of
//! 7168 summed in f32 loses about 3 bits, which is the whole f32 tolerance budget.

use super::{expect_len, rows_of};
use crate::Result;

const OP: &str = "rmsnorm";

/// The scale `1 / sqrt(mean(x^2) + eps)` of one row.
fn inv_rms(row: &[f32], eps: f32) -> f64 {
    let ss: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
    1.0 / (ss / row.len() as f64 + eps as f64).sqrt()
}

/// `out[r, i] = x[r, i] * inv_rms(x[r]) * w[i]` for `x`, `out` of shape `[rows, w.len()]`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let n = w.len();
    rows_of(OP, "x", x.len(), n)?;
    expect_len(OP, "out", out.len(), x.len())?;
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let s = inv_rms(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = (v as f64 * s * g as f64) as f32;
        }
    }
    Ok(())
}

/// [`rmsnorm`] in place on `x` of shape `[rows, w.len()]`.
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) -> Result<()> {
    let n = w.len();
    rows_of(OP, "x", x.len(), n)?;
    for xr in x.chunks_exact_mut(n) {
        let s = inv_rms(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = (*v as f64 * s * g as f64) as f32;
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
    fn hand_computed_row() {
        // mean(x^2) = (9 + 16) / 2 = 12.5; 1/sqrt(12.5 + 0.5) = 1/sqrt(13)
        let x = [3.0f32, -4.0];
        let w = [2.0f32, 0.5];
        let mut out = [f32::NAN; 2];
        rmsnorm(&x, &w, 0.5, &mut out).unwrap();
        let s = 1.0 / 13.0f64.sqrt();
        assert_close(
            &out,
            &[(3.0 * s * 2.0) as f32, (-4.0 * s * 0.5) as f32],
            0.0,
            1e-7,
            "out",
        );
    }

    #[test]
    fn shape_errors() {
        let mut out = [0.0f32; 6];
        assert!(
            rmsnorm(&[1.0; 6], &[1.0; 4], 1e-6, &mut out).is_err(),
            "6 is not rows of 4"
        );
        assert!(
            rmsnorm(&[1.0; 6], &[1.0; 3], 1e-6, &mut out[..3]).is_err(),
            "out too short"
        );
        assert!(
            rmsnorm(&[1.0; 6], &[], 1e-6, &mut out).is_err(),
            "empty weight"
        );
        assert!(rmsnorm_inplace(&mut [1.0; 5], &[1.0; 2], 1e-6).is_err());
    }

    proptest! {
        /// Each row of the output has mean((y / w)^2) = mean(x^2) / (mean(x^2) + eps), rows are
        /// independent, and the in-place form gives identical bits.
        #[test]
        fn rows_are_normalized(seed in any::<u64>(), rows in 1usize..6, n in 1usize..300, scale in 0.01f32..100.0) {
            let mut rng = SplitMix64::new(seed);
            let x = randn(&mut rng, rows * n, scale);
            let w: Vec<f32> = (0..n).map(|_| rng.uniform(0.5, 1.5)).collect();
            let eps = 1e-6f32;
            let mut out = vec![f32::NAN; rows * n];
            rmsnorm(&x, &w, eps, &mut out).unwrap();
            for r in 0..rows {
                let xr = &x[r * n..(r + 1) * n];
                let ms: f64 = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
                let got: f64 = out[r * n..(r + 1) * n].iter().zip(&w).map(|(&y, &g)| (y as f64 / g as f64).powi(2)).sum::<f64>() / n as f64;
                let want = ms / (ms + eps as f64);
                prop_assert!((got - want).abs() <= 1e-5 * want, "row {}: {} vs {}", r, got, want);
                // one row alone gives the same bits
                let mut alone = vec![f32::NAN; n];
                rmsnorm(xr, &w, eps, &mut alone).unwrap();
                prop_assert_eq!(&alone[..], &out[r * n..(r + 1) * n]);
            }
            let mut inplace = x.clone();
            rmsnorm_inplace(&mut inplace, &w, eps).unwrap();
            prop_assert_eq!(inplace, out);
        }
    }
}
