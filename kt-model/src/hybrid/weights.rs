//! GPU copies of the model's weight matrices in the format the placement names: `int4_g128`
//! (the W4A16 GEMM, `kt_kernels::cuda::w4a16`) or `bf16` (the batched NT GEMM of
//! `kt_kernels::cuda::linear`, f32 sums). Both are made from the GGUF rows dequantized to
//! f32, so any stored type works. Several matrices with the same input can be stacked into
//! one (gate and up of a SwiGLU MLP: one GEMM whose output rows hold the gate half first,
//! the layout `silu_mul` takes).

use std::collections::HashMap;

use half::bf16;
use kt_kernels::cuda::linear::GemmNt;
use kt_kernels::cuda::w4a16::{GemmWorkspace, Int4Weights, W4A16Weights};
use kt_kernels::cuda::{DeviceBuf, GpuStream, LaunchOrder};
use kt_kernels::quant::QType;

use super::error::{HybridError, HybridResult};
use crate::deepseek::linear::Linear;
use crate::placement::{Device, ModuleKind, ModulePlacement, Placement, WeightFormat};

/// A `[n, k]` weight matrix on the GPU.
pub(crate) enum GpuLinear {
    Int4(W4A16Weights<bf16>),
    Bf16 {
        w: DeviceBuf<bf16>,
        n: usize,
        k: usize,
    },
}

