//! RMSNorm as each [`MatmulMode`] needs it.
//!
//! `Reference` uses [`kt_kernels::ops::rmsnorm`] (f64 throughout, one rounding at the end:
//! the model's exact function, compared with HF transformers and llama.cpp's dequantized
//! runs).
//!
//! `Quantized` reproduces ggml's f32 rounding sequence instead (`ggml_compute_forward_rms_norm_f32`
//! then `ggml_mul`): squares rounded to f32 and summed in f64, the mean and
//! `scale = 1 / sqrt(mean + eps)` in f32, then `(x * scale) * w` in f32. Its output is the
//! input of an activation quantizer (Q8_K, Q8_0 or bf16), which rounds to a grid: a value one
//! ulp away from llama.cpp's lands on the other side of a rounding boundary now and then, and
//! that one flipped code moves the whole row by ~1e-3 and every later row through the KV
//! cache (docs/parity.md: tiny-dsv2 Q4_K_M row 4, `attn_norm` element 129, `x * iscale` is
//! exactly -100.5 with the f64 norm and -100.500008 with ggml's). With ggml's sequence the
//! quantizer sees llama.cpp's bits.

use kt_kernels::ops::{rmsnorm, rmsnorm_inplace};

use super::linear::MatmulMode;
use crate::error::{ModelError, Result};

/// `out = rmsnorm(x) * w` row by row (`x`, `out` `[rows, w.len()]`), rounded as `mode` needs.
pub(crate) fn rms_norm(
    mode: MatmulMode,
    x: &[f32],
    w: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    match mode {
        MatmulMode::Reference => Ok(rmsnorm(x, w, eps, out)?),
        MatmulMode::Quantized(_) => {
            if out.len() != x.len() {
                return Err(ModelError::Forward {
                    reason: format!(
                        "rmsnorm: out has {} elements for {} inputs",
                        out.len(),
                        x.len()
                    ),
                });
            }
            out.copy_from_slice(x);
            rms_norm_inplace(mode, out, w, eps)
        }
    }
}

/// [`rms_norm`] in place.
pub(crate) fn rms_norm_inplace(mode: MatmulMode, x: &mut [f32], w: &[f32], eps: f32) -> Result<()> {
    match mode {
        MatmulMode::Reference => Ok(rmsnorm_inplace(x, w, eps)?),
        MatmulMode::Quantized(_) => {
            if w.is_empty() || !x.len().is_multiple_of(w.len()) {
                return Err(ModelError::Forward {
                    reason: format!("rmsnorm: {} inputs are not rows of {}", x.len(), w.len()),
                });
            }
            for row in x.chunks_exact_mut(w.len()) {
                let squares: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
                let mean = (squares / row.len() as f64) as f32;
                let scale = 1.0f32 / (mean + eps).sqrt();
                for (v, &g) in row.iter_mut().zip(w) {
                    *v = *v * scale * g;
                }
            }
            Ok(())
        }
    }
}
