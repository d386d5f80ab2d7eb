//! Small helpers shared by kernels, tests, benches and the synthetic models.

pub mod aligned;
pub mod npy;
pub mod rng;

pub use aligned::AlignedBuf;
pub use rng::SplitMix64;
