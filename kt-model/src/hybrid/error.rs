//! Errors of the hybrid executor: the GPU's, the model's, the placement's, and what this
//! executor does not (yet) run, named precisely.

use kt_kernels::cuda::CudaError;

use crate::error::ModelError;
use crate::placement::PlacementError;

#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error("hybrid executor: GPU: {0}")]
    Cuda(#[from] CudaError),

    #[error("hybrid executor: {0}")]
    Model(#[from] ModelError),

    #[error("hybrid executor: placement: {0}")]
    Placement(#[from] PlacementError),

    /// A shape, format or device the executor does not run.
    #[error("hybrid executor: {0}")]
    Unsupported(String),

    /// A bad call (tokens past the vocabulary, a full cache, ...).
    #[error("hybrid executor: {0}")]
    Input(String),
}

pub type HybridResult<T> = std::result::Result<T, HybridError>;
