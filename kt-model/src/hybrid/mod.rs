//! The hybrid executor (feature `cuda`): a DeepSeek V2/V3 forward pass with everything but
//! the routed experts on one GPU and the routed experts on the CPU, on kt's fused MoE
//! operator over the memory-mapped GGUF (the KTransformers split).
//!
//! [`HybridModel::new`] takes the same GGUF, config and a [`Placement`] (a `*-hybrid.yaml`
//! rule file placed against the model): every module but the routed experts must be on
//! `cuda:0`, linears in `int4_g128` (W4A16 GEMM) or `bf16` (f32-accumulating GEMM), the
//! absorbed `attn_k_b` / `attn_v_b` in bf16, norms in f32, the router in f32 or bf16; the
//! routed experts on the CPU as stored or repacked at load (`int4_amx`, `int8_amx`), with
//! `prefill_device: cuda:0` for long prompts as an option (below). Anything else is refused
//! with a message naming the module. The token embedding is gathered on the CPU from the
//! GGUF rows and uploaded (`T x hidden` f32 per call: the exact rows the CPU path uses, and
//! no `vocab x hidden` table on the GPU), whatever format the rule names for it.
//!
//! Per layer and call of `T` tokens (`forward.rs`): RMSNorm, queries, rope, the kv
//! projection written as bf16 rows of the paged latent cache (`kt_kernels::cuda::mla`, one
//! sequence, contiguous pages of [`BLOCK_SIZE`]), the per-head absorption `W_uk^T q_nope`,
//! MLA attention in the latent space, `W_uv` and the output projection; then either the
//! dense MLP, or the router and gating on the GPU, the normalized hidden state, ids and
//! weights copied to pinned host memory, the shared experts queued on the stream while the
//! CPU computes the routed experts (so both sides work at once), and the routed sum copied
//! back and added. The residual stream stays in f32 on the GPU; GEMM inputs and outputs are
//! bf16 with f32 sums. Calls without trace or timing pipeline the layers (`pipeline.rs`): the
//! host queues layer `L + 1`'s GPU work behind a host flag before it runs layer `L`'s routed
//! experts, so the GPU does not wait for kernel launches (the same logits bit for bit).
//! Single-token calls without trace or timing replay a CUDA graph of the whole step instead
//! (`graph.rs`): one launch per token, the CPU's routed experts ordered by host flags the graph
//! writes and waits on (the same logits bit for bit again). The graph also predicts each MoE
//! layer's routed experts during the previous layer's and the CPU prefetches their first
//! weights while it waits for the GPU (`predict.rs`; no value changes).
//!
//! With a `prefill_device: cuda:0` option on the routed experts' rule, calls of more than
//! its `prefill_threshold` tokens run the routed experts on the GPU too, their weights
//! streamed layer by layer from pinned host memory (`gpu_experts`).
//!
//! The MLA kernel fixes `kv_lora_rank` 512 and rope 64 (every real V2-Lite / V2 / V3); other
//! shapes are refused.
//!
//! Several models in one process: each `forward` call holds the process's device lock
//! ([`kt_kernels::cuda::device_exclusive`]) from before its first GPU work until it
//! returns, so the calls of two models run one after the other (they share the CPU pool
//! anyway), and no other thread frees page-locked memory or unloads kernels meanwhile.
//! The GPU maps streams onto a few hardware queues, so one model's wait on a host flag can
//! hold up another's work on a shared queue whatever stream it is on (CUDA's documentation
//! of `cuStreamWaitValue32` warns of such deadlocks); and a free that waits for the whole
//! device blocks the driver calls the waiting model needs to raise its flag. Without the
//! lock two models on two threads deadlocked with the GPU idle (`tests/hybrid_graph.rs`: 6
//! of 16 runs when every model used the context's legacy stream, 1 of 14 with a stream
//! each, 4 of 29 with the forward calls alone serialized, the other thread then dropping
//! its model).

mod error;
mod forward;
mod gpu_experts;
mod graph;
mod layer;
mod pipeline;
mod predict;
mod scratch;
mod timing;
mod weights;

pub use error::{HybridError, HybridResult};
pub use gpu_experts::{CpuShareTimes, GpuPrefillLoad, PrefillLayerTimes, PrefillSplit};
pub use timing::{GraphTimeline, HybridTimes, LayerSplit};

use std::sync::atomic::{AtomicU64, Ordering};

