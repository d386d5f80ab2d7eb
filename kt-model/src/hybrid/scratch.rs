//! The activations of one forward call of `T` tokens on the GPU and the pinned host buffers
//! the routed experts' inputs and outputs travel through. Every buffer has exactly the
//! length its kernel checks, so a set is built per batch size and kept while calls keep
//! that size (every decode step reuses the same one).

use half::bf16;
use kt_kernels::cuda::gating::packed_len;
use kt_kernels::cuda::mla::{CACHE_ROW, KV_LORA_RANK};
use kt_kernels::cuda::{DeviceBuf, Gpu, GpuStream, HostFlag, PinnedBuf};

use super::error::HybridResult;
use super::gpu_experts::DecodeResident;
use crate::config::DeepSeekConfig;
use crate::deepseek::defer::Deferral;

/// Widths the buffers need beyond the config: the MLPs' intermediate sizes present.
pub(crate) struct Widths {
    pub dense: Option<usize>,
    pub shared: Option<usize>,
    /// Whether a layer runs q_proj and kv_a as one stacked GEMV (`sc.qkv`).
    pub stacked_qkv: bool,
    /// Whether a layer runs the query LoRA's q_a and kv_a as one stacked GEMV (`sc.q_akv`).
    pub stacked_lora: bool,
}

pub(crate) struct Scratch {
    pub tokens: usize,
    /// The residual stream `[T, hidden]`, f32.
    pub x: DeviceBuf<f32>,
    /// Normalized hidden state `[T, hidden]`: bf16 for the GEMMs, f32 for the router and
    /// the CPU experts.
    pub xn: DeviceBuf<bf16>,
    pub xn32: DeviceBuf<f32>,
    /// Query LoRA `[T, q_lora]` before and after its norm.
    pub q_a: Option<(DeviceBuf<bf16>, DeviceBuf<bf16>)>,
    /// The stacked q_a and kv projection `[T, q_lora + rank + rope]`, when a layer has it.
    pub q_akv: Option<DeviceBuf<bf16>>,
    /// Queries `[T, heads, nope + rope]`.
    pub q: DeviceBuf<bf16>,
    /// The kv projection `[T, rank + rope]`.
    pub kv: DeviceBuf<bf16>,
    /// Queries and kv projection of the stacked GEMV, `[T, heads * (nope + rope) + rank +
    /// rope]`, when a layer has one.
    pub qkv: Option<DeviceBuf<bf16>>,
    /// Absorbed query rows `[T * heads, rank + rope]` and the attention's latent output
    /// `[T * heads, rank]`.
    pub q_lat: DeviceBuf<bf16>,
    pub o_lat: DeviceBuf<bf16>,
    /// Heads' values `[T, heads * v]` and a `[T, hidden]` block output.
    pub heads: DeviceBuf<bf16>,
    pub out: DeviceBuf<bf16>,
    /// Dense MLP: gate/up `[T, 2 d]`, activation `[T, d]`.
    pub dense: Option<(DeviceBuf<bf16>, DeviceBuf<bf16>)>,
    /// Shared experts: gate/up, activation, output `[T, hidden]`.
    pub shared: Option<(DeviceBuf<bf16>, DeviceBuf<bf16>, DeviceBuf<bf16>)>,
    /// Router logits `[T, n_experts]`, chosen ids and weights `[T, top_k]` (these two for
    /// the routed experts on the GPU; the CPU experts' come in `pack`).
    pub router: DeviceBuf<f32>,
    pub ids: DeviceBuf<u32>,
    pub weights: DeviceBuf<f32>,
    /// The routed experts' sum back on the GPU `[T, hidden]`.
    pub routed: DeviceBuf<f32>,
    /// The CPU experts' inputs as 32-bit words, written by the packed gating: `xn32`'s rows,
    /// ids, weights (see [`Scratch::unpack`]); and its host copy (one transfer per layer).
    pub pack: DeviceBuf<u32>,
    pub host_pack: PinnedBuf<u32>,
    /// The ids' host copy for the routed experts on the GPU.
    pub host_ids: PinnedBuf<u32>,
    pub host_routed: PinnedBuf<f32>,
    /// The block counter of the decode graph's fused FFN entry (one word, zero between
    /// launches).
    pub route_counter: DeviceBuf<u32>,
    pub positions: DeviceBuf<u32>,
    /// Final norm `[T, hidden]`.
    pub fin: DeviceBuf<bf16>,
    /// The host flag of the pipelined layers (`pipeline.rs`); None where the device cannot
    /// make a stream wait for one (the layers then run one after the other).
    pub flag: Option<HostFlag>,
    /// A single-token step's buffers for its choices among the resident experts
    /// (`decode_resident`), made by its first such step.
    pub decode: Option<DecodeResident>,
    /// The deferred experts of a single-token step (`defer_experts`; idle otherwise).
    pub defer: Deferral,
}

