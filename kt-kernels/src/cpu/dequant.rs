//! Dequantization for load-time conversions (the repack of expert stacks, the GPU weights'
//! int4 quantization): the reference's values bit for bit, in loops the compiler
//! vectorizes. The reference ([`crate::quant::reference`]) computes every element through
//! its block's accessors (scale lookup and quant extraction per element); here each
//! 16- or 32-element run gets its scale once and its quants by one shift and mask, with
//! the same float operations in the same order. Formats without a path here fall back to
//! the reference; the tests compare every format with it.

use crate::error::Result;
use crate::quant::blocks::{read_block, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0};
use crate::quant::reference::{self, common::get_scale_min_k4};
use crate::quant::{check_row, QType};

/// `src` (whole blocks of `qtype`) to f32 in `dst`, the same values as
/// [`crate::quant::dequantize`]; an error when the lengths do not match.
pub fn dequantize(qtype: QType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_row(qtype, "dequantize source", dst.len(), src.len())?;
    dequantize_rows(qtype, src, dst);
    Ok(())
}

/// [`dequantize`] for callers whose lengths match by construction (`src` holds
/// `qtype.row_bytes(dst.len())` bytes; a mismatch panics on a slice bound).
pub(crate) fn dequantize_rows(qtype: QType, src: &[u8], dst: &mut [f32]) {
    match qtype {
        QType::Q4_K => q4_k(src, dst),
        QType::Q6_K => q6_k(src, dst),
        QType::Q5_0 => q5_0(src, dst),
        QType::Q8_0 => q8_0(src, dst),
        _ => reference::dequantize(qtype, src, dst),
    }
}

/// `x = (d * sc) * q - dmin * m` per 32-element sub-block; sub-block `j`'s quants are the
/// low (`j` even) or high nibbles of bytes `32 * (j / 2)..`.
fn q4_k(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(256).enumerate() {
        let b: BlockQ4K = read_block(src, i);
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, out) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = get_scale_min_k4(j, &b.scales);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            let shift = 4 * (j % 2);
            for (o, &q) in out.iter_mut().zip(&b.qs[32 * (j / 2)..32 * (j / 2) + 32]) {
                *o = dl * ((q >> shift) & 0x0F) as f32 - ml;
            }
        }
    }
}

/// `x = (d * scale) * (q - 32)` per 16 elements; in each 128-element half, group `g` of 32
/// takes low (`g` < 2) or high nibbles of `ql[64 h + 32 (g % 2)..]` and bits `2g..2g+2` of
/// `qh[32 h..]`.
fn q6_k(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(256).enumerate() {
        let b: BlockQ6K = read_block(src, i);
        let d = b.d.to_f32();
        for (e0, out) in (0..256).step_by(16).zip(y.chunks_exact_mut(16)) {
            let (half, g, i0) = (e0 / 128, (e0 % 128) / 32, e0 % 32);
            let ql = &b.ql[64 * half + 32 * (g % 2) + i0..][..16];
            let qh = &b.qh[32 * half + i0..][..16];
            let (shift, scale) = (if g < 2 { 0 } else { 4 }, d * b.scales[e0 / 16] as f32);
            for ((o, &l), &h) in out.iter_mut().zip(ql).zip(qh) {
                let q = (((l >> shift) & 0x0F) | (((h >> (2 * g)) & 3) << 4)) as i32 - 32;
                *o = scale * q as f32;
            }
        }
    }
}

/// `x = (q - 16) * d`, `q` four low bits from the nibbles (low for the first 16 elements,
/// high for the last) and the fifth from `qh`.
fn q5_0(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(32).enumerate() {
        let b: BlockQ5_0 = read_block(src, i);
        let (d, qh) = (b.d.to_f32(), u32::from_le_bytes(b.qh));
        let (lo, hi) = y.split_at_mut(16);
        for (j, (o, &q)) in lo.iter_mut().zip(&b.qs).enumerate() {
            let v = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            *o = (v as i32 - 16) as f32 * d;
        }
        for (j, (o, &q)) in hi.iter_mut().zip(&b.qs).enumerate() {
            let v = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            *o = (v as i32 - 16) as f32 * d;
        }
    }
}

/// `x = q * d`.
fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(32).enumerate() {
        let b: BlockQ8_0 = read_block(src, i);
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;
    use crate::util::SplitMix64;

    /// Random bytes for `blocks` blocks of `q`, with every f16 scale field replaced by a
    /// finite value (random bits would make NaN and infinity, equal in neither order).
    fn random_blocks(q: QType, blocks: usize, rng: &mut SplitMix64) -> Vec<u8> {
        let n = blocks * q.block_elems();
        let mut f = vec![0f32; n];
        rng.fill_normal(&mut f, 0.7);
        let mut b = vec![0u8; q.row_bytes(n).unwrap()];
        quant::quantize(q, &f, &mut b).unwrap();
        // Scramble the quant bytes (not the scales, which quantize wrote finite) so that
        // every bit pattern of the quants shows up.
        let (bb, scale_at): (usize, &[usize]) = match q {
            QType::Q4_K => (144, &[0, 1, 2, 3]),
            QType::Q6_K => (210, &[208, 209]),
            QType::Q5_0 => (22, &[0, 1]),
            QType::Q8_0 => (34, &[0, 1]),
            _ => return b,
        };
        for (k, byte) in b.iter_mut().enumerate() {
            if !scale_at.contains(&(k % bb)) {
                *byte = rng.next_u64() as u8;
            }
        }
        b
    }

    #[test]
    fn every_format_matches_the_reference_bit_for_bit() {
        let mut rng = SplitMix64::new(17);
        for q in QType::ALL {
            for blocks in [1, 2, 7] {
                let src = random_blocks(q, blocks, &mut rng);
                let n = blocks * q.block_elems();
                let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                quant::dequantize(q, &src, &mut want).unwrap();
                dequantize(q, &src, &mut got).unwrap();
                for (e, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{q} element {e}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = vec![0f32; 256];
        assert!(dequantize(QType::Q4_K, &[0u8; 143], &mut out).is_err());
        assert!(dequantize(QType::Q8_0, &[0u8; 34], &mut out).is_err());
    }
}
