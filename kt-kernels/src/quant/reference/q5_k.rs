//! Q5_K scalar reference.
//!
//! Q4_K with a fifth bit per quant: scales and mins as in Q4_K (8 sub-blocks of 32,
//! [`get_scale_min_k4`]), the low 4 bits in the same nibble layout, and bit 4 of
//! element `e` at bit `e / 32` of `qh[e % 32]`. `x = d * sc * q - dmin * m`, `q` in
//! `0..32`.
//!
//! [`get_scale_min_k4`]: super::common::get_scale_min_k4

use super::common::{
    dequantize_scale_min, nibble_k4, quantize_scale_min_k4, vec_dot_scale_min, ScaleMinBlock,
    ScaleMinSearch,
};
use crate::quant::blocks::{write_block, BlockQ5K};
use crate::quant::QK_K;

/// ggml's search for Q5_K sub-blocks: squared error, 16 candidate scales.
const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

impl ScaleMinBlock for BlockQ5K {
    fn d_dmin(&self) -> (f32, f32) {
        (self.d.to_f32(), self.dmin.to_f32())
    }

    fn scales(&self) -> &[u8; 12] {
        &self.scales
    }

    /// The quant of element `e`: Q4_K's nibble and its fifth bit from `qh`.
    #[inline]
    fn quant(&self, e: usize) -> u8 {
        let high = (self.qh[e % 32] >> (e / 32)) & 1;
        nibble_k4(&self.qs, e) | (high << 4)
    }
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
    dequantize_scale_min::<BlockQ5K>(src, dst);
}

/// Weight row · Q8_K activation row ([`vec_dot_scale_min`]).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    vec_dot_scale_min::<BlockQ5K>(n, w, act)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::BlockQ8K;
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
