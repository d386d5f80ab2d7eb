//! Decode on the resident experts (the rule option `decode_resident`): a single-token step's
//! choices that fall on a layer's resident experts (the first `prefill_resident` of them,
//! kept on the GPU for the prefill anyway) run there, beside the shared experts, while the
//! CPU streams only the other choices' weights.
//!
//! The choices are known on the device only (the gating wrote them), and a captured decode
//! graph must not depend on them, so the device stages them itself: `moe_stage_resident`
//! reads the choices (one small launch: the pack may lie in host memory) and copies each
//! resident choice's weights into place `j` (its position among the token's
//! `top_k`) of a staging slab of `top_k` experts and marks the other places skipped; then
//! gate+up, SiLU-and-multiply and down run on every place (the skipped ones on stale weights,
//! which the combine leaves out) and the combine sums the resident choices in choice order.
//! The GPU has time for it: its work between the gating and the experts' return is otherwise
//! only the shared experts (the CPU's experts take ~1.2 ms a DeepSeek-V3 layer). The return
//! adds the sum to the residual after the CPU's and the shared experts' (`add_routed`, or
//! `wait_add2_rmsnorm_w32`'s extra addend in the graph), in the same order in both, so graph
//! and eager steps agree bit for bit.
//!
//! Values: the resident choices compute with the int4 g128 weights of the GPU prefill
//! (`GpuPrefillLoad` reports their error against the file's), the others with the CPU's.

use half::bf16;
use kt_kernels::cuda::moe_experts::{ExpertSlab, PackedWords, ResidentStage, SlabShape};
use kt_kernels::cuda::w4a16::GemmWorkspace;
use kt_kernels::cuda::{DeviceBuf, GpuStream};

use super::{Resident, Slabs};
use crate::config::DeepSeekConfig;
use crate::deepseek::defer::{Choices, Deferral};
use crate::deepseek::fused_moe::FusedMoe;
use crate::hybrid::error::{HybridError, HybridResult};

/// A single-token step's buffers for its resident choices (in the single-token scratch).
pub(crate) struct DecodeResident {
    top_k: usize,
    hidden: usize,
    width: usize,
    /// `top_k` places of gate+up and down weights.
    staged: Slabs<ExpertSlab<bf16>>,
    /// Row 0 of the normalized hidden state for every place (the gather's rows).
    zeros: DeviceBuf<i32>,
    x: DeviceBuf<bf16>,
    gate_up: DeviceBuf<bf16>,
    act: DeviceBuf<bf16>,
    y: DeviceBuf<bf16>,
    chosen: DeviceBuf<i32>,
    slot: DeviceBuf<i32>,
    weights: DeviceBuf<f32>,
    /// The resident choices' weighted sum `[hidden]` (0 when none).
    pub out: DeviceBuf<f32>,
}

impl DecodeResident {
    pub fn new(s: &GpuStream, c: &DeepSeekConfig) -> HybridResult<Self> {
        let (top_k, hidden, width) = (c.experts_per_tok, c.hidden_size, c.moe_intermediate_size);
        let staged = Slabs {
            gate_up: s.alloc_expert_slab(SlabShape::new(top_k, 2 * width, hidden)?)?,
            down: s.alloc_expert_slab(SlabShape::new(top_k, hidden, width)?)?,
        };
        let bf = |n: usize| s.alloc_zeroed::<bf16>(n);
        Ok(DecodeResident {
            top_k,
            hidden,
            width,
            staged,
            zeros: s.alloc_zeroed(top_k)?,
            x: bf(top_k * hidden)?,
            gate_up: bf(top_k * 2 * width)?,
            act: bf(top_k * width)?,
            y: bf(top_k * hidden)?,
            chosen: s.alloc_zeroed(top_k)?,
            slot: s.alloc_zeroed(top_k)?,
            weights: s.alloc_zeroed(top_k)?,
            out: s.alloc_zeroed(hidden)?,
        })
    }

