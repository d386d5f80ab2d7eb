//! Symmetric int4 quantization with one scale per column per group of 128 along k: the
//! weight format of the W4A16 GEMM, made once at load time from f32 weights or from
//! dequantized GGUF rows, with the error it introduces measured.

use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{shape, CudaError, CudaResult};
use crate::quant::{dequantize, QType};

use super::group::{quantize_matrix, GroupErrors};

/// Quantization group along k.
pub const GROUP: usize = 128;
/// Output columns per tile of the packed layout (the GEMM's block width).
pub const TILE_N: usize = 64;

/// W (`[n, k]`, row n = output column n) as `q * scale`, q in -8..=7, one scale per
/// (group of 128 along k, column): the canonical, unpacked form.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weights<T> {
    pub n: usize,
    pub k: usize,
    /// `q[c * k + kk]`, each in -8..=7.
    pub q: Vec<i8>,
    /// `scales[g * n + c]` for group g = kk / 128 (the layout the kernel reads).
    pub scales: Vec<T>,
}

/// How far the quantized weights are from the originals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantError {
    pub max_abs: f64,
    /// Root mean square of the error.
    pub rms: f64,
    /// Root mean square of the original weights (rms / rms_weight is the relative error).
    pub rms_weight: f64,
}

impl QuantError {
    pub fn relative_rms(&self) -> f64 {
        if self.rms_weight == 0.0 {
            0.0
        } else {
            self.rms / self.rms_weight
        }
    }
}

/// [`QuantError`] from the terms [`quantize_matrix`] added group by group while quantizing
/// (no second pass over a dequantized copy: that pass took twice as long as the
/// quantization, and a load measures every expert matrix). Within a group of 128 the terms
/// are summed in f32 (8 lanes), the groups' sums in f64; `v - q * scale` is exact in f32
/// (q * scale is, and the two lie within a factor of two of each other or the product is
/// zero), so `max_abs` is the plain measure's ([`Int4Weights::error_against`]) and the sums
/// agree with it to f32 rounding (~1e-6 relative).
fn finish(e: &GroupErrors, len: usize) -> QuantError {
    let len = len as f64;
    QuantError {
        max_abs: f32::from_bits(e.max_abs_bits) as f64,
        rms: (e.se / len).sqrt(),
        rms_weight: (e.sw / len).sqrt(),
    }
}

const QUANTIZE: &str = "w4a16 quantize";

/// `w` holds `[n, k]` weights of a shape the layout takes.
fn check_weights(w: &[f32], n: usize, k: usize) -> CudaResult<()> {
    check_shape(QUANTIZE, n, k)?;
    if w.len() != n * k {
        return Err(shape(
            QUANTIZE,
            format!("{} weights, expected n {n} x k {k}", w.len()),
        ));
    }
    Ok(())
}

/// The error naming weight `i` of `w` (`k` a row) as not finite.
fn not_finite(w: &[f32], k: usize, i: usize) -> CudaError {
    shape(
        QUANTIZE,
        format!("weight {i} (row {}, col {}) is {}", i / k, i % k, w[i]),
    )
}

pub(crate) fn check_shape(op: &'static str, n: usize, k: usize) -> CudaResult<()> {
    if n == 0 || k == 0 || !n.is_multiple_of(TILE_N) || !k.is_multiple_of(GROUP) {
        return Err(shape(
            op,
            format!("n {n} must be a positive multiple of {TILE_N}, k {k} of {GROUP}"),
        ));
    }
    Ok(())
}

impl<T: MmaFloat> Int4Weights<T> {
    /// Quantizes `w` (`[n, k]` row-major f32): per group, scale = max|w| / 7 rounded to T,
    /// q = round(w / scale) clamped to -8..=7. Returns the weights and their error, measured
    /// group by group as each is quantized (see [`finish`]).
    pub fn quantize(w: &[f32], n: usize, k: usize) -> CudaResult<(Self, QuantError)> {
        let mut errors = GroupErrors::default();
        let weights = Self::quantize_measured(w, n, k, Some(&mut errors))?;
        Ok((weights, finish(&errors, w.len())))
    }

    /// [`Self::quantize`] without measuring the error, for a caller that does not report it.
    pub fn quantize_values(w: &[f32], n: usize, k: usize) -> CudaResult<Self> {
        Self::quantize_measured(w, n, k, None)
    }