use half::bf16;
use kt_kernels::cpu::Isa;
use kt_kernels::cuda::mla::{MlaWorkspace, KV_LORA_RANK, ROPE_DIM};
use kt_kernels::cuda::small_ops::RopeTables;
use kt_kernels::cuda::w4a16::GemmWorkspace;
use kt_kernels::cuda::{DeviceBuf, Gpu};
use kt_kernels::ops::{RopeYarn, RouterConfig};

use crate::config::DeepSeekConfig;
pub use crate::deepseek::fused_moe::RepackProgress;
use crate::deepseek::fused_moe::{FusedMoe, DEFAULT_MAX_BATCH};
use crate::deepseek::linear::Linear;
use crate::deepseek::{rope_of, router_config};
use crate::gguf::Gguf;
use crate::placement::{ModuleKind, Placement};
use crate::tensors::{Ffn, ModelTensors};
use gpu_experts::GpuExperts;
use graph::DecodeGraph;
use layer::GpuQkv;
use layer::{GpuFfn, GpuLayer};
use scratch::{Scratch, Widths};
use weights::{Formats, GpuLinear};

/// Tokens per page of the GPU latent cache.
pub const BLOCK_SIZE: usize = 64;

/// The latent KV cache of one sequence on the GPU: per layer `[pages * BLOCK_SIZE, 576]`
/// bf16, pages used in order, and the rope tables for its positions.
pub struct HybridCache {
    /// Unique per cache: a decode graph is captured for one cache's buffers.
    id: u64,
    layers: Vec<DeviceBuf<bf16>>,
    table: Vec<u32>,
    rope: RopeTables,
    capacity: usize,
    len: usize,
}

impl HybridCache {
    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Empties the cache for a new sequence (llama.cpp's memory clear), keeping its buffers,
    /// and with them a decode graph captured for it: the next sequence's decode steps replay
    /// that graph from their first step.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A DeepSeek model on one GPU plus the CPU's routed experts (see the module docs).
pub struct HybridModel<'a> {
    gpu: Gpu,
    config: DeepSeekConfig,
    /// The token embedding rows as the GGUF stores them (gathered on the CPU).
    token_embd: Linear<'a>,
    layers: Vec<GpuLayer>,
    output_norm: DeviceBuf<f32>,
    output: GpuLinear,
    fused: Option<FusedMoe>,
    router: RouterConfig,
    rope: RopeYarn,
    scale: f32,
    widths: Widths,
    /// The single-token calls' scratch (the one a decode graph names: kept while it lives)
    /// and the scratch of the last multi-token call (replaced when the token count changes).
    scratch_one: Option<Scratch>,
    scratch_many: Option<Scratch>,
    ws: Workspaces,
    /// The routed experts for long prefill chunks on the GPU, when the rules ask for it.
    gpu_experts: Option<GpuExperts>,
    /// Whether untraced, untimed calls pipeline the layers (`pipeline.rs`); on by default.
    pipelined: bool,
    /// Whether untraced, untimed single-token calls replay a decode graph (`graph.rs`); on
    /// by default.
    graphed: bool,
    /// Whether graph replays prefetch the next MoE layer's predicted experts
    /// (`predict.rs`); on by default.
    prefetch: bool,
    /// CPU choices each MoE layer of a single-token step defers to the next
    /// (`defer_experts`, `deepseek/defer.rs`); 0 unless the rules ask.
    defer_experts: usize,
    /// The captured decode step, and why capturing failed if it did (then calls stay eager).
    graph: Option<DecodeGraph>,
    graph_error: Option<String>,
    graph_launches: u64,
    graph_captures: u64,
}

/// The GEMM's k-split and the attention's key-split scratch, grown on demand.
#[derive(Default)]
pub(crate) struct Workspaces {
    pub gemm: GemmWorkspace,
    pub mla: MlaWorkspace,
}

impl Workspaces {
    /// Buffer (re)allocations so far: a decode graph captured at one count is stale at
    /// another (it names the old buffers).
    pub fn allocations(&self) -> u64 {
        self.gemm.allocations() + self.mla.allocations()
    }
}

impl<'a> HybridModel<'a> {
    /// Loads the model of `gguf` with `config` onto GPU `gpu` as `placement` says; the
    /// routed experts run on the CPU's `isa` kernels over `gguf`'s memory map.
    pub fn new(
        gpu: Gpu,
        gguf: &'a Gguf,
        config: DeepSeekConfig,
        placement: &Placement,
        isa: Isa,
    ) -> HybridResult<Self> {
        Self::new_reporting(gpu, gguf, config, placement, isa, &|_, _| {})
    }

