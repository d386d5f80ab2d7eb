//! GGUF block formats: the type table, the byte layouts and the public quantize /
//! dequantize / dot entry points.
//!
//! Every format has a scalar reference in [`reference`] (never optimized: it is what
//! the fast paths and the ggml fixtures are checked against). The public functions
//! here check lengths and then call the reference; the fast paths live in
//! [`crate::cpu`].

pub mod blocks;
pub mod reference;

use std::fmt;

use crate::error::{KtError, Result};

/// A ggml tensor type, with GGUF's type id as discriminant.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum QType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Elements per block of the small-block formats.
pub const QK: usize = 32;

impl QType {
    /// Every supported type, in ggml id order.
    pub const ALL: [QType; 15] = [
        QType::F32,
        QType::F16,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q8_1,
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
        QType::Q8_K,
        QType::BF16,
    ];

    /// The weight formats a GGUF tensor may hold and a matmul accepts (all but the
    /// activation-only Q8_K and Q8_1).
    pub const WEIGHTS: [QType; 13] = [
        QType::F32,
        QType::F16,
        QType::BF16,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
    ];

    pub fn from_ggml_id(id: u32) -> Option<QType> {
        QType::ALL.iter().copied().find(|t| t.ggml_id() == id)
    }

    pub fn ggml_id(self) -> u32 {
        self as u32
    }

