//! The routed experts of every MoE layer on kt-kernels' fused operator
//! (`kt_kernels::cpu::moe`), for [`MatmulMode::Quantized`](super::MatmulMode): one
//! [`MoeLayer`] per MoE layer over the GGUF's stacked `ffn_{gate,up,down}_exps` bytes in
//! place (the memory map is shared, not copied) and one [`MoeContext`] for the whole model,
//! whose scratch is sized once for the largest batch a call may carry; or, when the
//! placement asks for a repacked layout (`int4_amx`, `int8_amx`), those layers repacked at
//! load and one [`RepackedMoe`] (the same decode prefetch of predicted experts).
//!
//! Token rows of an MoE call are independent, so a batch larger than the context's is run
//! in pieces of at most `max_batch` tokens with the same result.

use kt_kernels::cpu::moe::repack::{RepackFormat, RepackedLayer, RepackedMoe, RepackedStack};
use kt_kernels::cpu::moe::{ExpertStack, MoeContext, MoeLayer, PoolRef};
use kt_kernels::cpu::{self, Isa};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Tensor};
use crate::tensors::{Ffn, ModelTensors};

/// The batch the context is sized for unless told otherwise: a decode step and prompts of
/// moderate length run as one call; longer prompts run in pieces of this many tokens.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Progress of a load that repacks the routed experts: called as `(done, total)` expert
/// matrices (one projection of one expert), from the kernels' pool threads.
pub type RepackProgress<'p> = &'p (dyn Fn(usize, usize) + Sync);

pub(crate) struct FusedMoe {
    experts: Experts,
    top_k: usize,
}

/// The operator and, per decoder layer, its routed experts (`None` for dense layers):
/// the GGUF's own bytes, or repacked at load for the repacked operator.
enum Experts {
    Gguf {
        ctx: MoeContext,
        layers: Vec<Option<MoeLayer>>,
    },
    Repacked {
        moe: RepackedMoe,
        layers: Vec<Option<RepackedLayer>>,
    },
}