    /// [`HybridModel::new`], reporting the longest steps of a load: the repack of the routed
    /// experts for the CPU (`int4_amx`, `int8_amx`) and for the GPU prefill
    /// (`prefill_device`), each counted in expert matrices by `repacked(done, total)`.
    pub fn new_reporting(
        gpu: Gpu,
        gguf: &'a Gguf,
        config: DeepSeekConfig,
        placement: &Placement,
        isa: Isa,
        repacked: RepackProgress<'_>,
    ) -> HybridResult<Self> {
        Self::check(&config, placement)?;
        let formats = Formats::new(placement)?;
        let tensors = ModelTensors::from_gguf(gguf, &config)?;
        let s = gpu.stream();
        let layers = tensors
            .layers
            .iter()
            .enumerate()
            .map(|(li, t)| GpuLayer::load(s, &formats, t, &config, li))
            .collect::<HybridResult<Vec<_>>>()?;
        let output = GpuLinear::load(
            s,
            &[Linear::from_2d(&tensors.output)?],
            formats.of_tensor(tensors.output.name)?,
            tensors.output.name,
        )?;
        let output_norm = s.upload(&crate::deepseek::linear::dequantize_vector(
            &tensors.output_norm,
        )?)?;
        let token_embd = Linear::from_2d(&tensors.token_embd)?;
        let widths = Widths {
            dense: layers.iter().find_map(|l| match &l.ffn {
                GpuFfn::Dense(m) => Some(m.width()),
                _ => None,
            }),
            shared: layers.iter().find_map(|l| match &l.ffn {
                GpuFfn::Moe {
                    shared: Some(m), ..
                } => Some(m.width()),
                _ => None,
            }),
            stacked_qkv: layers
                .iter()
                .any(|l| matches!(l.attn.qkv, GpuQkv::Stacked(_))),
            stacked_lora: layers
                .iter()
                .any(|l| matches!(l.attn.qkv, GpuQkv::StackedLoRA { .. })),
        };
        let has_moe = tensors.layers.iter().any(|l| matches!(l.ffn, Ffn::Moe(_)));
        let fused = if has_moe {
            FusedMoe::new(
                gguf,
                &tensors,
                isa,
                config.experts_per_tok,
                DEFAULT_MAX_BATCH,
                formats.routed_repack().map(|f| (f, repacked)),
            )?
        } else {
            None
        };
        let gpu_experts = match gpu_experts::prefill_rule(placement)? {
            Some(rule) => {
                let mut g = GpuExperts::load(&gpu, &tensors, &config, rule.threshold, repacked)?;
                g.set_resident(s, rule.resident)?;
                g.set_split(rule.split)?;
                g.set_decode_resident(rule.decode_resident);
                Some(g)
            }
            None => None,
        };
        let defer_experts = defer_rule(placement, &config)?;
        let rope = rope_of(&config)?;
        let scale = rope.softmax_scale(config.qk_nope_head_dim + config.qk_rope_head_dim);
        s.synchronize()?;
        Ok(HybridModel {
            router: router_config(&config),
            gpu,
            token_embd,
            layers,
            output_norm,
            output,
            fused,
            rope,
            scale,
            widths,
            config,
            scratch_one: None,
            scratch_many: None,
            ws: Workspaces::default(),
            gpu_experts,
            pipelined: true,
            graphed: true,
            prefetch: true,
            defer_experts,
            graph: None,
            graph_error: None,
            graph_launches: 0,
            graph_captures: 0,
        })
    }

    /// Whether this executor can run a model of `config` placed as `placement` (no GPU
    /// needed): the MLA shape the GPU kernel takes, every module but the routed experts on
    /// `cuda:0`, the routed experts on the CPU as stored. The error names what does not fit;
    /// formats of single matrices are checked when [`Self::new`] loads them.
    pub fn check(config: &DeepSeekConfig, placement: &Placement) -> HybridResult<()> {
        if config.kv_lora_rank != KV_LORA_RANK || config.qk_rope_head_dim != ROPE_DIM {
            return Err(HybridError::Unsupported(format!(
                "kv_lora_rank {} and rope dim {}: the GPU MLA kernel takes {KV_LORA_RANK} and {ROPE_DIM} (DeepSeek V2-Lite, V2 and V3)",
                config.kv_lora_rank, config.qk_rope_head_dim
            )));
        }
        Formats::new(placement)?;
        gpu_experts::prefill_rule(placement).map(drop)
    }

