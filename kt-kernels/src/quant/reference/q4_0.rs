//! Q4_0 scalar reference: blocks of 32 weights stored as 4-bit `q` with one f16 scale,
//! `w = d * (q - 8)`. Element `j` of a block sits in the low nibble of byte `j`,
//! element `j + 16` in its high nibble. The activation format of the dot is Q8_0.

use half::f16;

use crate::quant::blocks::{block_count, read_block, write_block, BlockQ4_0, BlockQ8_0};
use crate::quant::QK;

/// The element of largest magnitude, with its sign (the first one on ties, as ggml's
/// `amax < |v|` scan keeps). Shared with Q5_0, which picks its scale the same way.
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// ggml's reference Q4_0 quantizer: the scale maps the largest-magnitude element to
/// exactly -8 (so the sign of `d` follows it and the full [-8, 7] range is used), and
/// every element is rounded half up by truncating `x / d + 8.5`, capped at 15.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let d = signed_absmax(x) / -8.0;
        // The inverse is taken from the f32 scale, before it is rounded to f16, as ggml does.
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let level = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        let mut b = BlockQ4_0 {
            d: f16::from_f32(d),
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
        let b: BlockQ4_0 = read_block(src, i);
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Weight row (Q4_0) · activation row (Q8_0): an exact integer sum per block, then one
/// float multiply by the product of the two scales, accumulated in f32 as ggml does.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    debug_assert_eq!(block_count::<BlockQ4_0>(w), n / QK);
    let mut sum = 0.0f32;
    for i in 0..n / QK {
        let x: BlockQ4_0 = read_block(w, i);
        let y: BlockQ8_0 = read_block(act, i);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let lo = (x.qs[j] & 0x0F) as i32 - 8;
            let hi = (x.qs[j] >> 4) as i32 - 8;
            sumi += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
        }
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_and_extreme_levels() {
        // The largest magnitude is -4 (element 20), so d = 0.5 and it takes level 0; +3.5
        // is level 15; element j sits in the low nibble of byte j, j + 16 in the high one.
        let mut x = [0.0f32; QK];
        x[3] = 3.5;
        x[20] = -4.0;
        x[31] = 1.0;
        let mut q = [0u8; 18];
        quantize(&x, &mut q);
        let b: BlockQ4_0 = read_block(&q, 0);
        assert_eq!(b.d.to_f32(), 0.5);
        assert_eq!(b.qs[3], 0x8F); // element 3: level 15, element 19: level 8 (zero)
        assert_eq!(b.qs[4], 0x08); // element 20: level 0 in the high nibble
        assert_eq!(b.qs[15], 0xA8); // element 31: 1.0 / 0.5 + 8 = 10
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn zero_block_has_zero_scale_and_dot() {
        let mut q = [0xFFu8; 18];
        quantize(&[0.0; QK], &mut q);
        let b: BlockQ4_0 = read_block(&q, 0);
        // 0 / -8 is -0.0: ggml stores the zero scale with its sign bit set, and so do we.
        assert_eq!((b.d.to_bits(), b.qs), (0x8000, [0x88; QK / 2]));
        let mut act = [0u8; 34];
        super::super::q8_0::quantize(&[1.0; QK], &mut act);
        assert_eq!(vec_dot(QK, &q, &act), 0.0);
    }
}
