//! F32 / F16 / BF16 references: one element per "block", little-endian bytes.
//!
//! Conversions go through the `half` crate, whose rounding is ggml's: f32 -> f16 is IEEE
//! round to nearest even, f32 -> bf16 rounds to nearest even and turns a NaN into a quiet
//! NaN (keeping the sign and the high mantissa bits, setting the quiet bit), as ggml's
//! `ggml_compute_fp32_to_bf16`. The dots take both operands in the row's format and sum
//! the products in f64 (ggml sums in f32 lanes or f64; both are within 1e-5 of exact).

use half::{bf16, f16};

fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

fn u16_at(bytes: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])
}

/// Writes `bits(v)` of every element of `src` as little-endian u16.
fn write_u16s(src: &[f32], dst: &mut [u8], bits: impl Fn(f32) -> u16) {
    for (out, &v) in dst.chunks_exact_mut(2).zip(src) {
        out.copy_from_slice(&bits(v).to_le_bytes());
    }
}

pub fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (out, &v) in dst.chunks_exact_mut(4).zip(src) {
        out.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    write_u16s(src, dst, |v| f16::from_f32(v).to_bits());
}

pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    write_u16s(src, dst, |v| bf16::from_f32(v).to_bits());
}

pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (i, out) in dst.iter_mut().enumerate() {
        *out = f32_at(src, i);
    }
}

pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (i, out) in dst.iter_mut().enumerate() {
        *out = f16::from_bits(u16_at(src, i)).to_f32();
    }
}

pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (i, out) in dst.iter_mut().enumerate() {
        *out = bf16::from_bits(u16_at(src, i)).to_f32();
    }
}

/// Sum of `a(i) * b(i)` over `n` elements, in f64.
fn dot_f64(n: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> f32 {
    (0..n).map(|i| a(i) as f64 * b(i) as f64).sum::<f64>() as f32
}

pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_f64(n, |i| f32_at(w, i), |i| f32_at(a, i))
}

pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let at = |bytes: &[u8], i| f16::from_bits(u16_at(bytes, i)).to_f32();
    dot_f64(n, |i| at(w, i), |i| at(a, i))
}

pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let at = |bytes: &[u8], i| bf16::from_bits(u16_at(bytes, i)).to_f32();
    dot_f64(n, |i| at(w, i), |i| at(a, i))
}
