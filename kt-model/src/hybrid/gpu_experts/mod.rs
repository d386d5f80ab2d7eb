//! Routed experts of long prompt chunks on the GPU (KTransformers' layer-wise prefill).
//!
//! When the rule of the routed experts names `prefill_device: cuda:0` with
//! `prefill_format: int4_g128` and a `prefill_threshold`, every MoE layer's experts are
//! repacked at load to the W4A16 layout (one slab per layer for gate+up, one for down) in
//! PINNED host memory, not on the GPU: the point is models whose experts do not fit it.
//! A forward call of more than `threshold` tokens then runs each MoE layer's experts on the
//! GPU: the layer's slabs are copied into one of two device slots on a second stream while
//! the previous layer computes (the copy of layer i + 2 waits only for layer i to be done
//! with the slot), the router's choices are grouped by expert on the host
//! ([`group::ExpertGroups`]), the normalized rows gathered in that order, one W4A16 GEMM per
//! expert for gate+up and one for down with SiLU-and-multiply between, and each token's
//! expert outputs weighted and summed in choice order (deterministic). Shorter calls (decode)
//! keep the CPU experts.
//!
//! Split (`split.rs`, off by default): only a layer's first experts are copied and run on
//! the GPU; the CPU runs the others meanwhile. Resident experts (`resident.rs`, none by
//! default): a layer's first experts kept on the GPU, so only the others are copied; with
//! `decode_resident`, single-token steps run their choices among them there too
//! (`decode.rs`). Each call's copies and computes are timed by events (`timeline.rs`).

mod decode;
mod group;
mod resident;
mod split;
mod timeline;

pub(crate) use decode::{cpu_choices, cpu_experts, DecodeResident};
pub(crate) use resident::Resident;

pub use split::{CpuShareTimes, PrefillSplit};
pub use timeline::PrefillLayerTimes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use half::bf16;
use kt_kernels::cuda::moe_experts::{ExpertSlab, HostExpertSlab, SlabShape};
use kt_kernels::cuda::w4a16::{GemmWorkspace, Int4Weights};
use kt_kernels::cuda::{DeviceBuf, Gpu, GpuEvent, GpuStream, PinnedBuf};

use super::error::{HybridError, HybridResult};
use crate::config::DeepSeekConfig;
use crate::deepseek::fused_moe::{FusedMoe, RepackProgress};
use crate::deepseek::linear::Linear;
use crate::placement::{Device, ModuleKind, Placement, WeightFormat};
use crate::tensors::{Ffn, ModelTensors};
use group::ExpertGroups;
use split::CpuShare;
use timeline::LayerEvents;

/// The GPU prefill the placement asks of the routed experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PrefillRule {
    /// Calls of more than this many tokens.
    pub threshold: usize,
    /// Experts of each layer kept on the GPU (`prefill_resident`, 0 without).
    pub resident: usize,
    /// How each layer's experts are split with the CPU (`prefill_cpu_share`).
    pub split: PrefillSplit,
    /// Single-token steps run their choices among the resident experts on the GPU
    /// (`decode_resident`).
    pub decode_resident: bool,
}

