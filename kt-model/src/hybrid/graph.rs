//! The decode step (one token) as one CUDA graph launch, with the CPU's routed experts
//! ordered on the stream by host flags.
//!
//! Once a single-token call has run eagerly (which sizes every workspace), the same work is
//! captured on a side stream into a graph, per (model, cache): every layer, then the final norm and
//! the output head into a preallocated logits buffer. Per MoE layer `k` (1-based) the gating kernel
//! writes the normalized hidden state, ids and weights (one packed buffer) straight into pinned
//! host memory and then raises the pinned `ready` flag to `k` itself (after a system-wide fence);
//! with an f32 router one kernel also does the residual add, the FFN norm and the router before it
//! (`add_norm_route_signal`). With `decode_resident` the choices among the layer's resident
//! experts are staged and computed on the GPU next (`gpu_experts/decode.rs`; the host runs the
//! others). The shared experts follow, then a prefetch of the next layer's first attention
//! weights into the L2 (the GPU idles until the experts return), then one kernel waits until the
//! pinned `done` flag reaches `k`, adds the routed sum (read from pinned memory), the shared
//! experts' output and the resident choices' sum to the residual and computes the norm that
//! comes next (the next layer's attention norm, or the final norm). So the hand-off costs no copy and no stream memory
//! operation: per MoE layer two kernels replace add + norm, the router, the gating, two copies, a
//! flag write, a stream wait, the add and the next norm (the chain between two layers' experts
//! measured 88 -> 64 us on the device; bench-results/2026-11-22-s5-decode6). Each token the host
//! resets both flags, updates what changes per token in device buffers the kernels read (the
//! embedding row, the position, which is also the cache row and the rope row, the MLA kv length and
//! split count), launches the graph, and for each MoE layer waits for `ready`, runs the routed
//! experts and raises `done`. The flags' values are the same every launch, so the graph never
//! changes. The capture forks each layer's rope + cache write onto a second stream, so that
//! launch and the query absorption (independent: other columns of the query rows) are parallel
//! nodes, joined before the attention; the eager loop runs them one after the other.
//!
//! The kernels' arithmetic and inputs are those of the eager loop (the fused gating and return
//! round and sum as the unfused kernels do; the MLA launch of a live batch reads the split
//! count the eager launch would plan), so the logits are the same bit for bit (a test checks
//! it). Buffer safety: the host touches the pinned buffers of layer `k` between `ready >= k`
//! (the gating's writes are done and fenced) and raising `done` to `k` (the return waits for
//! it, and the next layer's gating follows the return on the stream).
//!
//! The graph names the single-token scratch, the workspaces and the cache by address. Calls
//! that do not replay it leave the first and the last in place (multi-token calls have their own
//! scratch); a call that grew the workspaces drops it, and a single-token call on another
//! cache recaptures. A cache cleared for a new sequence (`HybridCache::clear`) keeps its graph,
//! so a new sequence after its prompt replays from its first decode step.

use std::time::{Duration, Instant};

use half::bf16;
use kt_kernels::cuda::gating::MAX_TOP_K;
use kt_kernels::cuda::mla::{MlaBatch, MlaKernel};
use kt_kernels::cuda::{DeviceBuf, Gpu, GpuGraph, GpuStream, HostFlag};