impl GpuLinear {
    /// The rows of `parts` (same `cols`) stacked in order, in `format`; `module` names the
    /// placement module in errors.
    pub fn load(
        s: &GpuStream,
        parts: &[Linear<'_>],
        format: WeightFormat,
        module: &str,
    ) -> HybridResult<GpuLinear> {
        let k = parts[0].cols;
        if parts.iter().any(|p| p.cols != k) {
            return Err(HybridError::Unsupported(format!(
                "{module}: stacked matrices of different widths"
            )));
        }
        let n: usize = parts.iter().map(|p| p.rows).sum();
        let w = dequantize_rows(parts)?;
        match format {
            WeightFormat::Int4G128 => {
                let q =
                    Int4Weights::quantize_values_parallel(&w, n, k, threads()).map_err(|e| {
                        HybridError::Unsupported(format!("{module} in int4_g128 ({n} x {k}): {e}"))
                    })?;
                Ok(GpuLinear::Int4(s.upload_w4a16(&q)?))
            }
            WeightFormat::Ggml(QType::BF16) => {
                let wb = to_bf16(&w);
                Ok(GpuLinear::Bf16 {
                    w: s.upload(&wb)?,
                    n,
                    k,
                })
            }
            other => Err(HybridError::Unsupported(format!(
                "{module}: format {other} on the GPU (the hybrid executor runs int4_g128 and bf16)"
            ))),
        }
    }

    pub fn k(&self) -> usize {
        match self {
            GpuLinear::Int4(w) => w.k,
            GpuLinear::Bf16 { k, .. } => *k,
        }
    }

    /// `out[m, n] = sum_k x[m, k] W[n, k]`, bf16 in and out, f32 sums.
    pub fn apply(
        &self,
        s: &GpuStream,
        x: &DeviceBuf<bf16>,
        m: usize,
        out: &mut DeviceBuf<bf16>,
        ws: &mut GemmWorkspace,
    ) -> HybridResult<()> {
        self.apply_ordered(s, x, m, out, ws, LaunchOrder::Serial)
    }

    /// [`Self::apply`] with an int4 matrix's small-m kernel launched in `order` (see
    /// [`LaunchOrder`]: with `Programmatic` its first weight loads overlap the end of the
    /// kernel before it, which must not write these weights); the same bits either way.
    pub fn apply_ordered(
        &self,
        s: &GpuStream,
        x: &DeviceBuf<bf16>,
        m: usize,
        out: &mut DeviceBuf<bf16>,
        ws: &mut GemmWorkspace,
        order: LaunchOrder,
    ) -> HybridResult<()> {
        match self {
            GpuLinear::Int4(w) => s.w4a16_gemm_ordered(w, x, m, out, ws, order)?,
            GpuLinear::Bf16 { w, n, k } => s.gemm_nt(&GemmNt::linear(m, *n, *k), x, w, out)?,
        }
        Ok(())
    }

    /// Asks the L2 for up to `budget` bytes of the weights (an int4 matrix's packed weights,
    /// then its scales); the bytes asked.
    pub fn prefetch_l2(&self, s: &GpuStream, budget: usize) -> HybridResult<usize> {
        Ok(match self {
            GpuLinear::Int4(w) => {
                let (packed, scales) = w.buffers();
                let first = s.prefetch_l2(packed, budget)?;
                first + s.prefetch_l2(scales, budget - first)?
            }
            GpuLinear::Bf16 { w, .. } => s.prefetch_l2(w, budget)?,
        })
    }

    /// [`Self::apply`] with f32 output (the logits): the bf16 GEMM stores f32 directly; the
    /// int4 one rounds to bf16 first (its only output type), then widens.
    pub fn apply_f32(
        &self,
        s: &GpuStream,
        x: &DeviceBuf<bf16>,
        m: usize,
        out: &mut DeviceBuf<f32>,
        ws: &mut GemmWorkspace,
    ) -> HybridResult<()> {
        let mut staging = match self {
            GpuLinear::Int4(w) => Some(s.alloc_zeroed::<bf16>(m * w.n)?),
            GpuLinear::Bf16 { .. } => None,
        };
        self.apply_f32_staged(s, x, m, out, staging.as_mut(), ws)
    }

    /// [`Self::apply_f32`] with the int4 matrix's bf16 rows in `staging` (`[m, n]`, given by
    /// the caller so the call allocates nothing: a captured graph); bf16 matrices need none.
    pub fn apply_f32_staged(
        &self,
        s: &GpuStream,
        x: &DeviceBuf<bf16>,
        m: usize,
        out: &mut DeviceBuf<f32>,
        staging: Option<&mut DeviceBuf<bf16>>,
        ws: &mut GemmWorkspace,
    ) -> HybridResult<()> {
        match (self, staging) {
            (GpuLinear::Int4(w), Some(tmp)) => {
                s.w4a16_gemm(w, x, m, tmp, ws)?;
                s.cast(tmp, out)?;
            }
            (GpuLinear::Int4(_), None) => {
                return Err(HybridError::Input(
                    "an int4 output head needs bf16 staging rows".into(),
                ))
            }
            (GpuLinear::Bf16 { w, n, k }, _) => s.gemm_nt(&GemmNt::linear(m, *n, *k), x, w, out)?,
        }
        Ok(())
    }

    /// The bf16 staging rows [`Self::apply_f32_staged`] needs for `m` rows (0: none).
    pub fn f32_staging_len(&self, m: usize) -> usize {
        match self {
            GpuLinear::Int4(w) => m * w.n,
            GpuLinear::Bf16 { .. } => 0,
        }
    }
}

/// The machine's cores, for the load's threaded steps.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// `w` rounded to bf16, in pieces on all cores (an output head or embedding of ~1e9 values
/// takes seconds on one).
fn to_bf16(w: &[f32]) -> Vec<bf16> {
    let threads = threads();
    let mut out = vec![bf16::ZERO; w.len()];
    let per = w.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (src, dst) in w.chunks(per).zip(out.chunks_mut(per)) {
            scope.spawn(move || {
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = bf16::from_f32(v);
                }
            });
        }
    });
    out
}

/// Every row of `parts`, dequantized to f32, one after the other; the rows are split over
/// the machine's cores (a 100k-row output head takes seconds on one).
pub(crate) fn dequantize_rows(parts: &[Linear<'_>]) -> HybridResult<Vec<f32>> {
    let k = parts[0].cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let mut w = vec![0.0f32; n * k];
    let mut rows: Vec<(&Linear<'_>, usize, &mut [f32])> = Vec::with_capacity(n);
    let mut rest = w.as_mut_slice();
    for p in parts {
        for r in 0..p.rows {
            let (row, tail) = rest.split_at_mut(k);
            rows.push((p, r, row));
            rest = tail;
        }
    }
    let threads = threads();
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks_mut(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter_mut()
                        .try_for_each(|(p, r, row)| p.dequantize_row(*r, row))
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| match h.join() {
            Ok(r) => r.map_err(HybridError::from),
            Err(p) => std::panic::resume_unwind(p),
        })
    })?;
    Ok(w)
}

