//! The decode step (one token) as one CUDA graph launch, with the CPU's routed experts
//! ordered on the stream by host flags.
//!
//! Once a single-token call has run eagerly (which sizes every workspace), the same work is
//! captured on a side stream into a graph, per (model, cache): every layer, then the final norm and
//! the output head into a preallocated logits buffer. Per MoE layer `k` (1-based) the graph copies
//! the normalized hidden state, ids and weights (one packed buffer) to pinned memory, writes `k`
//! into the pinned `ready` flag (after a fence), queues the shared experts, then waits until the
//! pinned `done` flag reaches `k`, copies the routed sum back and adds it. Each token the host
//! resets both flags, updates what changes per token in device buffers the kernels read (the
//! embedding row, the position, which is also the cache row and the rope row, the MLA kv length and
//! split count), launches the graph, and for each MoE layer waits for `ready`, runs the routed
//! experts and raises `done`. The flags' values are the same every launch, so the graph never
//! changes.
//!
//! The kernels, their order and their inputs are those of the eager loop (the MLA launch of
//! a live batch reads the split count the eager launch would plan), so the logits are the
//! same bit for bit (a test checks it). Buffer safety is the pipelined loop's (see
//! `pipeline.rs`): the host touches the pinned buffers of layer `k` between `ready >= k`
//! (the copies out are done) and raising `done` to `k` (the next copies wait for it).
//!
//! The graph names the scratch, the workspaces and the cache by address: any call that does
//! not replay it drops it first (it may reallocate them), and a call with another cache
//! recaptures.

use std::time::Duration;

use half::bf16;
use kt_kernels::cuda::mla::{MlaBatch, MlaKernel};
use kt_kernels::cuda::{DeviceBuf, Gpu, GpuGraph, GpuStream, HostFlag};

use super::error::{HybridError, HybridResult};
use super::forward::Step;
use super::layer::{GpuFfn, GpuLayer};
use super::pipeline::Gate;
use super::scratch::Scratch;
use super::weights::GpuLinear;
use super::{HybridCache, Workspaces, BLOCK_SIZE};
use crate::deepseek::fused_moe::FusedMoe;

/// How long the host waits for the graph to reach a MoE layer before it reports the graph
/// as failed (a layer's GPU half takes well under a millisecond).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A captured decode step and what it replays with.
pub(crate) struct DecodeGraph {
    /// The cache it was captured for ([`HybridCache`]'s id).
    pub cache_id: u64,
    graph: GpuGraph,
    batch: MlaBatch,
    logits: DeviceBuf<f32>,
    /// The int4 output head's bf16 rows before they widen to the logits.
    _staging: Option<DeviceBuf<bf16>>,
    ready: HostFlag,
    done: HostFlag,
    /// The MoE layers in order: the `k`-th (0-based) is released by flag value `k + 1`.
    moe_layers: Vec<usize>,
    /// The stream it was captured on (kept with the graph).
    _capture: GpuStream,
}

/// The output head the graph ends with.
pub(crate) struct Head<'m> {
    pub norm: &'m DeviceBuf<f32>,
    pub output: &'m GpuLinear,
}

impl DecodeGraph {
    /// Captures one decode step of `layers` over `cache` with `step` (a single-token step
    /// whose workspaces an eager call of the same shape has just sized).
    pub fn capture(
        gpu: &Gpu,
        step: &Step<'_>,
        layers: &[GpuLayer],
        head: Head<'_>,
        sc: &mut Scratch,
        cache: &mut HybridCache,
        ws: &mut Workspaces,
    ) -> HybridResult<DecodeGraph> {
        let s = gpu.stream();
        let c = step.c;
        let kernel = MlaKernel::best_for(s.info());
        let batch = s.mla_batch_live(
            c.n_heads,
            &[1],
            &[cache.capacity],
            &cache.table,
            BLOCK_SIZE,
            kernel,
        )?;
        s.mla_reserve(&batch, &mut ws.mla)?;
        let mut logits = s.alloc_zeroed::<f32>(c.vocab_size)?;
        let mut staging = match head.output.f32_staging_len(1) {
            0 => None,
            n => Some(s.alloc_zeroed::<bf16>(n)?),
        };
        let (ready, done) = (gpu.host_flag()?, gpu.host_flag()?);
        let capture = s.new_untracked_stream()?;
        s.synchronize()?; // every buffer allocated and written before the capture
        let step = step.on(&capture);
        capture.begin_capture()?;
        let recorded = record(
            &step,
            layers,
            &head,
            sc,
            cache,
            &batch,
            ws,
            &mut logits,
            staging.as_mut(),
            &ready,
            &done,
        );
        // end the capture on every path: until then the stream is unusable
        let graph = capture.end_capture();
        let moe_layers = recorded?;
        Ok(DecodeGraph {
            cache_id: cache.id,
            graph: graph?,
            batch,
            logits,
            _staging: staging,
            ready,
            done,
            moe_layers,
            _capture: capture,
        })
    }