impl Scratch {
    pub fn new(
        gpu: &Gpu,
        s: &GpuStream,
        c: &DeepSeekConfig,
        w: &Widths,
        t: usize,
    ) -> HybridResult<Scratch> {
        let hidden = c.hidden_size;
        let (heads, qk) = (c.n_heads, c.qk_nope_head_dim + c.qk_rope_head_dim);
        let (e, k) = (c.n_routed_experts.max(1), c.experts_per_tok.max(1));
        let bf = |n: usize| s.alloc_zeroed::<bf16>(n);
        let pair = |d: usize| -> HybridResult<(DeviceBuf<bf16>, DeviceBuf<bf16>)> {
            Ok((bf(t * 2 * d)?, bf(t * d)?))
        };
        Ok(Scratch {
            tokens: t,
            x: s.alloc_zeroed(t * hidden)?,
            xn: bf(t * hidden)?,
            xn32: s.alloc_zeroed(t * hidden)?,
            q_a: match c.q_lora_rank {
                Some(r) => Some((bf(t * r)?, bf(t * r)?)),
                None => None,
            },
            q_akv: match (c.q_lora_rank, w.stacked_lora) {
                (Some(r), true) => Some(bf(t * (r + CACHE_ROW))?),
                _ => None,
            },
            q: bf(t * heads * qk)?,
            kv: bf(t * CACHE_ROW)?,
            qkv: match w.stacked_qkv {
                true => Some(bf(t * (heads * qk + CACHE_ROW))?),
                false => None,
            },
            q_lat: bf(t * heads * CACHE_ROW)?,
            o_lat: bf(t * heads * KV_LORA_RANK)?,
            heads: bf(t * heads * c.v_head_dim)?,
            out: bf(t * hidden)?,
            dense: w.dense.map(pair).transpose()?,
            shared: match w.shared {
                Some(d) => {
                    let (gu, act) = pair(d)?;
                    Some((gu, act, bf(t * hidden)?))
                }
                None => None,
            },
            router: s.alloc_zeroed(t * e)?,
            ids: s.alloc_zeroed(t * k)?,
            weights: s.alloc_zeroed(t * k)?,
            routed: s.alloc_zeroed(t * hidden)?,
            pack: s.alloc_zeroed(packed_len(t, hidden, k))?,
            host_pack: gpu.alloc_pinned(packed_len(t, hidden, k))?,
            host_ids: gpu.alloc_pinned(t * k)?,
            host_routed: gpu.alloc_pinned(t * hidden)?,
            route_counter: s.alloc_zeroed(1)?,
            positions: s.alloc_zeroed(t)?,
            fin: bf(t * hidden)?,
            flag: pipeline_flag(gpu, s),
            decode: None,
            defer: Deferral::new(hidden),
        })
    }
}

impl Scratch {
    /// The normalized rows `[T, hidden]`, ids and weights `[T, top_k]` in `words`, a copy
    /// of `pack` (the layout of `moe_gating_packed`).
    pub fn unpack<'a>(&self, words: &'a [u32]) -> (&'a [f32], &'a [u32], &'a [f32]) {
        let (x, rest) = words.split_at(self.xn32.len().min(words.len()));
        let (ids, weights) = rest.split_at(self.ids.len().min(rest.len()));
        (bytemuck::cast_slice(x), ids, bytemuck::cast_slice(weights))
    }
}

/// A host flag the stream can wait on, probed with a wait it already satisfies (value 0);
/// None when the device refuses stream memory operations.
fn pipeline_flag(gpu: &Gpu, s: &GpuStream) -> Option<HostFlag> {
    let flag = gpu.host_flag().ok()?;
    s.wait_flag(&flag, 0).ok()?;
    Some(flag)
}
