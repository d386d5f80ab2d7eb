//! The decode graph's prediction of the next MoE layer's routed experts, for the CPU to
//! prefetch their first weights while it waits for the GPU (issue 6: the GPU stretch
//! between two layers' experts leaves DRAM idle for ~40 us per layer).
//!
//! What is predicted: MoE layer `L + 1`'s router applied to its own FFN norm of the residual
//! `x + shared_L`, i.e. the residual after layer `L` without layer `L`'s routed experts and
//! before layer `L + 1`'s attention ("pre-gated" MoE). That is on the GPU as soon as layer
//! `L`'s shared experts are done, while the CPU still computes layer `L`'s routed experts,
//! so the GPU computes it in time it would idle and the host finds it ready when its
//! experts job ends: the whole stretch is left for the prefetch. On the synthetic V2-Lite
//! (CPU engine, `kt-model/examples/route_predict.rs`, 200 random tokens) the predicted top-6
//! names 78% of the actual top-6 without the shared experts' term and 84% from the whole
//! residual after layer `L` (which is only there after the routed experts came back);
//! chance is 9%; the previous token's routing of the same layer names 21%. With the shared
//! experts' term, as here, the graph's predictions named 87.1% in the device's decodes
//! (BENCHMARKS.md, session 11, chain11).
//!
//! How: one launch of the FFN entry kernel (`add_norm_route_signal`, the same math as the
//! real routing of layer `L + 1`) on a copy of the residual, with the shared experts' output
//! as its addend, into a pinned pack per predicted layer, raising a host flag of its own.
//! It writes only its own buffers, so the graph's values stay those of the eager loop bit
//! for bit.

use half::bf16;
use kt_kernels::cuda::gating::packed_len;
use kt_kernels::cuda::{DeviceBuf, Gpu, GpuStream, HostFlag, PinnedBuf};

use super::error::HybridResult;
use super::forward::Step;
use super::layer::{GpuFfn, GpuLayer, GpuRouter};
use crate::config::DeepSeekConfig;

/// The buffers of the predictions of one decode graph.
pub(crate) struct Predict {
    /// The residual copied before layer `L`'s shared experts; the entry kernel adds them.
    x: DeviceBuf<f32>,
    xn: DeviceBuf<bf16>,
    xn32: DeviceBuf<f32>,
    logits: DeviceBuf<f32>,
    counter: DeviceBuf<u32>,
    /// The addend for layers without shared experts.
    zero: DeviceBuf<bf16>,
    /// Per MoE layer (in order): the pinned pack its prediction lands in (row, ids,
    /// weights), `None` where it is not predicted.
    packs: Vec<Option<PinnedBuf<u32>>>,
    /// Raised to MoE layer `k`'s flag value (`k + 1`) once its prediction is written.
    pub flag: HostFlag,
    hidden: usize,
    top_k: usize,
}

/// The f32 router of `layer` when it is a MoE layer the fused entry can route.
fn f32_router(
    layer: &GpuLayer,
    hidden: usize,
) -> Option<(&DeviceBuf<f32>, Option<&DeviceBuf<f32>>)> {
    match &layer.ffn {
        GpuFfn::Moe {
            router: GpuRouter::F32(w),
            bias,
            ..
        } if hidden.is_multiple_of(4) => Some((w, bias.as_ref())),
        _ => None,
    }
}