use super::error::{HybridError, HybridResult};
use super::forward::Step;
use super::gpu_experts::{cpu_choices, cpu_experts};
use super::layer::{GpuFfn, GpuLayer, GpuRouter};
use super::pipeline::Gate;
use super::predict::Predict;
use super::scratch::Scratch;
use super::timing::GraphTimeline;
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
    /// The workspaces' allocation count it was captured at ([`Workspaces::allocations`]).
    pub ws_allocations: u64,
    graph: GpuGraph,
    batch: MlaBatch,
    logits: DeviceBuf<f32>,
    /// The int4 output head's bf16 rows before they widen to the logits.
    _staging: Option<DeviceBuf<bf16>>,
    ready: HostFlag,
    done: HostFlag,
    /// The MoE layers in order: the `k`-th (0-based) is released by flag value `k + 1`.
    moe_layers: Vec<usize>,
    /// Per MoE layer: the experts whose choices the graph runs on the GPU (the first ones;
    /// `decode_resident`), 0 where the CPU runs every choice.
    resident: Vec<usize>,
    /// The next MoE layer's predicted experts (`predict.rs`), for the CPU's prefetch.
    predict: Option<Predict>,
    /// The streams it was captured on (kept with the graph).
    _capture: GpuStream,
    _side: GpuStream,
    /// Where the replays' time went, seen from the host.
    timeline: GraphTimeline,
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
        let mut predict = Predict::new(gpu, s, c, layers)?;
        let capture = s.new_untracked_stream()?;
        // the rope + cache write runs on it beside the absorption: parallel graph nodes
        let side = s.new_untracked_stream()?;
        s.synchronize()?; // every buffer allocated and written before the capture
        let step = step.on(&capture).with_side(&side);
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
            predict.as_mut(),
        );
        // end the capture on every path: until then the stream is unusable
        let graph = capture.end_capture();
        let moe_layers = recorded?;
        let resident = moe_layers
            .iter()
            .map(|&li| step.resident_experts(li))
            .collect();
        let timeline = GraphTimeline::new(moe_layers.len());
        Ok(DecodeGraph {
            cache_id: cache.id,
            ws_allocations: ws.allocations(),
            graph: graph?,
            batch,
            logits,
            _staging: staging,
            ready,
            done,
            moe_layers,
            resident,
            predict,
            _capture: capture,
            _side: side,
            timeline,
        })
    }

    /// Where this graph's replays spent their time so far.
    pub fn timeline(&self) -> &GraphTimeline {
        &self.timeline
    }

    /// Starts the timeline afresh.
    pub fn reset_timeline(&mut self) {
        self.timeline = GraphTimeline::new(self.moe_layers.len());
    }

    /// One decode step at position `cache.len` whose embedding row is already in `sc.x`:
    /// sets the step's device inputs, launches the graph, runs the routed experts as the
    /// graph reaches each MoE layer, and returns the logits (`[vocab]`). With `prefetch`,
    /// after each MoE layer's experts the pool prefetches the first weights of the next
    /// one's predicted experts until the GPU reaches it (`predict.rs`).
    pub fn replay(
        &mut self,
        s: &GpuStream,
        fused: Option<&FusedMoe>,
        sc: &mut Scratch,
        cache: &HybridCache,
        prefetch: bool,
    ) -> HybridResult<Vec<f32>> {
        let entered = Instant::now();
        let pos = cache.len;
        s.copy_from_host(&[pos as u32], &mut sc.positions)?;
        s.mla_set_kv_lens(&mut self.batch, &[pos + 1])?;
        // the previous launch is done (its logits were downloaded): no wait reads these
        self.ready.raise(0);
        self.done.raise(0);
        if let Some(p) = &self.predict {
            p.flag.raise(0);
        }
        self.graph.launch(s)?;
        let mut mark = Instant::now();
        let tl = &mut self.timeline;
        tl.setup_s += (mark - entered).as_secs_f64();
        // on any error below, release every wait so the graph completes
        let gate = Gate::new(&self.done, self.moe_layers.len() as u32);
        // the prediction the pool prefetched for the current layer, if any
        let mut predicted = [0u32; MAX_TOP_K];
        let mut n_predicted = 0;
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
            let ready = Instant::now();
            tl.gpu_before_s[k] += (ready - mark).as_secs_f64();
            // SAFETY: `ready` reached `release` after layer li's gating wrote host_pack
            // (fenced at system scope before the flag), and the next gating into it follows
            // the wait for `done` >= release on the stream, raised only after this view ends.
            let (hx, hids, hw) = sc.unpack(unsafe { sc.host_pack.as_slice_unsynced() });
            if n_predicted > 0 {
                let named = hids
                    .iter()
                    .filter(|e| predicted[..n_predicted].contains(e))
                    .count();
                tl.predicted_hits += named as u64;
                tl.predicted_slots += hids.len() as u64;
            }
            // SAFETY: the previous read of host_routed (layer k - 1's return) precedes this
            // layer's gating, which raised `ready`, on the stream, so it is done; this
            // layer's return waits for `done` >= release, raised after this write.
            let routed = unsafe { sc.host_routed.as_mut_slice_unsynced() };
            let resident = self.resident[k];
            let defer = &mut sc.defer;
            cpu_experts(fused, li, hx, hids, hw, resident, defer, routed, false)?;
            self.done.raise(release);
            tl.resident_hits += hids.iter().filter(|&&e| (e as usize) < resident).count() as u64;
            tl.choice_slots += hids.len() as u64;
            mark = Instant::now();
            tl.add_experts(k, (mark - ready).as_secs_f64());
            // the choices this layer deferred (`defer_experts`), while the GPU runs the next
            // layer's attention: their sum joins the next MoE layer's routed output
            if defer.deferred(fused)? {
                let now = Instant::now();
                tl.deferred_s[k] += (now - mark).as_secs_f64();
                mark = now;
            }
            // while the GPU works towards the next MoE layer: its predicted experts' first
            // weights into the caches, until the GPU gets there
            n_predicted = 0;
            let next = self.moe_layers.get(k + 1);
            let ids = match (&self.predict, next) {
                (Some(p), Some(_)) if prefetch => p.ids(k + 1, &mut predicted),
                _ => None,
            };
            if let (Some(ids), Some(&next_li)) = (ids, next) {
                n_predicted = ids.len();
                // the predicted choices among the next layer's resident experts run on the
                // GPU: only the others' weights are worth the CPU's caches
                let next_resident = self.resident.get(k + 1).copied().unwrap_or(0);
                let no_weights = [0.0; MAX_TOP_K];
                let no_weights = no_weights.get(..ids.len()).unwrap_or_default();
                // (in the prediction's pick order, best first: the prefetch's rounds cover
                // its first, surest picks; `kt_kernels::cpu::MoeContext::prefetch`)
                let cpu = cpu_choices(ids, no_weights, next_resident)?;
                let arrived = &self.ready;
                let stop = || arrived.value() > release;
                let bytes = fused.prefetch(next_li, cpu.ids(), &stop)?;
                tl.prefetch_s += mark.elapsed().as_secs_f64();
                tl.prefetch_bytes += bytes as u64;
                tl.prefetches += 1;
            }
        }
        drop(gate);
        let logits = s.download(&self.logits)?;
        tl.tail_s += mark.elapsed().as_secs_f64();
        tl.launches += 1;
        Ok(logits)
    }
}