impl FusedMoe {
    /// The operator over the MoE layers of `tensors` (from `gguf`), with scratch for
    /// `max_batch` tokens of `top_k` experts each; with `repack`, every expert matrix is
    /// repacked to that layout at load (on the kernels' pool, an expert an item; progress
    /// reported as it goes) and runs on the repacked operator. `None` when the model has no
    /// MoE layer.
    pub fn new(
        gguf: &Gguf,
        tensors: &ModelTensors<'_>,
        isa: Isa,
        top_k: usize,
        max_batch: usize,
        repack: Option<(RepackFormat, RepackProgress<'_>)>,
    ) -> Result<Option<Self>> {
        let layers = tensors
            .layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Dense(_) => Ok(None),
                Ffn::Moe(m) => {
                    let stacks = [&m.gate_exps, &m.up_exps, &m.down_exps].map(|t| stack(gguf, t));
                    let [gate, up, down] = stacks;
                    MoeLayer::new(gate?, up?, down?)
                        .map(Some)
                        .map_err(|source| kernel_err(&m.gate_exps, source))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if layers.iter().all(Option::is_none) {
            return Ok(None);
        }
        let experts = match repack {
            None => Experts::Gguf {
                ctx: gguf_context(&layers, isa, max_batch, top_k)?,
                layers,
            },
            Some((f, progress)) => {
                let layers = repack_layers(&layers, f, tensors, progress)?;
                Experts::Repacked {
                    moe: repacked_operator(&layers, isa, max_batch, top_k)?,
                    layers,
                }
            }
        };
        Ok(Some(FusedMoe { experts, top_k }))
    }

    /// The same layers with an operator sized for `max_batch` tokens (the old one is
    /// dropped).
    pub fn resized(&self, max_batch: usize) -> Result<Self> {
        let experts = match &self.experts {
            Experts::Gguf { ctx, layers } => {
                let new = gguf_context(layers, ctx.isa(), max_batch, self.top_k)?;
                new.set_prefetch_rounds(ctx.prefetch_rounds())
                    .map_err(ModelError::Kernel)?;
                Experts::Gguf {
                    ctx: new,
                    layers: layers.clone(),
                }
            }
            Experts::Repacked { moe, layers } => {
                let new = repacked_operator(layers, moe.isa(), max_batch, self.top_k)?;
                new.set_prefetch_rounds(moe.prefetch_rounds())
                    .map_err(ModelError::Kernel)?;
                Experts::Repacked {
                    moe: new,
                    layers: layers.clone(),
                }
            }
        };
        Ok(FusedMoe {
            experts,
            top_k: self.top_k,
        })
    }

    pub fn max_batch(&self) -> usize {
        match &self.experts {
            Experts::Gguf { ctx, .. } => ctx.max_tokens(),
            Experts::Repacked { moe, .. } => moe.max_tokens(),
        }
    }

    /// Gets the operator's threads spinning for the next couple of milliseconds: for a
    /// caller that waits on something else (the GPU's layer) right before its next call,
    /// so that call does not pay the workers' wake-up from sleep.
    #[cfg(feature = "cuda")]
    pub fn wake_threads(&self) {
        cpu::pool::global().wake();
    }

    /// Weight bytes of the distinct experts of layer `layer` that `ids` name (each read once
    /// per call): what a call's routed experts stream from memory (the hybrid executor's
    /// and the CPU engine's timing). 0 for a dense layer.
    pub fn routed_bytes(&self, layer: usize, ids: &[u32]) -> u64 {
        self.layer(layer).map_or(0, |l| {
            let (experts, bytes) = l.experts_and_bytes();
            super::ffn::distinct_experts(ids, experts) * bytes as u64
        })
    }

    /// Warms the caches for a decode call of layer `layer` routed to `ids` (a prediction):
    /// `MoeContext::prefetch` or `RepackedMoe::prefetch`, stopped once `stop()` says so;
    /// the bytes issued. 0 for a dense layer.
    #[cfg(feature = "cuda")]
    pub fn prefetch(
        &self,
        layer: usize,
        ids: &[u32],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize> {
        let Some(l) = self.layer(layer) else {
            return Ok(0);
        };
        l.prefetch(ids, stop)
            .map_err(|source| ModelError::TensorKernel {
                tensor: format!("blk.{layer}.ffn_*_exps"),
                source,
            })
    }

    /// `set_prefetch_rounds` of the operator: the gate+up items per thread
    /// [`FusedMoe::prefetch`] warms and a decode call hands to their threads first.
    #[cfg(feature = "cuda")]
    pub fn set_prefetch_rounds(&self, rounds: usize) -> Result<()> {
        match &self.experts {
            Experts::Gguf { ctx, .. } => ctx.set_prefetch_rounds(rounds),
            Experts::Repacked { moe, .. } => moe.set_prefetch_rounds(rounds),
        }
        .map_err(ModelError::Kernel)
    }

    #[cfg(feature = "cuda")]
    pub fn prefetch_rounds(&self) -> usize {
        match &self.experts {
            Experts::Gguf { ctx, .. } => ctx.prefetch_rounds(),
            Experts::Repacked { moe, .. } => moe.prefetch_rounds(),
        }
    }

    /// `out[t] = sum_s weights[t,s] * expert_{ids[t,s]}(x[t])` for layer `layer`'s routed
    /// experts; `x`, `out` `[T, hidden]`, `ids`, `weights` `[T, k]`.
    pub fn forward(
        &self,
        layer: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_k(layer, x, ids, weights, out, self.top_k)
    }

    /// `out[r] = weights[r] * expert_{ids[r]}(x[r])` for rows of one choice each (`x`,
    /// `out` `[R, hidden]`, `ids`, `weights` `[R]`): a split prefill's CPU share, its
    /// (token, expert) pairs flattened. Runs in pieces of `max_batch` rows, so rows sorted
    /// by expert read each expert's weights once (twice for an expert at a piece's edge).
    #[cfg(feature = "cuda")]
    pub fn forward_rows(
        &self,
        layer: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_k(layer, x, ids, weights, out, 1)
    }

    /// `out = sum_j weights[j] * expert_{ids[j]}(x)` for ONE token (`x`, `out` `[hidden]`)
    /// and any number of choices up to the layer's top k: the CPU's share of a single-token
    /// step whose other choices run on the GPU (`decode_resident`), or that defers some
    /// (`defer.rs`). No choice: `out = 0`.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn forward_choices(
        &self,
        layer: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let h = self.layer(layer).map_or(0, |l| l.hidden());
        if ids.len() > self.top_k || weights.len() != ids.len() || x.len() != h || out.len() != h {
            return Err(ModelError::Forward {
                reason: format!(
                    "layer {layer}'s routed experts for one token: x {} and out {} elements for hidden {h}, {} ids and {} weights for top {}",
                    x.len(),
                    out.len(),
                    ids.len(),
                    weights.len(),
                    self.top_k
                ),
            });
        }
        if ids.is_empty() {
            out.fill(0.0);
            return Ok(());
        }
        self.forward_k(layer, x, ids, weights, out, ids.len())
    }

    fn forward_k(
        &self,
        layer: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
        k: usize,
    ) -> Result<()> {
        let l = self.layer(layer).ok_or_else(|| ModelError::Forward {
            reason: format!("layer {layer} has no routed experts"),
        })?;
        let (h, step) = (l.hidden(), self.max_batch());
        let rows = x.len() / h;
        if x.len() != rows * h
            || ids.len() != rows * k
            || weights.len() != rows * k
            || out.len() != x.len()
        {
            return Err(ModelError::Forward {
                reason: format!(
                    "layer {layer}'s routed experts: x {} and out {} elements for hidden {h}, \
                     {} ids and {} weights for top {k}",
                    x.len(),
                    out.len(),
                    ids.len(),
                    weights.len()
                ),
            });
        }
        let mut t = 0;
        while t < rows {
            let n = step.min(rows - t);
            l.forward(
                &x[t * h..(t + n) * h],
                &ids[t * k..(t + n) * k],
                &weights[t * k..(t + n) * k],
                &mut out[t * h..(t + n) * h],
            )
            .map_err(|source| ModelError::TensorKernel {
                tensor: format!("blk.{layer}.ffn_*_exps"),
                source,
            })?;
            t += n;
        }
        Ok(())
    }

    /// Layer `layer`'s experts and their operator (`None` for a dense layer).
    fn layer(&self, layer: usize) -> Option<LayerRef<'_>> {
        match &self.experts {
            Experts::Gguf { ctx, layers } => {
                layers.get(layer)?.as_ref().map(|l| LayerRef::Gguf(ctx, l))
            }
            Experts::Repacked { moe, layers } => layers
                .get(layer)?
                .as_ref()
                .map(|l| LayerRef::Repacked(moe, l)),
        }
    }
}

/// One MoE layer's experts with the operator that runs them.
enum LayerRef<'a> {
    Gguf(&'a MoeContext, &'a MoeLayer),
    Repacked(&'a RepackedMoe, &'a RepackedLayer),
}

