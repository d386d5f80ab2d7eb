//! Typed errors of kt-kernels: each names the format, length or shape that was wrong.

use crate::quant::QType;

/// Everything that can go wrong in a kernel call is checked at the safe API and reported here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KtError {
    #[error("{qtype}: {len} elements is not a multiple of the block size {block}")]
    NotBlockMultiple {
        qtype: QType,
        len: usize,
        block: usize,
    },

    #[error("{qtype}: {what} has {got} {unit}, expected {expected}")]
    Length {
        qtype: QType,
        what: &'static str,
        unit: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("{qtype}: {op} is not supported for this format")]
    Unsupported { qtype: QType, op: &'static str },

    #[error("{op}: bad shape: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("KT_ISA={0:?} is not one of scalar, avx2, avx512, amx")]
    UnknownIsa(String),

    #[error("KT_KQUANT_ORDER={0:?} is not one of fast, ggml")]
    UnknownKquantOrder(String),

    #[error("ISA {isa} was requested but this CPU cannot run it: {reason}")]
    IsaUnavailable { isa: &'static str, reason: String },
}

pub type Result<T, E = KtError> = std::result::Result<T, E>;