/// Bytes of the next layer's attention weights the decode graph prefetches into the L2 while
/// the CPU computes a MoE layer's experts: four fifths of the cache (the GPU has nothing else
/// in flight then). Session 30, device, call E (H100, 50 MB L2), V3 6-layer file, the GPU
/// stretch between two MoE layers: none 127.2 / 126.6 us, 24 MB 122.7 / 123.2, 40 MB 121.5 /
/// 122.5; V2-Lite (whole layers fit) 45.4 -> 43.8.
fn l2_prefetch_bytes(s: &GpuStream) -> usize {
    s.info().l2_bytes / 5 * 4
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
    mut predict: Option<&mut Predict>,
) -> HybridResult<Vec<usize>> {
    let s = step.s;
    let c = step.c;
    let mut moe_layers = Vec::new();
    // whether sc.xn holds the attention norm of the next layer (the return from a MoE
    // layer's experts computes it)
    let mut normed = false;
    for (li, layer) in layers.iter().enumerate() {
        // a MoE layer with an f32 router enters its FFN with one fused launch
        let fused_router = match &layer.ffn {
            GpuFfn::Moe {
                router: GpuRouter::F32(w),
                ..
            } if c.hidden_size.is_multiple_of(4) => Some(w),
            _ => None,
        };
        match fused_router {
            Some(_) => step.attention(layer, sc, cache, li, batch, ws, normed)?,
            None => step.layer_front(layer, sc, cache, li, batch, ws, normed)?,
        }
        normed = false;
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
        // SAFETY (the gating into host_pack and the return reading host_routed): the host
        // reads host_pack only between `ready` >= release (raised by the gating kernel once
        // the pack is written) and raising `done` to release, which this layer's return
        // waits for and the next layer's gating follows on the stream; it writes
        // host_routed in that window too, before raising `done`, and the return's reads
        // finish before the next layer's gating raises `ready` (`DecodeGraph::replay`).
        // The scratch and the flags outlive the graph (it is dropped first).
        unsafe {
            match fused_router {
                Some(w) => step.add_norm_route_signal(
                    &layer.ffn_norm,
                    w,
                    bias.as_ref(),
                    sc,
                    ready,
                    release,
                )?,
                None => step.route_signal(router, bias.as_ref(), sc, ready, release)?,
            }
        };
        // the choices among the resident experts, read from the pinned pack the gating wrote
        step.resident_choices(li, true, sc, ws)?;
        // the residual the next MoE layer's prediction starts from (x after this layer's
        // attention: the entry above updated it)
        let k = release as usize - 1;
        if let Some(p) = predict.as_deref_mut() {
            p.copy_residual(s, k, &sc.x)?;
        }
        if let (Some(mlp), Some((gu, act, out))) = (shared, sc.shared.as_mut()) {
            step.mlp(mlp, &sc.xn, gu, act, out, ws)?;
        }
        let shared_out = match (shared.is_some(), sc.shared.as_ref()) {
            (true, Some((_, _, out))) => Some(out),
            _ => None,
        };
        if let (Some(p), Some(next)) = (predict.as_deref_mut(), layers.get(li + 1)) {
            // SAFETY: the host reads the pack of MoE layer k + 1 only once the prediction's
            // flag reached k + 2 (`Predict::ids`); the graph owns `predict`, so its buffers
            // and flag outlive every replay.
            unsafe { p.queue(step, k, next, shared_out)? };
        }
        // the next layer's first attention weights into the L2 while the CPU computes this
        // layer's experts (the GPU is idle until they return)
        if let Some(next) = layers.get(li + 1) {
            step.prefetch_attention(next, l2_prefetch_bytes(s))?;
        }
        // x += routed + shared, then the norm that comes next: the next layer's attention
        // norm into sc.xn, or after the last layer the final norm into sc.fin
        let (norm, out) = match layers.get(li + 1) {
            Some(next) => (&next.attn_norm, &mut sc.xn),
            None => (head.norm, &mut sc.fin),
        };
        let resident_out = step.resident_out(li, &sc.decode)?;
        // SAFETY: see above.
        unsafe {
            s.wait_add2_rmsnorm_w32(
                done,
                release,
                &mut sc.x,
                &sc.host_routed,
                shared_out,
                resident_out,
                norm,
                out,
                c.rms_norm_eps,
            )?
        };
        normed = true;
    }
    if !normed {
        s.rmsnorm_w32(
            &sc.x,
            c.hidden_size,
            1,
            head.norm,
            &mut sc.fin,
            None,
            c.rms_norm_eps,
        )?;
    }
    head.output
        .apply_f32_staged(s, &sc.fin, 1, logits, staging, &mut ws.gemm)?;
    Ok(moe_layers)
}
