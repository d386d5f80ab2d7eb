//! Typed errors of the GPU runtime and kernels.

use cudarc::driver::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded: this machine has no NVIDIA driver.
    #[error("no CUDA driver: libcuda could not be loaded (no NVIDIA driver on this machine)")]
    NoDriver,

    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },

    #[error("CUDA driver call failed: {op}: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },

    #[error("loading the embedded CUDA module {module} failed: {source}")]
    ModuleLoad {
        module: &'static str,
        #[source]
        source: DriverError,
    },

    #[error("kernel {kernel} is missing from CUDA module {module}: {source}")]
    MissingKernel {
        module: &'static str,
        kernel: String,
        #[source]
        source: DriverError,
    },

    #[error("launch of kernel {kernel} ({shape}) failed: {source}")]
    Launch {
        kernel: String,
        shape: String,
        #[source]
        source: DriverError,
    },

    #[error("{op}: bad shape: {detail}")]
    Shape { op: &'static str, detail: String },
}

pub type CudaResult<T> = std::result::Result<T, CudaError>;

/// Wraps a driver error with the name of the call that failed.
pub(crate) fn driver(op: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |source| CudaError::Driver { op, source }
}

/// A shape error of operation `op`.
pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> CudaError {
    CudaError::Shape {
        op,
        detail: detail.into(),
    }
}

/// `v` as a kernel's `int` argument, or a shape error of `op` naming `what`.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| shape(op, format!("{what} = {v} does not fit in an i32")))
}

/// Wraps a launch error with the kernel's name and the shape it was launched for. Both
/// strings are built only when a launch fails: a launch that succeeds allocates nothing.
pub(crate) fn launch_err<K: Into<String>, S: FnOnce() -> String>(
    kernel: K,
    shape: S,
) -> impl FnOnce(DriverError) -> CudaError {
    move |source| CudaError::Launch {
        kernel: kernel.into(),
        shape: shape(),
        source,
    }
}