impl LayerRef<'_> {
    fn hidden(&self) -> usize {
        match self {
            LayerRef::Gguf(_, l) => l.hidden(),
            LayerRef::Repacked(_, l) => l.hidden(),
        }
    }

    /// The layer's expert count and the bytes of one expert's three matrices.
    fn experts_and_bytes(&self) -> (usize, usize) {
        match self {
            LayerRef::Gguf(_, l) => (l.experts(), l.expert_bytes()),
            LayerRef::Repacked(_, l) => (l.experts(), l.expert_bytes()),
        }
    }

    fn forward(
        &self,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> kt_kernels::Result<()> {
        match self {
            LayerRef::Gguf(ctx, l) => ctx.forward(l, x, ids, weights, out),
            LayerRef::Repacked(moe, l) => moe.forward(l, x, ids, weights, out),
        }
    }

    #[cfg(feature = "cuda")]
    fn prefetch(&self, ids: &[u32], stop: &(dyn Fn() -> bool + Sync)) -> kt_kernels::Result<usize> {
        match self {
            LayerRef::Gguf(ctx, l) => ctx.prefetch(l, ids, stop),
            LayerRef::Repacked(moe, l) => moe.prefetch(l, ids, stop),
        }
    }
}

/// The GGUF-native operator over `layers`, on the kernels' global pool.
fn gguf_context(
    layers: &[Option<MoeLayer>],
    isa: Isa,
    max_batch: usize,
    top_k: usize,
) -> Result<MoeContext> {
    let moe: Vec<&MoeLayer> = layers.iter().flatten().collect();
    let pool = PoolRef::Static(cpu::pool::global());
    MoeContext::new(pool, isa, max_batch, top_k, &moe).map_err(ModelError::Kernel)
}

