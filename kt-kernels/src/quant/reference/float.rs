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

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bits(v: f32) -> u16 {
        let mut b = [0u8; 2];
        quantize_bf16(&[v], &mut b);
        u16::from_le_bytes(b)
    }

    fn f16_bits(v: f32) -> u16 {
        let mut b = [0u8; 2];
        quantize_f16(&[v], &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nans() {
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, to even
        assert_eq!(bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, to even
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8001)), 0x3F81); // above the tie
        assert_eq!(bf16_bits(f32::MAX), 0x7F80); // rounds up to infinity
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xFF80);
        // Signalling NaNs keep sign and high payload, gain the quiet bit.
        assert_eq!(bf16_bits(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(bf16_bits(f32::from_bits(0xFF81_0000)), 0xFFC1);
        let mut y = [0.0f32];
        dequantize_bf16(&0x7FC0u16.to_le_bytes(), &mut y);
        assert!(y[0].is_nan());
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        assert_eq!(f16_bits(1.0 + 2f32.powi(-11)), 0x3C00); // tie, to even
        assert_eq!(f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02); // tie, to even
        assert_eq!(f16_bits(65520.0), 0x7C00); // halfway above MAX: infinity
        assert_eq!(f16_bits(2f32.powi(-25)), 0x0000); // half the smallest subnormal
        assert_eq!(f16_bits(-3.0 * 2f32.powi(-25)), 0x8002);
    }

    #[test]
    fn f32_bytes_round_trip_and_dot() {
        let x = [1.5f32, -2.25, f32::MIN_POSITIVE, 1e30];
        let mut b = [0u8; 16];
        quantize_f32(&x, &mut b);
        assert_eq!(&b[..4], &1.5f32.to_le_bytes());
        let mut y = [f32::NAN; 4];
        dequantize_f32(&b, &mut y);
        assert_eq!(y, x);
        let (w, a): (Vec<f32>, Vec<f32>) = (0..64)
            .map(|i| (i as f32 * 0.1 - 3.0, 1.0 / (i as f32 + 1.0)))
            .unzip();
        let (mut wb, mut ab) = (vec![0u8; 256], vec![0u8; 256]);
        quantize_f32(&w, &mut wb);
        quantize_f32(&a, &mut ab);
        let exact: f64 = w.iter().zip(&a).map(|(&p, &q)| p as f64 * q as f64).sum();
        assert_eq!(vec_dot_f32(64, &wb, &ab), exact as f32);
    }
}