/// The GPU prefill the placement asks of the routed experts. `None` when no routed-expert
/// rule names a prefill device; an error when the rules ask for something this executor
/// does not run (another device or format, rules that differ between layers).
pub(crate) fn prefill_rule(placement: &Placement) -> HybridResult<Option<PrefillRule>> {
    let mut found: Option<(PrefillRule, &str)> = None;
    let mut without: Option<&str> = None;
    for m in placement.modules() {
        if m.kind != ModuleKind::RoutedExperts {
            continue;
        }
        let o = &m.options;
        let Some(device) = o.prefill_device else {
            without = Some(&m.name);
            continue;
        };
        let format = o.prefill_format.unwrap_or(m.format);
        if device != Device::Cuda(0) || format != WeightFormat::Int4G128 {
            return Err(HybridError::Unsupported(format!(
                "module {}: prefill on {device} in {format}; the hybrid executor prefills routed experts on cuda:0 in int4_g128",
                m.name
            )));
        }
        let threshold = o.prefill_threshold.ok_or_else(|| {
            HybridError::Unsupported(format!(
                "module {}: prefill_device without prefill_threshold",
                m.name
            ))
        })?;
        let rule = PrefillRule {
            threshold,
            resident: o.prefill_resident.unwrap_or(0),
            split: o
                .prefill_cpu_share
                .map_or(PrefillSplit::Off, PrefillSplit::CpuShare),
            decode_resident: o.decode_resident.unwrap_or(false),
        };
        match found {
            Some((r, first)) if r != rule => {
                return Err(HybridError::Unsupported(format!(
                    "modules {first} and {}: prefill thresholds {} and {threshold}, resident experts {} and {} (decode on them {} and {}), splits {:?} and {:?}; the hybrid executor takes one rule for all layers",
                    m.name, r.threshold, r.resident, rule.resident, r.decode_resident, rule.decode_resident, r.split, rule.split
                )))
            }
            _ => found = Some((rule, &m.name)),
        }
    }
    match (found, without) {
        (Some((_, with)), Some(without)) => Err(HybridError::Unsupported(format!(
            "module {with} prefills on the GPU, {without} does not; the hybrid executor takes the same rule for all layers"
        ))),
        (found, _) => Ok(found.map(|(r, _)| r)),
    }
}

/// What the load of the GPU prefill experts cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuPrefillLoad {
    /// Wall time of the repack (dequantize, int4 quantize, pack) into pinned memory.
    pub seconds: f64,
    /// The part of `seconds` spent waiting for the pinned slabs: the first MoE layer's
    /// allocation (and zeroing), then whatever a layer's allocation, made while the layer
    /// before it repacked, had not finished by then.
    pub pin_seconds: f64,
    /// Pinned host bytes of all layers' slabs, and of one layer (one copy).
    pub pinned_bytes: usize,
    pub layer_bytes: usize,
    /// Relative RMS error of the int4 weights against the GGUF's dequantized ones: the
    /// worst matrix and over all of them.
    pub worst_relative_rms: f64,
    pub relative_rms: f64,
}

/// A layer's experts copied (or being copied) into a slot: the first `experts` of them
/// (those past the resident ones), until event `done` on the copy stream.
struct Staged {
    layer: usize,
    done: GpuEvent,
    experts: usize,
}

/// One layer's gate+up (`[2 width, hidden]` per expert, gate rows first) and down
/// (`[hidden, width]`) slabs.
struct Slabs<S> {
    gate_up: S,
    down: S,
}

/// The activations of one call's `pairs = tokens x top_k` (token, expert) pairs.
struct Pairs {
    pairs: usize,
    x: DeviceBuf<bf16>,
    gate_up: DeviceBuf<bf16>,
    act: DeviceBuf<bf16>,
    y: DeviceBuf<bf16>,
    rows: DeviceBuf<i32>,
    slot: DeviceBuf<i32>,
    /// `rows` and `slot` on the host, page-locked: kernels read them through their device
    /// address (a copy from pageable memory may wait for the stream, and one on a copy
    /// engine for the next layer's weight copy).
    host_rows: PinnedBuf<i32>,
    host_slot: PinnedBuf<i32>,
}

pub(crate) struct GpuExperts {
    /// Calls of more than this many tokens take the GPU path.
    pub threshold: usize,
    /// By layer index (`None` for dense layers).
    host: Vec<Option<Slabs<HostExpertSlab<bf16>>>>,
    moe_layers: Vec<usize>,
    slots: [Slabs<ExpertSlab<bf16>>; 2],
    /// What each slot holds (or is receiving).
    staged: [Option<Staged>; 2],
    copy: GpuStream,
    split: PrefillSplit,
    resident: Resident,
    /// Whether single-token steps run their resident choices on the GPU.
    decode_resident: bool,
    /// The call in progress: its start (on the main stream) and its layers' events.
    call_start: Option<GpuEvent>,
    events: Vec<LayerEvents>,
    cpu: CpuShare,
    /// Each split layer's CPU share in the last call, in layer order.
    cpu_times: Vec<CpuShareTimes>,
    experts: usize,
    top_k: usize,
    hidden: usize,
    width: usize,
    pairs: Option<Pairs>,
    pub load: GpuPrefillLoad,
}