    /// ggml's name of the type (`q4_K`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            QType::F32 => "f32",
            QType::F16 => "f16",
            QType::Q4_0 => "q4_0",
            QType::Q4_1 => "q4_1",
            QType::Q5_0 => "q5_0",
            QType::Q5_1 => "q5_1",
            QType::Q8_0 => "q8_0",
            QType::Q8_1 => "q8_1",
            QType::Q2_K => "q2_K",
            QType::Q3_K => "q3_K",
            QType::Q4_K => "q4_K",
            QType::Q5_K => "q5_K",
            QType::Q6_K => "q6_K",
            QType::Q8_K => "q8_K",
            QType::BF16 => "bf16",
        }
    }

    /// Parses ggml's name, case-insensitively (`q4_k`, `Q4_K`, `bf16`).
    pub fn from_name(name: &str) -> Option<QType> {
        QType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            QType::F32 | QType::F16 | QType::BF16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 | QType::Q8_1 => QK,
            QType::Q2_K | QType::Q3_K | QType::Q4_K | QType::Q5_K | QType::Q6_K | QType::Q8_K => {
                QK_K
            }
        }
    }

    /// Bytes per block (the size of the `#[repr(C)]` struct in [`blocks`]).
    pub fn block_bytes(self) -> usize {
        use blocks::*;
        use std::mem::size_of;
        match self {
            QType::F32 => 4,
            QType::F16 | QType::BF16 => 2,
            QType::Q4_0 => size_of::<BlockQ4_0>(),
            QType::Q4_1 => size_of::<BlockQ4_1>(),
            QType::Q5_0 => size_of::<BlockQ5_0>(),
            QType::Q5_1 => size_of::<BlockQ5_1>(),
            QType::Q8_0 => size_of::<BlockQ8_0>(),
            QType::Q8_1 => size_of::<BlockQ8_1>(),
            QType::Q2_K => size_of::<BlockQ2K>(),
            QType::Q3_K => size_of::<BlockQ3K>(),
            QType::Q4_K => size_of::<BlockQ4K>(),
            QType::Q5_K => size_of::<BlockQ5K>(),
            QType::Q6_K => size_of::<BlockQ6K>(),
            QType::Q8_K => size_of::<BlockQ8K>(),
        }
    }

    /// Bytes of a row of `n_elems` elements; an error when `n_elems` is not a whole
    /// number of blocks.
    pub fn row_bytes(self, n_elems: usize) -> Result<usize> {
        let block = self.block_elems();
        if !n_elems.is_multiple_of(block) {
            return Err(KtError::NotBlockMultiple {
                qtype: self,
                len: n_elems,
                block,
            });
        }
        (n_elems / block)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| KtError::Shape {
                op: "row_bytes",
                detail: format!("{n_elems} elements of {self} overflow a byte count"),
            })
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_elems() as f64
    }

    /// The format activations are quantized to before a dot with a row of this type
    /// (ggml's `vec_dot_type`).
    pub fn vec_dot_type(self) -> QType {
        match self {
            QType::F32 => QType::F32,
            QType::F16 => QType::F16,
            QType::BF16 => QType::BF16,
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => QType::Q8_0,
            QType::Q4_1 | QType::Q5_1 => QType::Q8_1,
            QType::Q8_1 => QType::Q8_1,
            QType::Q2_K | QType::Q3_K | QType::Q4_K | QType::Q5_K | QType::Q6_K | QType::Q8_K => {
                QType::Q8_K
            }
        }
    }

    /// True for the K-quants' 256-element super-blocks.
    pub fn is_k_quant(self) -> bool {
        self.block_elems() == QK_K
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks that `n` elements stored in `bytes` of `qtype` agree: `n` is a whole number of
/// blocks and `bytes.len()` is exactly its row size.
pub(crate) fn check_row(qtype: QType, what: &'static str, n: usize, bytes: usize) -> Result<()> {
    let expected = qtype.row_bytes(n)?;
    if bytes != expected {
        return Err(KtError::Length {
            qtype,
            what,
            unit: "bytes",
            expected,
            got: bytes,
        });
    }
    Ok(())
}

/// Quantizes `src` into `dst` (`qtype.row_bytes(src.len())` bytes). Rows of any length
/// that is a whole number of blocks; consecutive rows may be passed at once.
pub fn quantize(qtype: QType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_row(qtype, "quantize destination", src.len(), dst.len())?;
    reference::quantize(qtype, src, dst);
    Ok(())
}

/// Dequantizes `src` into `dst`; `src` must hold exactly `dst.len()` elements of `qtype`.
pub fn dequantize(qtype: QType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_row(qtype, "dequantize source", dst.len(), src.len())?;
    reference::dequantize(qtype, src, dst);
    Ok(())
}

/// Dot product of a weight row of `qtype` with an activation row already quantized to
/// `qtype.vec_dot_type()`, both of `n` elements (the scalar reference).
pub fn vec_dot(qtype: QType, n: usize, weights: &[u8], act: &[u8]) -> Result<f32> {
    if matches!(qtype, QType::Q8_K | QType::Q8_1) {
        return Err(KtError::Unsupported {
            qtype,
            op: "vec_dot (activation-only format)",
        });
    }
    check_row(qtype, "weight row", n, weights.len())?;
    check_row(qtype.vec_dot_type(), "activation row", n, act.len())?;
    Ok(reference::vec_dot(qtype, n, weights, act))
}

/// Dot product of a weight row of `qtype` with an f32 activation row: the weights are
/// dequantized and the sum is taken in f64 (the reference path).
pub fn vec_dot_f32(qtype: QType, weights: &[u8], x: &[f32]) -> Result<f32> {
    check_row(qtype, "weight row", x.len(), weights.len())?;
    let mut w = vec![0f32; x.len()];
    reference::dequantize(qtype, weights, &mut w);
    Ok(w.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_sizes_round_trip() {
        for t in QType::ALL {
            assert_eq!(QType::from_ggml_id(t.ggml_id()), Some(t));
            assert_eq!(QType::from_name(t.name()), Some(t));
            assert_eq!(
                t.row_bytes(t.block_elems() * 3).unwrap(),
                3 * t.block_bytes()
            );
        }
        assert_eq!(
            QType::from_ggml_id(4),
            None,
            "ids 4 and 5 (q4_2, q4_3) were removed from ggml"
        );
        assert_eq!(QType::from_name("Q4_K"), Some(QType::Q4_K));
    }

    #[test]
    fn row_bytes_refuses_partial_blocks_and_overflow() {
        assert!(matches!(
            QType::Q4_K.row_bytes(255),
            Err(KtError::NotBlockMultiple {
                len: 255,
                block: 256,
                ..
            })
        ));
        assert!(matches!(
            QType::Q4_0.row_bytes(48),
            Err(KtError::NotBlockMultiple { .. })
        ));
        // Q8_0 stores 34 bytes per 32 elements, so the byte count outgrows the element count.
        let huge = (usize::MAX / 32) * 32;
        assert!(matches!(
            QType::Q8_0.row_bytes(huge),
            Err(KtError::Shape { .. })
        ));
        assert!(matches!(
            QType::F32.row_bytes(usize::MAX),
            Err(KtError::Shape { .. })
        ));
    }
}
