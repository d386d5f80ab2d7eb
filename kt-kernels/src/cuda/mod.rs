//! GPU side of kt (feature `cuda`): a small runtime over the CUDA driver API (cudarc, with
//! libcuda loaded at run time) and the kernels of `cuda/*.cu`, embedded as fatbins built by
//! `build.rs`.
//!
//! - [`Gpu`]: one device's context and its loaded kernels; [`Gpu::new`] returns
//!   [`CudaError::NoDriver`] / [`CudaError::NoDevice`] on machines without one.
//! - [`GpuStream`]: where work is queued; buffers ([`DeviceBuf`], [`PinnedBuf`]), copies,
//!   events ([`GpuEvent`]) and every kernel launch are methods of a stream.
//! - Kernels: [`small_ops`] (RMSNorm, SiLU-and-multiply, residual add, embedding, arg-max,
//!   YaRN rotary embedding, top-p sampling),
//!   [`gating`] (fused DeepSeek V2 / V3 MoE router), [`w4a16`] (int4-weight GEMM on tensor
//!   cores, with its host-side quantizer and repacker), [`mla`] (MLA attention over a paged
//!   latent cache: decode with split keys, causal prefill; wgmma on compute capability 9.0),
//!   [`linear`] (bf16 and f32 batched GEMM with f32 accumulation, the norms, cache writes,
//!   copies and casts of the hybrid forward pass), [`moe_experts`] (a layer's routed experts
//!   as one int4 slab staged from pinned memory, gather, per-expert W4A16 GEMM, weighted
//!   combine: the hybrid executor's GPU prefill).
//!
//! - [`device_exclusive`]: the process-wide lock that keeps work queued behind host-flag
//!   waits apart from driver calls that wait for the whole device (two models on two
//!   threads deadlocked without it).
//!
//! Shapes and lengths are checked before any launch and reported as [`CudaError::Shape`];
//! a failed launch names the kernel and the shape.

mod dtype;
mod error;
mod exclusive;
mod modules;
mod runtime;

pub mod gating;
pub mod linear;
pub mod mapped;
pub mod mla;
pub mod moe_experts;
pub mod small_ops;
pub mod w4a16;

pub use dtype::{GpuFloat, MmaFloat};
pub use error::{CudaError, CudaResult};
pub use exclusive::{device_exclusive, DeviceExclusive};
pub use runtime::{
    DeviceBuf, DeviceInfo, Gpu, GpuEvent, GpuGraph, GpuStream, HostFlag, LaunchOrder, PinnedBuf,
};