    /// One decode step at position `cache.len` whose embedding row is already in `sc.x`:
    /// sets the step's device inputs, launches the graph, runs the routed experts as the
    /// graph reaches each MoE layer, and returns the logits (`[vocab]`).
    pub fn replay(
        &mut self,
        s: &GpuStream,
        fused: Option<&FusedMoe>,
        sc: &mut Scratch,
        cache: &HybridCache,
    ) -> HybridResult<Vec<f32>> {
        let pos = cache.len;
        s.copy_from_host(&[pos as u32], &mut sc.positions)?;
        s.mla_set_kv_lens(&mut self.batch, &[pos + 1])?;
        // the previous launch is done (its logits were downloaded): no wait reads these
        self.ready.raise(0);
        self.done.raise(0);
        self.graph.launch(s)?;
        // on any error below, release every wait so the graph completes
        let gate = Gate::new(&self.done, self.moe_layers.len() as u32);
        for (k, &li) in self.moe_layers.iter().enumerate() {
            let release = k as u32 + 1;
            let fused = fused.ok_or_else(|| {
                HybridError::Input(format!(
                    "layer {li} is MoE but the model has no routed experts"
                ))
            })?;
            // the experts follow this wait: keep the CPU threads off their sleep path
            fused.wake_threads();
            self.ready.wait_at_least(release, READY_TIMEOUT)?;
            // SAFETY: `ready` reached `release` after the copy of layer li into host_pack
            // (the stream's write is fenced), and the next copy into it waits for `done` >=
            // release, raised only after this view ends.
            let (hx, hids, hw) = sc.unpack(unsafe { sc.host_pack.as_slice_unsynced() });
            // SAFETY: the previous copy out of host_routed (layer k - 1's) precedes the
            // `ready` write of this layer on the stream, so it is done; this layer's waits
            // for `done` >= release, raised after this write.
            let routed = unsafe { sc.host_routed.as_mut_slice_unsynced() };
            fused.forward(li, hx, hids, hw, routed)?;
            self.done.raise(release);
        }
        drop(gate);
        Ok(s.download(&self.logits)?)
    }
}

/// The work of one decode step on `step`'s (capturing) stream; returns the MoE layers.
#[allow(clippy::too_many_arguments)]
fn record(
    step: &Step<'_>,
    layers: &[GpuLayer],
    head: &Head<'_>,
    sc: &mut Scratch,
    cache: &mut HybridCache,
    batch: &MlaBatch,
    ws: &mut Workspaces,
    logits: &mut DeviceBuf<f32>,
    staging: Option<&mut DeviceBuf<bf16>>,
    ready: &HostFlag,
    done: &HostFlag,
) -> HybridResult<Vec<usize>> {
    let s = step.s;
    let mut moe_layers = Vec::new();
    for (li, layer) in layers.iter().enumerate() {
        step.layer_front(layer, sc, cache, li, batch, ws)?;
        let GpuFfn::Moe {
            router,
            bias,
            shared,
        } = &layer.ffn
        else {
            continue;
        };
        moe_layers.push(li);
        let release = moe_layers.len() as u32;
        step.route_packed(router, bias.as_ref(), sc)?;
        // SAFETY (the copy out and the one back): the host reads host_pack only between
        // `ready` >= release (written after this copy) and raising `done` to release (which
        // the next copy into it waits for), and writes host_routed only in that window too,
        // before the copy back that waits for it (`DecodeGraph::replay`); the scratch
        // outlives the graph (it is dropped first).
        unsafe { s.copy_to_pinned_unordered(&sc.pack, &mut sc.host_pack)? };
        s.write_flag(ready, release)?;
        if let (Some(mlp), Some((gu, act, out))) = (shared, sc.shared.as_mut()) {
            step.mlp(mlp, &sc.xn, gu, act, out, ws)?;
        }
        s.wait_flag(done, release)?;
        // SAFETY: see above.
        unsafe { s.copy_from_pinned_unordered(&sc.host_routed, &mut sc.routed)? };
        match (shared.is_some(), sc.shared.as_ref()) {
            (true, Some((_, _, out))) => s.add2_f32(&mut sc.x, &sc.routed, out)?,
            _ => s.add_f32(&mut sc.x, &sc.routed)?,
        }
    }
    let c = step.c;
    s.rmsnorm_w32(
        &sc.x,
        c.hidden_size,
        1,
        head.norm,
        &mut sc.fin,
        None,
        c.rms_norm_eps,
    )?;
    head.output
        .apply_f32_staged(s, &sc.fin, 1, logits, staging, &mut ws.gemm)?;
    Ok(moe_layers)
}