    /// Calls of more than this many tokens run the routed experts on the GPU (`None`: the
    /// rules keep them on the CPU for every call).
    pub fn gpu_prefill_threshold(&self) -> Option<usize> {
        self.gpu_experts.as_ref().map(|g| g.threshold)
    }

    /// Moves the threshold of [`Self::gpu_prefill_threshold`] (0: every call, including
    /// decode steps, on the GPU experts; `usize::MAX`: none); an error when the rules did
    /// not load GPU prefill experts.
    pub fn set_gpu_prefill_threshold(&mut self, threshold: usize) -> HybridResult<()> {
        match self.gpu_experts.as_mut() {
            Some(g) => {
                g.threshold = threshold;
                Ok(())
            }
            None => Err(HybridError::Input(
                "the rules keep the routed experts on the CPU (no prefill_device option)".into(),
            )),
        }
    }

    /// How long GPU prefill chunks split each layer's routed experts with the CPU (`None`
    /// without GPU prefill experts).
    pub fn gpu_prefill_split(&self) -> Option<PrefillSplit> {
        self.gpu_experts.as_ref().map(|g| g.split())
    }

    /// Sets [`Self::gpu_prefill_split`]; an error without GPU prefill experts or for a CPU
    /// share outside 0..=1.
    pub fn set_gpu_prefill_split(&mut self, split: PrefillSplit) -> HybridResult<()> {
        match self.gpu_experts.as_mut() {
            Some(g) => g.set_split(split),
            None => Err(HybridError::Input(
                "the rules keep the routed experts on the CPU (no prefill_device option)".into(),
            )),
        }
    }

    /// The experts of each MoE layer a GPU prefill keeps on the GPU (`None` without GPU
    /// prefill experts).
    pub fn gpu_prefill_resident(&self) -> Option<usize> {
        self.gpu_experts.as_ref().map(|g| g.resident_experts())
    }

    /// GPU bytes of [`Self::gpu_prefill_resident`]'s experts (0 without).
    pub fn gpu_prefill_resident_bytes(&self) -> usize {
        self.gpu_experts.as_ref().map_or(0, |g| g.resident_bytes())
    }

    /// Keeps the first `experts` routed experts of every MoE layer on the GPU, so a GPU
    /// prefill copies only the others (0 frees them). Copies them now. An error without GPU
    /// prefill experts, past a layer's experts, or when the GPU lacks the memory.
    pub fn set_gpu_prefill_resident(&mut self, experts: usize) -> HybridResult<()> {
        let s = self.gpu.stream();
        match self.gpu_experts.as_mut() {
            Some(g) => {
                // a decode graph on the resident experts names the old slabs
                self.graph = None;
                g.set_resident(s, experts)
            }
            None => Err(HybridError::Input(
                "the rules keep the routed experts on the CPU (no prefill_device option)".into(),
            )),
        }
    }

    /// Whether single-token steps run their choices among the resident experts on the GPU
    /// (`decode_resident`; `None` without GPU prefill experts). False while there are no
    /// resident experts.
    pub fn decode_resident(&self) -> Option<bool> {
        self.gpu_experts
            .as_ref()
            .map(|g| g.decode_resident().is_some())
    }

    /// Turns [`Self::decode_resident`] on or off (the rule option's default for this
    /// model); an error without GPU prefill experts.
    pub fn set_decode_resident(&mut self, on: bool) -> HybridResult<()> {
        match self.gpu_experts.as_mut() {
            Some(g) => {
                self.graph = None; // captured with the other choice
                g.set_decode_resident(on);
                Ok(())
            }
            None => Err(HybridError::Input(
                "the rules keep the routed experts on the CPU (no prefill_device option)".into(),
            )),
        }
    }

    /// Each MoE layer's weight copy and expert compute on the GPU in the last GPU prefill
    /// call (empty without one). Waits for the GPU.
    pub fn gpu_prefill_layer_times(&self) -> HybridResult<Vec<PrefillLayerTimes>> {
        self.gpu_experts
            .as_ref()
            .map_or(Ok(Vec::new()), |g| g.layer_times())
    }

