//! Resident experts: the first experts of every MoE layer kept on the GPU for good.
//!
//! A GPU prefill's MoE layer waits for its int4 weights to cross PCIe (a DeepSeek-V3 layer:
//! 5.8 GB, ~0.11 s at the device's 53-55 GB/s). A GPU has room beside the rest of the model
//! for part of every layer's experts (the rule option `prefill_resident`; `kt-bench plan`
//! counts them and prints how many fit): those are copied once, here, and a layer then
//! copies only its other experts. With `decode_resident`, single-token steps run their
//! choices among them too (`decode.rs`); the memory is the GPU's, counted by the caller.

use half::bf16;
use kt_kernels::cuda::moe_experts::{ExpertSlab, HostExpertSlab, SlabShape};
use kt_kernels::cuda::GpuStream;

use super::Slabs;
use crate::hybrid::error::{HybridError, HybridResult};

/// The first `experts` experts of each MoE layer, on the GPU.
#[derive(Default)]
pub(crate) struct Resident {
    pub experts: usize,
    /// By layer index, as the host slabs (`None` for dense layers or with no experts).
    slabs: Vec<Option<Slabs<ExpertSlab<bf16>>>>,
}

impl Resident {
    /// Copies the first `experts` experts of every layer of `host` into new device slabs
    /// allocated on `s`, through `copy`; waits for both.
    pub(super) fn load(
        s: &GpuStream,
        copy: &GpuStream,
        host: &[Option<Slabs<HostExpertSlab<bf16>>>],
        experts: usize,
    ) -> HybridResult<Self> {
        if experts == 0 {
            return Ok(Resident::default());
        }
        let mut slabs = Vec::with_capacity(host.len());
        for h in host {
            let Some(h) = h else {
                slabs.push(None);
                continue;
            };
            let alloc = |full: SlabShape| -> HybridResult<ExpertSlab<bf16>> {
                let shape = SlabShape::new(experts, full.n, full.k)?;
                s.alloc_expert_slab(shape).map_err(|e| {
                    HybridError::Input(format!(
                        "{experts} resident experts of n {}, k {} per MoE layer: {e}",
                        full.n, full.k
                    ))
                })
            };
            slabs.push(Some(Slabs {
                gate_up: alloc(h.gate_up.shape)?,
                down: alloc(h.down.shape)?,
            }));
        }
        // the slabs exist before the copy stream writes them
        s.synchronize()?;
        for (h, d) in host.iter().zip(slabs.iter_mut()) {
            if let (Some(h), Some(d)) = (h, d) {
                copy.copy_experts(&h.gate_up, 0, &mut d.gate_up, 0, experts)?;
                copy.copy_experts(&h.down, 0, &mut d.down, 0, experts)?;
            }
        }
        copy.synchronize()?;
        Ok(Resident { experts, slabs })
    }

    /// Layer `li`'s resident slabs (`None` without any).
    pub(super) fn layer(&self, li: usize) -> Option<&Slabs<ExpertSlab<bf16>>> {
        self.slabs.get(li).and_then(Option::as_ref)
    }

    /// Whether layer `li` has resident experts.
    pub fn has_layer(&self, li: usize) -> bool {
        self.experts > 0 && self.layer(li).is_some()
    }

    /// Device bytes of all layers' resident slabs.
    pub fn bytes(&self) -> usize {
        self.slabs
            .iter()
            .flatten()
            .map(|l| l.gate_up.shape.bytes(2) + l.down.shape.bytes(2))
            .sum()
    }
}
