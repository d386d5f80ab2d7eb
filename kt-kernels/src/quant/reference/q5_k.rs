//! Q5_K scalar reference.
//!
//! Q4_K with a fifth bit per quant: scales and mins as in Q4_K (8 sub-blocks of 32,
//! [`get_scale_min_k4`]), the low 4 bits in the same nibble layout, and bit 4 of
//! element `e` at bit `e / 32` of `qh[e % 32]`. `x = d * sc * q - dmin * m`, `q` in
//! `0..32`.

use super::common::{get_scale_min_k4, quantize_scale_min_k4, ScaleMinSearch};
use crate::quant::blocks::{read_block, write_block, BlockQ5K, BlockQ8K};
use crate::quant::QK_K;

/// ggml's search for Q5_K sub-blocks: squared error, 16 candidate scales.
const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// The 5-bit quant of element `e`.
#[inline]
fn quant(b: &BlockQ5K, e: usize) -> u8 {
    let byte = b.qs[32 * (e / 64) + e % 32];
    let low = if e % 64 < 32 { byte & 0x0F } else { byte >> 4 };
    let high = (b.qh[e % 32] >> (e / 32)) & 1;
    low | (high << 4)
}

/// Quantizes one super-block (ggml's `quantize_row_q5_K_ref`).
pub fn quantize_block(x: &[f32]) -> BlockQ5K {
    let s = quantize_scale_min_k4(x, &SEARCH);
    let mut qs = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 8];
    for (e, &q) in s.q.iter().enumerate() {
        let (chunk, i) = (e / 64, e % 32);
        let nibble = if e % 64 < 32 {
            q & 0x0F
        } else {
            (q & 0x0F) << 4
        };
        qs[32 * chunk + i] |= nibble;
        qh[i] |= (q >> 4) << (e / 32);
    }
    BlockQ5K {
        d: s.d,
        dmin: s.dmin,
        scales: s.scales,
        qh,
        qs,
    }
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        write_block(dst, i, &quantize_block(x));
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b: BlockQ5K = read_block(src, i);
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in y.iter_mut().enumerate() {
            let (sc, m) = get_scale_min_k4(e / 32, &b.scales);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            *o = dl * quant(&b, e) as f32 - ml;
        }
    }
}

/// Weight row · Q8_K activation row, as for Q4_K: integer sub-block dots times 6-bit
/// scales, 6-bit mins against `bsums`, one float multiply each per block.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n / QK_K {
        let b: BlockQ5K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &b.scales);
            let sub: i32 = (32 * j..32 * j + 32)
                .map(|e| quant(&b, e) as i32 * a.qs[e] as i32)
                .sum();
            isum += sc as i32 * sub;
            msum += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        let d = b.d.to_f32() * a.d;
        let dmin = b.dmin.to_f32() * a.d;
        sum += d * isum as f32 - dmin * msum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::common::test_support::check_roundtrip;

    #[test]
    fn roundtrip_error_fits_the_bit_budget() {
        // 32 levels, 32 per sub-block: 4.1 / 31 / sqrt(12) * 1.25.
        check_roundtrip(quantize, dequantize, std::mem::size_of::<BlockQ5K>(), 0.048);
    }

    #[test]
    fn zero_weights_dot_to_exact_zero() {
        let act: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = vec![0u8; 2 * std::mem::size_of::<BlockQ8K>()];
        crate::quant::reference::q8_k::quantize(&act, &mut a);
        let mut w = vec![0xAAu8; 2 * std::mem::size_of::<BlockQ5K>()];
        quantize(&[0.0; 512], &mut w);
        assert_eq!(vec_dot(512, &w, &a).to_bits(), 0f32.to_bits());
    }
}
