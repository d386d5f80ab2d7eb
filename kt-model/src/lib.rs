//! kt-model: GGUF loading and the DeepSeek V2/V3 forward pass, built on kt-kernels.

pub mod config;
pub mod deepseek;
pub mod error;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod hybrid;
pub mod placement;
pub mod synthetic;
pub mod tensors;

pub use error::{ModelError, Result};
