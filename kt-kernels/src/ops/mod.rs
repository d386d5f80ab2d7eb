//! Plain f32 reference ops of a DeepSeek V2/V3 decoder layer, batch-oriented (rows of
//! tokens). The kt-model forward pass runs them on the CPU, and the fast and GPU kernels are
//! tested against them, so they stay simple and scalar: f32 storage, f64 accumulation
//! where that buys accuracy cheaply, shapes checked at every public fn.
//!
//! - [`rmsnorm`]: `x / sqrt(mean(x^2) + eps) * w` over rows.
//! - [`activation`]: SiLU, `silu(gate) * up`, sigmoid, numerically stable softmax.
//! - [`rope`]: rotary embedding of MLA's rope part with DeepSeek's YaRN scaling.
//! - [`gating`]: MoE routing (V2 softmax greedy / group-limited, V3 sigmoid `noaux_tc`).
//! - [`mla`]: multi-head latent attention over a latent KV cache, naive and absorbed.
//! - [`sampling`]: top-p (nucleus) sampling with a caller-supplied uniform draw.

pub mod activation;
pub mod gating;
pub mod mla;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;

pub use activation::{
    sigmoid, sigmoid_inplace, silu, silu_inplace, silu_mul, silu_mul_inplace, softmax_inplace,
    softmax_rows,
};
pub use gating::{route, sort_topk_by_expert, RouterConfig, Scoring, TopkMethod};
pub use mla::{mla_absorbed, mla_naive, KvB, LatentCache, MlaDims};
pub use rmsnorm::{rmsnorm, rmsnorm_inplace};
pub use rope::{RopeYarn, YarnScaling};
pub use sampling::top_p_sample;

use crate::KtError;

/// The error every op returns for a length or shape that does not fit.
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> KtError {
    KtError::Shape {
        op,
        detail: detail.into(),
    }
}

/// Checks that `len` is a whole number of rows of `n` elements and returns the row count.
pub(crate) fn rows_of(op: &'static str, what: &str, len: usize, n: usize) -> crate::Result<usize> {
    if n == 0 {
        return Err(shape_err(op, format!("{what}: row length is 0")));
    }
    if !len.is_multiple_of(n) {
        return Err(shape_err(
            op,
            format!("{what} has {len} elements, not a multiple of the row length {n}"),
        ));
    }
    Ok(len / n)
}

/// Checks `len == expected`.
pub(crate) fn expect_len(
    op: &'static str,
    what: &str,
    len: usize,
    expected: usize,
) -> crate::Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} has {len} elements, expected {expected}"),
        ))
    }
}

/// Shared helpers of the ops unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::util::SplitMix64;

    /// `n` normal values times `scale`, none exactly zero.
    pub fn randn(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = scale * rng.normal();
                if v == 0.0 {
                    scale
                } else {
                    v
                }
            })
            .collect()
    }

    /// Asserts `|a - b| <= atol + rtol * |b|` elementwise, naming the first bad index.
    pub fn assert_close(a: &[f32], b: &[f32], atol: f32, rtol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(x.is_finite(), "{what}[{i}] = {x} (not written?)");
            let tol = atol + rtol * y.abs();
            assert!(
                (x - y).abs() <= tol,
                "{what}[{i}]: {x} vs {y} (|diff| {} > {tol})",
                (x - y).abs()
            );
        }
    }
}
