//! Scalar references of every format: quantize from f32, dequantize to f32, and the dot
//! product of a weight row with an activation row in the format's `vec_dot_type`.
//!
//! These are the ground truth the SIMD paths are tested against, and they are checked
//! themselves against ggml's outputs (`tests/fixtures/quant`). They are written for
//! clarity and are never optimized. Callers (the checked API in [`crate::quant`]) have
//! already verified that lengths are whole blocks and that buffers have the right size.

pub mod common;
pub mod float;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

use super::QType;

/// Quantizes `src` into `dst`; `dst.len() == qtype.row_bytes(src.len())`.
pub fn quantize(qtype: QType, src: &[f32], dst: &mut [u8]) {
    match qtype {
        QType::F32 => float::quantize_f32(src, dst),
        QType::F16 => float::quantize_f16(src, dst),
        QType::BF16 => float::quantize_bf16(src, dst),
        QType::Q4_0 => q4_0::quantize(src, dst),
        QType::Q4_1 => q4_1::quantize(src, dst),
        QType::Q5_0 => q5_0::quantize(src, dst),
        QType::Q5_1 => q5_1::quantize(src, dst),
        QType::Q8_0 => q8_0::quantize(src, dst),
        QType::Q8_1 => q8_1::quantize(src, dst),
        QType::Q2_K => q2_k::quantize(src, dst),
        QType::Q3_K => q3_k::quantize(src, dst),
        QType::Q4_K => q4_k::quantize(src, dst),
        QType::Q5_K => q5_k::quantize(src, dst),
        QType::Q6_K => q6_k::quantize(src, dst),
        QType::Q8_K => q8_k::quantize(src, dst),
    }
}

/// Dequantizes `src` into `dst`; `src.len() == qtype.row_bytes(dst.len())`.
pub fn dequantize(qtype: QType, src: &[u8], dst: &mut [f32]) {
    match qtype {
        QType::F32 => float::dequantize_f32(src, dst),
        QType::F16 => float::dequantize_f16(src, dst),
        QType::BF16 => float::dequantize_bf16(src, dst),
        QType::Q4_0 => q4_0::dequantize(src, dst),
        QType::Q4_1 => q4_1::dequantize(src, dst),
        QType::Q5_0 => q5_0::dequantize(src, dst),
        QType::Q5_1 => q5_1::dequantize(src, dst),
        QType::Q8_0 => q8_0::dequantize(src, dst),
        QType::Q8_1 => q8_1::dequantize(src, dst),
        QType::Q2_K => q2_k::dequantize(src, dst),
        QType::Q3_K => q3_k::dequantize(src, dst),
        QType::Q4_K => q4_k::dequantize(src, dst),
        QType::Q5_K => q5_k::dequantize(src, dst),
        QType::Q6_K => q6_k::dequantize(src, dst),
        QType::Q8_K => q8_k::dequantize(src, dst),
    }
}

/// Dot of a weight row of `qtype` (`n` elements) with an activation row in
/// `qtype.vec_dot_type()`. `qtype` is a weight format (not Q8_K / Q8_1).
pub fn vec_dot(qtype: QType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match qtype {
        QType::F32 => float::vec_dot_f32(n, w, act),
        QType::F16 => float::vec_dot_f16(n, w, act),
        QType::BF16 => float::vec_dot_bf16(n, w, act),
        QType::Q4_0 => q4_0::vec_dot(n, w, act),
        QType::Q4_1 => q4_1::vec_dot(n, w, act),
        QType::Q5_0 => q5_0::vec_dot(n, w, act),
        QType::Q5_1 => q5_1::vec_dot(n, w, act),
        QType::Q8_0 => q8_0::vec_dot(n, w, act),
        QType::Q2_K => q2_k::vec_dot(n, w, act),
        QType::Q3_K => q3_k::vec_dot(n, w, act),
        QType::Q4_K => q4_k::vec_dot(n, w, act),
        QType::Q5_K => q5_k::vec_dot(n, w, act),
        QType::Q6_K => q6_k::vec_dot(n, w, act),
        QType::Q8_K | QType::Q8_1 => {
            unreachable!("{qtype} is an activation format; the checked API refuses it")
        }
    }
}
