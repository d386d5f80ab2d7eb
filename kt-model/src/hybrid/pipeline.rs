//! Pipelined layers: the host queues the GPU work of the next layer before it computes the
//! current layer's routed experts, so the GPU never waits for the host's kernel launches,
//! only for the experts' result.
//!
//! Layer `L + 1`'s queued work starts with a wait on a host flag (`cuStreamWaitValue32` on
//! pinned memory), then copies layer `L`'s routed sum back, adds it, and runs layer `L + 1`
//! up to its shared experts; the host then waits for layer `L`'s copy out (an event recorded
//! after it), runs the experts, writes the sum and raises the flag. The kernels, their
//! order and their inputs are those of the sequential loop, so the logits are bit for bit
//! the same (a test checks it). Without trace or timing only: per-layer events would
//! measure the queue, not the work.
//!
//! Buffer safety: the host reads the pinned inputs of layer `L` and writes the pinned sum
//! while the only copies that touch those buffers and are not finished sit behind the flag
//! it has not raised yet. Their own events are recorded behind the flag too, so the reads go
//! through the unsynchronized views, ordered by layer `L`'s event instead. If anything fails
//! while work waits, the guard raises the flag so the stream never hangs.

use kt_kernels::cuda::mla::MlaBatch;
use kt_kernels::cuda::{GpuEvent, HostFlag};

use super::error::HybridResult;
use super::forward::Step;
use super::gpu_experts::cpu_experts;
use super::layer::{GpuFfn, GpuLayer};
use super::scratch::Scratch;
use super::timing::LayerMarks;
use super::{HybridCache, Workspaces};

/// A MoE layer whose GPU half is queued and whose routed experts are still to run.
struct Pending {
    li: usize,
    copied: GpuEvent,
    has_shared: bool,
    /// The flag value that releases the work queued after it.
    release: u32,
}

/// The values waits were queued for; raises the flag to the last on drop (every queued
/// wait released, also on an error path).
pub(super) struct Gate<'f> {
    flag: &'f HostFlag,
    last: u32,
}

impl<'f> Gate<'f> {
    /// A gate that raises `flag` to `last` on drop.
    pub(super) fn new(flag: &'f HostFlag, last: u32) -> Self {
        Gate { flag, last }
    }

    fn next(&mut self) -> u32 {
        self.last = self.last.wrapping_add(1);
        self.last
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.flag.raise(self.last);
    }
}

impl Step<'_> {
    /// Every layer of the call, pipelined as the module docs say.
    pub(super) fn layers_pipelined(
        &self,
        layers: &[GpuLayer],
        sc: &mut Scratch,
        cache: &mut HybridCache,
        batch: &MlaBatch,
        ws: &mut Workspaces,
        flag: &HostFlag,
    ) -> HybridResult<()> {
        let mut gate = Gate::new(flag, flag.value());
        let mut none = LayerMarks::default();
        let mut pending: Option<Pending> = None;
        for (li, layer) in layers.iter().enumerate() {
            if let Some(p) = &pending {
                self.s.wait_flag(flag, p.release)?;
                self.moe_back(p.li, p.has_shared, sc, &mut none)?;
            }
            self.layer_front(layer, sc, cache, li, batch, ws, false)?;
            let queued = match &layer.ffn {
                GpuFfn::Dense(_) => None,
                GpuFfn::Moe {
                    router,
                    bias,
                    shared,
                } => {
                    let copied = self
                        .moe_gpu(
                            li,
                            router,
                            bias.as_ref(),
                            shared.as_ref(),
                            sc,
                            &mut none,
                            ws,
                            true,
                        )?
                        .expect("asked for the event");
                    Some(Pending {
                        li,
                        copied,
                        has_shared: shared.is_some(),
                        release: gate.next(),
                    })
                }
            };
            if let Some(p) = pending.take() {
                self.experts_unsynced(&p, sc)?;
                flag.raise(p.release);
                // the choices layer p.li deferred, while the GPU runs this layer
                sc.defer.deferred(self.fused_for(p.li)?)?;
            }
            pending = queued;
        }
        if let Some(p) = pending.take() {
            self.s.wait_flag(flag, p.release)?;
            self.moe_back(p.li, p.has_shared, sc, &mut none)?;
            self.experts_unsynced(&p, sc)?;
            flag.raise(p.release);
        }
        drop(gate);
        Ok(())
    }

    /// The routed experts of `p` from the pinned inputs into the pinned sum, once `p`'s
    /// copies are done.
    fn experts_unsynced(&self, p: &Pending, sc: &mut Scratch) -> HybridResult<()> {
        let fused = self.fused_for(p.li)?;
        // the experts follow this wait: keep the CPU threads off their sleep path
        fused.wake_threads();
        p.copied.synchronize()?;
        // SAFETY: `p.copied` was recorded after the copy into host_pack of layer p.li and
        // has completed; the next copy into it (the next MoE layer's) is queued behind the
        // flag value `p.release`, which is raised only after this function returns, so no
        // copy writes it while this view lives.
        let (hx, hids, hw) = sc.unpack(unsafe { sc.host_pack.as_slice_unsynced() });
        // SAFETY: the last copy out of host_routed before `p.copied` (the previous MoE
        // layer's copy back) precedes it on the stream and is done; the next one (this
        // layer's) waits for `p.release`, raised after this write.
        let routed = unsafe { sc.host_routed.as_mut_slice_unsynced() };
        let resident = self.resident_experts(p.li);
        let defer = &mut sc.defer;
        cpu_experts(fused, p.li, hx, hids, hw, resident, defer, routed, false)?;
        Ok(())
    }
}
