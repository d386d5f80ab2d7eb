//! kt-kernels: the compute kernels of kt.
//!
//! - [`quant`]: GGUF block formats (byte layouts, ggml type ids) with their scalar
//!   reference quantize / dequantize / dot.
//! - [`cpu`]: run-time ISA detection, the per-format kernel tables, the pinned thread
//!   pool and the format-agnostic matmul driver.
//! - `cuda` (feature `cuda`): the GPU runtime and kernels (`cuda/*.cu`).
//! - [`ops`]: plain f32 reference ops of a DeepSeek V2/V3 layer (RMSNorm, activations,
//!   YaRN rope, MoE routing, MLA attention) that the forward pass and the GPU kernels are
//!   checked against.
//! - [`util`]: small helpers shared by tests, benches and the synthetic models
//!   (deterministic RNG, 64-byte aligned buffers).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod ops;
pub mod quant;
pub mod util;

pub use error::{KtError, Result};