    /// Each split layer's CPU share in the last GPU prefill call (empty without one).
    pub fn gpu_prefill_cpu_times(&self) -> &[CpuShareTimes] {
        self.gpu_experts.as_ref().map_or(&[], |g| g.cpu_times())
    }

    /// What loading the GPU prefill experts cost (repack time, pinned bytes, int4 error).
    pub fn gpu_prefill_load(&self) -> Option<GpuPrefillLoad> {
        self.gpu_experts.as_ref().map(|g| g.load)
    }

    /// Host-to-device bandwidth (GB/s) of the GPU prefill experts' copies from pinned
    /// memory: one layer's slabs copied `reps` times. `None` without GPU prefill experts.
    pub fn measure_h2d_gbps(&mut self, reps: usize) -> HybridResult<Option<f64>> {
        let s = self.gpu.stream();
        self.gpu_experts
            .as_mut()
            .map(|g| g.measure_h2d(s, reps))
            .transpose()
    }

    pub fn config(&self) -> &DeepSeekConfig {
        &self.config
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Sizes the CPU experts' scratch for batches of up to `max_batch` tokens (longer
    /// batches run their routed experts in pieces). Allocates: call it at setup.
    pub fn set_max_batch(&mut self, max_batch: usize) -> HybridResult<()> {
        if max_batch == 0 {
            return Err(HybridError::Input(
                "the largest batch must be at least 1 token".into(),
            ));
        }
        if let Some(f) = self.fused.as_ref().filter(|f| f.max_batch() != max_batch) {
            let resized = f.resized(max_batch)?;
            self.fused = Some(resized);
        }
        Ok(())
    }

    /// Whether untraced, untimed single-token calls replay a captured decode graph (the
    /// default; the same logits bit for bit). Off, they run eagerly (pipelined or not).
    pub fn set_graphed(&mut self, on: bool) {
        self.graphed = on;
        if !on {
            self.graph = None;
        }
    }

    /// CPU choices each MoE layer of a single-token step defers to the next MoE layer
    /// (`defer_experts`; 0: none, the exact model).
    pub fn defer_experts(&self) -> usize {
        self.defer_experts
    }

    /// Sets [`Self::defer_experts`] (the rule option's value for this model): below the
    /// model's `experts_per_tok`, so a layer keeps at least one choice of its own. Takes
    /// effect from the next call (graph replays included: the GPU's work does not change).
    pub fn set_defer_experts(&mut self, n: usize) -> HybridResult<()> {
        self.defer_experts = check_defer(n, &self.config, "set_defer_experts")?;
        Ok(())
    }

    /// Whether graph replays prefetch the first weights of the next MoE layer's predicted
    /// experts while the CPU waits for the GPU (the default; changes no value).
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
    }

    /// How many gate+up items per CPU thread that prefetch warms (and the experts job then
    /// hands to those threads first): 2 unless set; 1 to 64. Changes no value.
    pub fn set_prefetch_rounds(&mut self, rounds: usize) -> HybridResult<()> {
        if let Some(f) = &self.fused {
            f.set_prefetch_rounds(rounds)?;
        }
        Ok(())
    }

    /// The rounds [`HybridModel::set_prefetch_rounds`] set (`None` without routed experts
    /// on the CPU).
    pub fn prefetch_rounds(&self) -> Option<usize> {
        self.fused.as_ref().map(FusedMoe::prefetch_rounds)
    }

    /// How many calls replayed a decode graph so far.
    pub fn graph_launches(&self) -> u64 {
        self.graph_launches
    }

    /// How many decode graphs were captured so far: one per cache, plus one each time a
    /// call grew the workspaces a graph names.
    pub fn graph_captures(&self) -> u64 {
        self.graph_captures
    }

    /// Where the current decode graph's replays spent their time (None without a graph; a
    /// graphed step on another cache, or after the workspaces grew, recaptures and starts a
    /// new timeline).
    pub fn graph_timeline(&self) -> Option<&GraphTimeline> {
        self.graph.as_ref().map(|g| g.timeline())
    }

    /// Starts the current decode graph's timeline afresh (before a benchmark's measured
    /// runs: the graph, and so its timeline, outlives a cleared cache).
    pub fn reset_graph_timeline(&mut self) {
        if let Some(g) = self.graph.as_mut() {
            g.reset_timeline();
        }
    }

