//! Which summation order the AVX512 K-quant kernels (Q4_K, Q5_K, Q6_K, and Q3_K, which
//! takes the AVX2 kernels in the ggml order; AMX inherits them below its own token
//! thresholds) and the scalar backend's Q4_K, Q5_K, Q6_K, Q4_1 and Q5_1
//! products follow: `KT_KQUANT_ORDER=fast` (the default; the scalar backend's plain reference
//! order) or `ggml`.
//!
//! Why a choice: llama.cpp's x86 order for these formats (its REPACK kernels for Q4_K,
//! ggml's AVX2 `vec_dot` for Q5_K / Q6_K) scales every chunk's products in integers and keeps
//! 8 f32 lanes per (row, token); kt's AVX512 column and row-pair kernels sum whole
//! sub-blocks with one `vpdpbusd` and scale once per sub-block. Both are exact in integers
//! and differ only in f32 rounding, but on small chaotic models (the tiny fixtures) an ulp
//! that lands on a quantizer's rounding boundary moves the logits by up to ~8e-2, the same
//! spread llama.cpp shows between its own builds (docs/parity.md). The ggml order costs
//! 1.3-3.9x on AVX512 GEMMs (BENCHMARKS.md, session 6), so it is opt-in there; the AVX2
//! kernels follow llama.cpp's order always (at no measured cost).

use std::sync::OnceLock;

use crate::error::{KtError, Result};

/// The summation order of the AVX512 K-quant kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KquantOrder {
    /// kt's AVX512 kernels: whole sub-blocks per `vpdpbusd`, f32 scaling per sub-block.
    Fast,
    /// llama.cpp's x86 order, bit for bit ([`crate::cpu::scalar::ggml_order`] models it).
    Ggml,
}

impl KquantOrder {
    /// Parses a `KT_KQUANT_ORDER` value.
    pub fn from_name(s: &str) -> Result<KquantOrder> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fast" => Ok(KquantOrder::Fast),
            "ggml" => Ok(KquantOrder::Ggml),
            _ => Err(KtError::UnknownKquantOrder(s.to_string())),
        }
    }
}

/// `KT_KQUANT_ORDER` when set (an error if unknown), else [`KquantOrder::Fast`]. Decided once
/// per process, before the first kernel table is built.
pub fn kquant_order() -> Result<KquantOrder> {
    static ORDER: OnceLock<Result<KquantOrder>> = OnceLock::new();
    ORDER
        .get_or_init(|| match std::env::var("KT_KQUANT_ORDER") {
            Ok(v) if !v.trim().is_empty() => KquantOrder::from_name(&v),
            _ => Ok(KquantOrder::Fast),
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_errors() {
        assert_eq!(KquantOrder::from_name(" GGML ").unwrap(), KquantOrder::Ggml);
        assert_eq!(KquantOrder::from_name("fast").unwrap(), KquantOrder::Fast);
        let e = KquantOrder::from_name("llama").unwrap_err().to_string();
        assert!(e.contains("llama") && e.contains("KT_KQUANT_ORDER"), "{e}");
    }
}