/// The placement's modules by name, with the checks that this executor can run it: every
/// module on `cuda:0` except the routed experts, which stay on the CPU, all in one format:
/// the GGUF's own (kt's fused MoE operator reads them from the memory map) or a repacked
/// CPU layout (`int4_amx`, `int8_amx`: repacked at load for the repacked operator).
pub(crate) struct Formats<'p> {
    by_name: HashMap<&'p str, &'p ModulePlacement>,
    routed: Option<WeightFormat>,
}

impl<'p> Formats<'p> {
    pub fn new(placement: &'p Placement) -> HybridResult<Self> {
        let mut routed: Option<WeightFormat> = None;
        for m in placement.modules() {
            match (m.kind, m.device) {
                (ModuleKind::RoutedExperts, Device::Cpu)
                    if m.format == WeightFormat::Gguf || m.format.repack().is_some() =>
                {
                    match routed {
                        Some(f) if f != m.format => {
                            return Err(HybridError::Unsupported(format!(
                                "module {} is placed in {} but an earlier layer's routed experts in {f}; the hybrid executor runs every layer's routed experts in one format",
                                m.name, m.format
                            )))
                        }
                        _ => routed = Some(m.format),
                    }
                }
                (ModuleKind::RoutedExperts, d) => {
                    return Err(HybridError::Unsupported(format!(
                        "module {} is placed on {d} in {}; the hybrid executor runs routed experts on the CPU, as stored (format gguf) or repacked (int4_amx, int8_amx)",
                        m.name, m.format
                    )))
                }
                (_, Device::Cuda(0)) => {}
                (_, d) => {
                    return Err(HybridError::Unsupported(format!(
                        "module {} is placed on {d}; the hybrid executor runs everything but the routed experts on cuda:0",
                        m.name
                    )))
                }
            }
        }
        Ok(Formats {
            by_name: placement
                .modules()
                .iter()
                .map(|m| (m.name.as_str(), m))
                .collect(),
            routed,
        })
    }

    /// The repacked layout the routed experts run in (`None`: as stored in the GGUF).
    pub fn routed_repack(&self) -> Option<kt_kernels::cpu::moe::repack::RepackFormat> {
        self.routed.and_then(WeightFormat::repack)
    }

    /// The format of the module holding tensor `tensor` (`blk.3.attn_q.weight` is module
    /// `blk.3.attn_q`).
    pub fn of_tensor(&self, tensor: &str) -> HybridResult<WeightFormat> {
        let module = tensor.strip_suffix(".weight").unwrap_or(tensor);
        self.of(module)
    }

    pub fn of(&self, module: &str) -> HybridResult<WeightFormat> {
        self.by_name.get(module).map(|m| m.format).ok_or_else(|| {
            HybridError::Unsupported(format!("the placement has no module {module}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kt_kernels::util::SplitMix64;

    /// The threaded bf16 rounding is the plain one, element by element, for lengths that
    /// split evenly and unevenly (and shorter than the thread count).
    #[test]
    fn threaded_bf16_rounding_equals_one_pass() {
        let mut rng = SplitMix64::new(5);
        for len in [0usize, 1, 3, 17, 4096, 100_003] {
            let w: Vec<f32> = (0..len).map(|_| rng.normal() * 3.0 + 1e-3).collect();
            let want: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let got = to_bf16(&w);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
                    && got.len() == len,
                "len {len}"
            );
        }
    }

    /// Rows of several matrices, dequantized on several threads, are each matrix's rows in
    /// order.
    #[test]
    fn dequantized_rows_stack_in_order() {
        let (k, ra, rb) = (32usize, 5usize, 70usize);
        let a: Vec<f32> = (0..ra * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..rb * k).map(|i| 1.0 - i as f32 * 0.25).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (ba, bb) = (bytes(&a), bytes(&b));
        let la = Linear {
            name: "a",
            qtype: QType::F32,
            rows: ra,
            cols: k,
            data: &ba,
        };
        let lb = Linear {
            name: "b",
            qtype: QType::F32,
            rows: rb,
            cols: k,
            data: &bb,
        };
        let got = dequantize_rows(&[la, lb]).unwrap();
        assert_eq!(got, [a, b].concat());
    }
}