    /// [`Self::quantize_values`] on `threads` threads: the output columns split in runs of
    /// whole [`TILE_N`] tiles, each thread writing its columns' quants in place and its
    /// scales into a buffer of its own (scattered into the group-major layout after), so the
    /// result is the single call's bit for bit (columns are quantized independently). A
    /// NaN or infinity is named by its place in `w`.
    pub fn quantize_values_parallel(
        w: &[f32],
        n: usize,
        k: usize,
        threads: usize,
    ) -> CudaResult<Self> {
        check_weights(w, n, k)?;
        let groups = k / GROUP;
        let cols = (n / TILE_N).div_ceil(threads.max(1)) * TILE_N;
        let mut q = vec![0i8; n * k];
        let pieces: Vec<Result<Vec<T>, usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = w
                .chunks(cols * k)
                .zip(q.chunks_mut(cols * k))
                .enumerate()
                .map(|(i, (wp, qp))| {
                    scope.spawn(move || {
                        let mut sc = vec![T::from_f32(0.0); groups * (wp.len() / k)];
                        quantize_matrix(wp, k, qp, &mut sc, None)
                            .map(|()| sc)
                            .map_err(|at| i * cols * k + at)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(p) => std::panic::resume_unwind(p),
                })
                .collect()
        });
        let mut scales = vec![T::from_f32(0.0); groups * n];
        for (i, piece) in pieces.into_iter().enumerate() {
            let sc = piece.map_err(|at| not_finite(w, k, at))?;
            let (c0, width) = (i * cols, sc.len() / groups);
            for g in 0..groups {
                scales[g * n + c0..g * n + c0 + width]
                    .copy_from_slice(&sc[g * width..(g + 1) * width]);
            }
        }
        Ok(Int4Weights { n, k, q, scales })
    }

    /// The quantization, adding each group's error terms to `errors` when given.
    fn quantize_measured(
        w: &[f32],
        n: usize,
        k: usize,
        errors: Option<&mut GroupErrors>,
    ) -> CudaResult<Self> {
        check_weights(w, n, k)?;
        let groups = k / GROUP;
        let mut q = vec![0i8; n * k];
        let mut scales = vec![T::from_f32(0.0); groups * n];
        quantize_matrix(w, k, &mut q, &mut scales, errors).map_err(|i| not_finite(w, k, i))?;
        Ok(Int4Weights { n, k, q, scales })
    }

    /// Quantizes a GGUF tensor of `n` rows of `k` elements in format `qtype`, through its
    /// f32 dequantization. The error is measured against that dequantization.
    pub fn from_gguf(
        qtype: QType,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> CudaResult<(Self, QuantError)> {
        const OP: &str = "w4a16 from_gguf";
        check_shape(OP, n, k)?;
        let row_bytes = qtype.row_bytes(k).map_err(|e| shape(OP, e.to_string()))?;
        if bytes.len() != n * row_bytes {
            return Err(shape(
                OP,
                format!(
                    "{} bytes, expected {n} rows of {row_bytes} ({qtype})",
                    bytes.len()
                ),
            ));
        }
        let mut w = vec![0.0f32; n * k];
        for (r, dst) in w.chunks_exact_mut(k).enumerate() {
            dequantize(qtype, &bytes[r * row_bytes..(r + 1) * row_bytes], dst).map_err(|e| {
                CudaError::Shape {
                    op: OP,
                    detail: format!("row {r}: {e}"),
                }
            })?;
        }
        Self::quantize(&w, n, k)
    }

    /// `q * scale` in f32 (exact: a 4-bit integer times a 16-bit float). The small-m kernel
    /// (m <= 16) multiplies with these: it sums x q per group and scales in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.n * self.k];
        for c in 0..self.n {
            for kk in 0..self.k {
                let s = self.scales[(kk / GROUP) * self.n + c].to_f32();
                out[c * self.k + kk] = self.q[c * self.k + kk] as f32 * s;
            }
        }
        out
    }

    /// The weights the tiled kernel (m > 16) multiplies with: `q * scale` rounded once to T,
    /// as its tensor-core operands are T (its scalar reference uses these).
    pub fn kernel_weights(&self) -> Vec<f32> {
        self.dequantize()
            .into_iter()
            .map(|v| T::from_f32(v).to_f32())
            .collect()
    }

