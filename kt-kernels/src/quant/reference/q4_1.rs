//! Q4_1 scalar reference: blocks of 32 weights stored as 4-bit `q` with an f16 scale and
//! an f16 minimum, `w = d * q + m`. Nibble order as Q4_0. The activation format of the
//! dot is Q8_1, whose per-block `s = d * sum(q)` carries the minimum's contribution.

use half::f16;

use crate::quant::blocks::{block_count, read_block, write_block, BlockQ4_1, BlockQ8_1};
use crate::quant::QK;

/// Smallest and largest element of a block (ggml's scan: strict comparisons from
/// (+MAX, -MAX)). Shared with Q5_1.
pub(super) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml's reference Q4_1 quantizer: the block's [min, max] is split into 15 steps, the
/// minimum is stored as is and each element is rounded half up by truncating
/// `(x - min) / d + 0.5`, capped at 15.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let level = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        let mut b = BlockQ4_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qs: [0; QK / 2],
        };
        for j in 0..QK / 2 {
            b.qs[j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
        }
        write_block(dst, i, &b);
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK).enumerate() {
        let b: BlockQ4_1 = read_block(src, i);
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Weight row (Q4_1) · activation row (Q8_1): per block `dx*dy*sum(qx*qy) + mx*sy`,
/// where `sy = dy * sum(qy)` was stored by the activation quantizer.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    debug_assert_eq!(block_count::<BlockQ4_1>(w), n / QK);
    let mut sum = 0.0f32;
    for i in 0..n / QK {
        let x: BlockQ4_1 = read_block(w, i);
        let y: BlockQ8_1 = read_block(act, i);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let lo = (x.qs[j] & 0x0F) as i32;
            let hi = (x.qs[j] >> 4) as i32;
            sumi += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
        }
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_block_is_exact_through_the_minimum() {
        let mut q = [0u8; 20];
        quantize(&[1.5; QK], &mut q);
        let b: BlockQ4_1 = read_block(&q, 0);
        assert_eq!((b.d.to_f32(), b.m.to_f32(), b.qs), (0.0, 1.5, [0; QK / 2]));
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y, [1.5; QK]);
    }

    #[test]
    fn levels_span_min_to_max() {
        // min -1, max 14: d = 1, element j = j - 1 for j < 16 is level j.
        let x: Vec<f32> = (0..QK).map(|j| (j % 16) as f32 - 1.0).collect();
        let mut q = [0u8; 20];
        quantize(&x, &mut q);
        let b: BlockQ4_1 = read_block(&q, 0);
        assert_eq!((b.d.to_f32(), b.m.to_f32()), (1.0, -1.0));
        assert_eq!(b.qs[7], 0x77);
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y.as_slice(), x.as_slice());
    }
}