impl Drop for GpuExperts {
    fn drop(&mut self) {
        // The slots must outlive the copies into them; a failure here has nowhere to go.
        let _ = self.copy.synchronize();
    }
}

impl GpuExperts {
    /// Repacks every MoE layer's experts of `tensors` into pinned memory and allocates the
    /// two device slots.
    pub fn load(
        gpu: &Gpu,
        tensors: &ModelTensors<'_>,
        config: &DeepSeekConfig,
        threshold: usize,
        progress: RepackProgress<'_>,
    ) -> HybridResult<Self> {
        let t0 = Instant::now();
        let (experts, hidden) = (config.n_routed_experts, config.hidden_size);
        let width = config.moe_intermediate_size;
        let shapes = Slabs {
            gate_up: SlabShape::new(experts, 2 * width, hidden)?,
            down: SlabShape::new(experts, hidden, width)?,
        };
        // The MoE layers, in order; `host` gets their slabs (None for the others).
        let moes: Vec<(usize, &crate::tensors::MoeFfn<'_>)> = tensors
            .layers
            .iter()
            .enumerate()
            .filter_map(|(li, l)| match &l.ffn {
                Ffn::Moe(m) => Some((li, m)),
                _ => None,
            })
            .collect();
        let mut host: Vec<Option<Slabs<HostExpertSlab<bf16>>>> =
            (0..tensors.layers.len()).map(|_| None).collect();
        let moe_layers: Vec<usize> = moes.iter().map(|&(li, _)| li).collect();
        let (mut worst, mut sum_sq, mut matrices) = (0.0f64, 0.0f64, 0usize);
        let mut pin_seconds = 0.0;
        // Progress in expert matrices (gate, up and down of one expert count three).
        let (done, total) = (AtomicUsize::new(0), 3 * experts * moes.len());
        let expert_done = || progress(done.fetch_add(3, Ordering::Relaxed) + 3, total);
        // Pinning is the driver's work on one core (~1.8 GB/s on the device: 10 s of a V3
        // file's 17 GB), so each MoE layer's slabs after the first are allocated on a thread
        // of their own while the layer before them repacks on all cores.
        let alloc = || -> HybridResult<Slabs<HostExpertSlab<bf16>>> {
            Ok(Slabs {
                gate_up: HostExpertSlab::new(gpu, shapes.gate_up)?,
                down: HostExpertSlab::new(gpu, shapes.down)?,
            })
        };
        std::thread::scope(|scope| -> HybridResult<()> {
            let mut pending = None;
            for (i, &(li, moe)) in moes.iter().enumerate() {
                let t_pin = Instant::now();
                let mut slabs = match pending.take() {
                    Some(h) => match std::thread::ScopedJoinHandle::join(h) {
                        Ok(r) => r?,
                        Err(p) => std::panic::resume_unwind(p),
                    },
                    None => alloc()?,
                };
                pin_seconds += t_pin.elapsed().as_secs_f64();
                if i + 1 < moes.len() {
                    pending = Some(scope.spawn(alloc));
                }
                for e in repack_layer(&mut slabs, moe, experts, &expert_done)? {
                    worst = worst.max(e);
                    sum_sq += e * e;
                    matrices += 1;
                }
                host[li] = Some(slabs);
            }
            Ok(())
        })?;
        if moe_layers.is_empty() {
            return Err(HybridError::Unsupported(
                "the rules prefill routed experts on the GPU but the model has no MoE layer".into(),
            ));
        }
        let layer_bytes = shapes.gate_up.bytes(2) + shapes.down.bytes(2);
        let pinned_bytes = layer_bytes * moe_layers.len();
        let seconds = t0.elapsed().as_secs_f64();
        let s = gpu.stream();
        let slot = || -> HybridResult<Slabs<ExpertSlab<bf16>>> {
            Ok(Slabs {
                gate_up: s.alloc_expert_slab(shapes.gate_up)?,
                down: s.alloc_expert_slab(shapes.down)?,
            })
        };
        let slots = [slot()?, slot()?];
        // the slots exist before the copy stream first writes them
        s.synchronize()?;
        let copy = s.new_untracked_stream()?;
        Ok(GpuExperts {
            threshold,
            host,
            moe_layers,
            slots,
            staged: [None, None],
            copy,
            split: PrefillSplit::Off,
            resident: Resident::default(),
            decode_resident: false,
            call_start: None,
            events: Vec::new(),
            cpu: CpuShare::default(),
            cpu_times: Vec::new(),
            experts,
            top_k: config.experts_per_tok,
            hidden,
            width,
            pairs: None,
            load: GpuPrefillLoad {
                seconds,
                pin_seconds,
                pinned_bytes,
                layer_bytes,
                worst_relative_rms: worst,
                relative_rms: (sum_sq / matrices.max(1) as f64).sqrt(),
            },
        })
    }

    /// How the layers' experts are split with the CPU ([`PrefillSplit::Off`] unless set).
    pub fn split(&self) -> PrefillSplit {
        self.split
    }

    pub fn set_split(&mut self, split: PrefillSplit) -> HybridResult<()> {
        if let PrefillSplit::CpuShare(f) = split {
            if !(0.0..=1.0).contains(&f) {
                return Err(HybridError::Input(format!(
                    "a CPU share of the experts must lie in 0..=1, not {f}"
                )));
            }
        }
        self.split = split;
        Ok(())
    }

    /// The experts of each MoE layer kept on the GPU (the first ones; 0 unless set).
    pub fn resident_experts(&self) -> usize {
        self.resident.experts
    }

    /// Device bytes of the resident experts.
    pub fn resident_bytes(&self) -> usize {
        self.resident.bytes()
    }

    /// Whether single-token steps run their choices among the resident experts on the GPU
    /// (the rules' `decode_resident`; no effect without resident experts).
    pub fn set_decode_resident(&mut self, on: bool) {
        self.decode_resident = on;
    }

    /// The resident experts single-token steps run on the GPU: `None` unless
    /// `decode_resident` is on and there are resident experts.
    pub fn decode_resident(&self) -> Option<&Resident> {
        (self.decode_resident && self.resident.experts > 0).then_some(&self.resident)
    }

    /// Keeps the first `experts` experts of every MoE layer on the GPU (allocated on `s`,
    /// copied now; 0 frees them): later calls copy only the others. Waits for the work
    /// queued so far. An error past the layer's experts or when the GPU lacks the memory.
    pub fn set_resident(&mut self, s: &GpuStream, experts: usize) -> HybridResult<()> {
        if experts > self.experts {
            return Err(HybridError::Input(format!(
                "{experts} resident experts per layer, but a layer has {}",
                self.experts
            )));
        }
        // nothing may still read the old slabs, or the slots staged under the old count
        s.synchronize()?;
        self.copy.synchronize()?;
        self.staged = [None, None];
        self.resident = Resident::default(); // free the old ones first
        self.resident = Resident::load(s, &self.copy, &self.host, experts)?;
        Ok(())
    }

    /// Each MoE layer's weight copy and expert compute in the last call (waits for them).
    pub fn layer_times(&self) -> HybridResult<Vec<PrefillLayerTimes>> {
        match &self.call_start {
            Some(start) => timeline::layer_times(start, &self.events),
            None => Ok(Vec::new()),
        }
    }

    /// Whether MoE layer `li`, once staged, has experts on the CPU in the call in progress.
    pub fn splits(&self, li: usize) -> bool {
        self.staged
            .iter()
            .flatten()
            .any(|st| st.layer == li && st.experts < self.experts)
    }

    /// The CPU's share of MoE layer `li` (the experts from `first` on) into `out` (`[T,
    /// hidden]`, pinned host memory), on `fused`; returns its seconds.
    #[allow(clippy::too_many_arguments)]
    pub fn run_cpu_share(
        &mut self,
        fused: &FusedMoe,
        li: usize,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        first: usize,
        out: &mut [f32],
    ) -> HybridResult<f64> {
        let dims = (self.hidden, self.top_k);
        let t = self.cpu.run(fused, li, x, ids, weights, dims, first, out)?;
        let seconds = t.gather_s + t.operator_s + t.sum_s;
        self.cpu_times.push(t);
        Ok(seconds)
    }

    /// Each split layer's CPU share in the last GPU-expert call.
    pub fn cpu_times(&self) -> &[CpuShareTimes] {
        &self.cpu_times
    }

    /// `routed += host` on stream `s`: the CPU share (in pinned memory) added to the GPU
    /// experts' sum, read over PCIe by the kernel (a copy engine's copy would wait for the
    /// next layer's weights, `kt_kernels::cuda::mapped`).
    pub fn add_cpu_share(
        &mut self,
        s: &GpuStream,
        host: &PinnedBuf<f32>,
        routed: &mut DeviceBuf<f32>,
    ) -> HybridResult<()> {
        Ok(s.add_f32_from_pinned(routed, host)?)
    }

    /// Starts a GPU-expert call of `tokens` tokens on `gpu`'s stream: buffers for its pairs,
    /// then the first two MoE layers' copies, after everything the stream has queued so far
    /// (the previous call's use of the slots).
    pub fn begin(&mut self, gpu: &Gpu, tokens: usize) -> HybridResult<()> {
        let s = gpu.stream();
        let pairs = tokens * self.top_k;
        let (hidden, width) = (self.hidden, self.width);
        if self.pairs.as_ref().is_none_or(|p| p.pairs != pairs) {
            self.pairs = None; // free the old set first
            let bf = |n: usize| s.alloc_zeroed::<bf16>(n);
            self.pairs = Some(Pairs {
                pairs,
                x: bf(pairs * hidden)?,
                gate_up: bf(pairs * 2 * width)?,
                act: bf(pairs * width)?,
                y: bf(pairs * hidden)?,
                rows: s.alloc_zeroed(pairs)?,
                slot: s.alloc_zeroed(pairs)?,
                host_rows: gpu.alloc_pinned(pairs)?,
                host_slot: gpu.alloc_pinned(pairs)?,
            });
        }
        self.cpu_times.clear();
        self.events.clear();
        let start = s.record_event()?;
        self.copy.wait_event(&start)?;
        self.call_start = Some(start);
        for i in 0..self.moe_layers.len().min(2) {
            self.stage(i, self.next_split())?;
        }
        Ok(())
    }

    /// The experts the GPU takes of the next layer staged.
    fn next_split(&self) -> usize {
        self.split.gpu_experts(self.experts)
    }

    /// Queues the copy of MoE layer number `i`'s first `experts` experts, less the
    /// resident ones, into the same places of slot `i % 2` on the copy stream.
    fn stage(&mut self, i: usize, experts: usize) -> HybridResult<()> {
        let li = self.moe_layers[i];
        let src = self.host[li].as_ref().expect("MoE layers have slabs");
        let dst = &mut self.slots[i % 2];
        let from = self.resident.experts.min(experts);
        let count = experts - from;
        let start = self.copy.record_event()?;
        self.copy
            .copy_experts(&src.gate_up, from, &mut dst.gate_up, from, count)?;
        self.copy
            .copy_experts(&src.down, from, &mut dst.down, from, count)?;
        let done = self.copy.record_event()?;
        let bytes = count * self.load.layer_bytes / self.experts;
        // (events are not shared: the timeline gets one of its own at the same point)
        self.events.push(LayerEvents {
            layer: li,
            bytes,
            copy: (start, self.copy.record_event()?),
            compute: None,
        });
        self.staged[i % 2] = Some(Staged {
            layer: li,
            done,
            experts,
        });
        Ok(())
    }

    /// `out = sum_j weights[t, j] expert_{ids[t, j]}(x[t])` for MoE layer `li` on stream
    /// `s`: `x` the normalized hidden state `[T, hidden]`, `ids` the router's choices (on
    /// the host), `weights` theirs (on the GPU), `out` `[T, hidden]` f32; the sum over the
    /// experts the layer was staged with (`0..g`, returned: the CPU's share is the rest).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_layer(
        &mut self,
        li: usize,
        s: &GpuStream,
        x: &DeviceBuf<bf16>,
        ids: &[u32],
        weights: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
        ws: &mut GemmWorkspace,
    ) -> HybridResult<usize> {
        let i = self
            .moe_layers
            .iter()
            .position(|&l| l == li)
            .ok_or_else(|| HybridError::Input(format!("layer {li} has no routed experts")))?;
        let slot = i % 2;
        let on_gpu = match &self.staged[slot] {
            Some(st) if st.layer == li => {
                s.wait_event(&st.done)?;
                st.experts
            }
            _ => {
                return Err(HybridError::Input(format!(
                    "layer {li}'s experts were not staged (MoE layers run in order after begin)"
                )))
            }
        };
        let mut groups = ExpertGroups::new(ids, self.top_k, self.experts)?;
        // the CPU's pairs add nothing to the GPU's combine
        for (sl, &e) in groups.slot.iter_mut().zip(ids) {
            if e as usize >= on_gpu {
                *sl = -1;
            }
        }
        let (hidden, width) = (self.hidden, self.width);
        let pairs = ids.len();
        let p = match self.pairs.as_mut() {
            Some(p) if p.pairs == pairs => p,
            began => {
                let began = began.map_or(0, |p| p.pairs);
                return Err(HybridError::Input(format!(
                    "layer {li}: {pairs} router choices, but the call began with {began}"
                )));
            }
        };
        // (waits for the previous layer's copies out of them, done by now)
        p.host_rows.as_mut_slice()?.copy_from_slice(&groups.rows);
        p.host_slot.as_mut_slice()?.copy_from_slice(&groups.slot);
        // read by kernels, not copy engines: those are busy with the next layer's weights,
        // and this layer's experts would wait for them (`kt_kernels::cuda::mapped`)
        s.copy_from_pinned_mapped(&p.host_rows, &mut p.rows)?;
        s.copy_from_pinned_mapped(&p.host_slot, &mut p.slot)?;
        let compute_start = s.record_event()?;
        s.moe_gather(x, &p.rows, &mut p.x, hidden)?;
        // experts below `resident` from the layer's resident slabs, the others from the slot
        let (slot_w, resident) = (&self.slots[slot], self.resident.layer(li));
        let weights_of = |e: usize| match resident {
            Some(r) if e < self.resident.experts => r,
            _ => slot_w,
        };
        for e in 0..on_gpu {
            let r = groups.range(e);
            if !r.is_empty() {
                s.w4a16_gemm_expert(&weights_of(e).gate_up, e, &p.x, r, &mut p.gate_up, ws)?;
            }
        }
        s.silu_mul(&p.gate_up, &mut p.act, pairs, width)?;
        for e in 0..on_gpu {
            let r = groups.range(e);
            if !r.is_empty() {
                s.w4a16_gemm_expert(&weights_of(e).down, e, &p.act, r, &mut p.y, ws)?;
            }
        }
        s.moe_combine(&p.y, &p.slot, weights, self.top_k, out, hidden)?;
        if let Some(ev) = self.events.iter_mut().rev().find(|ev| ev.layer == li) {
            ev.compute = Some((compute_start, s.record_event()?));
        }
        let used = s.record_event()?;
        if i + 2 < self.moe_layers.len() {
            self.copy.wait_event(&used)?;
            self.stage(i + 2, self.next_split())?;
        }
        Ok(on_gpu)
    }

