//! The DeepSeek V2/V3 forward pass on the CPU, straight from GGUF tensors.
//!
//! Per layer (pre-norm, residual): `x += attn(rmsnorm(x))` with multi-head latent
//! attention over a latent KV cache (`attention.rs`, [`cache`]); `x += ffn(rmsnorm(x))`
//! with a SwiGLU MLP in the first `first_k_dense_replace` layers and routed experts plus
//! shared experts after (`ffn.rs`); then the final norm and the output head ([`model`]).
//!
//! Every weight product goes through [`Linear`] in one [`MatmulMode`]: `Reference`
//! (dequantized weights, f32 activations: the model's exact function, what the fixtures
//! of HF transformers and llama.cpp's dequantized runs are compared with) or
//! `Quantized(isa)` (activations quantized to the format's `vec_dot_type`, as llama.cpp
//! runs a GGUF natively). Rope, routing and softmax are `kt_kernels::ops`; RMSNorm too. The
//! quantized mode instead follows ggml's f32 order wherever a value feeds a quantizer: RMSNorm
//! (`norm.rs`), and the attention's rope, scores, softmax and sums, SwiGLU and f32-weight
//! products (`ggml_f32.rs`), so that its codes are llama.cpp's. In
//! `Quantized` mode the routed experts run on kt-kernels' fused MoE operator
//! ([`fused_moe`]); `Reference` keeps the plain per-expert loop. [`timing`] splits a
//! call's time by layer and stage when asked ([`DeepSeekModel::forward_timed`]).
//!
//! Conventions: rope rotates adjacent pairs (GGUF order, see `kt_kernels::ops::rope`);
//! router ties go to the lowest expert id (`kt_kernels::ops::gating`); argmax ties to the
//! lowest token id.

mod attention;
pub mod cache;
// only the hybrid executor (the `cuda` feature) defers; its unit tests build without
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) mod defer;
mod ffn;
pub mod fused_moe;
mod ggml_f32;
pub mod linear;
pub mod model;
mod norm;
pub mod sampling;
pub mod timing;

pub use cache::KvCache;
// The router settings of a config (this forward pass, the hybrid executor, examples).
pub use ffn::router_config;
pub use ffn::Routing;
pub use linear::{Linear, MatmulMode};
// What the hybrid executor (kt_model::hybrid) shares with this forward pass.
#[cfg(feature = "cuda")]
pub(crate) use model::rope_of;
pub use model::{argmax, DeepSeekModel, ForwardTrace, LogitRows};
pub use sampling::{generate, Sampler};
pub use timing::{Split, Stage, StageTimes};
