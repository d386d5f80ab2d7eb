//! Q8_K scalar reference: the activation format of the K-quants.
//!
//! A block is 256 int8 quants with an f32 scale `d` and the sums of each run of 16
//! quants (`bsums`), which the K-quant dots use to apply their per-sub-block minimums
//! without touching the quants again. `x = d * q`.

use super::common::nearest_int;
use crate::quant::blocks::{read_block, write_block, BlockQ8K};
use crate::quant::QK_K;

/// Quantizes one block: the largest magnitude maps to -127 (ggml chooses the sign so
/// that its signed maximum becomes -127), everything else rounds to nearest even.
pub fn quantize_block(x: &[f32]) -> BlockQ8K {
    debug_assert_eq!(x.len(), QK_K);
    let mut block = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        // ggml leaves bsums unwritten here; zeros are what its zero-filled buffers hold.
        return block;
    }
    let iscale = -127.0 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        // |iscale * v| <= 127 up to rounding; the cap is ggml's guard against it.
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, run) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *s = run.iter().map(|&q| q as i16).sum();
    }
    block.d = 1.0 / iscale;
    block
}

pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        write_block(dst, i, &quantize_block(x));
    }
}

pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b: BlockQ8K = read_block(src, i);
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = b.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    #[test]
    fn bsums_are_run_sums_and_roundtrip_is_close() {
        let mut rng = SplitMix64::new(11);
        let n = 3 * QK_K;
        let mut x = vec![0f32; n];
        rng.fill_normal(&mut x, 1.5);
        let mut q = vec![0u8; 3 * std::mem::size_of::<BlockQ8K>()];
        quantize(&x, &mut q);
        let mut y = vec![f32::NAN; n];
        dequantize(&q, &mut y);
        for b in 0..3 {
            let blk: BlockQ8K = read_block(&q, b);
            let xb = &x[b * QK_K..(b + 1) * QK_K];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for j in 0..16 {
                let s: i32 = blk.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
                assert_eq!(blk.bsums[j] as i32, s, "block {b} run {j}");
            }
            for (k, (&a, &r)) in xb.iter().zip(&y[b * QK_K..]).enumerate() {
                // Half a quantization step, plus f32 slack.
                assert!(
                    (a - r).abs() <= amax / 127.0 * 0.5001,
                    "block {b} elem {k}: {a} vs {r}"
                );
            }
        }
    }
}
