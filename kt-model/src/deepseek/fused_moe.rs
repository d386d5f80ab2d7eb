//! The routed experts of every MoE layer on kt-kernels' fused operator
//! (`kt_kernels::cpu::moe`), for [`MatmulMode::Quantized`](super::MatmulMode): one
//! [`MoeLayer`] per MoE layer over the GGUF's stacked `ffn_{gate,up,down}_exps` bytes in
//! place (the memory map is shared, not copied) and one [`MoeContext`] for the whole model,
//! whose scratch is sized once for the largest batch a call may carry.
//!
//! Token rows of an MoE call are independent, so a batch larger than the context's is run
//! in pieces of at most `max_batch` tokens with the same result.

use kt_kernels::cpu::moe::{ExpertStack, MoeContext, MoeLayer, PoolRef};
use kt_kernels::cpu::{self, Isa};

use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Tensor};
use crate::tensors::{Ffn, ModelTensors};

/// The batch the context is sized for unless told otherwise: a decode step and prompts of
/// moderate length run as one call; longer prompts run in pieces of this many tokens.
pub const DEFAULT_MAX_BATCH: usize = 512;

pub(crate) struct FusedMoe {
    ctx: MoeContext,
    /// Per decoder layer: its routed experts, `None` for dense layers.
    layers: Vec<Option<MoeLayer>>,
    top_k: usize,
}

impl FusedMoe {
    /// The operator over the MoE layers of `tensors` (from `gguf`), with scratch for
    /// `max_batch` tokens of `top_k` experts each. `None` when the model has no MoE layer.
    pub fn new(
        gguf: &Gguf,
        tensors: &ModelTensors<'_>,
        isa: Isa,
        top_k: usize,
        max_batch: usize,
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
        let moe: Vec<&MoeLayer> = layers.iter().flatten().collect();
        if moe.is_empty() {
            return Ok(None);
        }
        let pool = PoolRef::Static(cpu::pool::global());
        let ctx = MoeContext::new(pool, isa, max_batch, top_k, &moe).map_err(ModelError::Kernel)?;
        Ok(Some(FusedMoe { ctx, layers, top_k }))
    }

    /// The same layers with a context sized for `max_batch` tokens (the old one is dropped).
    pub fn resized(&self, max_batch: usize) -> Result<Self> {
        let moe: Vec<&MoeLayer> = self.layers.iter().flatten().collect();
        let pool = PoolRef::Static(cpu::pool::global());
        let ctx = MoeContext::new(pool, self.ctx.isa(), max_batch, self.top_k, &moe)
            .map_err(ModelError::Kernel)?;
        ctx.set_prefetch_rounds(self.ctx.prefetch_rounds())
            .map_err(ModelError::Kernel)?;
        Ok(FusedMoe {
            ctx,
            layers: self.layers.clone(),
            top_k: self.top_k,
        })
    }

    pub fn max_batch(&self) -> usize {
        self.ctx.max_tokens()
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
    /// timing). 0 for a dense layer.
    #[cfg(feature = "cuda")]
    pub fn routed_bytes(&self, layer: usize, ids: &[u32]) -> u64 {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .map_or(0, |l| {
                super::ffn::distinct_experts(ids, l.experts()) * l.expert_bytes() as u64
            })
    }

    /// Warms the caches for a decode call of layer `layer` routed to `ids` (a prediction):
    /// `MoeContext::prefetch`, stopped once `stop()` says so; the bytes issued. 0 for a
    /// dense layer.
    #[cfg(feature = "cuda")]
    pub fn prefetch(
        &self,
        layer: usize,
        ids: &[u32],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize> {
        let Some(l) = self.layers.get(layer).and_then(Option::as_ref) else {
            return Ok(0);
        };
        self.ctx
            .prefetch(l, ids, stop)
            .map_err(|source| ModelError::TensorKernel {
                tensor: format!("blk.{layer}.ffn_*_exps"),
                source,
            })
    }

    /// `MoeContext::set_prefetch_rounds`: the gate+up items per thread [`FusedMoe::prefetch`]
    /// warms and a decode call hands to their threads first.
    #[cfg(feature = "cuda")]
    pub fn set_prefetch_rounds(&self, rounds: usize) -> Result<()> {
        self.ctx
            .set_prefetch_rounds(rounds)
            .map_err(ModelError::Kernel)
    }

    #[cfg(feature = "cuda")]
    pub fn prefetch_rounds(&self) -> usize {
        self.ctx.prefetch_rounds()
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
        let l = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| ModelError::Forward {
                reason: format!("layer {layer} has no routed experts"),
            })?;
        let (h, k, step) = (l.hidden(), self.top_k, self.ctx.max_tokens());
        let rows = x.len() / h;
        let mut t = 0;
        while t < rows {
            let n = step.min(rows - t);
            self.ctx
                .forward(
                    l,
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
