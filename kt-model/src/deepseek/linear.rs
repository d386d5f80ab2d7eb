//! A weight matrix of the model as the forward pass uses it: `rows` rows of `cols`
//! elements in one GGUF format, borrowed from the memory map, and the product with a
//! batch of f32 activations in one of the two [`MatmulMode`]s.
//!
//! GGUF stores a 2-D tensor as `ne = [cols, rows]` (row-major, `ne[0]` contiguous); a
//! stacked 3-D tensor `ne = [cols, rows, n]` is `n` such matrices one after the other,
//! so one expert or one head is a contiguous run of whole rows.

use kt_kernels::cpu::{self, Isa};
use kt_kernels::quant::{self, QType};

use super::ggml_f32;
use crate::error::{ModelError, Result};
use crate::gguf::Tensor;

/// How a weight matrix multiplies activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulMode {
    /// Weights dequantized to f32, activations kept in f32, sums in f64
    /// ([`kt_kernels::cpu::matmul_f32_reference`]): the model's exact f32 function of its
    /// stored weights. Reproduces HF transformers on lossless weights and llama.cpp's runs
    /// on GGUFs dequantized to f32.
    Reference,
    /// Activations quantized to the weight format's `vec_dot_type` (Q8_K, Q8_0, BF16, ...)
    /// before the dot, as a GGUF engine does, on the given ISA's kernels and the global
    /// thread pool ([`kt_kernels::cpu::matmul_with`]); f32 weights (no quantizer) in ggml's
    /// f32 order instead. The forward pass's other steps follow ggml's f32 order too
    /// (`ggml_f32.rs`), so that the quantizers see llama.cpp's values.
    Quantized(Isa),
}

impl MatmulMode {
    /// `Quantized` on the ISA `KT_ISA` selects (or the best the CPU has).
    pub fn quantized_selected() -> Result<Self> {
        Ok(MatmulMode::Quantized(cpu::isa::selected()?))
    }
}

/// A `rows x cols` weight matrix view.
#[derive(Debug, Clone, Copy)]
pub struct Linear<'a> {
    /// The GGUF tensor it comes from (named in errors).
    pub name: &'a str,
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
    /// Exactly `rows * qtype.row_bytes(cols)` bytes.
    pub data: &'a [u8],
}

impl<'a> Linear<'a> {
    /// The matrix of a 2-D tensor `ne = [cols, rows]`.
    pub fn from_2d(t: &Tensor<'a>) -> Result<Self> {
        match *t.dims {
            [cols, rows] => Ok(Linear {
                name: t.name,
                qtype: t.qtype,
                rows,
                cols,
                data: t.data,
            }),
            _ => Err(not_a(t, "2-D matrix")),
        }
    }

    /// Matrix `index` of a stacked 3-D tensor `ne = [cols, rows, n]` (one expert of
    /// `ffn_*_exps`, one head of `attn_k_b` / `attn_v_b`).
    pub fn from_stacked(t: &Tensor<'a>, index: usize) -> Result<Self> {
        match *t.dims {
            [cols, rows, n] if index < n => {
                let whole = Linear {
                    name: t.name,
                    qtype: t.qtype,
                    rows: rows * n,
                    cols,
                    data: t.data,
                };
                whole.row_range(index * rows, rows)
            }
            [_, _, n] => Err(ModelError::Forward {
                reason: format!("tensor '{}': matrix {index} of a stack of {n}", t.name),
            }),
            _ => Err(not_a(t, "stack of matrices (3-D)")),
        }
    }

    /// Rows `start..start + n` as a matrix of their own.
    pub fn row_range(&self, start: usize, n: usize) -> Result<Self> {
        if start.checked_add(n).is_none_or(|end| end > self.rows) {
            return Err(ModelError::Forward {
                reason: format!(
                    "tensor '{}': rows {start}..{} of {}",
                    self.name,
                    start.saturating_add(n),
                    self.rows
                ),
            });
        }
        let row_bytes = self.row_bytes();
        Ok(Linear {
            data: &self.data[start * row_bytes..(start + n) * row_bytes],
            rows: n,
            ..*self
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        // A whole number of rows, checked when the tensor was read.
        self.data.len() / self.rows.max(1)
    }

    /// `out[t * rows + r] = sum_c W[r, c] * x[t * cols + c]` for `tokens` rows of `x`.
    /// In the quantized mode f32 weights take ggml's f32 order ([`ggml_f32::matmul_f32`]):
    /// with no quantizer between, ggml's summation order is the whole of its result.
    pub fn apply(&self, mode: MatmulMode, x: &[f32], tokens: usize, out: &mut [f32]) -> Result<()> {
        let (q, rows, cols, w) = (self.qtype, self.rows, self.cols, self.data);
        if let (MatmulMode::Quantized(_), QType::F32) = (mode, q) {
            if let Ok(w) = bytemuck::try_cast_slice::<u8, f32>(w) {
                self.check_f32_shapes(x, tokens, out)?;
                matmul_f32_on_pool(w, rows, cols, x, tokens, out);
                return Ok(());
            }
            // an f32 tensor not aligned to 4 bytes in the file: the kernels read it as bytes
        }
        match mode {
            MatmulMode::Reference => cpu::matmul_f32_reference(q, w, rows, cols, x, tokens, out),
            MatmulMode::Quantized(isa) => {
                let pool = cpu::pool::global();
                cpu::matmul_with(isa, pool, q, w, rows, cols, x, tokens, out)
            }
        }
        .map_err(|source| self.kernel_err(source))
    }

    /// The lengths [`Linear::apply`] needs, checked before its own f32 product.
    fn check_f32_shapes(&self, x: &[f32], tokens: usize, out: &[f32]) -> Result<()> {
        let want = |n: usize| tokens.checked_mul(n);
        if want(self.cols) != Some(x.len()) || want(self.rows) != Some(out.len()) {
            return Err(ModelError::Forward {
                reason: format!(
                    "tensor '{}' ({} x {}): {} activations and {} outputs for {tokens} tokens",
                    self.name,
                    self.rows,
                    self.cols,
                    x.len(),
                    out.len()
                ),
            });
        }
        if self.data.len() != self.rows * self.cols * 4 {
            return Err(ModelError::Forward {
                reason: format!(
                    "tensor '{}': {} bytes for {} x {} f32",
                    self.name,
                    self.data.len(),
                    self.rows,
                    self.cols
                ),
            });
        }
        Ok(())
    }

    /// Row `r` dequantized into `out` (`cols` elements).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(ModelError::Forward {
                reason: format!("tensor '{}': row {r} of {}", self.name, self.rows),
            });
        }
        let b = self.row_bytes();
        // The reference's values, by the vectorized load-time path.
        kt_kernels::cpu::dequantize(self.qtype, &self.data[r * b..(r + 1) * b], out)
            .map_err(|source| self.kernel_err(source))
    }

    fn kernel_err(&self, source: kt_kernels::KtError) -> ModelError {
        ModelError::TensorKernel {
            tensor: self.name.to_owned(),
            source,
        }
    }
}