/// The repacked operator over `layers`, on the kernels' global pool.
fn repacked_operator(
    layers: &[Option<RepackedLayer>],
    isa: Isa,
    max_batch: usize,
    top_k: usize,
) -> Result<RepackedMoe> {
    let moe: Vec<&RepackedLayer> = layers.iter().flatten().collect();
    let pool = PoolRef::Static(cpu::pool::global());
    RepackedMoe::new(pool, isa, max_batch, top_k, &moe).map_err(ModelError::Kernel)
}

/// Every MoE layer's experts repacked to `f` (gate, up and down alike), a projection at a
/// time, its experts spread over the kernels' pool (a V2-Lite projection is 64 experts of
/// 2.9 M weights); an error names the projection's tensor. `progress(done, total)` counts
/// expert matrices.
fn repack_layers(
    layers: &[Option<MoeLayer>],
    f: RepackFormat,
    tensors: &ModelTensors<'_>,
    progress: RepackProgress<'_>,
) -> Result<Vec<Option<RepackedLayer>>> {
    let total: usize = layers.iter().flatten().map(|l| 3 * l.experts()).sum();
    let done = AtomicUsize::new(0);
    let expert_done = || progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
    let mut out = Vec::with_capacity(layers.len());
    for (l, t) in layers.iter().zip(&tensors.layers) {
        let (Some(l), Ffn::Moe(m)) = (l, &t.ffn) else {
            out.push(None);
            continue;
        };
        let repack = |stack: &ExpertStack, tensor: &Tensor<'_>| {
            RepackedStack::from_stack_reporting(stack, f, &expert_done)
                .map_err(|source| kernel_err(tensor, source))
        };
        let gate = repack(l.gate(), &m.gate_exps)?;
        let up = repack(l.up(), &m.up_exps)?;
        let down = repack(l.down(), &m.down_exps)?;
        out.push(Some(
            RepackedLayer::new(gate, up, down)
                .map_err(|source| kernel_err(&m.gate_exps, source))?,
        ));
    }
    Ok(out)
}

/// The stacked 3-D tensor `t` (`ne = [cols, rows, experts]`) as an [`ExpertStack`] over the
/// GGUF's own bytes.
fn stack(gguf: &Gguf, t: &Tensor<'_>) -> Result<ExpertStack> {
    let [cols, rows, experts] = *t.dims else {
        return Err(ModelError::Forward {
            reason: format!(
                "tensor '{}' with ne {:?} is not a stack of expert matrices (3-D)",
                t.name, t.dims
            ),
        });
    };
    let (storage, offset) = gguf
        .tensor_storage(t.name)
        .ok_or_else(|| ModelError::Forward {
            reason: format!("tensor '{}' is not in the GGUF it was read from", t.name),
        })?;
    ExpertStack::new(t.qtype, storage, offset, experts, rows, cols)
        .map_err(|source| kernel_err(t, source))
}

fn kernel_err(t: &Tensor<'_>, source: kt_kernels::KtError) -> ModelError {
    ModelError::TensorKernel {
        tensor: t.name.to_owned(),
        source,
    }
}