impl Predict {
    /// Buffers for the MoE layers of `layers` that follow another MoE layer and have an f32
    /// router; `None` when there is none.
    pub fn new(
        gpu: &Gpu,
        s: &GpuStream,
        c: &DeepSeekConfig,
        layers: &[GpuLayer],
    ) -> HybridResult<Option<Predict>> {
        let (hidden, k, e) = (c.hidden_size, c.experts_per_tok, c.n_routed_experts);
        let moe: Vec<usize> = (0..layers.len())
            .filter(|&li| matches!(layers[li].ffn, GpuFfn::Moe { .. }))
            .collect();
        let mut any = false;
        let packs = moe
            .iter()
            .enumerate()
            .map(|(k_i, &li)| {
                let follows_moe = k_i > 0 && moe[k_i - 1] + 1 == li;
                if follows_moe && f32_router(&layers[li], hidden).is_some() {
                    any = true;
                    gpu.alloc_pinned::<u32>(packed_len(1, hidden, k)).map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !any {
            return Ok(None);
        }
        Ok(Some(Predict {
            x: s.alloc_zeroed(hidden)?,
            xn: s.alloc_zeroed(hidden)?,
            xn32: s.alloc_zeroed(hidden)?,
            logits: s.alloc_zeroed(e)?,
            counter: s.alloc_zeroed(1)?,
            zero: s.alloc_zeroed(hidden)?,
            packs,
            flag: gpu.host_flag()?,
            hidden,
            top_k: k,
        }))
    }

    /// Whether MoE layer `k` (0-based, in order) is predicted.
    pub fn predicts(&self, k: usize) -> bool {
        self.packs.get(k).is_some_and(Option::is_some)
    }

    /// Queues the copy of the residual `x` for the prediction of MoE layer `k + 1`, when it
    /// is predicted (before layer `k`'s shared experts, which the prediction adds).
    pub fn copy_residual(
        &mut self,
        s: &GpuStream,
        k: usize,
        x: &DeviceBuf<f32>,
    ) -> HybridResult<()> {
        if self.predicts(k + 1) {
            s.copy_device(x, &mut self.x)?;
        }
        Ok(())
    }

    /// Queues the prediction of MoE layer `k + 1` (decoder layer `next`) from the copied
    /// residual plus `shared` (layer `k`'s shared experts' output, if any), raising
    /// [`Self::flag`] to `k + 2` once its pack is written. Nothing when not predicted.
    ///
    /// # Safety
    /// The host reads the pack of layer `k + 1` only once the flag reached `k + 2`, and the
    /// buffers and the flag outlive the graph that replays this launch.
    pub unsafe fn queue(
        &mut self,
        step: &Step<'_>,
        k: usize,
        next: &GpuLayer,
        shared: Option<&DeviceBuf<bf16>>,
    ) -> HybridResult<()> {
        let Some(Some(pack)) = self.packs.get_mut(k + 1) else {
            return Ok(());
        };
        let Some((w, bias)) = f32_router(next, self.hidden) else {
            return Ok(());
        };
        let d = shared.unwrap_or(&self.zero);
        // SAFETY: the caller's contract covers the pack and the flag; the counter is this
        // struct's own, used by one launch at a time (the stream runs them in order).
        unsafe {
            step.s.add_norm_route_signal(
                step.router,
                &mut self.x,
                d,
                &next.ffn_norm,
                step.c.rms_norm_eps,
                &mut self.xn,
                &mut self.xn32,
                w,
                &mut self.logits,
                &mut self.counter,
                bias,
                pack,
                &self.flag,
                k as u32 + 2,
            )?
        };
        Ok(())
    }

    /// The predicted ids of MoE layer `k` into `out` (its first `top_k` entries; returns
    /// them), when the flag says they are written; `None` otherwise.
    pub fn ids<'o>(&self, k: usize, out: &'o mut [u32]) -> Option<&'o [u32]> {
        let pack = self.packs.get(k)?.as_ref()?;
        if self.flag.value() < k as u32 + 1 || out.len() < self.top_k {
            return None;
        }
        // SAFETY: the flag reached k + 1 (acquire) after the kernel's fenced writes of this
        // pack, and no launch writes it again before the next replay, which starts after the
        // caller's use (`DecodeGraph::replay` reads it between two of its own steps).
        let words = unsafe { pack.as_slice_unsynced() };
        let ids = &words[self.hidden..self.hidden + self.top_k];
        out[..self.top_k].copy_from_slice(ids);
        Some(&out[..self.top_k])
    }
}
