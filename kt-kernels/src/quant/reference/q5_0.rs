//! Q5_0 scalar reference: Q4_0 with a fifth bit, `w = d * (q - 16)`. The low nibbles are
//! laid out as Q4_0's; bit 4 of element `j` is bit `j` of the little-endian u32 `qh`.
//! The activation format of the dot is Q8_0.

use half::f16;

use super::q4_0::signed_absmax;
use crate::quant::blocks::{block_count, read_block, write_block, BlockQ5_0, BlockQ8_0};
use crate::quant::QK;

/// The 5-bit values of a block, element order.
fn levels(b: &BlockQ5_0) -> [u8; QK] {
    let qh = u32::from_le_bytes(b.qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (b.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (b.qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

/// ggml's reference Q5_0 quantizer: as Q4_0 with 16 in place of 8 (the largest-magnitude
/// element maps to exactly -16; levels are `x / d + 16.5` truncated, capped at 31).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK).enumerate() {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let level = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
        let mut qs = [0u8; QK / 2];
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let (lo, hi) = (level(x[j]), level(x[j + QK / 2]));
            qs[j] = ((lo & 0x0F) | ((hi & 0x0F) << 4)) as u8;
            qh |= (lo >> 4) << j;
            qh |= (hi >> 4) << (j + QK / 2);
        }
        write_block(
            dst,
            i,
            &BlockQ5_0 {
                d: f16::from_f32(d),
                qh: qh.to_le_bytes(),
                qs,
            },
        );
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK).enumerate() {
        let b: BlockQ5_0 = read_block(src, i);
        let d = b.d.to_f32();
        for (out, q) in y.iter_mut().zip(levels(&b)) {
            *out = (q as i32 - 16) as f32 * d;
        }
    }
}

/// Weight row (Q5_0) · activation row (Q8_0): integer sum per block, one float multiply
/// by `dx * dy` per block, f32 accumulation.
pub fn vec_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    debug_assert_eq!(block_count::<BlockQ5_0>(w), n / QK);
    let mut sum = 0.0f32;
    for i in 0..n / QK {
        let x: BlockQ5_0 = read_block(w, i);
        let y: BlockQ8_0 = read_block(act, i);
        let sumi: i32 = levels(&x)
            .iter()
            .zip(y.qs)
            .map(|(&q, a)| (q as i32 - 16) * a as i32)
            .sum();
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bit_goes_to_bit_j_of_qh() {
        // amax -16 at element 0 gives d = 1 and level 0 there; element 5 = +15 is level
        // 31 (bit 5 of qh set), element 25 = +1 is level 17 (bit 25 set), zeros are level
        // 16 (their bits set too).
        let mut x = [0.0f32; QK];
        x[0] = -16.0;
        x[5] = 15.0;
        x[25] = 1.0;
        let mut q = [0u8; 22];
        quantize(&x, &mut q);
        let b: BlockQ5_0 = read_block(&q, 0);
        assert_eq!(b.d.to_f32(), 1.0);
        assert_eq!(u32::from_le_bytes(b.qh), !1u32); // every level >= 16 except element 0
        assert_eq!(b.qs[0], 0x00); // element 0 (level 0) and element 16 (level 16)
        assert_eq!(b.qs[5], 0x0F);
        assert_eq!(b.qs[9], 0x10); // element 25: level 17, low nibble 1 in the high half
        let mut y = [f32::NAN; QK];
        dequantize(&q, &mut y);
        assert_eq!(y, x);
    }
}
