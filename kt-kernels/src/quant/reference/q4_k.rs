//! Q4_K scalar reference.
//!
//! A 256-element super-block is 8 sub-blocks of 32, each with a 6-bit scale and a
//! 6-bit min (packed in 12 bytes, see [`get_scale_min_k4`]) times the block's f16 `d`
//! and `dmin`: `x = d * sc * q - dmin * m` with 4-bit `q`. Quants come in 64-element
//! chunks of 32 bytes: element `i` of a chunk in the low nibble of byte `i`, element
//! `32 + i` in its high nibble.
//!
//! [`get_scale_min_k4`]: super::common::get_scale_min_k4

use super::common::{
    dequantize_scale_min, nibble_k4, quantize_scale_min_k4, vec_dot_scale_min, ScaleMinBlock,
    ScaleMinSearch,
};
use crate::quant::blocks::{write_block, BlockQ4K};
use crate::quant::QK_K;

/// ggml's search for Q4_K sub-blocks: squared error, 21 candidate scales.
const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

impl ScaleMinBlock for BlockQ4K {
    fn d_dmin(&self) -> (f32, f32) {
        (self.d.to_f32(), self.dmin.to_f32())
    }

    fn scales(&self) -> &[u8; 12] {
        &self.scales
    }

    /// The quant of element `e`: its nibble.
    #[inline]
    fn quant(&self, e: usize) -> u8 {
        nibble_k4(&self.qs, e)
    }
}

/// Quantizes one super-block (ggml's `quantize_row_q4_K_ref`).
pub fn quantize_block(x: &[f32]) -> BlockQ4K {
    let s = quantize_scale_min_k4(x, &SEARCH);
    let mut qs = [0u8; QK_K / 2];
    for chunk in 0..4 {
        for i in 0..32 {
            qs[32 * chunk + i] = s.q[64 * chunk + i] | (s.q[64 * chunk + 32 + i] << 4);
        }
    }
    BlockQ4K {
        d: s.d,
        dmin: s.dmin,
        scales: s.scales,
        qs,
    }
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        write_block(dst, i, &quantize_block(x));
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_scale_min::<BlockQ4K>(src, dst);
}

/// Weight row · Q8_K activation row ([`vec_dot_scale_min`]).
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    vec_dot_scale_min::<BlockQ4K>(n, w, act)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::BlockQ8K;
    use crate::quant::reference::common::test_support::check_roundtrip;

    #[test]
    fn roundtrip_error_fits_the_bit_budget() {
        // 16 levels, 32 per sub-block: 4.1 / 15 / sqrt(12) * 1.25.
        check_roundtrip(quantize, dequantize, std::mem::size_of::<BlockQ4K>(), 0.10);
    }

    #[test]
    fn zero_weights_dot_to_exact_zero() {
        let act: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = vec![0u8; 2 * std::mem::size_of::<BlockQ8K>()];
        crate::quant::reference::q8_k::quantize(&act, &mut a);
        let mut w = vec![0xAAu8; 2 * std::mem::size_of::<BlockQ4K>()];
        quantize(&[0.0; 512], &mut w);
        assert_eq!(vec_dot(512, &w, &a).to_bits(), 0f32.to_bits());
    }
}