    /// Queues the choices among layer `li`'s `resident` experts of the token whose gating
    /// wrote `words` (`xn` its normalized row, bf16): their weighted sum into [`Self::out`].
    pub fn run(
        &mut self,
        s: &GpuStream,
        resident: &Resident,
        li: usize,
        words: PackedWords<'_>,
        xn: &DeviceBuf<bf16>,
        ws: &mut GemmWorkspace,
    ) -> HybridResult<()> {
        let resident = resident
            .layer(li)
            .ok_or_else(|| HybridError::Input(format!("layer {li} has no resident experts")))?;
        let (k, hidden, width) = (self.top_k, self.hidden, self.width);
        let stage = ResidentStage {
            gate_up: &resident.gate_up,
            down: &resident.down,
            staged_gate_up: &mut self.staged.gate_up,
            staged_down: &mut self.staged.down,
        };
        let (chosen, slot, weights) = (&mut self.chosen, &mut self.slot, &mut self.weights);
        s.moe_stage_resident(words, hidden, k, stage, chosen, slot, weights)?;
        s.moe_gather(xn, &self.zeros, &mut self.x, hidden)?;
        for j in 0..k {
            let gu = &self.staged.gate_up;
            s.w4a16_gemm_expert(gu, j, &self.x, j..j + 1, &mut self.gate_up, ws)?;
        }
        s.silu_mul(&self.gate_up, &mut self.act, k, width)?;
        for j in 0..k {
            let down = &self.staged.down;
            s.w4a16_gemm_expert(down, j, &self.act, j..j + 1, &mut self.y, ws)?;
        }
        s.moe_combine(&self.y, &self.slot, &self.weights, k, &mut self.out, hidden)?;
        Ok(())
    }
}

/// One token's choices left to the CPU: those at or past `resident` (the GPU takes the
/// others), in choice order.
pub(crate) fn cpu_choices(ids: &[u32], weights: &[f32], resident: usize) -> HybridResult<Choices> {
    Ok(Choices::filtered(ids, weights, |e| e as usize >= resident)?)
}

/// Layer `li`'s routed experts on the CPU into `out`: every choice, or for a single token
/// with `resident > 0` the choices at or past `resident` (the GPU runs the others). With
/// `defer` active (a single-token step with `defer_experts`, `deepseek/defer.rs`), only the
/// immediate ones and the previous MoE layer's deferred sum; the caller runs the deferred ones
/// (`Deferral::deferred`) once it has released the GPU. Returns the weight bytes all the
/// CPU's choices of the layer stream when `count` (timing), else 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cpu_experts(
    fused: &FusedMoe,
    li: usize,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    resident: usize,
    defer: &mut Deferral,
    out: &mut [f32],
    count: bool,
) -> HybridResult<u64> {
    if resident == 0 && !defer.active() {
        fused.forward(li, x, ids, weights, out)?;
        return Ok(if count {
            fused.routed_bytes(li, ids)
        } else {
            0
        });
    }
    let cpu = cpu_choices(ids, weights, resident)?;
    defer.immediate(fused, li, x, cpu.ids(), cpu.weights(), out)?;
    Ok(if count {
        fused.routed_bytes(li, cpu.ids())
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kt_kernels::cuda::gating::MAX_TOP_K;

    #[test]
    fn the_cpu_keeps_the_choices_past_the_resident_experts_in_order() {
        let ids = [7u32, 2, 43, 0, 42, 100, 5, 60];
        let w = [0.3f32, 0.2, 0.1, 0.1, 0.1, 0.08, 0.07, 0.05];
        let c = cpu_choices(&ids, &w, 43).unwrap();
        assert_eq!(c.ids(), [43, 100, 60]);
        assert_eq!(c.weights(), [0.1, 0.08, 0.05]);
        let none = cpu_choices(&ids, &w, 256).unwrap();
        assert!(none.ids().is_empty() && none.weights().is_empty());
        let all = cpu_choices(&ids, &w, 0).unwrap();
        assert_eq!((all.ids(), all.weights()), (&ids[..], &w[..]));
        assert!(cpu_choices(&ids, &w[..7], 4).is_err());
        assert!(cpu_choices(&[0; MAX_TOP_K + 1], &[0.0; MAX_TOP_K + 1], 4).is_err());
    }
}
