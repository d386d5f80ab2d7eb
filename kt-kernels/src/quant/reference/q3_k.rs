//! Q3_K scalar reference.
//!
//! A 256-element super-block is 16 sub-blocks of 16 with signed 6-bit scales (packed
//! in 12 bytes, see [`get_q3_k_scales`]) times the block's f16 `d`. Quants are 3-bit
//! signed, `-4..4`: the low 2 bits packed by [`pack_2bit`], the high bit of element `e`
//! at bit `e / 32` of `hmask[e % 32]`, set when `q >= 0`. `x = d * sc * q`.

use super::common::{
    get_2bit, get_q3_k_scales, make_q3_quants, nearest_int, pack_2bit, put_q3_k_scales,
};
use crate::quant::blocks::{read_block, write_block, BlockQ3K, BlockQ8K};
use crate::quant::QK_K;
use half::f16;

/// The signed 3-bit quant of element `e`.
#[inline]
fn quant(b: &BlockQ3K, e: usize) -> i32 {
    let high = (b.hmask[e % 32] >> (e / 32)) & 1;
    get_2bit(&b.qs, e) as i32 - if high != 0 { 0 } else { 4 }
}

/// Quantizes one super-block (ggml's `quantize_row_q3_K_ref`).
pub fn quantize_block(x: &[f32]) -> BlockQ3K {
    debug_assert_eq!(x.len(), QK_K);
    // Biased quants, q + 4 in 0..8.
    let mut q = [0u8; QK_K];
    let mut scales = [0f32; 16];
    // The scale of largest magnitude, with its sign (the first one on ties).
    let mut amax = 0f32;
    let mut max_scale = 0f32;
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut q[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }

    let mut packed = [0u8; 12];
    let mut d = f16::ZERO;
    if max_scale != 0.0 {
        // The scale of largest magnitude maps to -32 (the sign is folded into d).
        let iscale = -32.0 / max_scale;
        let biased: [u8; 16] = std::array::from_fn(|j| {
            let l = nearest_int(iscale * scales[j]) as i8 as i32;
            (l.clamp(-32, 31) + 32) as u8
        });
        packed = put_q3_k_scales(&biased);
        d = f16::from_f32(1.0 / iscale);
    }

    // Requantize against the scales as stored.
    let stored = get_q3_k_scales(&packed);
    for ((qs, xs), &sc) in q.chunks_exact_mut(16).zip(x.chunks_exact(16)).zip(&stored) {
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for (qi, &xi) in qs.iter_mut().zip(xs) {
            *qi = (nearest_int(xi / dl).clamp(-4, 3) + 4) as u8;
        }
    }

    let mut hmask = [0u8; QK_K / 8];
    for (e, qe) in q.iter_mut().enumerate() {
        if *qe > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *qe -= 4;
        }
    }
    BlockQ3K {
        hmask,
        qs: pack_2bit(&q),
        scales: packed,
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
        let b: BlockQ3K = read_block(src, i);
        let d = b.d.to_f32();
        let scales = get_q3_k_scales(&b.scales);
        for (e, o) in y.iter_mut().enumerate() {
            let dl = d * scales[e / 16] as f32;
            *o = dl * quant(&b, e) as f32;
        }
    }
}

/// Weight row · Q8_K activation row: per block the integer sub-block dots times their
/// signed scales, then one multiply by `d * act.d`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n / QK_K {
        let b: BlockQ3K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let scales = get_q3_k_scales(&b.scales);
        let mut isum = 0i32;
        for (j, &sc) in scales.iter().enumerate() {
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
        // 8 levels, 16 per sub-block: 3.5 / 7 / sqrt(12) * 1.25.
        check_roundtrip(quantize, dequantize, std::mem::size_of::<BlockQ3K>(), 0.18);
    }

    #[test]
    fn zero_weights_dot_to_exact_zero() {
        let act: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = vec![0u8; 2 * std::mem::size_of::<BlockQ8K>()];
        crate::quant::reference::q8_k::quantize(&act, &mut a);
        let mut w = vec![0xAAu8; 2 * std::mem::size_of::<BlockQ3K>()];
        quantize(&[0.0; 512], &mut w);
        assert_eq!(vec_dot(512, &w, &a).to_bits(), 0f32.to_bits());
    }
}