/// Rows of an f32 product per pool work item.
const F32_ROWS_PER_ITEM: usize = 64;

thread_local! {
    /// The f32 product's outputs as the pool's items write them (f32 bits), `[tokens, rows]`.
    static F32_OUT: std::cell::RefCell<Vec<std::sync::atomic::AtomicU32>> =
        std::cell::RefCell::default();
}

/// [`ggml_f32::matmul_f32`] with its rows split over the global pool: each item computes a run
/// of rows for every token (every output is one dot product, so the split changes no bit) and
/// stores them into its own elements of a shared buffer, copied to `out` after the join.
fn matmul_f32_on_pool(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    F32_OUT.with(|bits| {
        let mut bits = bits.borrow_mut();
        if bits.len() < out.len() {
            bits.resize_with(out.len(), AtomicU32::default);
        }
        let bits = &bits[..out.len()];
        let order = ggml_f32::SumOrder::of_mul_mat(rows, tokens);
        let items = rows.div_ceil(F32_ROWS_PER_ITEM);
        cpu::pool::global().for_each(items, &|item, _thread| {
            let r0 = item * F32_ROWS_PER_ITEM;
            let n = F32_ROWS_PER_ITEM.min(rows - r0);
            let w_rows = &w[r0 * cols..(r0 + n) * cols];
            // at most 64 outputs of one token at a time, on the stack
            let mut part = [0.0f32; F32_ROWS_PER_ITEM];
            for (t, xt) in x.chunks_exact(cols).enumerate().take(tokens) {
                ggml_f32::with_fma(
                    #[inline(always)]
                    || ggml_f32::matmul_f32(order, w_rows, cols, xt, &mut part[..n]),
                );
                for (b, &v) in bits[t * rows + r0..t * rows + r0 + n]
                    .iter()
                    .zip(&part[..n])
                {
                    b.store(v.to_bits(), Ordering::Relaxed);
                }
            }
        });
        for (o, b) in out.iter_mut().zip(bits) {
            *o = f32::from_bits(b.load(Ordering::Relaxed));
        }
    });
}

/// A 1-D tensor (norm weight, score bias) dequantized to f32.
pub fn dequantize_vector(t: &Tensor<'_>) -> Result<Vec<f32>> {
    let [n] = *t.dims else {
        return Err(not_a(t, "vector (1-D)"));
    };
    let mut v = vec![0.0f32; n];
    quant::dequantize(t.qtype, t.data, &mut v).map_err(|source| ModelError::TensorKernel {
        tensor: t.name.to_owned(),
        source,
    })?;
    Ok(v)
}

fn not_a(t: &Tensor<'_>, what: &str) -> ModelError {
    ModelError::Forward {
        reason: format!("tensor '{}' with ne {:?} is not a {what}", t.name, t.dims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kt_kernels::util::SplitMix64;

    fn randn(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() + 0.01).collect()
    }

    #[test]
    fn f32_weights_take_ggml_order_split_over_the_pool() {
        let mut rng = SplitMix64::new(41);
        // 150 rows: three pool items, the last one short; 2 rows: llamafile refuses (2 % 4)
        for (rows, cols) in [(150usize, 40usize), (2, 33)] {
            let w = randn(&mut rng, rows * cols);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let dims = [cols, rows];
            let t = Tensor {
                name: "w",
                qtype: QType::F32,
                dims: &dims,
                data: &bytes,
            };
            let lin = Linear::from_2d(&t).unwrap();
            for tokens in [1usize, 3] {
                let x = randn(&mut rng, tokens * cols);
                let mut got = vec![f32::NAN; tokens * rows];
                lin.apply(MatmulMode::Quantized(Isa::Scalar), &x, tokens, &mut got)
                    .unwrap();
                let order = ggml_f32::SumOrder::of_mul_mat(rows, tokens);
                let mut want = vec![f32::NAN; tokens * rows];
                ggml_f32::matmul_f32(order, &w, cols, &x, &mut want);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{rows} x {cols}, {tokens} tokens");
                let mut short = vec![0.0f32; tokens * rows - 1];
                assert!(lin
                    .apply(MatmulMode::Quantized(Isa::Scalar), &x, tokens, &mut short)
                    .is_err());
                assert!(lin
                    .apply(
                        MatmulMode::Quantized(Isa::Scalar),
                        &x[1..],
                        tokens,
                        &mut got
                    )
                    .is_err());
            }
        }
    }
}
