//! Q6_K scalar reference.
//!
//! A 256-element super-block is 16 sub-blocks of 16 with int8 scales times the block's
//! f16 `d`: `x = d * sc * q`, `q` in `-32..32` stored as `q + 32` (6 bits). Each
//! 128-element half uses 64 bytes of `ql` and 32 of `qh`: element `32 * g + i` of a
//! half (g = 0..4) has its low 4 bits in byte `i + 32 * (g % 2)` of the half's `ql`
//! (low nibble for g < 2, high nibble otherwise) and its top 2 bits at bits `2 * g`
//! of byte `i` of the half's `qh`.

use super::common::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use crate::quant::blocks::{read_block, write_block, BlockQ6K, BlockQ8K};
use crate::quant::QK_K;
use half::f16;

/// The signed 6-bit quant of element `e`.
#[inline]
fn quant(b: &BlockQ6K, e: usize) -> i32 {
    let (half, g, i) = (e / 128, (e % 128) / 32, e % 32);
    let byte = b.ql[64 * half + 32 * (g % 2) + i];
    let low = if g < 2 { byte & 0x0F } else { byte >> 4 };
    let high = (b.qh[32 * half + i] >> (2 * g)) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Quantizes one super-block (ggml's `quantize_row_q6_K_ref`).
pub fn quantize_block(x: &[f32]) -> BlockQ6K {
    debug_assert_eq!(x.len(), QK_K);
    // Biased quants, q + 32 in 0..64.
    let mut q = [0u8; QK_K];
    let mut scales = [0f32; 16];
    // The scale of largest magnitude, with its sign (the first one on ties).
    let mut max_abs = 0f32;
    let mut max_scale = 0f32;
    for j in 0..16 {
        scales[j] = make_qx_quants(&x[16 * j..16 * j + 16], 32, &mut q[16 * j..16 * j + 16]);
        if scales[j].abs() > max_abs {
            max_abs = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; 16],
            d: f16::ZERO,
        };
    }

    // The scale of largest magnitude maps to -128 (the sign is folded into d).
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let sc: [i8; 16] = std::array::from_fn(|j| nearest_int(iscale * scales[j]).min(127) as i8);

    // Requantize against the scales as stored.
    for ((qs, xs), &s) in q.chunks_exact_mut(16).zip(x.chunks_exact(16)).zip(&sc) {
        let dl = d.to_f32() * s as f32;
        if dl == 0.0 {
            continue;
        }
        for (qi, &xi) in qs.iter_mut().zip(xs) {
            *qi = (nearest_int(xi / dl).clamp(-32, 31) + 32) as u8;
        }
    }

    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for (e, &qe) in q.iter().enumerate() {
        let (half, g, i) = (e / 128, (e % 128) / 32, e % 32);
        let nibble = if g < 2 { qe & 0x0F } else { (qe & 0x0F) << 4 };
        ql[64 * half + 32 * (g % 2) + i] |= nibble;
        qh[32 * half + i] |= (qe >> 4) << (2 * g);
    }
    BlockQ6K {
        ql,
        qh,
        scales: sc,
        d,
    }
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        write_block(dst, i, &quantize_block(x));
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b: BlockQ6K = read_block(src, i);
        let d = b.d.to_f32();
        for (e, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[e / 16] as f32 * quant(&b, e) as f32;
        }
    }
}

/// Weight row · Q8_K activation row: per block the integer sub-block dots times their
/// int8 scales, then one multiply by `d * act.d`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n / QK_K {
        let b: BlockQ6K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let mut isum = 0i32;
        for (j, &sc) in b.scales.iter().enumerate() {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|e| quant(&b, e) * a.qs[e] as i32)
                .sum();
            isum += sc as i32 * sub;
        }
        sum += b.d.to_f32() * a.d * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::common::test_support::check_roundtrip;

    #[test]
    fn roundtrip_error_fits_the_bit_budget() {
        // 64 levels, 16 per sub-block: 3.5 / 63 / sqrt(12) * 1.25.
        check_roundtrip(quantize, dequantize, std::mem::size_of::<BlockQ6K>(), 0.02);
    }

    #[test]
    fn zero_weights_dot_to_exact_zero() {
        let act: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = vec![0u8; 2 * std::mem::size_of::<BlockQ8K>()];
        crate::quant::reference::q8_k::quantize(&act, &mut a);
        let mut w = vec![0xAAu8; 2 * std::mem::size_of::<BlockQ6K>()];
        quantize(&[0.0; 512], &mut w);
        assert_eq!(vec_dot(512, &w, &a).to_bits(), 0f32.to_bits());
    }
}
