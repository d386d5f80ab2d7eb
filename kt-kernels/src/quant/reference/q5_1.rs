//! Q5_1 scalar reference: Q4_1 with a fifth bit, `w = d * q + m`, `q` in 0..32. Bit
//! layout as Q5_0. The activation format of the dot is Q8_1.

use half::f16;

use super::q4_1::min_max;
use crate::quant::blocks::{block_count, read_block, write_block, BlockQ5_1, BlockQ8_1};
use crate::quant::QK;

/// The 5-bit values of a block, element order.
fn levels(b: &BlockQ5_1) -> [u8; QK] {
    let qh = u32::from_le_bytes(b.qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (b.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (b.qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

/// ggml's reference Q5_1 quantizer: as Q4_1 with 31 steps over [min, max]; levels are
/// `(x - min) / d + 0.5` truncated (ggml does not cap them; for finite input they stay
/// within 31 and the cap here only guards non-finite input).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let level = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        let mut qs = [0u8; QK / 2];
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let (lo, hi) = (level(x[j]), level(x[j + QK / 2]));
            qs[j] = ((lo & 0x0F) | ((hi & 0x0F) << 4)) as u8;
            qh |= (lo >> 4) << j;
            qh |= (hi >> 4) << (j + QK / 2);
        }
        let b = BlockQ5_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qh: qh.to_le_bytes(),
            qs,
        };
        write_block(dst, i, &b);
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK).enumerate() {
        let b: BlockQ5_1 = read_block(src, i);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (out, q) in y.iter_mut().zip(levels(&b)) {
            *out = q as f32 * d + m;
        }
    }
}

/// Weight row (Q5_1) · activation row (Q8_1): per block `dx*dy*sum(qx*qy) + mx*sy`.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    debug_assert_eq!(block_count::<BlockQ5_1>(w), n / QK);
    let mut sum = 0.0f32;
    for i in 0..n / QK {
        let x: BlockQ5_1 = read_block(w, i);
        let y: BlockQ8_1 = read_block(act, i);
        let sumi: i32 = levels(&x)
            .iter()
            .zip(y.qs)
            .map(|(&q, a)| q as i32 * a as i32)
            .sum();
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_span_min_to_max_with_the_fifth_bit() {
        // min 2, max 33: d = 1, element j is level j (bit 4 set from element 16 on).
        let x: Vec<f32> = (0..QK).map(|j| j as f32 + 2.0).collect();
        let mut q = [0u8; 24];
        quantize(&x, &mut q);
        let b: BlockQ5_1 = read_block(&q, 0);
        assert_eq!((b.d.to_f32(), b.m.to_f32()), (1.0, 2.0));
        assert_eq!(u32::from_le_bytes(b.qh), 0xFFFF_0000);
        assert_eq!(b.qs[3], 0x33);
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y.as_slice(), x.as_slice());
    }
}