    /// The error of these weights against `w`, the plain way: the whole matrix dequantized,
    /// every difference in f64 (the reference the error measured while quantizing is tested
    /// against).
    pub fn error_against(&self, w: &[f32]) -> QuantError {
        let deq = self.dequantize();
        // Partial sums in LANES lanes (one running f64 sum waits on each addition; a load
        // measures every expert matrix of the model).
        const LANES: usize = 8;
        let (mut max_abs, mut se, mut sw) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
        for (a, b) in w.chunks(LANES).zip(deq.chunks(LANES)) {
            for (l, (&a, &b)) in a.iter().zip(b).enumerate() {
                let d = (a as f64 - b as f64).abs();
                max_abs[l] = max_abs[l].max(d);
                se[l] += d * d;
                sw[l] += (a as f64) * (a as f64);
            }
        }
        let max_abs = max_abs.iter().fold(0.0f64, |m, &v| m.max(v));
        let (se, sw): (f64, f64) = (se.iter().sum(), sw.iter().sum());
        let len = w.len() as f64;
        QuantError {
            max_abs,
            rms: (se / len).sqrt(),
            rms_weight: (sw / len).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// A NaN or an infinity anywhere is an error naming the weight, row and column.
    #[test]
    fn a_weight_that_is_not_finite_is_named() {
        let (n, k) = (64usize, 256usize);
        for (at, bad) in [
            (0usize, f32::NAN),
            (5 * k + 130, f32::INFINITY),
            (n * k - 1, f32::NEG_INFINITY),
        ] {
            let mut w = vec![0.25f32; n * k];
            w[at] = bad;
            let e = Int4Weights::<bf16>::quantize_values(&w, n, k)
                .unwrap_err()
                .to_string();
            let want = format!("weight {at} (row {}, col {}) is {bad}", at / k, at % k);
            assert!(e.contains(&want), "{e}");
            assert!(Int4Weights::<bf16>::quantize(&w, n, k).is_err());
        }
        // the threaded form names it by its place in the whole matrix, in any piece
        let (n, k) = (4 * TILE_N, 256usize);
        for at in [3usize, 2 * TILE_N * k + 7, n * k - 1] {
            let mut w = vec![0.25f32; n * k];
            w[at] = f32::NAN;
            let e = Int4Weights::<bf16>::quantize_values_parallel(&w, n, k, 4)
                .unwrap_err()
                .to_string();
            let want = format!("weight {at} (row {}, col {}) is NaN", at / k, at % k);
            assert!(e.contains(&want), "{e}");
        }
    }

    /// The threaded quantization is the single call's, bit for bit, for thread counts that
    /// divide the column tiles evenly, unevenly, and exceed them.
    #[test]
    fn parallel_quantization_matches_the_single_call() {
        let mut rng = crate::util::SplitMix64::new(11);
        for (n, k) in [(64usize, 128usize), (5 * TILE_N, 384), (8 * TILE_N, 1408)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| rng.uniform(-1.0, 1.0) * if i % 331 == 0 { 20.0 } else { 1.0 })
                .collect();
            let one = Int4Weights::<bf16>::quantize_values(&w, n, k).unwrap();
            for threads in [1usize, 2, 3, 4, 16] {
                let par = Int4Weights::<bf16>::quantize_values_parallel(&w, n, k, threads).unwrap();
                assert!(par == one, "n {n} k {k} threads {threads}");
            }
        }
        assert!(Int4Weights::<bf16>::quantize_values_parallel(&[0.0; 10], 64, 128, 2).is_err());
    }

    /// The error measured while quantizing is the plain measure's: the same largest
    /// difference, the sums within f32 rounding of a group's 128 terms.
    #[test]
    fn measured_error_matches_the_plain_measure() {
        let mut rng = crate::util::SplitMix64::new(7);
        for (n, k) in [(64usize, 128usize), (128, 1408), (192, 2048)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| {
                    let u = rng.uniform(-0.5, 0.5);
                    // outliers every 997th weight, a zero group's worth of tiny values
                    if i % 997 == 0 {
                        u * 40.0
                    } else if i < GROUP {
                        u * 1e-30
                    } else {
                        u
                    }
                })
                .collect();
            let (q, err) = Int4Weights::<bf16>::quantize(&w, n, k).unwrap();
            let want = q.error_against(&w);
            assert_eq!(q, Int4Weights::<bf16>::quantize_values(&w, n, k).unwrap());
            assert_eq!(err.max_abs, want.max_abs, "n {n} k {k}");
            for (got, want) in [(err.rms, want.rms), (err.rms_weight, want.rms_weight)] {
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "n {n} k {k}: {got} vs {want}"
                );
            }
        }
    }
}
