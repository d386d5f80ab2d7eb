//! Q2_K scalar reference.
//!
//! A 256-element super-block is 16 sub-blocks of 16. Each sub-block has a 4-bit scale
//! and a 4-bit min (one byte of `scales`, scale in the low nibble), themselves scaled by
//! the block's f16 `d` and `dmin`: `x = d * sc * q - dmin * m` with 2-bit `q` packed by
//! [`pack_2bit`].

use super::common::{get_2bit, make_qkx2_quants, nearest_int, pack_2bit, ScaleMinSearch};
use crate::quant::blocks::{read_block, write_block, BlockQ2K, BlockQ8K};
use crate::quant::QK_K;
use half::f16;

/// ggml's search for Q2_K sub-blocks: absolute error, weights |x|.
const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// Quantizes one super-block (ggml's `quantize_row_q2_K_ref`).
pub fn quantize_block(x: &[f32]) -> BlockQ2K {
    debug_assert_eq!(x.len(), QK_K);
    let mut q = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, &SEARCH, &mut q[16 * j..16 * j + 16]);
    }
    // Scales and mins are never negative here, so the block maxima start at 0.
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });

    let mut packed = [0u8; 16];
    let mut d = f16::ZERO;
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (p, &s) in packed.iter_mut().zip(&scales) {
            *p = nearest_int(iscale * s) as u8;
        }
        d = f16::from_f32(max_scale / 15.0);
    }
    let mut dmin = f16::ZERO;
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (p, &m) in packed.iter_mut().zip(&mins) {
            *p |= (nearest_int(iscale * m) << 4) as u8;
        }
        dmin = f16::from_f32(max_min / 15.0);
    }

    // Requantize against the scales as stored (4-bit, times the f16 block scales).
    for ((qs, xs), &sc) in q.chunks_exact_mut(16).zip(x.chunks_exact(16)).zip(&packed) {
        let dl = d.to_f32() * (sc & 0x0F) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * (sc >> 4) as f32;
        for (qi, &xi) in qs.iter_mut().zip(xs) {
            *qi = nearest_int((xi + ml) / dl).clamp(0, 3) as u8;
        }
    }
    BlockQ2K {
        scales: packed,
        qs: pack_2bit(&q),
        d,
        dmin,
    }
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        write_block(dst, i, &quantize_block(x));
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b: BlockQ2K = read_block(src, i);
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in y.iter_mut().enumerate() {
            let sc = b.scales[e / 16];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *o = dl * get_2bit(&b.qs, e) as f32 - ml;
        }
    }
}

/// Weight row · Q8_K activation row. Per block: the integer dot of each sub-block
/// times its 4-bit scale, and the 4-bit mins against the activation's 16-sums
/// (`bsums`), then `d * act.d` and `dmin * act.d` once each.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n / QK_K {
        let b: BlockQ2K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..16 {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|e| get_2bit(&b.qs, e) as i32 * a.qs[e] as i32)
                .sum();
            isum += (b.scales[j] & 0x0F) as i32 * sub;
            msum += (b.scales[j] >> 4) as i32 * a.bsums[j] as i32;
        }
        let dall = a.d * b.d.to_f32();
        let dmin = a.d * b.dmin.to_f32();
        sum += dall * isum as f32 - dmin * msum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::common::test_support::check_roundtrip;

    #[test]
    fn roundtrip_error_fits_the_bit_budget() {
        // 4 levels, 16 per sub-block: 3.5 / 3 / sqrt(12) * 1.25.
        check_roundtrip(quantize, dequantize, std::mem::size_of::<BlockQ2K>(), 0.42);
    }

    #[test]
    fn zero_weights_dot_to_exact_zero() {
        let act: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = vec![0u8; 2 * std::mem::size_of::<BlockQ8K>()];
        crate::quant::reference::q8_k::quantize(&act, &mut a);
        let mut w = vec![0xAAu8; 2 * std::mem::size_of::<BlockQ2K>()];
        quantize(&[0.0; 512], &mut w);
        assert_eq!(vec_dot(512, &w, &a).to_bits(), 0f32.to_bits());
    }
}