    /// Host-to-device bandwidth from the pinned slabs, GB/s: the first MoE layer's slabs
    /// copied `reps` times into slot 0 on the copy stream, timed by events there. Waits for
    /// everything queued before.
    pub fn measure_h2d(&mut self, s: &GpuStream, reps: usize) -> HybridResult<f64> {
        s.synchronize()?;
        self.copy.synchronize()?;
        let start = self.copy.record_event()?;
        let src = self.host[self.moe_layers[0]]
            .as_ref()
            .expect("MoE layers have slabs");
        let dst = &mut self.slots[0];
        for _ in 0..reps.max(1) {
            self.copy.copy_expert_slab(&src.gate_up, &mut dst.gate_up)?;
            self.copy.copy_expert_slab(&src.down, &mut dst.down)?;
        }
        let end = self.copy.record_event()?;
        let ms = f64::from(start.elapsed_ms(&end)?);
        // slot 0 now holds layer 0 again: the next call re-stages in begin anyway
        self.staged[0] = None;
        Ok((self.load.layer_bytes * reps.max(1)) as f64 / (ms * 1e6))
    }
}

/// Repacks one layer's experts into `slabs` on all cores (experts split between threads),
/// calling `expert_done` after each; returns each matrix's relative RMS error.
fn repack_layer(
    slabs: &mut Slabs<HostExpertSlab<bf16>>,
    moe: &crate::tensors::MoeFfn<'_>,
    experts: usize,
    expert_done: &(dyn Fn() + Sync),
) -> HybridResult<Vec<f64>> {
    let gate_up = slabs.gate_up.parts_mut()?;
    let down = slabs.down.parts_mut()?;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = experts.div_ceil(threads).max(1);
    let mut jobs: Vec<Vec<_>> = Vec::new();
    for (g, d) in gate_up.into_iter().zip(down) {
        if jobs.last().is_none_or(|j| j.len() == per) {
            jobs.push(Vec::with_capacity(per));
        }
        jobs.last_mut().expect("pushed above").push((g, d));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                scope.spawn(move || -> HybridResult<Vec<f64>> {
                    let mut errors = Vec::with_capacity(2 * job.len());
                    // one buffer for the thread's dequantized rows: a fresh one per matrix
                    // (117 MB for a V3 expert's gate and up) is mapped, faulted in and
                    // unmapped each time
                    let mut rows = Vec::new();
                    for (mut g, mut d) in job {
                        let e = g.expert;
                        let gate = Linear::from_stacked(&moe.gate_exps, e)?;
                        let up = Linear::from_stacked(&moe.up_exps, e)?;
                        let down = Linear::from_stacked(&moe.down_exps, e)?;
                        errors.push(repack(&[gate, up], &mut rows, &mut |q| g.set(q))?);
                        errors.push(repack(&[down], &mut rows, &mut |q| d.set(q))?);
                        expert_done();
                    }
                    Ok(errors)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(2 * experts);
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(all)
    })
}

/// The rows of `parts` stacked, dequantized (into `scratch`, grown as needed), quantized to
/// int4 g128 and handed to `store`; returns the relative RMS error.
fn repack(
    parts: &[Linear<'_>],
    scratch: &mut Vec<f32>,
    store: &mut dyn FnMut(&Int4Weights<bf16>) -> kt_kernels::cuda::CudaResult<()>,
) -> HybridResult<f64> {
    let k = parts[0].cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    if scratch.len() < n * k {
        scratch.resize(n * k, 0.0);
    }
    // every element below is written by the rows' dequantization
    let w = &mut scratch[..n * k];
    let mut rows = w.chunks_exact_mut(k);
    for p in parts {
        for r in 0..p.rows {
            p.dequantize_row(r, rows.next().expect("n rows"))?;
        }
    }
    let (q, err) = Int4Weights::<bf16>::quantize(w, n, k).map_err(|e| {
        HybridError::Unsupported(format!("{} in int4_g128 ({n} x {k}): {e}", parts[0].name))
    })?;
    store(&q)?;
    Ok(err.relative_rms())
}