    /// Why capturing the decode graph failed, if it did (the calls then stay eager).
    pub fn graph_error(&self) -> Option<&str> {
        self.graph_error.as_deref()
    }

    /// An empty GPU cache for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> HybridResult<HybridCache> {
        if capacity == 0 {
            return Err(HybridError::Input(
                "a cache needs room for at least 1 position".into(),
            ));
        }
        let s = self.gpu.stream();
        let pages = capacity.div_ceil(BLOCK_SIZE);
        let rows = pages * BLOCK_SIZE;
        let layers = (0..self.config.n_layers)
            .map(|_| s.alloc_zeroed::<bf16>(rows * (KV_LORA_RANK + ROPE_DIM)))
            .collect::<Result<Vec<_>, _>>()?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(HybridCache {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            layers,
            table: (0..pages as u32).collect(),
            rope: s.upload_rope_tables(&self.rope, rows)?,
            capacity,
            len: 0,
        })
    }
}

/// The routed experts' `defer_experts` option: one value for all MoE layers (0 without).
fn defer_rule(placement: &Placement, config: &DeepSeekConfig) -> HybridResult<usize> {
    let mut found: Option<(usize, &str)> = None;
    for m in placement.modules() {
        if m.kind != ModuleKind::RoutedExperts {
            continue;
        }
        let n = m.options.defer_experts.unwrap_or(0);
        match found {
            Some((v, first)) if v != n => {
                return Err(HybridError::Unsupported(format!(
                    "modules {first} and {}: defer_experts {v} and {n}; the hybrid executor takes one value for all layers",
                    m.name
                )))
            }
            None => found = Some((check_defer(n, config, &m.name)?, &m.name)),
            _ => {}
        }
    }
    Ok(found.map_or(0, |(n, _)| n))
}

/// `n` deferred choices for `config` (`what` names the module or call): fewer than
/// `experts_per_tok`.
fn check_defer(n: usize, config: &DeepSeekConfig, what: &str) -> HybridResult<usize> {
    match n == 0 || n < config.experts_per_tok {
        true => Ok(n),
        false => Err(HybridError::Input(format!(
            "{what}: defer_experts {n}; a layer keeps at least one of its {} choices (at most {})",
            config.experts_per_tok,
            config.experts_per_tok.saturating_sub(1)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::RuleSet;
    use crate::synthetic::Preset;

    /// Every routed-experts module with `options`, the rest on the GPU as the shipped
    /// hybrid rules place them (the routed experts' rule is the first that matches).
    fn placed(options: &str, config: &DeepSeekConfig) -> Placement {
        let text = format!(
            "devices: [cpu, \"cuda:0\"]\nrules:\n{options}  - match: {{kind: routed_experts}}\n    replace: {{device: cpu, format: gguf}}\n  - match: {{kind: norm}}\n    replace: {{device: \"cuda:0\", format: f32}}\n  - match: {{name: '.*'}}\n    replace: {{device: \"cuda:0\", format: bf16}}\n"
        );
        RuleSet::from_yaml_str(&text, "test")
            .unwrap()
            .place(config)
            .unwrap()
    }

    #[test]
    fn defer_experts_is_one_value_below_top_k() {
        let c = Preset::DeepSeekV2Lite.config();
        let all = |n: usize| {
            format!("  - match: {{kind: routed_experts}}\n    replace: {{device: cpu, format: gguf, options: {{defer_experts: {n}}}}}\n")
        };
        assert_eq!(defer_rule(&placed("", &c), &c).unwrap(), 0);
        assert_eq!(defer_rule(&placed(&all(2), &c), &c).unwrap(), 2);
        let top = c.experts_per_tok;
        let e = defer_rule(&placed(&all(top), &c), &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.1.ffn_exps") && e.contains(&format!("defer_experts {top}")),
            "{e}"
        );
        assert_eq!(defer_rule(&placed(&all(top - 1), &c), &c).unwrap(), top - 1);
        let one_layer = "  - match: {kind: routed_experts, layers: 2}\n    replace: {device: cpu, format: gguf, options: {defer_experts: 1}}\n";
        let e = defer_rule(&placed(one_layer, &c), &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("defer_experts 0 and 1") || e.contains("defer_experts 1 and 0"),
            "{e}"
        );
        assert!(check_defer(top, &c, "set_defer_experts").is_err());
        assert_eq!(check_defer(0, &c, "set_defer_experts").unwrap(), 0);
    }
}
